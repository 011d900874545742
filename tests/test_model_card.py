import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from huggingface_hub import ModelCard

from ttsn_hf import TwoTowerModel
from ttsn_hf.modeling.model_card import EVAL_RESULTS, record_eval_results
from ttsn_hf.training.schedule import build_schedule
from ttsn_hf.training.state import EpochCheckpointCallback, write_state

REPO = Path(__file__).resolve().parents[1]


def test_card_is_written_with_usage_citation_and_then_metrics(tiny_encoder_dir, tmp_path):
    model = TwoTowerModel.from_encoder(str(tiny_encoder_dir))
    model.config.training = {
        "data": "ESCI sample",
        "schedule": [{"number": 1, "epochs": [1, 2], "learning_rate": 2e-5, "data": "E+S positives"}],
        "loss": {"infonce": {"temperature": 0.05}},
    }
    model.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    data = ModelCard.load(tmp_path / "README.md").data
    assert data.library_name == "sentence-transformers" and data.pipeline_tag == "sentence-similarity"
    assert data.license == "apache-2.0" and "two-tower" in data.tags and data.eval_results is None
    assert data.base_model is None  # a local folder is not a Hub id: the card does not claim one
    assert "| 1 | 1, 2 | 2e-05 | E+S positives |" in card and '"temperature": 0.05' in card
    assert "SentenceTransformer(" in card and "TwoTowerModel.from_pretrained" in card and "arXiv:2206.06588" in card
    assert f'SentenceTransformer("{tmp_path.name}")' in card and "encode_query" in card and '"PATH"' not in card
    assert "## Evaluation" not in card and "## Validation" not in card and "Epoch" not in card
    record_eval_results(tmp_path, {"recall@10": 0.5123, "mrr": 0.9, "ndcg@10": 0.7, "num_queries": 50})
    card = (tmp_path / "README.md").read_text()
    assert "## Evaluation" in card and "0.5123" in card and (tmp_path / EVAL_RESULTS).is_file()
    results = {
        result.metric_type: result.metric_value for result in ModelCard.load(tmp_path / "README.md").data.eval_results
    }
    assert results == {"recall_at_10": 0.5123, "mrr": 0.9, "ndcg_at_10": 0.7}


def test_card_is_refreshed_from_config_alone(tiny_encoder_dir, tmp_path, monkeypatch):
    model = TwoTowerModel.from_encoder(str(tiny_encoder_dir))
    model.config.base_model_name_or_path = "sentence-transformers/all-MiniLM-L6-v2"
    model.save_pretrained(tmp_path)
    monkeypatch.setattr(TwoTowerModel, "from_pretrained", None)  # eval.py's refresh must not load the model
    record_eval_results(tmp_path, {"recall@10": 0.25})
    data = ModelCard.load(tmp_path / "README.md").data
    assert data.base_model == "sentence-transformers/all-MiniLM-L6-v2" and data.eval_results[0].metric_value == 0.25


def evaluate(callback, model, epoch_in_stage, ndcg):
    metrics = {"eval_loss": 1.0 - ndcg, "eval_ndcg@10": ndcg, "eval_recall@10": ndcg + 0.1, "eval_runtime": 2.5}
    args = SimpleNamespace(metric_for_best_model="eval_ndcg@10", greater_is_better=None)
    state = SimpleNamespace(is_world_process_zero=True, epoch=float(epoch_in_stage), global_step=10 * epoch_in_stage)
    callback.on_evaluate(args, state, None, metrics=metrics, model=model)


def test_each_saved_folder_card_names_its_epoch_figures_and_folder(tiny_encoder_dir, tmp_path):
    schedule = build_schedule((2, 1, 2))  # epochs 1, 2 | 3 | 4, 5
    model = TwoTowerModel.from_encoder(str(tiny_encoder_dir))
    model.config.training = {"data": "ESCI sample", "schedule": [vars(stage) for stage in schedule]}
    base = {"eval_loss": 0.9, "eval_ndcg@10": 0.1234, "eval_recall@10": 0.2345}
    write_state(tmp_path, {"epochs": {"0": base}, "completed_stages": [], "best": None})  # the base model's
    for epoch_in_stage, ndcg in ((1, 0.5), (2, 0.4)):  # epoch 1 the best, epoch 2 not
        evaluate(EpochCheckpointCallback(tmp_path, schedule[0]), model, epoch_in_stage, ndcg)
    evaluate(EpochCheckpointCallback(tmp_path, schedule[1]), model, 1, 0.45)  # epoch 3, stage 2
    cards = {name: (tmp_path / name / "README.md").read_text() for name in ("epoch_1", "epoch_3", "best_model")}
    assert len(set(cards.values())) == 3

    epoch_1 = cards["epoch_1"]
    assert "**Epoch 1 of 5 (stage 1 of 3)" in epoch_1 and "Kept as the run's best model" not in epoch_1
    assert 'SentenceTransformer("epoch_1")' in epoch_1 and 'TwoTowerModel.from_pretrained("epoch_1")' in epoch_1
    assert "| 1 | 1 | 2e-05 | E+S positives; random and I-judged negatives |" in epoch_1  # trained on so far
    assert "| 2 |" not in epoch_1 and "| 1 | 1, 2 |" not in epoch_1
    assert "Not in this model" in epoch_1 and "stage 2 (epoch 3: stage 1 + hard negatives mined" in epoch_1
    assert "| ndcg@10 |" in epoch_1 and "| this model (epoch 1) | 0.5000 |" in epoch_1
    assert "(epoch 0) | 0.1234 | 0.2345 | 0.9000 |" in epoch_1 and "runtime" not in epoch_1

    best = cards["best_model"]
    assert 'SentenceTransformer("best_model")' in best and "**Epoch 1 of 5 (stage 1 of 3)" in best
    assert "best ndcg@10 over the validation queries among the epochs validated when it was saved (epoch 1)" in best
    results = {
        (r.dataset_split, r.metric_type): r.metric_value
        for r in ModelCard.load(tmp_path / "best_model" / "README.md").data.eval_results
    }
    assert results == {("validation", "ndcg_at_10"): 0.5, ("validation", "recall_at_10"): 0.6}

    epoch_3 = cards["epoch_3"]
    assert "**Epoch 3 of 5 (stage 2 of 3)" in epoch_3 and "| 1 | 1, 2 |" in epoch_3 and "| 2 | 3 |" in epoch_3
    assert "stage 3 (epochs 4, 5" in epoch_3 and "| this model (epoch 3) | 0.4500 |" in epoch_3
    record = json.loads((tmp_path / "epoch_3" / "config.json").read_text())["checkpoint_record"]
    assert record["epoch"] == 3 and record["stage"] == 2 and record["base_validation"]["eval_ndcg@10"] == 0.1234
    # the card is rendered from config.json alone: eval.py's refresh keeps the epoch and adds its figures
    record_eval_results(tmp_path / "epoch_3", {"recall@10": 0.25})
    refreshed = (tmp_path / "epoch_3" / "README.md").read_text()
    assert (
        "**Epoch 3 of 5" in refreshed and "## Evaluation" in refreshed and 'SentenceTransformer("epoch_3")' in refreshed
    )


def test_without_a_base_score_the_card_says_so(tiny_encoder_dir, tmp_path):
    model = TwoTowerModel.from_encoder(str(tiny_encoder_dir))
    evaluate(EpochCheckpointCallback(tmp_path, build_schedule((1, 1, 1))[0]), model, 1, 0.5)
    card = (tmp_path / "epoch_1" / "README.md").read_text()
    assert "the base model was not scored" in card and "(epoch 0)" not in card and "**Epoch 1 (stage 1)" in card


@pytest.mark.parametrize("script", ["train.py", "prepare.py", "mine.py", "index.py", "eval.py"])
def test_every_script_help_shows_defaults(script):
    result = subprocess.run([sys.executable, str(REPO / script), "--help"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout and "(default:" in result.stdout
