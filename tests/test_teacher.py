"""Teacher scores: computed once per (query, product text), cached under the teacher's fingerprint."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sentence_transformers import SentenceTransformer

from ttsn_hf.training.teacher import TeacherScorer, teacher_fingerprint


@pytest.fixture
def groups():
    return datasets.Dataset.from_dict(
        {
            "query": ["usb c cable", "dog toy"],
            "product_text": ["Anker USB-C cable 6 ft", "Squeaky rubber dog toy"],
            "pool_texts": [["Dog bed, large", "Water bottle 32 oz"], ["Cat litter"]],
        }
    )


def test_scores_are_cached_and_reused_and_match_sentence_transformers(groups, tiny_encoder_dir, tmp_path):
    teacher = TeacherScorer(str(tiny_encoder_dir), tmp_path).score_groups(groups)
    assert teacher.scored_now == 5 and teacher.cache_path.is_file()
    model = SentenceTransformer(str(tiny_encoder_dir), device="cpu")
    query, text = model.encode(["usb c cable", "Dog bed, large"], normalize_embeddings=True)
    assert teacher("usb c cable", ["Dog bed, large"])[0] == pytest.approx(float(query @ text), abs=1e-5)
    assert np.isnan(teacher("usb c cable", ["never scored"])[0])
    again = TeacherScorer(str(tiny_encoder_dir), tmp_path).score_groups(groups)
    assert again.scored_now == 0  # read from the cache, the teacher is not run
    assert again("dog toy", ["Cat litter"]) == teacher("dog toy", ["Cat litter"])


def perturbed_copy(folder: Path, target: Path) -> Path:
    shutil.copytree(folder, target)
    weights = load_file(target / "model.safetensors")
    changed = {name: tensor + 0.05 * torch.randn_like(tensor) for name, tensor in weights.items()}
    save_file(changed, target / "model.safetensors")
    return target


def test_another_teacher_invalidates_the_cache(groups, tiny_encoder_dir, tmp_path):
    other = perturbed_copy(tiny_encoder_dir, tmp_path / "other_teacher")
    assert teacher_fingerprint(other) != teacher_fingerprint(tiny_encoder_dir)
    first = TeacherScorer(str(tiny_encoder_dir), tmp_path / "cache").score_groups(groups)
    second = TeacherScorer(str(other), tmp_path / "cache").score_groups(groups)
    assert second.scored_now == 5 and second.cache_path != first.cache_path
    assert second("usb c cable", ["Dog bed, large"]) != first("usb c cable", ["Dog bed, large"])


def test_train_py_distils_from_a_teacher_with_pseudo_queries(esci_sample, tiny_encoder_dir, tmp_path):
    repo = Path(__file__).resolve().parents[1]
    teacher = perturbed_copy(tiny_encoder_dir, tmp_path / "teacher_model")  # the student's own weights agree: 0 loss
    args = [
        "--esci_dir", esci_sample, "--model_name_or_path", tiny_encoder_dir, "--output_dir", tmp_path / "run",
        "--stage", "1", "--stage_epochs", "1,1,1", "--max_train_samples", 64, "--max_eval_samples", 32,
        "--per_device_train_batch_size", 16, "--logging_steps", 1, "--selection_corpus_size", 300,
        "--pseudo_queries", 40, "--teacher_model_name_or_path", teacher, "--distillation_weight", 2.0,
        "--teacher_cache_dir", tmp_path / "teacher",
    ]  # fmt: skip
    result = subprocess.run([sys.executable, str(repo / "train.py"), *map(str, args)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((tmp_path / "teacher").glob("teacher_scores_*.parquet"))
    state = tmp_path / "run" / "stage1" / "trainer_state.json"  # the finished stage's log (its checkpoints are gone)
    logged = json.loads(state.read_text())["log_history"]
    assert any(record.get("distillation_loss", 0) > 0 for record in logged)
    config = json.loads((tmp_path / "run" / "best_model" / "config.json").read_text())
    assert config["training"]["loss"]["distillation_weight"] == 2.0
    assert config["training"]["teacher"]["teacher"] == str(teacher)


def test_kind_and_precision_are_part_of_the_cache_key(groups, tiny_encoder_dir, tmp_path):
    bi_encoder = TeacherScorer(str(tiny_encoder_dir), tmp_path).score_groups(groups)
    cross_encoder = TeacherScorer(str(tiny_encoder_dir), tmp_path, cross_encoder=True)
    bf16 = TeacherScorer(str(tiny_encoder_dir), tmp_path, bf16=True)
    assert len({bi_encoder.cache_path, cross_encoder.cache_path, bf16.cache_path}) == 3
    assert not cross_encoder.scores and not bf16.scores  # neither reads the fp32 bi-encoder's cosines
    assert cross_encoder.get_config_dict()["kind"] == "cross_encoder" and bf16.get_config_dict()["precision"] == "bf16"


def test_a_hub_teacher_is_fingerprinted_by_the_commit_it_resolves_to(tiny_encoder_dir, tmp_path, monkeypatch):
    """Two commits of one Hub id in the (offline) Hub cache: the fingerprint follows the commit main points to."""
    import huggingface_hub.constants

    repo = tmp_path / "hub" / "models--org--teacher"
    for commit, folder in (("a" * 40, tiny_encoder_dir), ("b" * 40, perturbed_copy(tiny_encoder_dir, tmp_path / "b"))):
        shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    fingerprints = []
    for commit in ("a" * 40, "b" * 40):
        (repo / "refs" / "main").write_text(commit)
        teacher = TeacherScorer("org/teacher", tmp_path / "cache")
        assert teacher.folder.name == commit
        fingerprints.append(teacher.fingerprint)
    assert fingerprints[0] == teacher_fingerprint(tiny_encoder_dir) != fingerprints[1]


def test_cross_encoder_scores_are_its_raw_logit_on_the_cosine_scale(groups, tiny_encoder_dir, tmp_path):
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    CrossEncoder(str(tiny_encoder_dir), num_labels=1).save_pretrained(str(tmp_path / "ce"))
    config = json.loads((tmp_path / "ce" / "config.json").read_text())
    config.setdefault("sentence_transformers", {})["activation_fn"] = "torch.nn.modules.activation.Tanh"
    (tmp_path / "ce" / "config.json").write_text(json.dumps(config))  # a declared activation is not applied
    teacher = TeacherScorer(str(tmp_path / "ce"), tmp_path / "cache", cross_encoder=True).score_groups(groups)
    queries, texts = ["usb c cable", "dog toy"], ["Dog bed, large", "Cat litter"]
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ce").eval()
    tokens = AutoTokenizer.from_pretrained(tmp_path / "ce")(queries, texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**tokens).logits[:, 0]
    expected = (2 * torch.sigmoid(logits) - 1).tolist()
    found = [teacher(query, [text])[0] for query, text in zip(queries, texts, strict=True)]
    assert found == pytest.approx(expected, abs=1e-5) and all(-1 < value < 1 for value in found)
