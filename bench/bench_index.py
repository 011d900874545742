"""FAISS index build and search: exact (Flat) vs HNSW vs IVF-PQ at growing catalogue sizes, on synthetic vectors.

The vectors are L2-normalised 384-dim float32 (MiniLM's size), drawn from a Gaussian mixture in a 32-dim latent
space mapped into 384 dims plus a little isotropic noise: clustered, with a low intrinsic dimension like real
sentence embeddings, so approximate recall means something (uniform random vectors make every neighbour nearly
equidistant). Queries are fresh draws from the same mixture. Each index is built with ``ttsn_hf.indexing.build_index``
(the project's path: ``faiss.index_factory``, seeded training sample, its default ``efSearch``/``nprobe``).

Per size and index: build seconds (training included), queries/s (all queries in one batch call), recall@10 against
the exact index, the serialised index size, and the build's peak memory above the process's memory before it (the
resident set sampled every 5 ms). Also a log-log plot of each against the catalogue size.

    python bench/bench_index.py [--sizes 10000,100000,1000000] [--threads 2] [--device cpu|cuda] [--output FILE]

Writes bench/results/index.json and bench/results/index_scaling.png.
"""

from __future__ import annotations

import argparse
import ctypes
import math
import os
import threading
import time
from pathlib import Path

# Threads that sleep rather than spin while waiting: on a shared machine spinning threads slow each other 3-10x.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import faiss  # noqa: E402
import numpy as np  # noqa: E402
from benchlib import RESULTS, load_now, machine, print_table, write_json  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from ttsn_hf.atomic import atomic_path  # noqa: E402
from ttsn_hf.retrieval.indexing import DEFAULT_SEARCH_PARAMETERS, build_index  # noqa: E402

DIM = 384
LATENT_DIM = 32
CLUSTERS = 1000
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------- data


class Mixture:
    """A Gaussian mixture in a low-dimensional latent space, mapped linearly into ``DIM`` dims and normalised."""

    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        self.centres = rng.standard_normal((CLUSTERS, LATENT_DIM)).astype(np.float32)
        self.basis = (rng.standard_normal((LATENT_DIM, DIM)) / math.sqrt(LATENT_DIM)).astype(np.float32)

    def sample(self, count: int, seed: int, chunk: int = 100_000) -> np.ndarray:
        rng = np.random.default_rng(seed)
        vectors = np.empty((count, DIM), dtype=np.float32)
        for start in tqdm(range(0, count, chunk), desc="vectors", disable=count <= chunk):
            size = min(chunk, count - start)
            latent = self.centres[rng.integers(CLUSTERS, size=size)]
            latent += 0.5 * rng.standard_normal((size, LATENT_DIM), dtype=np.float32)
            block = latent @ self.basis + 0.1 * rng.standard_normal((size, DIM), dtype=np.float32)
            vectors[start : start + size] = block / np.linalg.norm(block, axis=1, keepdims=True)
        return vectors


# ---------------------------------------------------------------- memory


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_SIZE


def release_freed_memory() -> None:
    """Hand freed heap pages back to the system, so the next baseline is not inflated by the last index."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """The highest resident set seen while the ``with`` block runs, above the one before it."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        release_freed_memory()
        self.baseline = self.peak = resident_bytes()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, resident_bytes())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, resident_bytes())

    @property
    def above_baseline(self) -> int:
        return self.peak - self.baseline


# ---------------------------------------------------------------- one index


def ivf_pq_factory(count: int, pq_bytes: int) -> str:
    """IVF with about sqrt(count) lists (a power of two, at least 39 training points each), then PQ.

    "np": no polysemous training, which only serves Hamming-filtered search and triples the build time here."""
    lists = 2 ** round(math.log2(math.sqrt(count)))
    lists = min(lists, 2 ** int(math.log2(count / 39)))
    return f"IVF{lists},PQ{pq_bytes}np"


def to_device(index: faiss.Index, device: str) -> tuple[faiss.Index, str]:
    """The index on the GPU when asked and faiss has one (faiss-gpu; HNSW has no GPU version), else as is."""
    if device != "cuda" or not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        return index, "cpu"
    if isinstance(index, faiss.IndexHNSW):
        return index, "cpu"
    return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index), "cuda"


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    hits = sum(len(set(row_found) & set(row_exact)) for row_found, row_exact in zip(found, exact, strict=True))
    return hits / (k * len(exact))


def bench_index(factory: str, vectors: np.ndarray, queries: np.ndarray, exact, args: argparse.Namespace) -> dict:
    with PeakMemory() as memory:
        start = time.perf_counter()
        index = build_index(vectors, factory, max_train_size=args.train_size, seed=args.seed)
        index, where = to_device(index, args.device)
        build_seconds = time.perf_counter() - start
    index.search(queries[:10], args.k)  # untimed warm-up
    start = time.perf_counter()
    _, found = index.search(queries, args.k)
    search_seconds = time.perf_counter() - start
    size_bytes = len(faiss.serialize_index(faiss.index_gpu_to_cpu(index) if where == "cuda" else index))
    return {
        "index": factory,
        "vectors": len(vectors),
        "faiss_device": where,
        "build_s": round(build_seconds, 3),
        "queries_per_s": round(len(queries) / search_seconds, 1),
        "recall_at_10": round(recall_at_k(found, exact if exact is not None else found), 4),
        "index_mb": round(size_bytes / 2**20, 1),
        "peak_build_mb": round(memory.above_baseline / 2**20, 1),
        "load_average_1min": load_now()[0],
    }, found


def bench_size(count: int, vectors: np.ndarray, queries: np.ndarray, args: argparse.Namespace) -> list[dict]:
    factories = ["Flat", f"HNSW{args.hnsw_m}", ivf_pq_factory(count, args.pq_bytes)]
    if args.bf16:
        factories.append("SQbf16")
    rows, exact = [], None
    for factory in factories:
        if factory.startswith("HNSW") and count > args.hnsw_max_size:
            print(f"{factory} at {count:,}: skipped (--hnsw_max_size {args.hnsw_max_size:,})")
            continue
        row, found = bench_index(factory, vectors[:count], queries, exact, args)
        if factory == "Flat":
            exact = found
        rows.append(row)
        print(
            f"{count:,} {factory}: build {row['build_s']} s, {row['queries_per_s']} q/s, "
            f"recall@10 {row['recall_at_10']}",
            flush=True,
        )
        release_freed_memory()
    return rows


# ---------------------------------------------------------------- plot


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("build_s", "build time (s)", True),
        ("queries_per_s", "queries/s (1,000-query batch)", True),
        ("recall_at_10", "recall@10 vs exact", False),
        ("peak_build_mb", "peak memory while building; dashed: index size (MB)", True),
    ]
    figure, axes = plt.subplots(2, 2, figsize=(11, 8))
    for axis, (key, title, log_y) in zip(axes.flat, panels, strict=True):
        for family in sorted({_family(row["index"]) for row in rows}):
            points = sorted((row["vectors"], row[key]) for row in rows if _family(row["index"]) == family)
            line = axis.plot([x for x, _ in points], [y for _, y in points], marker="o", label=family)[0]
            if key == "peak_build_mb":
                sizes = sorted((row["vectors"], row["index_mb"]) for row in rows if _family(row["index"]) == family)
                axis.plot(*zip(*sizes, strict=True), linestyle="--", color=line.get_color(), label=f"{family} index")
        axis.set_xscale("log")
        if log_y:
            axis.set_yscale("log")
        axis.set_xlabel("catalogue size (vectors)")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    figure.suptitle(f"FAISS indexes on {DIM}-dim normalised vectors")
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110)
    plt.close(figure)
    print(f"wrote {path}")


def _family(factory: str) -> str:
    return "IVF-PQ" if factory.startswith("IVF") else factory


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--hnsw_m", type=int, default=32, help="HNSW neighbours per node")
    parser.add_argument("--hnsw_max_size", type=int, default=1_000_000, help="skip HNSW above this size")
    parser.add_argument("--pq_bytes", type=int, default=48, help="PQ sub-quantisers (bytes per vector)")
    parser.add_argument("--train_size", type=int, default=100_000, help="training sample of IVF-PQ")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda needs faiss-gpu")
    parser.add_argument("--bf16", action="store_true", help="also a flat index of bf16 vectors (SQbf16)")
    parser.add_argument("--threads", type=int, default=2, help="faiss (OpenMP) threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(RESULTS / "index.json"))
    parser.add_argument("--plot", default=None, help="PNG; default: index_scaling.png beside --output")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    faiss.omp_set_num_threads(args.threads)
    sizes = sorted(int(size) for size in args.sizes.split(","))
    mixture = Mixture(args.seed)
    vectors = mixture.sample(sizes[-1], seed=args.seed + 1)
    queries = mixture.sample(args.queries, seed=args.seed + 2)
    rows = []
    for count in sizes:
        rows.extend(bench_size(count, vectors, queries, args))
    print_table(rows, ["index", "vectors", "build_s", "queries_per_s", "recall_at_10", "index_mb", "peak_build_mb"])
    result = {
        "benchmark": "index",
        "machine": machine(args.device),
        "settings": {
            "dim": DIM,
            "queries": args.queries,
            "k": args.k,
            "data": f"Gaussian mixture: {CLUSTERS} clusters in {LATENT_DIM} latent dims, mapped to {DIM}, normalised",
            "search_parameters": DEFAULT_SEARCH_PARAMETERS,
            "ivf_pq_training_sample": args.train_size,
            "faiss_threads": args.threads,
            "faiss": faiss.__version__,
        },
        "runs": rows,
    }
    write_json(args.output, result)
    plot(rows, Path(args.plot) if args.plot else Path(args.output).with_name("index_scaling.png"))
    return result


if __name__ == "__main__":
    main()
