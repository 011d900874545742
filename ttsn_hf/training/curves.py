"""The run's curves: loss and its components per logging step, the learning rate, the stage boundaries and the
validation metrics per epoch (best epoch marked), read from ``stageN/trainer_state.json`` and
``schedule_state.json``; drawn as ``training_curves.png``.

The x axis is the schedule's epoch: stage N's log steps are placed after the epochs of the stages before it, so a
training log line and the validation of the epoch it belongs to line up. Epoch 0, when recorded, is the base model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..atomic import atomic_path
from ..errors import UserInputError
from ..extras import require
from .state import read_state
from .summary import is_figure

logger = logging.getLogger(__name__)
CURVES_FILE = "training_curves.png"
TRAIN_KEYS = ("loss", "contrastive_loss", "infonce_loss", "distillation_loss", "learning_rate", "grad_norm")
VALIDATION_METRICS = ("eval_recall@10", "eval_ndcg@10", "eval_mrr", "eval_esci_rank_ndcg")


def training_curves(output_dir: str | Path) -> dict:
    """The curves' numbers, column-wise: ``train`` (one entry per logging step: stage, step within the stage,
    schedule epoch, loss and its components, learning rate), ``stages`` (each stage's first and last schedule
    epoch), ``validation`` (per epoch: its eval_ figures) and ``best`` (epoch and the metric it was chosen by)."""
    output_dir = Path(output_dir)
    record = read_state(output_dir)
    train: dict[str, list] = {"stage": [], "step": [], "epoch": []}
    stages, offset = [], 0.0
    for stage_dir in sorted(output_dir.glob("stage[0-9]"), key=lambda path: int(path.name[5:])):
        state_file = stage_dir / "trainer_state.json"
        if not state_file.is_file():
            continue
        state = json.loads(state_file.read_text())
        stage = int(stage_dir.name[5:])
        offset = stage_start(record, stage, offset)
        for entry in state.get("log_history", []):
            if "loss" not in entry:
                continue  # validation and end-of-training entries
            train["stage"].append(stage)
            train["step"].append(entry.get("step"))
            train["epoch"].append(round(offset + entry.get("epoch", 0.0), 4))
            for key in TRAIN_KEYS:
                if key in entry or key in train:  # columns stay aligned: None where an entry lacks the key
                    train.setdefault(key, [None] * (len(train["stage"]) - 1)).append(entry.get(key))
        end = offset + float(state.get("num_train_epochs") or state.get("epoch") or 0)
        stages.append({"stage": stage, "start_epoch": offset, "end_epoch": end})
        offset = end
    validation = {
        epoch: {name: value for name, value in metrics.items() if name.startswith("eval_") and is_figure(name)}
        for epoch, metrics in sorted(record["epochs"].items(), key=lambda item: int(item[0]))
    }
    best = record.get("best")
    return {
        "train": train,
        "stages": stages,
        "validation": validation,
        "best": None if best is None else {"epoch": best["epoch"], "metric": best["metric"]},
    }


def stage_start(record: dict, stage: int, previous_end: float) -> float:
    """The schedule epoch a stage starts after: the epoch before its first validated one, else where the previous
    stage ended."""
    epochs = [int(epoch) for epoch, metrics in record["epochs"].items() if metrics.get("stage") == stage]
    return float(min(epochs) - 1) if epochs else previous_end


def write_training_curves(output_dir: str | Path, curves: dict) -> str:
    """Draw ``training_curves.png`` into ``output_dir``; returns the one line to show (where it is, or why not)."""
    path = Path(output_dir) / CURVES_FILE
    if not curves["train"]["epoch"] and not curves["validation"]:
        return f"{CURVES_FILE}: nothing was logged, no picture"
    try:
        require("matplotlib", f"{CURVES_FILE} (the run's curves)")
    except UserInputError as error:
        return f"{error} (the numbers are in run_summary.json)"
    with atomic_path(path) as temporary:
        plot_training_curves(curves, temporary)
    return f"training curves: {path}"


def plot_training_curves(curves: dict, path: Path) -> None:
    """Three panels on the schedule's epochs: losses, learning rate, validation metrics; stages and best marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (losses, rate, metrics) = plt.subplots(
        3, 1, figsize=(11, 8.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.2, 2.6]}, layout="constrained"
    )
    train, epochs = curves["train"], curves["train"]["epoch"]
    for i, key in enumerate(("loss", "infonce_loss", "contrastive_loss", "distillation_loss")):
        if any(value is not None for value in train.get(key, [])):
            style = {"linewidth": 2.0} if key == "loss" else {"linewidth": 1.0, "alpha": 0.85}
            losses.plot(epochs, _floats(train[key]), label=f"train {key.replace('_', ' ')}", color=f"C{i}", **style)
    validation = curves["validation"]
    checked = sorted(int(epoch) for epoch in validation)
    eval_loss = [validation[str(epoch)].get("eval_loss") for epoch in checked]
    if any(value is not None for value in eval_loss):
        losses.plot(checked, _floats(eval_loss), "s--", color="black", label="validation loss", markersize=5)
    losses.set_ylabel("loss")
    losses.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    figure.suptitle("training loss per logging step, validation per epoch; stages between dotted lines")
    if any(value is not None for value in train.get("learning_rate", [])):
        rate.plot(epochs, _floats(train["learning_rate"]), color="C4")
    rate.set_ylabel("learning rate")
    rate.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    _plot_validation(metrics, curves)
    for axis in (losses, rate, metrics):
        for stage in curves["stages"]:
            axis.axvline(stage["start_epoch"], color="grey", linestyle=":", linewidth=1)
    for stage in curves["stages"]:
        losses.annotate(
            f"stage {stage['stage']}",
            ((stage["start_epoch"] + stage["end_epoch"]) / 2, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            fontsize=9,
            color="dimgrey",
        )
    metrics.set_xlabel("epoch of the schedule (0: the base model)" if "0" in validation else "epoch of the schedule")
    figure.savefig(path, dpi=110, format="png")
    plt.close(figure)


def _plot_validation(axis, curves: dict) -> None:
    validation, best = curves["validation"], curves["best"]
    checked = sorted(int(epoch) for epoch in validation)
    for i, name in enumerate(VALIDATION_METRICS):
        values = [validation[str(epoch)].get(name) for epoch in checked]
        if any(value is not None for value in values):
            axis.plot(checked, _floats(values), "o-", color=f"C{i}", label=name.removeprefix("eval_"), markersize=4)
    if "0" in validation:
        axis.annotate("base model", (0, 0), xycoords=("data", "axes fraction"), xytext=(3, 3),
                      textcoords="offset points", fontsize=8, color="dimgrey")  # fmt: skip
    if best is not None and str(best["epoch"]) in validation:
        value = validation[str(best["epoch"])].get(best["metric"])
        axis.axvline(best["epoch"], color="green", linewidth=6, alpha=0.15)
        if value is not None:
            axis.plot([best["epoch"]], [value], "*", color="green", markersize=16, zorder=5)
            axis.annotate(
                f"best: epoch {best['epoch']}\n{best['metric'].removeprefix('eval_')} {value:.4f}",
                (best["epoch"], value),
                xytext=(8, -28),
                textcoords="offset points",
                fontsize=8,
                color="darkgreen",
            )
    axis.set_ylabel("validation")
    axis.margins(y=0.15)
    last = max([*checked, *(stage["end_epoch"] for stage in curves["stages"])], default=0)
    axis.set_xticks(range(0, int(last) + 1))
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def _floats(values: list) -> list[float]:
    return [float("nan") if value is None else value for value in values]
