"""InfoNCE over batches larger than memory: peak RSS and time per example of train.py by global batch, GradCache.

    nice .venv/bin/python bench/batch_sweep.py            # writes the "batch_sweep" entry of bench/results/scale.json

The real all-MiniLM-L6-v2, bf16, stage 1 only, a few steps each, on the ESCI sample with pseudo-queries (enough query
groups for a batch of 4,096). Each configuration runs train.py in a fresh process, one at a time; its peak RSS is
``wait4``'s (the process and what it waited for), its time per example the stage's ``train_runtime`` over the
examples it trained on. The uncached batch of 64 is the anchor: a batch of 4,096 with ``--infonce_mini_batch_size
64`` holds one chunk of 64 groups' activations, whatever the batch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import RESULTS, SAMPLE_DIR, load_now, machine, print_table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PSEUDO_QUERIES = 4096  # per step, in every run: the same data whatever the batch, so only the batch differs
CONFIGS = [  # (global batch, --infonce_mini_batch_size): 0 is the uncached batch
    (64, 0),
    (64, 64),
    (512, 64),
    (4096, 64),
]


def run(batch: int, mini_batch: int, steps: int, work: Path) -> dict:
    output = work / f"batch{batch}_mini{mini_batch}"
    command = [
        sys.executable, str(REPO / "train.py"), "--esci_dir", str(SAMPLE_DIR), "--output_dir", str(output),
        "--stage", "1", "--bf16", "--max_steps", str(steps), "--logging_steps", "1",
        "--per_device_train_batch_size", str(batch), "--infonce_mini_batch_size", str(mini_batch),
        "--pseudo_queries", str(PSEUDO_QUERIES * steps), "--max_eval_samples", "32", "--selection_corpus_size", "500",
        "--overwrite_output_dir",
    ]  # fmt: skip
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    stderr = process.stderr.read().decode()[-2000:]
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"batch {batch}, mini batch {mini_batch} failed:\n{stderr}")
    history = json.loads((output / "stage1" / "trainer_state.json").read_text())["log_history"]
    runtime = next(log["train_runtime"] for log in history if "train_runtime" in log)
    losses = [log["loss"] for log in history if "loss" in log]
    return {
        "global_batch": batch,
        "infonce_mini_batch_size": mini_batch,
        "steps": steps,
        "peak_rss_gib": round(usage.ru_maxrss * 1024 / 2**30, 3),
        "train_seconds": round(runtime, 2),
        "seconds_per_example": round(runtime / (steps * batch), 5),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "wall_seconds": round(time.monotonic() - started, 1),
        "first_loss": losses[0] if losses else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS / "scale.json")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    with tempfile.TemporaryDirectory() as work:
        rows = [run(batch, mini_batch, args.steps, Path(work)) for batch, mini_batch in CONFIGS]
    anchor = rows[0]
    for row in rows:
        row["rss_vs_batch_64"] = round(row["peak_rss_gib"] / anchor["peak_rss_gib"], 3)
        row["time_per_example_vs_batch_64"] = round(row["seconds_per_example"] / anchor["seconds_per_example"], 3)
    print_table(rows, list(rows[0]))
    results = json.loads(args.output.read_text()) if args.output.exists() else {}
    results["batch_sweep"] = {
        "command": "python bench/batch_sweep.py",
        "code": commit.stdout.strip(),
        "machine": {**machine("cpu"), "load_average_1_5_15": load_now()},
        "encoder": "sentence-transformers/all-MiniLM-L6-v2, bf16, stage 1, packed sequences",
        "runs": rows,
    }
    args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
