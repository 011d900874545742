"""The closing summary of a run (``run_summary.json`` and the lines train.py prints): best epoch and why, the
base model's validation figures (epoch 0) beside every epoch's, whether the differences are beyond noise."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..atomic import write_text_atomic
from ..evaluation.metrics import METRIC_LABELS, paired_bootstrap
from .state import BASE_EPOCH, PER_QUERY_FILE, read_state

SUMMARY_FILE = "run_summary.json"
PRINTED = ("eval_loss", "eval_ndcg@10", "eval_recall@10", "eval_mrr", "eval_esci_rank_ndcg")
WORLD_SIZE_NOTE = (
    "InfoNCE losses grow with the global batch (more in-batch negatives): compare them only between runs "
    "with the same processes x per-device batch size"
)


def run_summary(output_dir: Path, data_option: str) -> dict:
    """What the run left and what to do next, from ``schedule_state.json``; epoch 0 is the base model."""
    output_dir = Path(output_dir)
    record = read_state(output_dir)
    best = record.get("best")
    metric = (best or {}).get("metric", "eval_loss")
    direction = "highest" if (best or {}).get("greater_is_better") else "lowest"
    validation = {
        epoch: {name: value for name, value in metrics.items() if name.startswith("eval_") and is_figure(name)}
        for epoch, metrics in sorted(record["epochs"].items(), key=lambda item: int(item[0]))
    }
    return {
        "completed_stages": record["completed_stages"],
        "best": None if best is None else {**best, "why": f"{direction} {metric} over the validation queries"},
        "best_model": str(output_dir / "best_model"),
        "base_model_validation": validation.get(BASE_EPOCH),
        "epoch_folders": [str(output_dir / f"epoch_{epoch}") for epoch in validation if epoch != BASE_EPOCH],
        "validation": validation,
        "noise": noise_check(output_dir, record),
        "stage_seconds": record.get("stage_seconds", {}),
        "world_size": record.get("world_size", 1),
        "note": WORLD_SIZE_NOTE,
        "next": (
            f"python eval.py --model_name_or_path {output_dir / 'best_model'} {data_option} "
            f"--output_dir {output_dir / 'eval'}"
        ),
    }


def noise_check(output_dir: Path, record: dict) -> dict | None:
    """Whether best_model differs from the base model and from the other epochs beyond noise: the paired 95%
    bootstrap CI over the validation queries of its difference in the selection metric (nDCG@10 when selection
    is by a loss) excludes zero."""
    path, best = Path(output_dir) / PER_QUERY_FILE, record.get("best")
    if best is None or not path.exists():
        return None
    kept = json.loads(path.read_text())
    per_epoch = {epoch: kept["epochs"][epoch] for epoch in record["epochs"] if epoch in kept["epochs"]}
    name = best["metric"].removeprefix("eval_")
    name = name if name in next(iter(per_epoch.values()), {}) else "ndcg@10"
    values = {epoch: np.array(figures[name], dtype=float) for epoch, figures in per_epoch.items()}
    best_epoch = str(best["epoch"])
    if best_epoch not in values:
        return None
    compared = {epoch: _difference(values[best_epoch], other) for epoch, other in values.items() if epoch != best_epoch}
    check = {"metric": name, "validation_queries": len(kept["query_ids"]), "best_epoch": best["epoch"]}
    check["best_minus"] = compared  # epoch -> {difference, ci95, within_noise}
    check["statement"] = _noise_statement(check, {epoch: float(np.nanmean(v)) for epoch, v in values.items()})
    return check


def _difference(a: np.ndarray, b: np.ndarray) -> dict:
    difference, low, high = paired_bootstrap(a, b)
    within_noise = bool(low <= 0 <= high)
    return {"difference": round(difference, 4), "ci95": [round(low, 4), round(high, 4)], "within_noise": within_noise}


def _noise_statement(check: dict, means: dict[str, float]) -> str:
    name = METRIC_LABELS.get(check["metric"], check["metric"])
    queries, best = check["validation_queries"], check["best_epoch"]
    lines = []
    base = check["best_minus"].get(BASE_EPOCH)
    if base is not None:
        figure = f"{name} {base['difference']:+.4f}, 95% CI [{base['ci95'][0]:+.4f}, {base['ci95'][1]:+.4f}]"
        if base["difference"] <= 0:
            lines.append(
                f"no epoch beats the base model on {name} ({figure} for the best, epoch {best}); best_model is "
                "still the best trained epoch: compare it with the base model (python eval.py) before using it"
            )
        elif base["within_noise"]:
            lines.append(
                f"best_model (epoch {best}) is within noise of the base model: {figure} over {queries} "
                "validation queries (more validation queries, --validation_fraction, would tell them apart)"
            )
        else:
            lines.append(
                f"best_model (epoch {best}) beats the base model beyond noise: {figure} over {queries} "
                "validation queries"
            )
    others = {epoch: value for epoch, value in check["best_minus"].items() if epoch != BASE_EPOCH}
    if others:
        trained = [value for epoch, value in means.items() if epoch != BASE_EPOCH]
        spread = f"{name} {min(trained):.4f}-{max(trained):.4f}"
        beyond = sorted((int(epoch) for epoch, value in others.items() if not value["within_noise"]))
        if beyond:
            lines.append(
                f"the epochs span {spread}; epoch(s) {', '.join(map(str, beyond))} are below the best beyond noise"
            )
        else:
            lines.append(
                f"the epochs are within noise of each other ({spread}): the choice of best_model among "
                "them is a coin toss on these queries"
            )
    return "; ".join(lines)


def is_figure(metric: str) -> bool:
    return not metric.endswith(("_runtime", "_per_second", "_preparation_time"))


def write_run_summary(output_dir: Path, summary: dict) -> Path:
    path = Path(output_dir) / SUMMARY_FILE
    write_text_atomic(path, json.dumps(summary, indent=2))
    return path


def format_run_summary(summary: dict) -> str:
    best = summary["best"]
    lines = ["", "---- run summary ----"]
    if best is None:
        lines.append("no epoch was validated: no best model")
    else:
        value = best[best["metric"]]
        lines.append(f"best epoch {best['epoch']} ({best['why']}: {value:.4f}) -> {summary['best_model']}")
    for epoch, metrics in summary["validation"].items():
        shown = [name for name in PRINTED if name in metrics]  # run_summary.json keeps every figure
        figures = ", ".join(f"{name.removeprefix('eval_')} {metrics[name]:.4f}" for name in shown)
        lines.append(f"  {'base model' if epoch == BASE_EPOCH else f'epoch {epoch}'}: {figures}")
    if summary.get("noise"):
        lines.append(f"noise: {summary['noise']['statement']}")
    if summary["epoch_folders"]:
        lines.append(f"epoch folders: {Path(summary['epoch_folders'][0]).parent}/epoch_N")
    seconds = ", ".join(f"stage {stage} {value:.0f}s" for stage, value in summary["stage_seconds"].items())
    lines.append(f"time: {seconds or '-'} on {summary['world_size']} process(es); {summary['note']}")
    lines.append(f"next: {summary['next']}")
    return "\n".join(lines)
