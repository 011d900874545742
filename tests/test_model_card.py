import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from ttsn_hf import TwoTowerModel
from ttsn_hf.modeling.model_card import EVAL_RESULTS, record_eval_results

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
    assert "## Evaluation" not in card
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


@pytest.mark.parametrize("script", ["train.py", "prepare.py", "mine.py", "index.py", "eval.py"])
def test_every_script_help_shows_defaults(script):
    result = subprocess.run([sys.executable, str(REPO / script), "--help"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout and "(default:" in result.stdout
