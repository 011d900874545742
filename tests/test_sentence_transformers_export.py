"""One text, one embedding: a saved folder embeds alike in TwoTowerModel and in plain SentenceTransformer."""

import numpy as np
import pandas as pd
import pytest
import torch
from sentence_transformers import SentenceTransformer

from ttsn_hf import TwoTowerModel

SHORT = ["usb c cable", "dog toy"]


def long_text(texts: pd.Series, tokenizer, tokens: int = 200) -> str:
    """Texts of the ESCI sample joined until they make at least ``tokens`` tokens."""
    text = ""
    for piece in texts:
        text = f"{text} {piece}".strip()
        if len(tokenizer(text)["input_ids"]) >= tokens:
            return text
    raise AssertionError("the sample holds too little text")


@pytest.fixture(scope="module")
def long_texts(esci_sample, tiny_encoder_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    queries = pd.read_parquet(esci_sample / "shopping_queries_dataset_examples.parquet")["query"].drop_duplicates()
    titles = pd.read_parquet(esci_sample / "shopping_queries_dataset_products.parquet")["product_title"].dropna()
    return long_text(queries, tokenizer), long_text(titles, tokenizer)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1)


@pytest.fixture(params=["tied", "untied"])
def saved(request, tiny_encoder_dir, tmp_path):
    model = TwoTowerModel.from_encoder(str(tiny_encoder_dir), tie_towers=request.param == "tied")
    torch.manual_seed(0)
    with torch.no_grad():  # trained-looking weights; untied: a product encoder of its own
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    model.save_pretrained(tmp_path / "model")
    return model, tmp_path / "model"


def test_long_query_and_product_embed_alike_in_both_apis(saved, long_texts):
    model, folder = saved
    query, product = long_texts
    assert min(len(model.tokenizer(text)["input_ids"]) for text in long_texts) >= 200
    theirs = SentenceTransformer(str(folder), device="cpu")
    assert cosine(theirs.encode_query([query]), model.encode_queries([query])).min() >= 0.9999
    assert cosine(theirs.encode_document([product]), model.encode_products([product])).min() >= 0.9999
    # plain encode is the product tower (the document route, cut at product_max_length)
    assert cosine(theirs.encode([product]), model.encode_products([product])).min() >= 0.9999
    # the towers' lengths differ (32 and 128 tokens), so one long text gets two embeddings: the test can fail
    assert cosine(model.encode_queries([product]), model.encode_products([product])).max() < 0.999
    assert cosine(theirs.encode_query([product]), theirs.encode_document([product])).max() < 0.999


def test_the_weights_are_stored_once_per_encoder(saved):
    model, folder = saved
    weights = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*.safetensors"))
    if model.config.tie_towers:
        assert weights == ["0_Transformer/model.safetensors"]
    else:
        assert weights == [
            "0_Router/document_0_Transformer/model.safetensors",
            "0_Router/query_0_Transformer/model.safetensors",
        ]
        assert not np.allclose(model.encode_queries(SHORT), model.encode_products(SHORT), atol=1e-4)
        theirs = SentenceTransformer(str(folder), device="cpu")  # each route runs its own tower's encoder
        assert cosine(theirs.encode_query(SHORT), model.encode_queries(SHORT)).min() >= 0.9999
        assert cosine(theirs.encode_document(SHORT), model.encode_products(SHORT)).min() >= 0.9999
    reloaded = TwoTowerModel.from_pretrained(folder)
    np.testing.assert_array_equal(reloaded.encode_queries(SHORT), model.encode_queries(SHORT))
    np.testing.assert_array_equal(reloaded.encode_products(SHORT), model.encode_products(SHORT))


def test_untied_folders_of_the_earlier_layout_still_load(tiny_encoder_dir, tmp_path):
    """Before the towers' lengths were carried: query encoder in 0_Transformer/, product encoder in
    product_encoder/, no sentence-transformers files for untied towers."""
    model = TwoTowerModel.from_encoder(str(tiny_encoder_dir), tie_towers=False)
    with torch.no_grad():
        model.product_encoder.embeddings.word_embeddings.weight.mul_(1.5)
    folder = tmp_path / "earlier"
    model.config.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    model.encoder.save_pretrained(folder / "0_Transformer")
    model.product_encoder.save_pretrained(folder / "product_encoder")
    reloaded = TwoTowerModel.from_pretrained(folder)
    np.testing.assert_array_equal(reloaded.encode_products(SHORT), model.encode_products(SHORT))
    np.testing.assert_array_equal(reloaded.encode_queries(SHORT), model.encode_queries(SHORT))
    other = TwoTowerModel.from_encoder(str(tiny_encoder_dir), tie_towers=False)
    assert other.load_saved_weights(folder)
    np.testing.assert_array_equal(other.encode_products(SHORT), model.encode_products(SHORT))


def test_untied_config_without_a_product_encoder_is_a_one_line_error(tiny_encoder_dir, tmp_path):
    from ttsn_hf.errors import UserInputError

    model = TwoTowerModel.from_encoder(str(tiny_encoder_dir))
    model.save_pretrained(tmp_path)
    model.config.tie_towers = False
    model.config.save_pretrained(tmp_path)
    with pytest.raises(UserInputError, match="product_encoder"):
        TwoTowerModel.from_pretrained(tmp_path)


def test_a_model_saved_over_one_with_the_other_towers_loads_as_saved(tiny_encoder_dir, tmp_path):
    untied = TwoTowerModel.from_encoder(str(tiny_encoder_dir), tie_towers=False)
    untied.save_pretrained(tmp_path)
    tied = TwoTowerModel.from_encoder(str(tiny_encoder_dir))
    with torch.no_grad():
        tied.encoder.embeddings.word_embeddings.weight.mul_(1.5)
    tied.save_pretrained(tmp_path)
    assert sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*.safetensors")) == [
        "0_Transformer/model.safetensors"
    ]
    reloaded = TwoTowerModel.from_pretrained(tmp_path)
    np.testing.assert_array_equal(reloaded.encode_products(SHORT), tied.encode_products(SHORT))
    theirs = SentenceTransformer(str(tmp_path), device="cpu").encode_query(SHORT)
    assert cosine(theirs, tied.encode_queries(SHORT)).min() >= 0.9999
