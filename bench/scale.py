"""Full-release scale: the whole pipeline on a synthetic ESCI of the official release's size, step by step.

    python bench/scale.py --fractions 0.1,1.0 --work_dir /tmp/ttsn-scale
    python bench/scale.py --fractions 0.1,1.0 --code_dir /tmp/ttsn-main --label baseline   # another commit's CLIs

For each fraction of the full release (130,652 queries, 2,621,738 judgements, 1,814,924 products) it writes a
synthetic ESCI in the official layout (``write_synthetic_esci``; chunked, fixed seed, never in the repository), then
runs every step as the real CLI in a fresh subprocess: prepare, train stages 1-3 (a few steps each), mine over the
whole catalogue, index, eval over every test query. A tiny random encoder (2-layer 32-dim BERT with MiniLM's
tokenizer) is used so that the pipeline, not the model, is measured. Per step it records wall time, CPU time
(user + system of the step's whole process tree), peak RSS (the largest process, from ``wait4``, and the sum over
the process tree, polled), and the disk the step's outputs take. Each run records the commit its steps ran
(``--code_dir``: a checkout of another commit, e.g. the baseline) under a ``--label``; runs are kept per (label,
fraction), and other top-level keys of the JSON (e.g. a batch-size sweep) are kept as they are. Results:
``bench/results/scale.json`` and ``bench/results/scale.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.benchlib import machine, write_json  # noqa: E402

# The official release (amazon-science/esci-data, all locales): queries, judgements, products.
FULL_RELEASE = {"queries": 130_652, "judgements": 2_621_738, "products": 1_814_924}
# Label shares of the release's 2,621,738 judgements (E 1,708,158; S 574,313; C 75,646; I 263,165).
LABEL_SHARES = {"E": 0.6516, "S": 0.2191, "C": 0.0289, "I": 0.1004}
TEST_QUERY_SHARE = 0.2434  # 31,786 of the release's 130,652 queries are test queries (judgements: 638,016)
# Text lengths in characters, log-normal (mean, sd of log length) and the share of products that have the field,
# fitted to real ESCI product rows: titles to esci-us-sample (6,122 products), the other fields to the 485 products
# with every field in esci-raw/Grandi9__esci_dataset/sample_2c_full_data.csv.
TEXT_FIELDS = {
    "product_title": (4.53, 0.60, 1.0),
    "product_description": (6.40, 0.98, 0.53),
    "product_bullet_point": (6.25, 0.89, 0.85),
    "product_brand": (2.07, 0.49, 0.92),
    "product_color": (2.01, 0.68, 0.72),
}
QUERY_LENGTH = (3.05, 0.40)  # log-normal fit of esci-us-sample's 200 queries (median 22 characters)
MAX_FIELD_CHARS = 5_000
STEPS = ("prepare", "train_stage1", "mine", "train_stage2", "train_stage3", "index", "eval")


# ---------------------------------------------------------------------------------------------- synthetic data


def _vocabulary(seed: int) -> np.ndarray:
    """Words to write with: the sample's real title words when the shared data is there, else pseudo-words."""
    sample = REPO.parent / "shared" / "data" / "esci-us-sample" / "shopping_queries_dataset_products.parquet"
    if sample.is_file():
        titles = pq.read_table(sample, columns=["product_title"]).column(0).to_pylist()
        words = sorted({word for title in titles if title for word in title.split()})
        if len(words) > 1000:
            return np.array(words, dtype=object)
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return np.array(["".join(rng.choice(letters, rng.integers(2, 10))) for _ in range(20_000)], dtype=object)


def _text_stream(words: np.ndarray, chars: int, rng: np.random.Generator) -> str:
    """A long run of random words: field texts are slices of it (fast, and every product's text differs)."""
    average = np.mean([len(word) + 1 for word in words[:5000]])
    return " ".join(words[rng.integers(0, len(words), int(chars / average) + 1)])


def _slices(stream: str, lengths: np.ndarray, present: np.ndarray, rng: np.random.Generator) -> pa.Array:
    starts = rng.integers(0, len(stream) - MAX_FIELD_CHARS, len(lengths))
    pieces = zip(starts, lengths, present, strict=True)
    values = [stream[start : start + length] if has else None for start, length, has in pieces]
    return pa.array(values, type=pa.large_string())


def _lengths(rng: np.random.Generator, mean_log: float, sd_log: float, count: int) -> np.ndarray:
    return np.clip(np.rint(rng.lognormal(mean_log, sd_log, count)), 1, MAX_FIELD_CHARS).astype(np.int64)


def product_id(rows: np.ndarray) -> list[str]:
    return [f"B{row:09d}" for row in rows.tolist()]


def _write_products(path: Path, count: int, words: np.ndarray, rng: np.random.Generator, chunk: int) -> None:
    stream = _text_stream(words, 4_000_000, rng)
    with pq.ParquetWriter(path, _PRODUCT_SCHEMA) as writer:
        for start in range(0, count, chunk):
            size = min(chunk, count - start)
            columns = {"product_id": pa.array(product_id(np.arange(start, start + size)), type=pa.large_string())}
            for name, (mean_log, sd_log, share) in TEXT_FIELDS.items():
                present = rng.random(size) < share
                columns[name] = _slices(stream, _lengths(rng, mean_log, sd_log, size), present, rng)
            columns["product_locale"] = pa.array(["us"] * size, type=pa.large_string())
            writer.write_table(pa.table(columns, schema=_PRODUCT_SCHEMA))


def _judgements_per_query(queries: int, judgements: int, rng: np.random.Generator) -> np.ndarray:
    """Judged products per query: log-normal (the release has 3 to ~200, mean 20), summing to ``judgements``."""
    counts = np.clip(rng.lognormal(np.log(judgements / queries) - 0.18, 0.6, queries), 1, 200)
    counts = np.maximum(1, np.floor(counts * judgements / counts.sum())).astype(np.int64)
    counts[: judgements - counts.sum()] += 1  # the rounding remainder, one each
    return counts


def _write_examples(path: Path, queries: int, judgements: int, products: int, rng, chunk_queries: int) -> None:
    words = _vocabulary(1)
    stream = _text_stream(words, 2_000_000, rng)
    per_query = _judgements_per_query(queries, judgements, rng)
    labels = np.array(list(LABEL_SHARES))
    shares = np.array(list(LABEL_SHARES.values()))
    first_example = 0
    with pq.ParquetWriter(path, _EXAMPLE_SCHEMA) as writer:
        for start in range(0, queries, chunk_queries):
            counts = per_query[start : start + chunk_queries]
            query_ids = np.repeat(np.arange(start, start + len(counts)), counts)
            size = len(query_ids)
            text = _slices(stream, _lengths(rng, *QUERY_LENGTH, len(counts)), np.ones(len(counts), bool), rng)
            test = rng.random(len(counts)) < TEST_QUERY_SHARE
            # a query's products: a random start in the catalogue and a random stride, so never twice the same
            base = np.repeat(rng.integers(0, products, len(counts)), counts)
            stride = np.repeat(rng.integers(1, max(2, products // 256), len(counts)), counts)
            position = np.arange(size) - np.repeat(np.cumsum(counts) - counts, counts)
            table = {
                "example_id": np.arange(first_example, first_example + size),
                "query": pa.array(np.repeat(np.array(text.to_pylist(), dtype=object), counts), pa.large_string()),
                "query_id": query_ids,
                "product_id": pa.array(product_id((base + position * stride) % products), pa.large_string()),
                "product_locale": pa.array(["us"] * size, pa.large_string()),
                "esci_label": pa.array(rng.choice(labels, size, p=shares).tolist(), pa.large_string()),
                "small_version": np.ones(size, np.int64),
                "large_version": np.ones(size, np.int64),
                "split": pa.array(np.where(np.repeat(test, counts), "test", "train").tolist(), pa.large_string()),
            }
            writer.write_table(pa.table(table, schema=_EXAMPLE_SCHEMA))
            first_example += size


_PRODUCT_SCHEMA = pa.schema(
    [("product_id", pa.large_string())]
    + [(name, pa.large_string()) for name in TEXT_FIELDS]
    + [("product_locale", pa.large_string())]
)
_EXAMPLE_SCHEMA = pa.schema(
    [
        ("example_id", pa.int64()),
        ("query", pa.large_string()),
        ("query_id", pa.int64()),
        ("product_id", pa.large_string()),
        ("product_locale", pa.large_string()),
        ("esci_label", pa.large_string()),
        ("small_version", pa.int64()),
        ("large_version", pa.int64()),
        ("split", pa.large_string()),
    ]
)


def write_synthetic_esci(folder: str | Path, fraction: float = 1.0, seed: int = 0, chunk_rows: int = 100_000):
    """The two official parquet files at ``fraction`` of the full release, written ``chunk_rows`` rows at a time.

    Every product and query is ``us`` and ``small_version`` 1, so the default loaders keep all of them. Returns the
    counts written."""
    sizes = {name: max(1, int(round(count * fraction))) for name, count in FULL_RELEASE.items()}
    sizes["judgements"] = max(sizes["judgements"], sizes["queries"])
    sizes["products"] = max(sizes["products"], 300)  # a catalogue big enough for the negatives of a tiny run
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    _write_products(
        folder / "shopping_queries_dataset_products.parquet", sizes["products"], _vocabulary(0), rng, chunk_rows
    )
    chunk_queries = max(1, chunk_rows * sizes["queries"] // sizes["judgements"])
    _write_examples(
        folder / "shopping_queries_dataset_examples.parquet",
        sizes["queries"],
        sizes["judgements"],
        sizes["products"],
        rng,
        chunk_queries,
    )
    return sizes


def write_tiny_encoder(folder: Path) -> Path:
    """A random 2-layer 32-dim BERT with MiniLM's tokenizer (as tests/conftest.py's ``tiny_encoder_dir``)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from ttsn_hf import default_base_model
    from ttsn_hf.modeling.pretrained import resolve_pretrained

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_pretrained(default_base_model())).save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------------- measuring


def code_version(code_dir: Path = REPO) -> str:
    """The commit the steps run (with "+changes" when the working tree differs from it)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=code_dir, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "ttsn_hf", "*.py"], cwd=code_dir,
                               capture_output=True, text=True)  # fmt: skip
    except OSError:
        return "unknown"
    return commit.stdout.strip() + ("+changes" if dirty.stdout.strip() else "") if commit.returncode == 0 else "unknown"


def disk_usage(path: Path) -> int:
    """Bytes of the files under ``path`` (0 when missing)."""
    if path.is_file():
        return path.stat().st_size
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file()) if path.is_dir() else 0


def _poll_tree_rss(pid: int, peak: list[int], done: threading.Event, interval: float) -> None:
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    while not done.is_set():
        total = 0
        try:
            for process in [root, *root.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            return
        peak[0] = max(peak[0], total)
        done.wait(interval)


def measure(argv: list[str], log: Path, env: dict[str, str], interval: float = 0.2, cwd: Path = REPO) -> dict:
    """Run ``argv`` (in ``cwd``) to completion; its wall and CPU seconds, peak RSS and exit status."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "wb") as output:
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT)
        peak, done = [0], threading.Event()
        poller = threading.Thread(target=_poll_tree_rss, args=(process.pid, peak, done, interval), daemon=True)
        poller.start()
        _, status, usage = os.wait4(process.pid, 0)  # rusage of the child and every descendant it waited for
        process.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        poller.join()
    return {
        "returncode": process.returncode,
        "wall_s": round(time.perf_counter() - start, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_gib": round(usage.ru_maxrss * 1024 / 2**30, 3),  # ru_maxrss is in KiB on Linux
        "peak_tree_rss_gib": round(peak[0] / 2**30, 3),
    }


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


# ---------------------------------------------------------------------------------------------- pipeline


def step_commands(
    work: Path, encoder: Path, train_steps: int, batch_size: int, max_pairs: int, steps: tuple[str, ...] = STEPS
) -> dict[str, tuple[list[str], Path]]:
    """Each step's command line (the real CLIs) and the output whose disk it is charged with, for ``steps``
    (without the training steps, mining and indexing use the untrained encoder).

    Training builds each stage's data in full (stages 2-3 from the mined file), then tokenizes and trains on a
    seeded sample of ``max_pairs`` pairs: a few steps need no more, and tokenizing every pair up front (about 2.5M
    per stage at full size) would measure the tokenizer, not the pipeline.
    """
    esci, data, checkpoints = work / "esci", work / "data", work / "checkpoints"
    cache, index, evaluation = work / "embedding_cache", work / "index", work / "eval"
    python = [sys.executable]
    stage1_model = checkpoints / "epoch_1" if "train_stage1" in steps else encoder
    final_model = checkpoints / "best_model" if "train_stage1" in steps else encoder
    train = [
        *python, "train.py", "--model_name_or_path", str(encoder), "--data_dir", str(data),
        "--output_dir", str(checkpoints), "--stage_epochs", "1,1,1", "--max_steps", str(train_steps),
        "--per_device_train_batch_size", str(batch_size), "--per_device_eval_batch_size", str(batch_size),
        "--logging_steps", "1", "--save_strategy", "no", "--dataloader_num_workers", "0",
        "--max_train_samples", str(max_pairs), "--max_eval_samples", str(max_pairs // 10),
    ]  # fmt: skip
    mined = data / "hard_negatives_stage2.parquet"
    # fmt: off
    commands = {
        "prepare": ([*python, "prepare.py", "--esci_dir", str(esci), "--output_dir", str(data)], data),
        "train_stage1": ([*train, "--stage", "1"], checkpoints),
        # a random encoder scores every product about alike: a margin below the positives would leave no negative
        "mine": ([*python, "mine.py", "--checkpoint", str(stage1_model), "--data_dir", str(data),
                  "--output", str(mined), "--cache_dir", str(cache), "--relative_margin", "-1"], mined),
        "train_stage2": ([*train, "--stage", "2"], checkpoints),
        "train_stage3": ([*train, "--stage", "3"], checkpoints),
        # its own cache: indexing always encodes the catalogue (sharing mining's would make it a cache hit
        # whenever the best model is the stage-1 model, and its time would not be comparable between sizes)
        "index": ([*python, "index.py", "--model_name_or_path", str(final_model), "--data_dir", str(data),
                   "--output_dir", str(index), "--cache_dir", str(work / "index_embedding_cache"),
                   "--index_factory", "auto"], index),
        "eval": ([*python, "eval.py", "--index_dir", str(index), "--data_dir", str(data), "--split", "test",
                  "--baseline", "none", "--bm25", "false", "--bootstrap_samples", "1000",
                  "--output_dir", str(evaluation)], evaluation),
    }
    # fmt: on
    return {name: commands[name] for name in STEPS if name in steps}


def run_fraction(fraction: float, work: Path, args: argparse.Namespace, report=lambda run: None) -> dict:
    """Write the synthetic release at ``fraction`` under ``work`` and run every step; the per-step figures, also
    passed to ``report`` after every step (so a run stopped early keeps what it measured)."""
    # the tokenizer may use both cores: no step forks after tokenizing (dataloader_num_workers 0)
    code_dir = Path(args.code_dir).resolve()
    env = {**os.environ, "PYTHONPATH": str(code_dir), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "true"}
    env["HF_DATASETS_CACHE"] = str(work / "hf_datasets_cache")
    env["TTSN_HF_CACHE"] = str(work / "ttsn_hf_cache")
    started = time.perf_counter()
    sizes = write_synthetic_esci(work / "esci", fraction, seed=args.seed)
    result = {
        "label": args.label,
        "fraction": fraction,
        **sizes,
        "generate_s": round(time.perf_counter() - started, 2),
        "esci_disk_bytes": disk_usage(work / "esci"),
        "code": code_version(code_dir),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "steps": {},
    }
    encoder = write_tiny_encoder(work / "tiny_encoder")
    commands = step_commands(work, encoder, args.train_steps, args.batch_size, args.max_pairs, args.steps)
    for name, (argv, output) in commands.items():
        print(f"[{fraction:g}] {name}: {' '.join(argv[1:3])} ...", flush=True)
        figures = measure(argv, work / "logs" / f"{name}.log", env, cwd=code_dir)
        figures["output_disk_bytes"] = disk_usage(output)
        if output.is_dir():  # what each folder of the output takes (data/: catalogue, judgements, stageN)
            figures["output_disk_bytes_by_folder"] = {
                item.name: disk_usage(item) for item in sorted(output.iterdir()) if item.is_dir()
            }
        figures["work_disk_bytes"] = disk_usage(work)
        result["steps"][name] = figures
        print(f"[{fraction:g}] {name}: {json.dumps(figures)}", flush=True)
        report(_finish(result, commands))
        if figures["returncode"] != 0:
            figures["log_tail"] = _tail(work / "logs" / f"{name}.log")
            print(figures["log_tail"], file=sys.stderr)
            break
    return _finish(result, commands)


def _finish(result: dict, commands: dict) -> dict:
    result["completed"] = [name for name, step in result["steps"].items() if step["returncode"] == 0] == list(commands)
    result["total_wall_s"] = round(sum(step["wall_s"] for step in result["steps"].values()), 2)
    result["max_peak_rss_gib"] = max(
        max(step["peak_tree_rss_gib"], step["peak_rss_gib"]) for step in result["steps"].values()
    )
    return result


def linearity(runs: list[dict]) -> dict[str, dict]:
    """Per step, between the smallest and the largest size where it succeeded: (wall time ratio, CPU time ratio) /
    judgements ratio (1.0 is linear; CPU time is the steadier figure on a shared machine), and the peak RSS ratio
    (the largest process, ``wait4``)."""
    summary = {"wall": {}, "cpu": {}, "peak_rss": {}, "between_fractions": {}}
    for step in STEPS:
        done = sorted((run for run in runs if run["steps"].get(step, {}).get("returncode") == 0), key=_fraction)
        if len(done) < 2 or done[0]["fraction"] == done[-1]["fraction"]:
            continue
        small, large = done[0], done[-1]
        size_ratio = large["judgements"] / small["judgements"]
        for key, figure in (("wall", "wall_s"), ("cpu", "cpu_s")):
            growth = large["steps"][step][figure] / max(small["steps"][step][figure], 1e-9)
            summary[key][step] = round(growth / size_ratio, 3)
        peak = large["steps"][step]["peak_rss_gib"] / max(small["steps"][step]["peak_rss_gib"], 1e-9)
        summary["peak_rss"][step] = round(peak, 3)
        summary["between_fractions"][step] = [small["fraction"], large["fraction"]]
    return summary


def _fraction(run: dict) -> float:
    return run["fraction"]


def _label(run: dict) -> str:
    return run.get("label", "unlabelled")


def _key(run: dict) -> tuple[str, float]:
    return _label(run), run["fraction"]


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted(runs, key=lambda run: run["fraction"])
    figure, (times, memory) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = sorted({_label(run) for run in runs})
    for number, step in enumerate(STEPS):
        for label in labels:
            points = [
                (run["products"], run["steps"][step]) for run in runs if step in run["steps"] and _label(run) == label
            ]
            if not points:
                continue
            sizes = [size for size, _ in points]
            style = dict(color=f"C{number}", linestyle="--" if label == "baseline" else "-", marker="o")
            name = f"{step} ({label})" if len(labels) > 1 else step
            times.plot(sizes, [figures["wall_s"] for _, figures in points], label=name, **style)
            memory.plot(sizes, [figures["peak_rss_gib"] for _, figures in points], label=name, **style)
    times.set(xlabel="catalogue products", ylabel="wall time (s)", title="time per step", xscale="log", yscale="log")
    memory.set(xlabel="catalogue products", ylabel="peak RSS, largest process (GiB)", title="memory per step")
    memory.set_xscale("log")
    times.legend(fontsize=7, ncols=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fractions", default="0.1,0.3,1.0", help="Fractions of the full release, comma-separated.")
    parser.add_argument("--work_dir", default=None, help="Where the data and outputs go (default: a temporary folder).")
    parser.add_argument("--keep", action="store_true", help="Keep each fraction's files (default: delete after).")
    parser.add_argument("--train_steps", type=int, default=5, help="Training steps per stage.")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_pairs", type=int, default=20_000, help="Pairs tokenized per stage (train.py cap).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", default=",".join(STEPS), help=f"Steps to run, comma-separated: {','.join(STEPS)}.")
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "scale.json"))
    parser.add_argument("--code_dir", default=str(REPO), help="The repository whose CLIs run (default: this one).")
    parser.add_argument("--label", default="new", help="The runs' label in the JSON (e.g. baseline, new).")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    args.steps = tuple(step.strip() for step in args.steps.split(",") if step.strip())
    unknown = sorted(set(args.steps) - set(STEPS))
    if unknown:
        raise SystemExit(f"--steps: unknown step(s) {unknown}; choose from {', '.join(STEPS)}")
    fractions = [float(part) for part in args.fractions.split(",") if part.strip()]  # none: re-summarise --output
    root = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="ttsn-scale-"))
    results = summarise(Path(args.output), [], args)
    for fraction in fractions:
        work = root / f"fraction-{fraction:g}"
        shutil.rmtree(work, ignore_errors=True)
        run = run_fraction(fraction, work, args, report=lambda partial: summarise(Path(args.output), [partial], args))
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        results = summarise(Path(args.output), [run], args)  # written after every size: a long run keeps its part
    print(json.dumps({"time_vs_linear": results["time_vs_linear"]}, indent=2))
    return results


def summarise(output: Path, new_runs: list[dict], args: argparse.Namespace) -> dict:
    """Merge ``new_runs`` into the runs already in ``output`` (a (label, size) measured again replaces its old run),
    then write the JSON and the plot. Top-level keys this script does not write are kept."""
    earlier = json.loads(output.read_text(encoding="utf-8")) if output.is_file() else {}
    replaced = {_key(run) for run in new_runs}
    runs = sorted([run for run in earlier.get("runs", []) if _key(run) not in replaced] + new_runs, key=_key)
    labels = sorted({_label(run) for run in runs})
    results = {
        **earlier,
        "machine": machine("cpu"),
        "encoder": "random 2-layer 32-dim BERT, MiniLM tokenizer",
        "train_steps_per_stage": args.train_steps,
        "train_pairs_tokenized_per_stage": args.max_pairs,
        "runs": runs,
        "time_vs_linear": {label: linearity([run for run in runs if _label(run) == label]) for label in labels},
    }
    write_json(output, results)
    if runs:
        plot(runs, output.with_suffix(".png"))
    return results


if __name__ == "__main__":
    main()
