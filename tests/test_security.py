"""Weights only through safetensors, no pickle, no remote code unless asked, tokens never logged."""

import re
from pathlib import Path

import pytest
from transformers import GPT2Config

from ttsn_hf.errors import UserInputError
from ttsn_hf.modeling.model import load_model

REPO = Path(__file__).resolve().parents[1]
SOURCES = [*REPO.glob("ttsn_hf/**/*.py"), *REPO.glob("*.py")]


@pytest.mark.parametrize("pattern", [r"\bpickle\b", r"trust_remote_code\s*=\s*True", r"allow_pickle\s*=\s*True"])
def test_no_unsafe_loading_in_the_package(pattern):
    offenders = [str(path) for path in SOURCES if re.search(pattern, path.read_text())]
    assert not offenders


def test_every_torch_load_is_weights_only():
    for path in SOURCES:
        for call in re.findall(r"torch\.load\([^)]*\)", path.read_text()):
            assert "weights_only=True" in call, f"{path}: {call}"


def test_checkpoint_of_another_model_type_is_a_clear_error(tmp_path):
    GPT2Config(n_layer=1, n_embd=8, n_head=2, architectures=["GPT2LMHeadModel"]).save_pretrained(tmp_path)
    with pytest.raises(UserInputError, match=f"{tmp_path}.*gpt2"):
        load_model(str(tmp_path))


def test_folder_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(UserInputError, match="no config.json"):
        load_model(str(tmp_path))


def test_hub_token_is_masked_in_training_arguments():
    from ttsn_hf.arguments import TwoTowerTrainingArguments

    args = TwoTowerTrainingArguments(output_dir="x", hub_token="hf_secret_value")
    assert "hf_secret_value" not in repr(args) and "hf_secret_value" not in str(args.to_dict())
