"""Shared bits of the benchmark scripts: machine description, result tables, atomic JSON output."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from ttsn_hf.atomic import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SAMPLE_DIR = REPO.parent / "shared" / "data" / "esci-us-sample"


def cpu_model() -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")]
    return names[0] if names else "unknown"


def machine(device: str) -> dict:
    """What the figures were measured on, including the load (other processes share these cores)."""
    info = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average_1_5_15": [round(value, 2) for value in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "device": device,
    }
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def load_now() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def print_table(rows: list[dict], columns: list[str]) -> None:
    """A plain Markdown table (pasteable into bench/RESULTS.md)."""
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    print("| " + " | ".join(column.ljust(width) for column, width in zip(columns, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (width + 2) for width in widths) + "|")
    for line in cells:
        print("| " + " | ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) + " |")


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return "" if value is None else str(value)


def write_json(path: str | os.PathLike, payload: dict) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")


# ---------------------------------------------------------------- the hardware bound


def matmul_rate(device: str, dtype: torch.dtype, tokens: int = 8192, hidden: int = 384, inner: int = 1536) -> dict:
    """Sustained ``torch.mm`` rate at the encoder's feed-forward shape ([tokens x hidden] @ [hidden x inner]):
    FLOP per wall second and per process CPU second (the latter holds when other processes share the cores)."""
    a = torch.randn(tokens, hidden, device=device, dtype=dtype)
    b = torch.randn(hidden, inner, device=device, dtype=dtype)
    flops_per_mm = 2 * tokens * hidden * inner
    for _ in range(3):
        torch.mm(a, b)
    best_wall, best_cpu, count = float("inf"), float("inf"), 20
    for _ in range(5):
        if device == "cuda":
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return {
        "shape": f"[{tokens} x {hidden}] @ [{hidden} x {inner}]",
        "dtype": str(dtype).removeprefix("torch."),
        "flop_per_s": flops_per_mm * count / best_wall,
        "flop_per_cpu_s": flops_per_mm * count / max(best_cpu, 1e-9),
    }


def encoder_forward_flops(config, lengths: list[int]) -> float:
    """Model FLOPs of one encoder forward over sequences of these token lengths, counted from the config: per token
    the Q, K, V and output projections (8 h^2) and the feed-forward (4 h i), per sequence the attention scores and
    their weighted sum (4 n^2 h), for every layer. Padding excluded: the work any implementation must do."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    tokens = sum(lengths)
    return float(layers * (tokens * (8 * h * h + 4 * h * i) + sum(4 * n * n * h for n in lengths)))
