import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
ESCI_SAMPLE = SHARED_DATA / "esci-us-sample"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return SHARED_DATA


@pytest.fixture(scope="session")
def esci_sample() -> Path:
    return ESCI_SAMPLE


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer BERT with MiniLM's tokenizer: fast, no download."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from ttsn_hf import default_base_model
    from ttsn_hf.modeling.pretrained import resolve_pretrained

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_bert")
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_pretrained(default_base_model())).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def load_cli():
    """``load_cli("eval")``: a top-level script (eval.py, prepare.py, ...) imported as a module, to call its main."""
    import importlib.util

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"{name}_cli", REPO / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
