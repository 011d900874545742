"""train.py end to end on the ESCI sample: tiny random BERT for speed, one run with the real MiniLM."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from ttsn_hf import TwoTowerModel
from ttsn_hf.arguments import TwoTowerTrainingArguments
from ttsn_hf.errors import HubUnreachableError, NonFiniteLossError
from ttsn_hf.training.collator import TwoTowerCollator
from ttsn_hf.training.trainer import TwoTowerTrainer

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["usb c cable", "stainless steel water bottle 32 oz", "dog toy"]


def run_train(*args, env=None, check=True, cwd=REPO):
    command = [sys.executable, str(REPO / "train.py"), *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def quick_args(esci_sample, model, output, *extra):
    return [
        "--esci_dir", esci_sample, "--model_name_or_path", model, "--output_dir", output,
        "--max_train_samples", 96, "--max_eval_samples", 48, "--per_device_train_batch_size", 32,
        "--stage_epochs", "1,1,1", "--logging_steps", 1, "--selection_corpus_size", 300, *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def minilm_run(esci_sample, tmp_path_factory):
    output = tmp_path_factory.mktemp("minilm_run")
    run_train(*quick_args(esci_sample, "", output, "--bf16"))
    return output


def test_all_stages_write_epochs_best_model_and_mined_negatives(minilm_run):
    for epoch in (1, 2, 3):
        assert (minilm_run / f"epoch_{epoch}" / "0_Transformer" / "model.safetensors").is_file()
    assert (minilm_run / "best_model" / "config.json").is_file()
    assert (minilm_run / "hard_negatives_stage2.parquet").is_file()
    state = json.loads((minilm_run / "schedule_state.json").read_text())
    assert state["completed_stages"] == [1, 2, 3]
    # best_model: the first epoch with the highest validation nDCG@10 (retrieval over the catalogue)
    ndcg = {int(epoch): record["eval_ndcg@10"] for epoch, record in state["epochs"].items()}
    assert state["best"]["epoch"] == min(epoch for epoch, value in ndcg.items() if value == max(ndcg.values()))
    assert all("eval_loss" in record and "eval_recall@10" in record for record in state["epochs"].values())


def test_best_model_loads_in_ttsn_and_sentence_transformers_alike(minilm_run):
    ours = TwoTowerModel.from_pretrained(minilm_run / "best_model").encode_products(TEXTS)
    theirs = SentenceTransformer(str(minilm_run / "best_model")).encode(TEXTS)
    assert (ours * theirs).sum(1).min() >= 0.9999


def test_training_changed_the_weights(minilm_run):
    base = TwoTowerModel.from_encoder().encode_products(TEXTS)
    trained = TwoTowerModel.from_pretrained(minilm_run / "epoch_1").encode_products(TEXTS)
    assert not np.allclose(base, trained, atol=1e-4)


def test_loss_components_are_logged_and_card_is_written(minilm_run):
    assert not list(minilm_run.glob("stage*/checkpoint-*")), "finished stages drop their checkpoints"
    history = json.loads((minilm_run / "stage1" / "trainer_state.json").read_text())["log_history"]
    assert any("contrastive_loss" in log and "infonce_loss" in log for log in history)
    assert any("eval_contrastive_loss" in log and "eval_infonce_loss" in log for log in history)
    card = (minilm_run / "best_model" / "README.md").read_text()
    assert "hard negatives mined" in card and "temperature" in card and "SentenceTransformer(" in card


def test_loss_options_reach_the_loss(esci_sample, tmp_path):
    from ttsn_hf.arguments import DataArguments, ModelArguments, ScheduleArguments, parse_args
    from ttsn_hf.training.run import TrainingRun

    types = (ModelArguments, DataArguments, ScheduleArguments, TwoTowerTrainingArguments)
    argv = ["--esci_dir", str(esci_sample), "--output_dir", str(tmp_path), "--temperature", "0.07"]
    options = ["--no_mask_false_negatives", "--margin", "0.3", "--no_label_weighted_infonce"]
    run = TrainingRun(*parse_args(types, argv=[*argv, *options]))
    config = run.loss.get_config_dict()
    assert config["infonce"] == {"temperature": 0.07, "mask_false_negatives": False, "label_weighted": False}
    assert config["contrastive"]["margin"] == 0.3
    assert TrainingRun(*parse_args(types, argv=argv)).loss.infonce.mask_false_negatives
    assert TrainingRun(*parse_args(types, argv=argv)).loss.infonce.label_weighted


def test_stage_alone_continues_from_previous_stage(esci_sample, tiny_encoder_dir, tmp_path):
    result = run_train(*quick_args(esci_sample, tiny_encoder_dir, tmp_path, "--stage", "2"), check=False)
    assert result.returncode == 2 and "epoch_1" in result.stderr and "Traceback" not in result.stderr


def test_push_offline_fails_fast_with_local_path_and_tensorboard_logs(esci_sample, tiny_encoder_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = quick_args(
        esci_sample, tiny_encoder_dir, tmp_path, "--stage", "1", "--push_to_hub", "--hub_model_id", "me/x"
    )
    result = run_train(*args, "--report_to", "tensorboard", env=env, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "could not reach the Hugging Face Hub" in result.stderr and str(tmp_path / "best_model") in result.stderr
    assert "Traceback" not in result.stderr
    assert {"train/contrastive_loss", "train/infonce_loss", "eval/contrastive_loss", "eval/loss"} <= scalar_tags(
        tmp_path / "stage1" / "runs"
    )
    model = TwoTowerModel.from_pretrained(tmp_path / "best_model")
    started = time.monotonic()
    with pytest.raises(HubUnreachableError, match="saved locally at"):
        model.push_to_hub("me/x")
    assert time.monotonic() - started < 10


def scalar_tags(runs: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(next(runs.iterdir())))
    accumulator.Reload()
    return set(accumulator.Tags()["scalars"])


def test_kill_during_stage_1_then_resume_completes(esci_sample, tiny_encoder_dir, tmp_path):
    args = quick_args(esci_sample, tiny_encoder_dir, tmp_path, "--save_strategy", "steps", "--save_steps", 1)
    args[args.index("--max_train_samples") + 1] = 1400  # ~44 steps, so the kill lands inside stage 1
    process = subprocess.Popen([sys.executable, str(REPO / "train.py"), *map(str, args)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 240
    while not list((tmp_path / "stage1").glob("checkpoint-*/trainer_state.json")) and time.monotonic() < deadline:
        assert process.poll() is None, "train.py ended before its first checkpoint"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (
        not (tmp_path / "schedule_state.json").exists()
        or 1 not in json.loads((tmp_path / "schedule_state.json").read_text())["completed_stages"]
    )
    run_train(*args, "--resume_from_checkpoint", "true")
    state = json.loads((tmp_path / "schedule_state.json").read_text())
    assert state["completed_stages"] == [1, 2, 3]
    assert not list(tmp_path.glob(".*.tmp-*")), "a temporary output was left behind"
    assert TwoTowerModel.from_pretrained(tmp_path / "best_model").encode_products(TEXTS).shape == (3, 32)


class NanLoss(torch.nn.Module):
    def forward(self, query_embeddings, *args, **kwargs):
        loss = query_embeddings.sum() * float("nan")
        return {"loss": loss}


def test_nan_loss_stops_training_naming_the_step(esci_sample, tiny_encoder_dir, tmp_path):
    from ttsn_hf.data.esci import load_esci
    from ttsn_hf.data.groups import GroupSource
    from ttsn_hf.data.stages import build_stage

    model = TwoTowerModel.from_encoder(str(tiny_encoder_dir))
    esci = load_esci(esci_sample)
    source = GroupSource([build_stage(esci, 1)["train"]], esci.products(), esci.judged())
    args = TwoTowerTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, use_cpu=True, eval_strategy="no",
        train_sampling_strategy="sequential",
    )  # fmt: skip
    trainer = TwoTowerTrainer(
        model=model, args=args, train_dataset=source.groups().select(range(4)),
        data_collator=TwoTowerCollator(model.tokenizer, source), loss=NanLoss(),
    )  # fmt: skip
    with pytest.raises(NonFiniteLossError, match="global step 1"):
        trainer.train()


def test_two_cpu_processes_train_through_accelerate_launch(esci_sample, tiny_encoder_dir, tmp_path):
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launcher += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO / "train.py")]
    args = quick_args(esci_sample, tiny_encoder_dir, tmp_path, "--stage", "1")
    result = subprocess.run([*launcher, *map(str, args)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((tmp_path / "schedule_state.json").read_text())
    assert state["world_size"] == 2 and state["completed_stages"] == [1]
    assert TwoTowerModel.from_pretrained(tmp_path / "best_model").encode_queries(TEXTS).shape == (3, 32)


def test_seed_command_trains_on_prepared_data(esci_sample, tiny_encoder_dir, tmp_path):
    from ttsn_hf.data.stages import prepare

    prepare(esci_sample, tmp_path / "data", seed=42)
    run_train(
        "--data_dir", tmp_path / "data", "--checkpoint_dir", tmp_path / "checkpoints", "--batch_size", 32,
        "--num_workers", 0, "--model_name_or_path", tiny_encoder_dir, "--stage", "1", "--stage_epochs", "1,1,1",
        "--max_train_samples", 64, "--max_eval_samples", 32,
    )  # fmt: skip
    assert (tmp_path / "checkpoints" / "epoch_1" / "0_Transformer" / "model.safetensors").is_file()


def test_no_training_data_is_a_clear_error(tmp_path):
    result = run_train("--stage", "1", "--output_dir", tmp_path, check=False, cwd=tmp_path)
    assert result.returncode == 2 and "--esci_dir" in result.stderr and "Traceback" not in result.stderr


def test_resume_skips_and_removes_a_checkpoint_cut_short(tmp_path):
    from ttsn_hf.training.run import last_complete_checkpoint

    for step in (5, 10, 15):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-5" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-10" / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(tmp_path, remove_incomplete=True) == str(tmp_path / "checkpoint-10")
    assert not (tmp_path / "checkpoint-15").exists() and (tmp_path / "checkpoint-5").exists()
