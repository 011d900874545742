import dataclasses
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pandas as pd
import pytest
import sentence_transformers
import torch
from packaging.version import Version
from sentence_transformers import util as st_util

from ttsn_hf.errors import UserInputError
from ttsn_hf.retrieval.mining import (
    COLUMNS,
    MiningSettings,
    load_mining_input,
    mine_hard_negatives,
    select_hard_negatives,
    write_hard_negatives,
)

REPO = Path(__file__).resolve().parents[1]


class HashingEncoder:
    """A deterministic bag-of-words encoder (fast on the whole 6,122-product sample)."""

    embedding_dim = 64
    name_or_path = "hashing-bow"
    fingerprint = "hashing-bow-64"

    def encode_products(self, texts, batch_size=256, bf16=False, show_progress_bar=None):
        vectors = np.zeros((len(texts), self.embedding_dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                digest = int(hashlib.md5(word.encode()).hexdigest(), 16)
                vectors[row, digest % self.embedding_dim] += 1.0
        vectors[:, 0] += 0.01
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    encode_queries = encode_products


class FixedEmbeddingModel:
    """Stands in for a SentenceTransformer in sentence-transformers' mine_hard_negatives: the texts' embeddings are
    given, so both implementations mine from the very same vectors."""

    device = torch.device("cpu")
    model_card_data = SimpleNamespace(base_model=None)

    def __init__(self, embedding_of: dict[str, np.ndarray]):
        self.embedding_of = embedding_of

    def encode_query(self, texts, **kwargs):
        return np.stack([self.embedding_of[text] for text in texts])

    encode_document = encode_query

    def similarity(self, a, b):
        return st_util.cos_sim(a, b)

    def similarity_pairwise(self, a, b):
        return st_util.pairwise_cos_sim(torch.as_tensor(a), torch.as_tensor(b))


def random_unit(rng, rows, dim=16):
    vectors = rng.normal(size=(rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def synthetic():
    """40 queries, 300 products; each query has 1 to 4 positives placed near it, and no other judgement."""
    rng = np.random.default_rng(7)
    product_emb = random_unit(rng, 300)
    query_emb = random_unit(rng, 40)
    positives = {}
    for q in range(40):
        rows = rng.choice(300, size=rng.integers(1, 5), replace=False)
        product_emb[rows] = product_emb[rows] + 1.5 * query_emb[q]
        positives[f"q{q:02d}"] = {f"p{row:03d}" for row in rows}
    product_emb /= np.linalg.norm(product_emb, axis=1, keepdims=True)
    query_ids = [f"q{q:02d}" for q in range(40)]
    product_ids = [f"p{p:03d}" for p in range(300)]
    return query_emb, product_emb, query_ids, product_ids, positives


# sentence-transformers 6.3 retrieves one candidate more per query than range_max + max_positives: a slot kept for
# the query's own text, which its corpus may hold and which it then drops. A product catalogue never holds the
# query, so ours retrieves range_max + m (m: most excluded products of a query), 6.2's depth; on >= 6.3 the same
# depth is range_max - 1 there (its top-k window is then one shorter, which "top" sampling never reaches).
ST_KEEPS_A_SLOT_FOR_THE_QUERY = Version(sentence_transformers.__version__) >= Version("6.3")


def sentence_transformers_negatives(synthetic, **settings):
    query_emb, product_emb, query_ids, product_ids, positives = synthetic
    if ST_KEEPS_A_SLOT_FOR_THE_QUERY:
        most_positives = max(map(len, positives.values()))
        margin = settings.get("absolute_margin") is not None or settings.get("relative_margin") is not None
        default = settings.get("range_min", 0) + (10 if margin else 1) * settings["num_negatives"] + most_positives
        settings = {**settings, "range_max": (settings.get("range_max") or default) - 1}
    embedding_of = dict(zip(query_ids, query_emb, strict=True)) | dict(zip(product_ids, product_emb, strict=True))
    pairs = [(qid, pid) for qid in query_ids for pid in sorted(positives[qid])]
    dataset = datasets.Dataset.from_dict({"query": [q for q, _ in pairs], "product": [p for _, p in pairs]})
    mined = st_util.mine_hard_negatives(
        dataset,
        FixedEmbeddingModel(embedding_of),
        corpus=product_ids,
        output_format="labeled-pair",
        sampling_strategy="top",
        verbose=False,
        **settings,
    ).to_pandas()
    negatives = mined[mined["label"] == 0]
    return {qid: group["product"].tolist() for qid, group in negatives.groupby("query", sort=False)}


def ours(synthetic, **settings):
    query_emb, product_emb, query_ids, product_ids, positives = synthetic
    mined = select_hard_negatives(
        query_emb, product_emb, query_ids, product_ids, positives, positives, positive_reference="min", **settings
    )
    return {qid: group["product_id"].tolist() for qid, group in mined.groupby("query_id", sort=False)}


@pytest.mark.parametrize(
    "settings",
    [
        dict(num_negatives=5, relative_margin=0.05, range_max=20),
        dict(num_negatives=3, absolute_margin=0.1, range_min=2, range_max=15),
        dict(num_negatives=4, range_min=1),
        dict(num_negatives=6, relative_margin=0.05),
    ],
    ids=["relative", "absolute+range_min", "no-margin", "default-range_max"],
)
def test_same_negatives_as_sentence_transformers_on_the_same_embeddings(synthetic, settings):
    expected = sentence_transformers_negatives(synthetic, **settings)
    ours_settings = dict(settings)
    ours_settings["margin"] = ours_settings.pop("absolute_margin", None)
    ours_settings.setdefault("relative_margin", None)
    found = ours(synthetic, **ours_settings)
    assert sum(map(len, expected.values())) > 60  # the comparison has substance
    assert found == expected


def test_scores_ranks_and_margin_hold(synthetic):
    query_emb, product_emb, query_ids, product_ids, positives = synthetic
    mined = select_hard_negatives(query_emb, product_emb, query_ids, product_ids, positives, positives)
    assert list(mined.columns) == COLUMNS
    row_of = {pid: row for row, pid in enumerate(product_ids)}
    query_of = dict(zip(query_ids, query_emb, strict=True))
    for negative in mined.itertuples():
        scores = product_emb @ query_of[negative.query_id]
        assert negative.score == pytest.approx(scores[row_of[negative.product_id]], abs=1e-5)
        assert negative.rank == 1 + int((scores > negative.score + 1e-6).sum())
        mean_positive = np.mean([scores[row_of[pid]] for pid in positives[negative.query_id]])
        assert negative.positive_score == pytest.approx(mean_positive, abs=1e-5)
        assert negative.score <= negative.positive_score - 0.05 * abs(negative.positive_score) + 1e-6
        assert negative.product_id not in positives[negative.query_id]


def test_random_sampling_is_deterministic_for_a_seed(synthetic):
    query_emb, product_emb, query_ids, product_ids, positives = synthetic
    args = (query_emb, product_emb, query_ids, product_ids, positives, positives)
    first = select_hard_negatives(*args, num_negatives=3, sampling_strategy="random", seed=1)
    pd.testing.assert_frame_equal(
        first, select_hard_negatives(*args, num_negatives=3, sampling_strategy="random", seed=1)
    )
    other = select_hard_negatives(*args, num_negatives=3, sampling_strategy="random", seed=2)
    assert not first["product_id"].equals(other["product_id"])
    top = select_hard_negatives(*args, num_negatives=3, range_max=30)
    assert first.groupby("query_id")["rank"].max().mean() > top.groupby("query_id")["rank"].max().mean()
    # the same query gets the same sample whatever other queries are mined with it
    alone = select_hard_negatives(
        query_emb[:1], product_emb, query_ids[:1], product_ids, positives, positives,
        num_negatives=3, sampling_strategy="random", seed=1, range_max=first.attrs["summary"]["range_max"],
    )  # fmt: skip
    assert alone["product_id"].tolist() == first[first["query_id"] == query_ids[0]]["product_id"].tolist()


def test_ties_are_broken_by_product_id():
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    products = np.array([[0.6, 0.8]] * 4 + [[1.0, 0.0]], dtype=np.float32)
    ids = ["d", "b", "c", "a", "positive"]
    mined = select_hard_negatives(
        query, products, ["q"], ids, {"q": {"positive"}}, {"q": {"positive"}}, num_negatives=3
    )
    assert mined["product_id"].tolist() == ["a", "b", "c"]


def test_bad_settings_are_user_errors(synthetic):
    query_emb, product_emb, query_ids, product_ids, positives = synthetic
    args = (query_emb, product_emb, query_ids, product_ids, positives, positives)
    with pytest.raises(UserInputError, match="--num_negatives must be at least 1"):
        select_hard_negatives(*args, num_negatives=0)
    with pytest.raises(UserInputError, match="cannot mine 10 negatives .* --range_min 5 and --range_max 12"):
        select_hard_negatives(*args, num_negatives=10, range_min=5, range_max=12)


@pytest.fixture(scope="module")
def sample_negatives(esci_sample, tmp_path_factory):
    data = load_mining_input(esci_sample)
    cache = tmp_path_factory.mktemp("cache")
    settings = MiningSettings(num_negatives=20, relative_margin=None, cache_dir=cache, seed=3)
    # no margin: the exclusion of judged products alone has to keep them out
    return data, mine_hard_negatives(HashingEncoder(), data, settings), cache


def test_no_judged_product_is_ever_mined(sample_negatives, esci_sample):
    data, mined, _ = sample_negatives
    judged = pd.read_parquet(esci_sample / "shopping_queries_dataset_examples.parquet")
    assert set(judged["esci_label"]) == {"E", "S", "C", "I"}  # E/S/C would be false negatives, I already negatives
    judged_pairs = set(zip(judged["query_id"], judged["product_id"], strict=True))
    assert len(mined) == 150 * 20
    assert not judged_pairs & set(zip(mined["query_id"], mined["product_id"], strict=True))
    train = set(judged.loc[judged["split"] == "train", "query_id"].astype(str))
    assert set(mined["query_id"].astype(str)) <= train and len(data.train_query_ids) == 150
    assert not mined.duplicated(["query_id", "product_id"]).any()


def test_queries_searched_in_chunks_mine_the_same(sample_negatives, monkeypatch):
    from ttsn_hf.retrieval import mining

    data, mined, cache = sample_negatives
    monkeypatch.setattr(mining, "QUERIES_PER_SEARCH", 7)
    chunked = mine_hard_negatives(
        HashingEncoder(), data, num_negatives=20, relative_margin=None, cache_dir=cache, seed=3
    )
    pd.testing.assert_frame_equal(chunked, mined)


def test_mined_file_keeps_the_source_query_id_dtype_and_joins_the_examples(sample_negatives, esci_sample, tmp_path):
    """The official layout's query_id is int64, a plain table's a string: the mined file keeps each, and says which,
    so that a user's examples.merge(mined, on="query_id") works."""
    _, mined, _ = sample_negatives
    examples = pd.read_parquet(esci_sample / "shopping_queries_dataset_examples.parquet")
    path = write_hard_negatives(mined, tmp_path / "official.parquet")
    written = pd.read_parquet(path)
    assert written["query_id"].dtype == examples["query_id"].dtype == np.int64
    assert json.loads(path.with_suffix(".json").read_text())["query_id_dtype"] == "int64"
    joined = examples.merge(written, on="query_id", suffixes=("", "_mined"))
    assert len(joined) == len(examples[examples["query_id"].isin(written["query_id"])].merge(written, on="query_id"))
    assert set(joined["query"]) and set(joined["query_id"]) == set(written["query_id"])

    plain = tmp_path / "plain.csv"
    examples.head(300).rename(columns={"esci_label": "label"}).merge(
        pd.read_parquet(esci_sample / "shopping_queries_dataset_products.parquet"), on="product_id"
    ).assign(query_id=lambda frame: "q" + frame["query_id"].astype(str))[
        ["query_id", "query", "product_id", "product_title", "label", "split"]
    ].to_csv(plain, index=False)
    from_plain = mine_hard_negatives(HashingEncoder(), load_mining_input(plain), num_negatives=2, relative_margin=None)
    path = write_hard_negatives(from_plain, tmp_path / "plain.parquet")
    assert pd.api.types.is_string_dtype(pd.read_parquet(path)["query_id"])
    assert json.loads(path.with_suffix(".json").read_text())["query_id_dtype"] == "string"
    assert pd.read_csv(plain, dtype={"query_id": str}).merge(pd.read_parquet(path), on="query_id").shape[0] > 0


def test_a_mined_file_is_compared_by_every_selection_setting_and_the_catalogue(sample_negatives, tmp_path):
    from ttsn_hf.data.tables import Products
    from ttsn_hf.retrieval.mining import mined_file_difference

    data, mined, _ = sample_negatives
    summary = mined.attrs["summary"]
    settings = MiningSettings(num_negatives=20, relative_margin=None, seed=3)
    fingerprint = summary["model_fingerprint"]
    assert mined_file_difference(summary, fingerprint, settings, data.products) is None
    assert "mined by" in mined_file_difference(summary, "0" * 64, settings, data.products)
    changes = {"num_negatives": 10, "relative_margin": 0.05, "margin": 0.1, "range_min": 1, "range_max": 99,
               "sampling_strategy": "random", "positive_reference": "min", "positive_labels": ("E",)}  # fmt: skip
    for name, value in changes.items():
        other = dataclasses.replace(settings, **{name: value})
        assert name in mined_file_difference(summary, fingerprint, other, data.products), name
    # the seed matters to random sampling only
    assert mined_file_difference(summary, fingerprint, dataclasses.replace(settings, seed=4), data.products) is None
    smaller = Products(data.products.table.slice(0, len(data.products) - 1))
    assert mined_file_difference(summary, fingerprint, settings, smaller) == "mined over another catalogue"
    assert "older version" in mined_file_difference({"model_fingerprint": fingerprint}, fingerprint, settings, smaller)


def test_mining_the_sample_again_is_identical_and_reuses_the_cache(sample_negatives):
    data, mined, cache = sample_negatives
    encoder = HashingEncoder()
    encoder.encode_products = lambda texts, **kwargs: pytest.fail("the catalogue was encoded again")
    again = mine_hard_negatives(encoder, data, num_negatives=20, relative_margin=None, cache_dir=cache, seed=3)
    pd.testing.assert_frame_equal(again, mined)


def test_only_the_training_queries_of_a_prepared_folder_are_mined(esci_sample, tmp_path):
    from ttsn_hf.data.esci import load_esci

    esci = load_esci(esci_sample)
    folder = tmp_path / "prepared"
    esci.catalogue.save_to_disk(folder / "catalogue")
    esci.judgements.save_to_disk(folder / "judgements")
    train = sorted(set(esci.judgements.filter(lambda row: row["split"] == "train")["query_id"]))
    kept = train[:5]
    datasets.Dataset.from_dict({"query_id": kept}).save_to_disk(folder / "stage1" / "train")
    datasets.Dataset.from_dict({"query_id": train[5:9]}).save_to_disk(folder / "stage1" / "validation")
    assert load_mining_input(folder).train_query_ids == sorted(map(str, kept))


def test_write_is_atomic_and_writes_a_summary(synthetic, tmp_path, monkeypatch):
    query_emb, product_emb, query_ids, product_ids, positives = synthetic
    mined = select_hard_negatives(query_emb, product_emb, query_ids, product_ids, positives, positives)
    path = write_hard_negatives(mined, tmp_path / "negatives.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(path), mined)
    summary = json.loads(path.with_suffix(".json").read_text())
    assert summary["negatives"] == len(mined) and summary["relative_margin"] == 0.05

    def crash(self, target, **kwargs):
        Path(target).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", crash)
    with pytest.raises(OSError, match="disk full"):
        write_hard_negatives(mined.head(3), path)
    pd.testing.assert_frame_equal(pd.read_parquet(path), mined)  # the previous file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["negatives.json", "negatives.parquet"]
    with pytest.raises(UserInputError, match="must end in .parquet"):
        write_hard_negatives(mined, tmp_path / "negatives.csv")


def small_esci(folder, esci_sample, queries=12):
    examples = pd.read_parquet(esci_sample / "shopping_queries_dataset_examples.parquet")
    products = pd.read_parquet(esci_sample / "shopping_queries_dataset_products.parquet")
    kept = sorted(examples["query_id"].unique())[:queries]
    examples = examples[examples["query_id"].isin(kept)]
    products = products[products["product_id"].isin(examples["product_id"]) | (products.index % 40 == 0)]
    folder.mkdir(parents=True, exist_ok=True)
    examples.to_parquet(folder / "shopping_queries_dataset_examples.parquet", index=False)
    products.to_parquet(folder / "shopping_queries_dataset_products.parquet", index=False)
    return folder


def run_mine_cli(argv):
    spec = importlib.util.spec_from_file_location("mine_cli", REPO / "mine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def test_mine_cli_with_the_seed_flags(tiny_encoder_dir, esci_sample, tmp_path):
    esci = small_esci(tmp_path / "esci", esci_sample)
    output = tmp_path / "data" / "hard_negatives_stage2.parquet"
    argv = ["--checkpoint", str(tiny_encoder_dir), "--output", str(output), "--esci_dir", str(esci)]
    argv += ["--cache_dir", str(tmp_path / "cache"), "--num_negatives", "4", "--margin", "0.002", "--range_min", "1"]
    argv += ["--relative_margin", "-1", "--range_max", "300"]  # a random tiny model scores all products alike
    run_mine_cli(argv)
    mined = pd.read_parquet(output)
    summary = json.loads(output.with_suffix(".json").read_text())
    assert list(mined.columns) == COLUMNS and len(mined) > 0
    assert summary["num_negatives"] == 4 and summary["margin"] == 0.002 and summary["range_min"] == 1
    assert summary["relative_margin"] is None and summary["range_max"] == 300
    assert summary["model_name_or_path"] == str(tiny_encoder_dir)
    assert (mined["score"] <= mined["positive_score"] - 0.002 + 1e-6).all()
    examples = pd.read_parquet(esci / "shopping_queries_dataset_examples.parquet")
    assert mined["query_id"].dtype == examples["query_id"].dtype and summary["query_id_dtype"] == "int64"
    assert len(examples.merge(mined, on="query_id")) > 0
    with pytest.raises(SystemExit) as exit_info:
        run_mine_cli(["--checkpoint", str(tiny_encoder_dir), "--output", str(output)])
    assert exit_info.value.code == 2


DRIVER = """
import sys
from pathlib import Path

import numpy as np
from ttsn_hf.retrieval.encoding import encode_catalogue, make_accelerator
from ttsn_hf.retrieval.indexing import build_catalogue_index
from ttsn_hf.retrieval.mining import load_mining_input, mine_to_file
from ttsn_hf.modeling.model import load_model

model_dir, esci, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
accelerator = make_accelerator()
model = load_model(model_dir)
encode_products, encoded = model.encode_products, []
model.encode_products = lambda texts, **kwargs: encoded.append(len(texts)) or encode_products(texts, **kwargs)
data = load_mining_input(esci)
settings = dict(margin=0.002, relative_margin=None, range_max=300, chunk_size=64, seed=5)
mine_to_file(model, data, out / "negatives.parquet", accelerator, cache_dir=out / "cache", **settings)
build_catalogue_index(model, data.products, None, out / "index", "Flat", chunk_size=64, cache_dir=out / "cache",
                      accelerator=accelerator)
uncached = encode_catalogue(model, data.products, chunk_size=64, accelerator=accelerator)
(out / f"encoded_by_{accelerator.process_index}.txt").write_text(str(sum(encoded)))
if accelerator.is_main_process:
    np.save(out / "uncached.npy", uncached)
    (out / "world_size.txt").write_text(str(accelerator.num_processes))
accelerator.wait_for_everyone()
accelerator.end_training()
"""


def run_driver(tiny_encoder_dir, esci, out, processes):
    out.mkdir(parents=True)
    (out / "driver.py").write_text(DRIVER)
    # on a CPU-only machine `accelerate launch --cpu` starts one process: --multi_gpu starts torchrun's N processes
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)]
    launcher += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    command = [*launcher, str(out / "driver.py")] if processes > 1 else [sys.executable, str(out / "driver.py")]
    subprocess.run([*command, str(tiny_encoder_dir), str(esci), str(out)], env=env, check=True, timeout=300)
    return out


def test_two_processes_mine_and_index_exactly_as_one(tiny_encoder_dir, esci_sample, tmp_path):
    from ttsn_hf.retrieval.indexing import load_index, search

    esci = small_esci(tmp_path / "esci", esci_sample)
    one = run_driver(tiny_encoder_dir, esci, tmp_path / "one", 1)
    two = run_driver(tiny_encoder_dir, esci, tmp_path / "two", 2)
    assert (one / "world_size.txt").read_text() == "1" and (two / "world_size.txt").read_text() == "2"
    mined_one, mined_two = pd.read_parquet(one / "negatives.parquet"), pd.read_parquet(two / "negatives.parquet")
    assert len(mined_one) > 0
    pd.testing.assert_frame_equal(mined_two, mined_one)
    np.testing.assert_allclose(np.load(two / "uncached.npy"), np.load(one / "uncached.npy"), atol=1e-6)
    index_one, index_two = load_index(one / "index"), load_index(two / "index")
    assert index_two.product_ids == index_one.product_ids
    queries = np.load(one / "uncached.npy")[:20]
    np.testing.assert_array_equal(search(index_two.index, queries, 5)[1], search(index_one.index, queries, 5)[1])
    # each of the 2 processes encoded its share: the catalogue twice in all (cached once, uncached once)
    shares = [int((two / f"encoded_by_{rank}.txt").read_text()) for rank in (0, 1)]
    assert min(shares) > 0 and sum(shares) == 2 * index_one.index.ntotal == int((one / "encoded_by_0.txt").read_text())
