"""Chunked, cached, resumable, process-sharded catalogue encoding.

The catalogue is streamed from its table in chunks of ``chunk_size`` products (never every text at once). With a
``cache_dir`` every chunk is saved as its own ``.npy`` file (atomically) under a folder keyed by the model and the
catalogue, so an interrupted run resumes from the chunks already there, and a finished run is assembled once into
``embeddings.npy`` that later runs memory-map instead of encoding again. Under ``accelerate launch`` chunks are
shared round-robin between the processes.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from ..atomic import atomic_path, write_text_atomic
from ..data.tables import Products, catalogue_fingerprint
from ..errors import UserInputError

__all__ = ["catalogue_fingerprint", "encode_catalogue", "make_accelerator", "model_fingerprint", "release_pages"]

EMBEDDINGS_FILE = "embeddings.npy"
INFO_FILE = "info.json"
# Texts tokenized at a time: a fast tokenizer keeps every token of every text it truncated (about 25 KB for a
# 1,000-character product), so tokenizing a whole 50k-product chunk at once held 2.5 GB (measured, bench/scale.py).
TEXTS_PER_CALL = 4096


class ProductEncoder(Protocol):
    embedding_dim: int

    def encode_products(self, texts: list[str], **kwargs: Any) -> np.ndarray: ...


def make_accelerator() -> Any:
    """An ``accelerate.Accelerator`` that shards on CPU-only machines too: there accelerate only starts its gloo
    process group when asked for the CPU (otherwise each launched process believes it is alone)."""
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available())


def release_pages(array: np.ndarray) -> None:
    """Drop the resident pages of a memory-mapped array (they stay in the page cache): a pass over a large
    ``embeddings.npy`` then holds one chunk, not the whole file, in the process. Other arrays are left alone."""
    mapping = getattr(array, "_mmap", None)
    if mapping is not None and hasattr(mapping, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED)


def model_fingerprint(model: Any) -> str:
    """A sha256 of what decides the model's embeddings: its weights (not where they were loaded from) and max lengths.

    Hashing the weights in memory keeps the cache right while training changes them under the same name. Objects
    without weights (test doubles) may give a ``fingerprint`` attribute; the last resort is ``name_or_path``.
    """
    digest = hashlib.sha256(type(model).__name__.encode())
    config = getattr(model, "config", None)
    for attribute in ("query_max_length", "product_max_length"):
        digest.update(f"{attribute}={getattr(config, attribute, None)}".encode())
    if hasattr(model, "state_dict"):
        for name, tensor in sorted(model.state_dict().items()):
            tensor = tensor.detach().cpu().contiguous()
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif getattr(model, "fingerprint", None):
        digest.update(str(model.fingerprint).encode())
    else:
        digest.update(str(getattr(model, "name_or_path", "")).encode())
    return digest.hexdigest()


def cache_key(model: Any, catalogue: Products, bf16: bool) -> str:
    precision = "bf16" if bf16 else "fp32"
    return f"{catalogue.fingerprint()[:16]}-{model_fingerprint(model)[:16]}-{precision}"


def encode_catalogue(
    model: ProductEncoder,
    product_ids: Sequence[str] | Products,
    texts: Sequence[str] | None = None,
    cache_dir: str | Path | None = None,
    chunk_size: int = 50_000,
    batch_size: int = 256,
    bf16: bool = False,
    accelerator: Any = None,
) -> np.ndarray:
    """Embed every product text: a float32 ``(n, dim)`` array, row ``i`` for product ``i``.

    ``product_ids`` is the product table (``Products``, texts streamed from it) or a list of ids with ``texts``
    beside it. With ``cache_dir`` the result is a read-only ``np.memmap`` of the cached ``embeddings.npy``; without,
    an in-memory array. With an ``accelerator`` of N processes, each encodes every N-th chunk; all processes return
    the same array.
    """
    catalogue = product_ids if isinstance(product_ids, Products) else Products.from_lists(product_ids, texts)
    if chunk_size < 1:
        raise UserInputError(f"--chunk_size must be at least 1, got {chunk_size}")
    if len(catalogue) == 0:
        return np.empty((0, model.embedding_dim), dtype=np.float32)
    shard = _Shard(accelerator)
    bounds = [(start, min(start + chunk_size, len(catalogue))) for start in range(0, len(catalogue), chunk_size)]
    encode = _chunk_encoder(model, batch_size, bf16)
    if cache_dir is None:
        return _encode_in_memory(catalogue, chunk_size, bounds, encode, shard)
    folder = Path(cache_dir) / cache_key(model, catalogue, bf16)
    # every process passes both barriers, whatever it finds on disk, so none can wait for the others forever
    if not (folder / EMBEDDINGS_FILE).is_file():
        _encode_missing_chunks(folder / f"chunks-{chunk_size}", catalogue, chunk_size, bounds, encode, shard)
    shard.wait()
    if shard.is_main and not (folder / EMBEDDINGS_FILE).is_file():
        _assemble(folder, bounds, chunk_size, model, len(catalogue), bf16)
    shard.wait()
    return _load_cached(folder, len(catalogue))


def _chunk_encoder(model: ProductEncoder, batch_size: int, bf16: bool):
    def encode(texts: list[str]) -> np.ndarray:
        pieces = [
            model.encode_products(texts[first : first + TEXTS_PER_CALL], batch_size=batch_size, bf16=bf16,
                                  show_progress_bar=False)
            for first in range(0, len(texts), TEXTS_PER_CALL)
        ]  # fmt: skip
        return np.ascontiguousarray(np.concatenate(pieces), dtype=np.float32)

    return encode


def _chunks(catalogue: Products, chunk_size: int, wanted: list[int]):
    """(chunk index, texts) of the ``wanted`` chunks, streamed in order (the others are read past, not kept)."""
    wanted_set = set(wanted)
    for index, texts in enumerate(catalogue.text_chunks(chunk_size)):
        if index in wanted_set:
            yield index, texts
        if index >= max(wanted, default=-1):
            return


class _Shard:
    """This process's place among the ``accelerate`` processes (one process without an accelerator)."""

    def __init__(self, accelerator: Any = None):
        self.accelerator = accelerator
        self.rank = accelerator.process_index if accelerator is not None else 0
        self.world = accelerator.num_processes if accelerator is not None else 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mine(self, bounds: list[tuple[int, int]]) -> list[int]:
        return list(range(self.rank, len(bounds), self.world))

    def wait(self) -> None:
        if self.world > 1:
            self.accelerator.wait_for_everyone()


def _progress(chunks: list[int], shard: _Shard, desc: str):
    return tqdm(total=len(chunks), desc=desc, unit="chunk", disable=not shard.is_main or len(chunks) < 2)


def _encode_in_memory(catalogue: Products, chunk_size: int, bounds, encode, shard: _Shard) -> np.ndarray:
    mine = shard.mine(bounds)
    progress = _progress(mine, shard, "encode catalogue")
    own = {}
    for index, texts in _chunks(catalogue, chunk_size, mine):
        own[index] = encode(texts)
        progress.update(1)
    progress.close()
    if shard.world > 1:
        from accelerate.utils import gather_object

        # gather_object concatenates the per-process lists: one (chunk index, array) pair per chunk
        own = dict(gather_object(list(own.items())))
    return np.concatenate([own[index] for index in range(len(bounds))])


def _encode_missing_chunks(chunks_dir: Path, catalogue: Products, chunk_size: int, bounds, encode, shard) -> None:
    chunks_dir.mkdir(parents=True, exist_ok=True)
    missing = [index for index in shard.mine(bounds) if not _chunk_file(chunks_dir, index).is_file()]
    progress = _progress(missing, shard, "encode catalogue")
    for index, texts in _chunks(catalogue, chunk_size, missing):
        with atomic_path(_chunk_file(chunks_dir, index)) as temporary, open(temporary, "wb") as handle:
            np.save(handle, encode(texts))
        progress.update(1)
    progress.close()


def _chunk_file(chunks_dir: Path, index: int) -> Path:
    return chunks_dir / f"{index:06d}.npy"


def _assemble(folder: Path, bounds, chunk_size: int, model, count: int, bf16: bool) -> None:
    chunks_dir = folder / f"chunks-{chunk_size}"
    first = np.load(_chunk_file(chunks_dir, 0), mmap_mode="r")
    shape = (bounds[-1][1], first.shape[1])
    with atomic_path(folder / EMBEDDINGS_FILE) as temporary:
        output = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.float32, shape=shape)
        for index, (start, end) in enumerate(bounds):
            output[start:end] = np.load(_chunk_file(chunks_dir, index), mmap_mode="r")
            output.flush()
            release_pages(output)
        del output
    info = {
        "model_name_or_path": str(getattr(model, "name_or_path", "")),
        "model_fingerprint": model_fingerprint(model),
        "count": count,
        "dim": shape[1],
        "bf16": bf16,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_text_atomic(folder / INFO_FILE, json.dumps(info, indent=2))
    shutil.rmtree(chunks_dir, ignore_errors=True)


def _load_cached(folder: Path, count: int) -> np.ndarray:
    embeddings = np.load(folder / EMBEDDINGS_FILE, mmap_mode="r")
    if embeddings.shape[0] != count:
        raise UserInputError(
            f"{folder / EMBEDDINGS_FILE}: {embeddings.shape[0]} cached embeddings for {count} products; "
            "delete the folder to encode again"
        )
    return embeddings
