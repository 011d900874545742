import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, PreTrainedModel

from ttsn_hf import TwoTowerConfig, TwoTowerModel, default_base_model, load_model
from ttsn_hf.modeling.pretrained import packaged_model_path, resolve_pretrained

TEXTS = ["usb c cable", "wireless earbuds with a long charging case and noise cancelling", "a", "dog toy"]


@pytest.fixture(scope="module")
def tiny(tiny_encoder_dir):
    return TwoTowerModel.from_encoder(str(tiny_encoder_dir))


def test_building_from_encoder_keeps_its_weights(tiny_encoder_dir, tiny):
    base = AutoModel.from_pretrained(tiny_encoder_dir).state_dict()
    ours = tiny.encoder.state_dict()
    assert base.keys() == ours.keys()
    for name, tensor in base.items():
        assert torch.equal(tensor, ours[name]), name


def test_encode_is_normalised_float32_in_input_order(tiny):
    embeddings = tiny.encode_products(TEXTS, batch_size=2)
    assert embeddings.dtype == np.float32 and embeddings.shape == (4, 32)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-5)
    one_by_one = np.stack([tiny.encode_products([text])[0] for text in TEXTS])
    np.testing.assert_allclose(embeddings, one_by_one, atol=1e-5)


def test_bf16_encoding_is_close_to_fp32(tiny):
    cosine = (tiny.encode_queries(TEXTS, bf16=True) * tiny.encode_queries(TEXTS)).sum(1)
    assert cosine.min() > 0.99


def test_save_and_load_round_trip_with_the_weights_stored_once(tiny, tmp_path):
    tiny.save_pretrained(tmp_path)
    weights = sorted(tmp_path.rglob("*.safetensors"))
    assert weights == [tmp_path / "0_Transformer" / "model.safetensors"] and not list(tmp_path.rglob("*.bin"))
    assert load_file(weights[0]).keys() == tiny.encoder.state_dict().keys()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "two_tower"
    reloaded = TwoTowerModel.from_pretrained(tmp_path)
    np.testing.assert_array_equal(reloaded.encode_products(TEXTS), tiny.encode_products(TEXTS))
    assert isinstance(AutoModel.from_pretrained(tmp_path), TwoTowerModel)
    assert isinstance(load_model(str(tmp_path)), TwoTowerModel)


def test_changed_weights_load_in_sentence_transformers(tiny_encoder_dir, tmp_path):
    model = TwoTowerModel.from_encoder(str(tiny_encoder_dir))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.01)
    model.save_pretrained(tmp_path)
    ours = model.encode_products(TEXTS)
    theirs = SentenceTransformer(str(tmp_path)).encode(TEXTS)
    assert (ours * theirs).sum(1).min() >= 0.9999


def test_untied_towers_have_their_own_product_encoder(tiny_encoder_dir, tmp_path):
    model = TwoTowerModel.from_encoder(str(tiny_encoder_dir), tie_towers=False)
    np.testing.assert_allclose(model.encode_queries(TEXTS), model.encode_products(TEXTS), atol=1e-6)
    with torch.no_grad():
        model.product_encoder.embeddings.word_embeddings.weight.mul_(1.5)
    assert not np.allclose(model.encode_queries(TEXTS), model.encode_products(TEXTS), atol=1e-4)
    model.save_pretrained(tmp_path)
    assert len(list(tmp_path.rglob("*.safetensors"))) == 2 and (tmp_path / "0_Router" / "router_config.json").is_file()
    reloaded = TwoTowerModel.from_pretrained(tmp_path)
    assert not reloaded.config.tie_towers
    np.testing.assert_array_equal(reloaded.encode_products(TEXTS), model.encode_products(TEXTS))


def test_config_round_trip():
    config = TwoTowerConfig(encoder_config={"model_type": "bert", "hidden_size": 384}, query_max_length=16)
    again = TwoTowerConfig.from_dict(config.to_dict())
    assert again.query_max_length == 16 and again.embedding_dim == 384 and again.tie_towers


def test_untrained_model_equals_all_minilm_in_sentence_transformers(tmp_path):
    model = TwoTowerModel.from_encoder()
    reference = SentenceTransformer(str(resolve_pretrained(default_base_model()))).encode(
        TEXTS, normalize_embeddings=True
    )
    assert (model.encode_products(TEXTS) * reference).sum(1).min() >= 0.9999
    model.save_pretrained(tmp_path)
    reloaded = SentenceTransformer(str(tmp_path)).encode(TEXTS)
    assert (reloaded * reference).sum(1).min() >= 0.9999
    assert reloaded.shape[1] == 384
    assert len(list(tmp_path.rglob("*.safetensors"))) == 1
    recorded = [json.loads(path.read_text()) for path in tmp_path.rglob("config.json")]
    assert model.config.base_model_name_or_path == "sentence-transformers/all-MiniLM-L6-v2"
    assert json.loads((tmp_path / "config.json").read_text())["base_model_name_or_path"] == default_base_model()
    saved_text = "".join(path.read_text() for path in tmp_path.rglob("*") if path.suffix in (".json", ".md"))
    assert str(packaged_model_path()) not in saved_text and "site-packages" not in saved_text, recorded


def test_saved_files_get_the_users_usual_permissions(tiny, tmp_path):
    previous = os.umask(0o022)
    try:
        tiny.save_pretrained(tmp_path / "model")
    finally:
        os.umask(previous)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in (tmp_path / "model").rglob("*")}
    assert modes["model.safetensors"] == 0o644
    assert {mode for name, mode in modes.items() if "." in name} == {0o644}
    assert modes["0_Transformer"] == 0o755


def test_folders_saved_with_weights_at_the_root_still_load(tiny, tmp_path):
    PreTrainedModel.save_pretrained(tiny, tmp_path)  # the layout before the weights were kept once
    tiny.tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    reloaded = TwoTowerModel.from_pretrained(tmp_path)
    np.testing.assert_array_equal(reloaded.encode_products(TEXTS), tiny.encode_products(TEXTS))


def test_load_saved_weights_restores_a_checkpoint_in_place(tiny_encoder_dir, tmp_path):
    saved = TwoTowerModel.from_encoder(str(tiny_encoder_dir), tie_towers=False)
    saved.save_pretrained(tmp_path)
    other = TwoTowerModel.from_encoder(str(tiny_encoder_dir), tie_towers=False)
    with torch.no_grad():
        for param in other.parameters():
            param.add_(1.0)
    assert other.load_saved_weights(tmp_path) and not other.load_saved_weights(tmp_path / "missing")
    for name, tensor in saved.state_dict().items():
        assert torch.equal(tensor, other.state_dict()[name]), name


def test_push_to_hub_uploads_the_saved_folder_with_its_card(tiny, monkeypatch):
    from huggingface_hub import HfApi, ModelCard

    from ttsn_hf.errors import HubUnreachableError
    from ttsn_hf.modeling import model as modeling

    with pytest.raises(HubUnreachableError, match="HF_HUB_OFFLINE"):
        tiny.push_to_hub("someone/two-tower")
    uploaded = {}

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        uploaded.update(
            repo_id=repo_id, files=sorted(p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*.*"))
        )
        uploaded["card"] = ModelCard.load(Path(folder_path) / "README.md")

    monkeypatch.setattr(modeling, "ensure_hub_reachable", lambda saved_at: None)
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: type("Url", (), {"repo_id": repo_id}))
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    tiny.push_to_hub("someone/two-tower")
    assert uploaded["repo_id"] == "someone/two-tower" and "modules.json" in uploaded["files"]
    assert [name for name in uploaded["files"] if name.endswith(".safetensors")] == ["0_Transformer/model.safetensors"]
    assert uploaded["card"].data.library_name == "sentence-transformers"
    assert 'SentenceTransformer("someone/two-tower")' in uploaded["card"].text  # usage names the repo, not the folder
