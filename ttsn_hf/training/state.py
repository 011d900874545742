"""Schedule state: ``schedule_state.json`` (epochs, best epoch, finished stages, lineage) and resume points."""

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
from ..modeling.configuration import TwoTowerConfig
from ..modeling.model import TwoTowerModel
from ..modeling.model_card import checkpoint_record, write_model_card
from .schedule import Stage

logger = logging.getLogger(__name__)
STATE_FILE = "schedule_state.json"
PER_QUERY_FILE = "validation_per_query.json"


BASE_EPOCH = "0"  # the base model, scored by the same selection evaluator before any training


def fresh_state() -> dict:
    return {"epochs": {}, "completed_stages": [], "best": None, "stage_seconds": {}, "lineage": {}}


def read_state(output_dir: Path) -> dict:
    path = Path(output_dir) / STATE_FILE
    return {**fresh_state(), **json.loads(path.read_text())} if path.exists() else fresh_state()


def write_state(output_dir: Path, record: dict) -> None:
    write_text_atomic(Path(output_dir) / STATE_FILE, json.dumps(record, indent=2))


def save_model(model: TwoTowerModel, folder: Path) -> None:
    with atomic_path(folder) as temporary:
        model.save_pretrained(temporary)


class EpochCheckpointCallback(TrainerCallback):
    """After each epoch's validation: write ``epoch_N/`` and, when it is the best epoch of the run so far by
    ``metric_for_best_model`` (a validation retrieval metric by default, else the validation loss), ``best_model/``.
    An evaluation before the first step scores the base model: recorded as epoch 0, nothing saved."""

    def __init__(self, output_dir: Path, stage: Stage, evaluator=None):
        self.output_dir, self.stage, self.evaluator = output_dir, stage, evaluator

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        if not state.is_world_process_zero or model is None:
            return
        record = read_state(self.output_dir)
        if state.global_step == 0:
            record["epochs"][BASE_EPOCH] = {"stage": 0, **metrics}
            self.keep_per_query(BASE_EPOCH)
            write_state(self.output_dir, record)
            return
        epoch = self.stage.epochs[0] + max(1, math.ceil(state.epoch - 1e-3)) - 1
        # what each saved folder's card says of it (epoch, stage, its and the base model's validation figures)
        card = model.config.checkpoint_record = checkpoint_record(
            epoch, self.stage.number, metrics, record["epochs"].get(BASE_EPOCH)
        )
        save_model(model, self.output_dir / f"epoch_{epoch}")
        record["epochs"][str(epoch)] = {"stage": self.stage.number, **metrics}
        self.keep_per_query(str(epoch))
        name, greater = selection_metric(args)
        best = best_record(record["epochs"], name, greater)
        if best["epoch"] == epoch:
            card.update(best_of=sorted(int(e) for e in record["epochs"] if e != BASE_EPOCH), selected_by=name)
            save_model(model, self.output_dir / "best_model")
        record["best"] = best
        write_state(self.output_dir, record)

    def keep_per_query(self, epoch: str) -> None:
        """The evaluator's per-query figures of this epoch, for the summary's noise statement."""
        if self.evaluator is None or not getattr(self.evaluator, "last_per_query", None):
            return
        path = self.output_dir / PER_QUERY_FILE
        kept = json.loads(path.read_text()) if path.exists() else {"query_ids": self.evaluator.query_ids, "epochs": {}}
        if kept["query_ids"] != self.evaluator.query_ids:  # another validation set: a new lineage
            kept = {"query_ids": self.evaluator.query_ids, "epochs": {}}
        kept["epochs"][epoch] = self.evaluator.last_per_query
        write_text_atomic(path, json.dumps(kept))


def selection_metric(args) -> tuple[str, bool]:
    """(the ``eval_`` metric best_model is chosen by, whether greater is better)."""
    name = args.metric_for_best_model or "eval_loss"
    name = name if name.startswith("eval_") else f"eval_{name}"
    greater = args.greater_is_better if args.greater_is_better is not None else not name.endswith("loss")
    return name, greater


def best_record(epochs: dict, metric: str, greater: bool) -> dict | None:
    """The best trained epoch of ``epochs`` (the base model, epoch 0, is never best_model: it is the yardstick);
    ties go to the earlier epoch."""
    trained = sorted((int(epoch), figures) for epoch, figures in epochs.items() if epoch != BASE_EPOCH)
    scored = [(epoch, figures) for epoch, figures in trained if metric in figures]
    if not scored:
        return None
    sign = -1 if greater else 1
    epoch, figures = min(scored, key=lambda item: (sign * item[1][metric], item[0]))
    return {
        "epoch": epoch,
        "metric": metric,
        "greater_is_better": greater,
        "eval_loss": figures.get("eval_loss"),
        metric: figures[metric],
    }


def forget_epochs_from(output_dir: Path, stage: Stage, first_epoch: int, metric: str, greater: bool) -> dict:
    """Drop the records of epochs ``first_epoch`` and later (of ``stage``, about to be trained again, and of the
    stages after it) and re-pick best_model among the epochs that stay, copying that epoch's folder into
    ``best_model/`` when it held a forgotten one: best_model is always the best epoch of the current lineage."""
    record = read_state(output_dir)
    record["epochs"] = {
        epoch: figures for epoch, figures in record["epochs"].items() if epoch == BASE_EPOCH or int(epoch) < first_epoch
    }
    record["completed_stages"] = [number for number in record["completed_stages"] if number < stage.number]
    best = best_record(record["epochs"], metric, greater)
    held = (record.get("best") or {}).get("epoch")
    if best is None:
        shutil.rmtree(Path(output_dir) / "best_model", ignore_errors=True)
    elif best["epoch"] != held:
        copy_epoch_to_best_model(Path(output_dir), best["epoch"], record["epochs"], metric)
    record["best"] = best
    write_state(output_dir, record)
    return record


def copy_epoch_to_best_model(output_dir: Path, epoch: int, epochs: dict, metric: str) -> None:
    """``epoch_N/`` copied into ``best_model/``, its config's record and card saying what it was picked from."""
    with atomic_path(output_dir / "best_model") as temporary:
        shutil.copytree(output_dir / f"epoch_{epoch}", temporary)
        config = TwoTowerConfig.from_pretrained(temporary)
        if getattr(config, "checkpoint_record", None):
            config.checkpoint_record.update(
                best_of=sorted(int(e) for e in epochs if e != BASE_EPOCH), selected_by=metric
            )
            config.save_pretrained(temporary)
        write_model_card(Path(temporary), config)
    logger.info("best_model/ is epoch %d again (the epochs after it are trained anew)", epoch)


def record_stage_finished(output_dir: Path, stage: Stage, seconds: float, world_size: int, loss_config: dict) -> None:
    record = read_state(output_dir)
    record["completed_stages"] = sorted(set(record["completed_stages"]) | {stage.number})
    record["stage_seconds"][str(stage.number)] = round(seconds, 1)
    record.setdefault("loss", loss_config)
    record["world_size"] = world_size
    write_state(output_dir, record)


# ---------------------------------------------------------------- resuming


def checkpoint_stage(path: str, output_dir: str | Path) -> int:
    """The stage a ``--resume_from_checkpoint PATH`` belongs to (``OUTPUT_DIR/stageN/checkpoint-M``); a clear
    error if PATH is not a complete Trainer checkpoint of a stage of ``output_dir``."""
    checkpoint = Path(path)
    fix = f"give a stageN/checkpoint-M folder of --output_dir {output_dir}, or --resume_from_checkpoint true"
    if not checkpoint.is_dir():
        raise UserInputError(f"--resume_from_checkpoint {path}: no such folder; {fix}")
    stage = re.fullmatch(r"stage([123])", checkpoint.resolve().parent.name)
    if not re.fullmatch(r"checkpoint-\d+", checkpoint.name) or stage is None:
        raise UserInputError(f"--resume_from_checkpoint {path}: not a stageN/checkpoint-M folder; {fix}")
    if checkpoint.resolve().parent.parent != Path(output_dir).resolve():
        raise UserInputError(f"--resume_from_checkpoint {path}: not in --output_dir {output_dir}; {fix}")
    if not (checkpoint / "trainer_state.json").is_file():
        raise UserInputError(f"--resume_from_checkpoint {path}: no trainer_state.json (cut short?); {fix}")
    return int(stage.group(1))


def checkpoint_epochs(checkpoint: str) -> int:
    """The whole epochs a stage's Trainer checkpoint had finished (its trainer_state.json's epoch)."""
    trainer_state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    return int((trainer_state.get("epoch") or 0) + 1e-6)


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


def remove_earlier_run(output_dir: Path) -> None:
    """What an earlier run left that a new one (``--overwrite_output_dir``) would otherwise mix with its own:
    epoch folders, best_model, resume points, per-query validation figures."""
    output_dir = Path(output_dir)
    for folder in [*output_dir.glob("epoch_*"), output_dir / "best_model"]:
        if folder.is_dir() and re.fullmatch(r"epoch_\d+|best_model", folder.name):
            shutil.rmtree(folder)
    for stage_dir in output_dir.glob("stage[0-9]"):
        remove_checkpoints(stage_dir)
    (output_dir / PER_QUERY_FILE).unlink(missing_ok=True)


def remove_checkpoints(stage_dir: Path) -> None:
    """Drop a stage's ``checkpoint-*`` folders (Trainer resume points): its epochs live on in ``epoch_N/``."""
    for checkpoint in stage_dir.glob("checkpoint-*"):
        shutil.rmtree(checkpoint, ignore_errors=True)
