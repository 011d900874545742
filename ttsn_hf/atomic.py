"""Write outputs under a temporary name and rename them into place, so nothing half-written is ever seen."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from .errors import UserInputError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write (a file or a folder); on success it replaces ``path``.

    On an exception the temporary is removed and ``path`` keeps its previous content.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield temporary
        if final.is_dir() and temporary.is_dir():
            backup = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(final, backup)
            os.replace(temporary, final)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(temporary, final)
    finally:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        elif temporary.exists():
            temporary.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def check_output_path(path: str | Path, flag: str, folder: bool = True) -> None:
    """An output must be writable as what it is: a folder (or a file) that is not blocked by a file (or folder)."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        wanted, found = ("folder", "file") if folder else ("file", "folder")
        raise UserInputError(f"{flag} {path}: exists and is a {found}, not a {wanted}; pass a {wanted} path")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserInputError(f"{flag} {path}: {parent} is a file, not a folder")
            break
