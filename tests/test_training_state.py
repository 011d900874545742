"""Schedule state you can trust: resuming from a path, mined negatives' owner, the prepared split, logging."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from ttsn_hf import TwoTowerModel, default_base_model
from ttsn_hf.arguments import DataArguments, ModelArguments, ScheduleArguments, TwoTowerTrainingArguments, parse_args
from ttsn_hf.data.stages import prepare
from ttsn_hf.modeling.pretrained import resolve_pretrained
from ttsn_hf.retrieval.encoding import model_fingerprint
from ttsn_hf.training.run import TrainingRun

REPO = Path(__file__).resolve().parents[1]
ARGUMENT_TYPES = (ModelArguments, DataArguments, ScheduleArguments, TwoTowerTrainingArguments)


def run_train(*args, check=True, launcher=(sys.executable,)):
    result = subprocess.run([*launcher, str(REPO / "train.py"), *map(str, args)], capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def quick_args(esci_sample, model, output, *extra):
    return [
        "--esci_dir", esci_sample, "--model_name_or_path", model, "--output_dir", output,
        "--max_train_samples", 64, "--max_eval_samples", 32, "--per_device_train_batch_size", 32,
        "--stage_epochs", "1,1,2", "--logging_steps", 1, *extra,
    ]  # fmt: skip


def mined_by(output: Path) -> str:
    return json.loads((output / "hard_negatives_stage2.json").read_text())["model_fingerprint"]


@pytest.fixture(scope="module")
def full_run(esci_sample, tiny_encoder_dir, tmp_path_factory):
    """All three stages (epochs 1 | 2 | 3, 4), finished stages' checkpoints kept; stdout and stderr kept beside."""
    output = tmp_path_factory.mktemp("full_run") / "run"
    result = run_train(*quick_args(esci_sample, tiny_encoder_dir, output, "--keep_checkpoints"))
    return output, result


def copy_of(full_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(full_run[0], copy)
    return copy


def test_run_mines_on_the_trainer_device_and_ends_with_a_summary(full_run):
    output, result = full_run
    assert "device cpu, 1 process(es), fp32" in result.stderr
    assert f"mining hard negatives with model {mined_by(output)[:12]} on cpu (1 process(es))" in result.stderr
    assert result.stdout.rstrip().splitlines()[-1] == (
        f"next: python eval.py --model_name_or_path {output / 'best_model'} --esci_dir "
        f"{REPO.parent / 'shared' / 'data' / 'esci-us-sample'} --output_dir {output / 'eval'}"
    )
    assert "best epoch" in result.stdout and "InfoNCE losses grow with the global batch" in result.stdout
    summary = json.loads((output / "run_summary.json").read_text())
    state = json.loads((output / "schedule_state.json").read_text())
    assert summary["best"]["epoch"] == state["best"]["epoch"] and summary["best"]["metric"] == "eval_ndcg@10"
    assert set(summary["validation"]) == {"0", "1", "2", "3", "4"} and set(summary["stage_seconds"]) == {"1", "2", "3"}
    assert all("eval_infonce_loss" in figures for figures in summary["validation"].values())


def test_resume_from_a_stage_2_checkpoint_runs_stage_3_fresh(full_run, esci_sample, tiny_encoder_dir, tmp_path):
    output = copy_of(full_run, tmp_path)
    (checkpoint,) = (output / "stage2").glob("checkpoint-*")
    shutil.rmtree(output / "epoch_4")
    state = json.loads((output / "schedule_state.json").read_text())
    del state["epochs"]["4"]
    (output / "schedule_state.json").write_text(json.dumps(state))
    result = run_train(*quick_args(esci_sample, tiny_encoder_dir, output, "--resume_from_checkpoint", checkpoint))
    state = json.loads((output / "schedule_state.json").read_text())
    assert state["completed_stages"] == [1, 2, 3] and {"3", "4"} <= set(state["epochs"])
    assert (output / "epoch_4" / "0_Transformer" / "model.safetensors").is_file()
    stage3 = json.loads((output / "stage3" / "trainer_state.json").read_text())["log_history"]
    rates = [log["learning_rate"] for log in stage3 if "learning_rate" in log]
    assert rates and max(rates) <= 2e-6 and stage3[-1]["epoch"] == 2
    assert not list((output / "stage3").glob("checkpoint-*")), "a finished stage keeps no checkpoint by default"
    assert "mining hard negatives" not in result.stderr, "negatives mined by the same stage-1 model are reused"


@pytest.mark.parametrize("bad", ["missing", "stage2", "epoch_1", "another_run"])
def test_resume_from_a_path_that_is_no_checkpoint_is_one_line_and_writes_nothing(full_run, esci_sample, tmp_path, bad):
    output = tmp_path / "new"
    path = tmp_path / "nowhere" if bad == "missing" else full_run[0] / bad
    if bad == "another_run":  # a real checkpoint, of another output folder
        (path,) = (full_run[0] / "stage2").glob("checkpoint-*")
    result = run_train(*quick_args(esci_sample, "x", output, "--resume_from_checkpoint", path), check=False)
    assert result.returncode == 2 and "--resume_from_checkpoint" in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr and not output.exists()


def test_a_run_with_another_model_never_trains_on_the_first_runs_negatives(full_run, esci_sample, tmp_path):
    output = copy_of(full_run, tmp_path)
    first_miner = mined_by(output)
    other_model = tiny_encoder(tmp_path / "other_encoder", seed=1)
    run_train(*quick_args(esci_sample, other_model, output, "--stage", "1", "--overwrite_output_dir"))
    result = run_train(*quick_args(esci_sample, other_model, output, "--stage", "2"))
    stage1_model = TwoTowerModel.from_pretrained(output / "epoch_1")
    assert mined_by(output) == model_fingerprint(stage1_model) != first_miner
    assert "mining hard negatives" in result.stderr


def test_explicit_negatives_of_another_model_are_used_with_a_warning(full_run, esci_sample, tmp_path):
    output = copy_of(full_run, tmp_path)
    negatives = tmp_path / "theirs.parquet"
    shutil.copy(output / "hard_negatives_stage2.parquet", negatives)
    negatives.with_suffix(".json").write_text(json.dumps({"model_fingerprint": "f" * 64}))
    args = quick_args(esci_sample, "", output, "--stage", "2", "--hard_negatives", negatives, "--overwrite_output_dir")
    result = run_train(*args)
    assert f"--hard_negatives {negatives} were mined by model ffffffffffff" in result.stderr
    assert "mining hard negatives" not in result.stderr


def test_prepared_split_is_kept_whatever_the_seed(esci_sample, tiny_encoder_dir, tmp_path):
    prepare(esci_sample, tmp_path / "data", seed=42)
    stage1 = datasets.load_from_disk(str(tmp_path / "data" / "stage1"))
    validation = set(stage1["validation"]["query_id"])
    negatives = tmp_path / "negatives.parquet"  # any catalogue products: only the query split matters here
    query_ids = sorted(set(stage1["train"]["query_id"]))[:50]
    product_ids = datasets.load_from_disk(str(tmp_path / "data" / "catalogue"))["product_id"][-50:]
    pd.DataFrame({"query_id": query_ids, "product_id": product_ids}).to_parquet(negatives)
    argv = ["--data_dir", tmp_path / "data", "--output_dir", tmp_path / "out", "--seed", 7,
            "--hard_negatives", negatives]  # fmt: skip
    run = TrainingRun(*parse_args(ARGUMENT_TYPES, argv=list(map(str, argv))))
    model = TwoTowerModel.from_encoder(str(tiny_encoder_dir))
    for stage in (1, 2, 3):
        splits = run.data.for_stage(stage, model, model)
        assert not validation & set(splits["train"]["query_id"]), f"stage {stage} trains on validation queries"
    assert set(run.data.validation(model)["query_id"]) == validation


def tiny_encoder(folder: Path, seed: int = 0, dropout: float = 0.1) -> Path:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
    )  # fmt: skip
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_pretrained(default_base_model())).save_pretrained(folder)
    return folder


def test_two_processes_log_the_loss_components_of_one(esci_sample, tmp_path):
    """Same global batch of 32 (1 x 32, 2 x 16), no dropout, in order: the logged components agree.

    A short last batch would be filled by accelerate, on several processes, with the first groups again (even
    batches), so the two runs would not see the same groups. Dropping the short last batch keeps only full global
    batches, the same groups in both runs (eval batches of 8, so the validation set keeps some of its own)."""
    encoder = tiny_encoder(tmp_path / "encoder", dropout=0.0)
    histories = {}
    for processes in (1, 2):
        output = tmp_path / f"p{processes}"
        args = quick_args(esci_sample, encoder, output, "--stage", "1", "--train_sampling_strategy", "sequential")
        args += ["--dataloader_drop_last", "--per_device_eval_batch_size", 8]
        args[args.index("--max_train_samples") + 1] = 64  # 64 groups: two full global batches
        args[args.index("--per_device_train_batch_size") + 1] = 32 // processes
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                    "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
        run_train(*args, launcher=launcher if processes == 2 else (sys.executable,))
        histories[processes] = json.loads((output / "stage1" / "trainer_state.json").read_text())["log_history"]
    names = ("loss", "contrastive_loss", "infonce_loss")
    one, two = ([log for log in histories[n] if "contrastive_loss" in log] for n in (1, 2))
    assert len(one) == len(two) == 2
    for first, second in zip(one, two, strict=True):
        assert [first[name] for name in names] == pytest.approx([second[name] for name in names], rel=1e-4)


def weights_hash(folder: Path) -> str:
    import hashlib

    return hashlib.sha256((folder / "0_Transformer" / "model.safetensors").read_bytes()).hexdigest()


def test_the_base_model_is_epoch_0_and_the_summary_says_whether_training_helped(full_run):
    output, result = full_run
    state = json.loads((output / "schedule_state.json").read_text())
    summary = json.loads((output / "run_summary.json").read_text())
    assert state["epochs"]["0"]["stage"] == 0 and "eval_ndcg@10" in state["epochs"]["0"]
    assert summary["base_model_validation"] == summary["validation"]["0"]
    assert summary["best"]["epoch"] != 0, "best_model is always a trained epoch"
    noise = summary["noise"]
    assert noise["metric"] == "ndcg@10" and noise["validation_queries"] > 0
    assert set(noise["best_minus"]) == {"0", "1", "2", "3", "4"} - {str(summary["best"]["epoch"])}
    assert "base model" in noise["statement"] and f"noise: {noise['statement']}" in result.stdout
    assert "  base model: " in result.stdout


def test_a_second_run_into_a_finished_folder_stops_in_one_line(full_run, esci_sample, tiny_encoder_dir, tmp_path):
    output = copy_of(full_run, tmp_path)
    before = (output / "schedule_state.json").read_text(), weights_hash(output / "epoch_1")
    result = run_train(*quick_args(esci_sample, tiny_encoder_dir, output), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "already holds epoch(s) 1, 2, 3, 4" in result.stderr and "--overwrite_output_dir" in result.stderr
    assert ((output / "schedule_state.json").read_text(), weights_hash(output / "epoch_1")) == before


def test_a_run_on_another_query_split_stops_before_training(full_run, esci_sample, tiny_encoder_dir, tmp_path):
    output = copy_of(full_run, tmp_path)
    args = quick_args(esci_sample, tiny_encoder_dir, output, "--stage", "3", "--seed", 7, "--overwrite_output_dir")
    result = run_train(*args, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "another split" in result.stderr and "seed 42 there, 7 here" in result.stderr
    assert json.loads((output / "schedule_state.json").read_text())["completed_stages"] == [1, 2, 3]


def test_best_model_is_re_picked_when_a_resume_trains_it_again(full_run, esci_sample, tiny_encoder_dir, tmp_path):
    """Epoch 4 was best by far; resuming from stage 2's checkpoint trains epochs 3-4 again, which score lower:
    best_model must be the best of the epochs of this lineage, not the old epoch 4."""
    output = copy_of(full_run, tmp_path)
    state = json.loads((output / "schedule_state.json").read_text())
    state["epochs"]["4"]["eval_ndcg@10"] = 2.0  # no real epoch reaches it
    state["best"] = {**state["best"], "epoch": 4, "eval_ndcg@10": 2.0}
    (output / "schedule_state.json").write_text(json.dumps(state))
    shutil.rmtree(output / "best_model")
    shutil.copytree(output / "epoch_4", output / "best_model")
    (checkpoint,) = (output / "stage2").glob("checkpoint-*")
    run_train(*quick_args(esci_sample, tiny_encoder_dir, output, "--resume_from_checkpoint", checkpoint))
    state = json.loads((output / "schedule_state.json").read_text())
    scores = {int(epoch): figures["eval_ndcg@10"] for epoch, figures in state["epochs"].items() if epoch != "0"}
    assert set(scores) == {1, 2, 3, 4} and max(scores.values()) < 2.0
    best = min(epoch for epoch, value in scores.items() if value == max(scores.values()))
    assert state["best"]["epoch"] == best
    assert weights_hash(output / "best_model") == weights_hash(output / f"epoch_{best}")
