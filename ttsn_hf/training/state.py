"""Schedule state: ``schedule_state.json`` (epochs, best epoch, finished stages), resume points and the summary."""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
from pathlib import Path

from transformers import TrainerCallback

from ..atomic import atomic_path, write_text_atomic
from ..errors import UserInputError
from ..modeling.model import TwoTowerModel
from ..modeling.model_card import checkpoint_record
from .schedule import Stage

logger = logging.getLogger(__name__)
STATE_FILE = "schedule_state.json"
SUMMARY_FILE = "run_summary.json"
WORLD_SIZE_NOTE = (
    "InfoNCE losses grow with the global batch (more in-batch negatives): compare them only between runs "
    "with the same processes x per-device batch size"
)


def fresh_state() -> dict:
    return {"epochs": {}, "completed_stages": [], "best": None, "stage_seconds": {}}


def read_state(output_dir: Path) -> dict:
    path = Path(output_dir) / STATE_FILE
    return {**fresh_state(), **json.loads(path.read_text())} if path.exists() else fresh_state()


def write_state(output_dir: Path, record: dict) -> None:
    write_text_atomic(Path(output_dir) / STATE_FILE, json.dumps(record, indent=2))


def save_model(model: TwoTowerModel, folder: Path) -> None:
    with atomic_path(folder) as temporary:
        model.save_pretrained(temporary)


class EpochCheckpointCallback(TrainerCallback):
    """After each epoch's validation: write ``epoch_N/`` and, on a new best ``metric_for_best_model`` (a validation
    retrieval metric by default, else the validation loss), ``best_model/``."""

    def __init__(self, output_dir: Path, stage: Stage):
        self.output_dir, self.stage = output_dir, stage

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        if not state.is_world_process_zero or model is None:
            return
        epoch = self.stage.epochs[0] + max(1, math.ceil(state.epoch - 1e-3)) - 1
        record = read_state(self.output_dir)
        # what each saved folder's card says of it (epoch, stage, its and the base model's validation figures)
        card = model.config.checkpoint_record = checkpoint_record(
            epoch, self.stage.number, metrics, record["epochs"].get("0")
        )
        save_model(model, self.output_dir / f"epoch_{epoch}")
        record["epochs"][str(epoch)] = {"stage": self.stage.number, **metrics}
        name, greater = selection_metric(args)
        best = record.get("best")
        if best is None or name not in best or is_better(metrics[name], best[name], greater):
            card.update(best_of=sorted(int(e) for e in record["epochs"] if e != "0"), selected_by=name)
            save_model(model, self.output_dir / "best_model")
            record["best"] = {
                "epoch": epoch,
                "metric": name,
                "greater_is_better": greater,
                "eval_loss": metrics["eval_loss"],
                name: metrics[name],
            }
        write_state(self.output_dir, record)


def selection_metric(args) -> tuple[str, bool]:
    """(the ``eval_`` metric best_model is chosen by, whether greater is better)."""
    name = args.metric_for_best_model or "eval_loss"
    name = name if name.startswith("eval_") else f"eval_{name}"
    greater = args.greater_is_better if args.greater_is_better is not None else not name.endswith("loss")
    return name, greater


def is_better(value: float, best: float, greater: bool) -> bool:
    return value > best if greater else value < best


def record_stage_finished(output_dir: Path, stage: Stage, seconds: float, world_size: int, loss_config: dict) -> None:
    record = read_state(output_dir)
    record["completed_stages"] = sorted(set(record["completed_stages"]) | {stage.number})
    record["stage_seconds"][str(stage.number)] = round(seconds, 1)
    record.setdefault("loss", loss_config)
    record["world_size"] = world_size
    write_state(output_dir, record)


# ---------------------------------------------------------------- resuming


def checkpoint_stage(path: str) -> int:
    """The stage a ``--resume_from_checkpoint PATH`` belongs to (``.../stageN/checkpoint-M``); a clear error if
    PATH is not a complete Trainer checkpoint of a stage."""
    checkpoint = Path(path)
    fix = "give a stageN/checkpoint-M folder of this output folder, or --resume_from_checkpoint true"
    if not checkpoint.is_dir():
        raise UserInputError(f"--resume_from_checkpoint {path}: no such folder; {fix}")
    stage = re.fullmatch(r"stage([123])", checkpoint.resolve().parent.name)
    if not re.fullmatch(r"checkpoint-\d+", checkpoint.name) or stage is None:
        raise UserInputError(f"--resume_from_checkpoint {path}: not a stageN/checkpoint-M folder; {fix}")
    if not (checkpoint / "trainer_state.json").is_file():
        raise UserInputError(f"--resume_from_checkpoint {path}: no trainer_state.json (cut short?); {fix}")
    return int(stage.group(1))


def last_complete_checkpoint(stage_dir: Path, remove_incomplete: bool = False) -> str | None:
    """The newest ``checkpoint-N`` whose save finished (Trainer writes ``trainer_state.json`` last); a checkpoint
    cut short by a crash is skipped, and removed when ``remove_incomplete``."""
    checkpoints = sorted(stage_dir.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[-1]))
    for checkpoint in reversed(checkpoints):
        if (checkpoint / "trainer_state.json").is_file():
            return str(checkpoint)
        if remove_incomplete:
            logger.warning("%s was cut short (no trainer_state.json): removed", checkpoint)
            shutil.rmtree(checkpoint, ignore_errors=True)
    return None


def remove_checkpoints(stage_dir: Path) -> None:
    """Drop a stage's ``checkpoint-*`` folders (Trainer resume points): its epochs live on in ``epoch_N/``."""
    for checkpoint in stage_dir.glob("checkpoint-*"):
        shutil.rmtree(checkpoint, ignore_errors=True)


# ---------------------------------------------------------------- closing summary


def run_summary(output_dir: Path, data_option: str) -> dict:
    """What the run left and what to do next, from ``schedule_state.json``."""
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
        "epoch_folders": [str(output_dir / f"epoch_{epoch}") for epoch in validation],
        "validation": validation,
        "stage_seconds": record.get("stage_seconds", {}),
        "world_size": record.get("world_size", 1),
        "note": WORLD_SIZE_NOTE,
        "next": (
            f"python eval.py --model_name_or_path {output_dir / 'best_model'} {data_option} "
            f"--output_dir {output_dir / 'eval'}"
        ),
    }


def is_figure(metric: str) -> bool:
    return not metric.endswith(("_runtime", "_per_second"))


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
        figures = ", ".join(f"{name.removeprefix('eval_')} {value:.4f}" for name, value in metrics.items())
        lines.append(f"  epoch {epoch}: {figures}")
    if summary["epoch_folders"]:
        lines.append(f"epoch folders: {Path(summary['epoch_folders'][0]).parent}/epoch_N")
    seconds = ", ".join(f"stage {stage} {value:.0f}s" for stage, value in summary["stage_seconds"].items())
    lines.append(f"time: {seconds or '-'} on {summary['world_size']} process(es); {summary['note']}")
    lines.append(f"next: {summary['next']}")
    return "\n".join(lines)
