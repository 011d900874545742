"""training_curves.png and its numbers, read from the stages' trainer_state.json and schedule_state.json."""

import json
from pathlib import Path

from ttsn_hf.errors import UserInputError
from ttsn_hf.training import curves
from ttsn_hf.training.curves import training_curves, write_training_curves


def write_run(folder: Path) -> Path:
    """A run of two stages (epochs 1-2 | 3) logged every half epoch, the base model validated as epoch 0; stage 2
    adds a distillation component; the best epoch is 2. What train.py leaves on disk."""
    stage1 = [
        {"loss": 3.0, "contrastive_loss": 0.02, "infonce_loss": 2.98, "learning_rate": 1e-5, "epoch": 0.5, "step": 1},
        {"loss": 2.5, "contrastive_loss": 0.01, "infonce_loss": 2.49, "learning_rate": 2e-5, "epoch": 1.0, "step": 2},
        {"eval_loss": 2.7, "eval_ndcg@10": 0.40, "epoch": 1.0, "step": 2},
        {"loss": 2.2, "contrastive_loss": 0.01, "infonce_loss": 2.19, "learning_rate": 1e-5, "epoch": 1.5, "step": 3},
        {"loss": 2.0, "contrastive_loss": 0.01, "infonce_loss": 1.99, "learning_rate": 0.0, "epoch": 2.0, "step": 4},
        {"eval_loss": 2.6, "eval_ndcg@10": 0.45, "epoch": 2.0, "step": 4},
        {"train_loss": 2.4, "train_runtime": 10.0, "epoch": 2.0, "step": 4},
    ]
    stage2 = [
        {"loss": 1.9, "infonce_loss": 1.5, "distillation_loss": 0.4, "learning_rate": 2e-6, "epoch": 0.5, "step": 1},
        {"loss": 1.8, "infonce_loss": 1.4, "distillation_loss": 0.4, "learning_rate": 1e-6, "epoch": 1.0, "step": 2},
        {"eval_loss": 2.65, "eval_ndcg@10": 0.44, "epoch": 1.0, "step": 2},
    ]
    for stage, history, epochs in ((1, stage1, 2), (2, stage2, 1)):
        (folder / f"stage{stage}").mkdir(parents=True)
        state = {"log_history": history, "num_train_epochs": epochs, "epoch": float(epochs)}
        (folder / f"stage{stage}" / "trainer_state.json").write_text(json.dumps(state))
    epochs = {
        "0": {"eval_loss": 2.9, "eval_ndcg@10": 0.38, "eval_runtime": 1.0},
        "1": {"stage": 1, "eval_loss": 2.7, "eval_ndcg@10": 0.40, "eval_runtime": 1.0, "epoch": 1.0},
        "2": {"stage": 1, "eval_loss": 2.6, "eval_ndcg@10": 0.45, "eval_runtime": 1.0, "epoch": 2.0},
        "3": {"stage": 2, "eval_loss": 2.65, "eval_ndcg@10": 0.44, "eval_runtime": 1.0, "epoch": 1.0},
    }
    best = {"epoch": 2, "metric": "eval_ndcg@10", "greater_is_better": True, "eval_ndcg@10": 0.45}
    (folder / "schedule_state.json").write_text(json.dumps({"epochs": epochs, "best": best}))
    return folder


def test_curves_place_every_logging_step_on_the_schedules_epochs(tmp_path):
    numbers = training_curves(write_run(tmp_path))
    train = numbers["train"]
    assert train["stage"] == [1, 1, 1, 1, 2, 2] and train["step"] == [1, 2, 3, 4, 1, 2]
    assert train["epoch"] == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]  # stage 2 starts after epoch 2
    assert train["loss"] == [3.0, 2.5, 2.2, 2.0, 1.9, 1.8]
    assert train["contrastive_loss"] == [0.02, 0.01, 0.01, 0.01, None, None]
    assert train["distillation_loss"] == [None, None, None, None, 0.4, 0.4]  # a later component stays aligned
    assert train["learning_rate"] == [1e-5, 2e-5, 1e-5, 0.0, 2e-6, 1e-6]
    assert numbers["stages"] == [
        {"stage": 1, "start_epoch": 0.0, "end_epoch": 2.0},
        {"stage": 2, "start_epoch": 2.0, "end_epoch": 3.0},
    ]
    assert list(numbers["validation"]) == ["0", "1", "2", "3"]  # epoch 0: the base model
    assert numbers["validation"]["2"] == {"eval_loss": 2.6, "eval_ndcg@10": 0.45}  # no runtimes
    assert numbers["best"] == {"epoch": 2, "metric": "eval_ndcg@10"}
    json.dumps(numbers)  # run_summary.json keeps them


def test_the_picture_is_written_or_skipped_in_one_line(tmp_path, monkeypatch):
    folder = write_run(tmp_path)
    numbers = training_curves(folder)
    assert write_training_curves(folder, numbers) == f"training curves: {folder / 'training_curves.png'}"
    assert (folder / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (folder / "training_curves.png").unlink()

    def missing(module, feature):
        raise UserInputError(f"{feature} needs {module}, which is not installed: pip install 'ttsn-hf[plot]'")

    monkeypatch.setattr(curves, "require", missing)
    line = write_training_curves(folder, numbers)
    assert "\n" not in line and "pip install 'ttsn-hf[plot]'" in line and "run_summary.json" in line
    assert not (folder / "training_curves.png").exists()


def test_a_run_with_nothing_logged_draws_nothing(tmp_path):
    numbers = training_curves(tmp_path)
    assert numbers == {"train": {"stage": [], "step": [], "epoch": []}, "stages": [], "validation": {}, "best": None}
    assert "nothing was logged" in write_training_curves(tmp_path, numbers)
    assert not (tmp_path / "training_curves.png").exists()


def test_a_stage_run_alone_keeps_its_place_in_the_schedule(tmp_path):
    folder = write_run(tmp_path)
    (folder / "stage1" / "trainer_state.json").unlink()  # e.g. stage 1 ran elsewhere: its epochs still count
    numbers = training_curves(folder)
    assert numbers["train"]["epoch"] == [2.5, 3.0]
    assert numbers["stages"] == [{"stage": 2, "start_epoch": 2.0, "end_epoch": 3.0}]
