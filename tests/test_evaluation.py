import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

from ttsn_hf.data.esci import load_esci
from ttsn_hf.errors import UserInputError
from ttsn_hf.evaluation.evaluate import (
    EvalArguments,
    bm25_run,
    evaluate_model,
    evaluate_systems,
    judged_dense_run,
    markdown_table,
    queries_and_qrels,
    rrf_fuse,
    run_evaluation,
)
from ttsn_hf.evaluation.metrics import esci_rank_ndcg, evaluate_run, metric_names
from ttsn_hf.modeling.model import load_model
from ttsn_hf.retrieval.bm25 import BM25Retriever

THEMES = {
    "running shoes": ["red running shoes for men", "lightweight trail running shoes", "women's road running shoe"],
    "coffee maker": ["drip coffee maker 12 cup", "espresso machine with milk frother", "single serve coffee brewer"],
    "usb c cable": ["usb c charging cable 6ft", "braided usb-c to usb-c cord", "fast charge type c cable"],
    "yoga mat": ["non slip yoga mat thick", "travel yoga mat foldable", "exercise mat for pilates"],
    "desk lamp": ["led desk lamp dimmable", "architect desk lamp clamp", "reading lamp for office desk"],
    "dog bed": ["orthopedic dog bed large", "calming donut dog bed", "washable pet bed for dogs"],
}
FILLER = ["garden hose 50 ft", "stainless steel water bottle", "wireless computer mouse", "kitchen knife set"]
FILLER += ["scented candle lavender", "bluetooth speaker waterproof", "baby wipes unscented", "hiking backpack 40l"]


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def eval_cli():
    """The top-level eval.py, imported as a module."""
    spec = importlib.util.spec_from_file_location("eval_cli", REPO / "eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_esci(tmp_path_factory):
    """A tiny ESCI in the official layout: 6 test queries, 2 train queries, 26 products."""
    folder = tmp_path_factory.mktemp("tiny_esci")
    titles = [title for group in THEMES.values() for title in group] + FILLER
    products = pd.DataFrame({"product_id": [f"B{i:04d}" for i in range(len(titles))], "product_title": titles})
    for column in ("product_description", "product_bullet_point", "product_brand", "product_color"):
        products[column] = None
    products["product_locale"] = "us"
    rows = []
    for q, (query, group) in enumerate(THEMES.items()):
        first = titles.index(group[0])
        labels = {first: "E", first + 1: "E", first + 2: "S", (first + 3) % len(titles): "I"}
        for index, label in labels.items():
            split = "train" if q >= 4 else "test"
            rows.append((q, query, products.product_id[index], label, split))
    rows.append((4, "desk lamp", products.product_id[20], "C", "train"))
    examples = pd.DataFrame(rows, columns=["query_id", "query", "product_id", "esci_label", "split"])
    examples.insert(0, "example_id", range(len(examples)))
    examples["product_locale"], examples["small_version"], examples["large_version"] = "us", 1, 1
    examples.to_parquet(folder / "shopping_queries_dataset_examples.parquet", index=False)
    products.to_parquet(folder / "shopping_queries_dataset_products.parquet", index=False)
    return folder


def test_bm25_ranks_matching_products_first():
    texts = ["Red apple fruit", "green banana", "the of and", "apple laptop computer", "banana bread recipe"]
    retriever = BM25Retriever(texts, ["a", "b", "c", "d", "e"], show_progress=False)
    ids, scores = retriever.search(["APPLE fruit", "banana", "the and of", "zzz"], k=10)
    assert ids[0][:2] == ["a", "d"] and scores[0][0] > scores[0][1] > 0
    assert set(ids[1]) == {"b", "e"}
    assert ids[2] == [] and ids[3] == []  # stopwords and unknown words match nothing
    assert all(len(i) == len(s) for i, s in zip(ids, scores, strict=True))


def test_rrf_fuse_matches_hand_computation():
    fused = rrf_fuse([{"q": ["a", "b", "c"]}, {"q": ["c", "a"], "r": ["x"]}], k=60)
    # a: 1/61 + 1/62, c: 1/63 + 1/61, b: 1/62
    assert fused == {"q": ["a", "c", "b"], "r": ["x"]}
    assert rrf_fuse([{"q": ["a", "b"]}, {"q": ["b", "a"]}], k=60)["q"] == ["a", "b"]  # ties: first seen first
    assert rrf_fuse([{"q": ["a", "b", "c"]}], depth=2)["q"] == ["a", "b"]


def test_split_queries_and_errors():
    judgements = pd.DataFrame(
        {"query_id": [1, 1, 2], "query": ["x", "x", "y"], "product_id": ["a", "b", "a"],
         "esci_label": ["E", "I", "S"], "split": ["test", "test", "train"]}
    )  # fmt: skip
    queries, qrels = queries_and_qrels(judgements, "test")
    assert queries == {"1": "x"} and qrels == {"1": {"a": "E", "b": "I"}}
    with pytest.raises(UserInputError, match="no judgements in split 'dev'"):
        queries_and_qrels(judgements, "dev")
    with pytest.raises(UserInputError, match="esci_label"):
        queries_and_qrels(judgements.drop(columns="esci_label"), "test")


def test_evaluate_systems_compares_the_model_with_each_system():
    qrels = {f"q{i}": {"a": "E", "b": "S", "c": "I"} for i in range(30)}
    runs = {
        "model": {q: ["a", "b", "c"] for q in qrels},
        "worse": {q: ["c", "b", "a"] for q in qrels},
    }
    metrics, per_query = evaluate_systems(runs, qrels, bootstrap_samples=200, queries={q: q for q in qrels})
    assert metrics["mrr"] == 1.0 and metrics["systems"]["worse"]["mrr"] == 0.5
    assert metrics["comparisons"]["model - worse"]["mrr"] == {
        "difference": 0.5, "ci_low": 0.5, "ci_high": 0.5, "wins": 30, "ties": 0, "losses": 0, "p_value": 1 / 201
    }  # fmt: skip
    assert metrics["comparisons"]["model - worse"]["recall@10"]["ties"] == 30  # both find a and b in the top 10
    assert len(per_query) == 60 and per_query[0]["query"] == "q0" and per_query[0]["top10"] == ["a", "b", "c"]
    table = markdown_table(metrics)
    assert "| worse | 30 | 1.000 | 0.500 |" in table and "+0.500 [+0.500, +0.500]" in table


def test_bm25_on_the_esci_sample_matches_the_reference(esci_sample):
    from ttsn_hf.data.esci import load_esci

    data = load_esci(esci_sample)
    queries, qrels = queries_and_qrels(data.judgements.to_pandas(), "test")
    catalogue = data.catalogue.to_pandas()
    run = bm25_run(queries, catalogue["product_id"].tolist(), catalogue["product_text"].tolist(), top_k=100)
    summary, _ = evaluate_run(run, qrels)
    # reference: bm25s with English stopwords over titles (the sample's product text is the title)
    assert summary["num_queries"] == 50
    assert round(summary["recall@10"], 3) == 0.437
    assert round(summary["mrr"], 3) == 0.849
    assert round(summary["ndcg@10"], 3) == 0.584


def test_eval_cli_end_to_end(eval_cli, tiny_esci, tiny_encoder_dir, tmp_path, capsys):
    output_dir = tmp_path / "eval"
    metrics = eval_cli.main(
        ["--model_name_or_path", str(tiny_encoder_dir), "--esci_dir", str(tiny_esci), "--output_dir",
         str(output_dir), "--hybrid", "--bootstrap_samples", "500", "--batch_size", "8"]
    )  # fmt: skip
    assert "| system | queries | Recall@10 |" in capsys.readouterr().out
    assert sorted(path.name for path in output_dir.iterdir()) == [
        "metrics.json", "metrics.png", "per_query.jsonl", "report.html", "results.md"
    ]  # fmt: skip
    written = json.loads((output_dir / "metrics.json").read_text())
    for key in ["recall@10", "mrr", "ndcg@10", "num_queries", "recall@10_exact", "mrr_exact", "ndcg@10_exact"]:
        assert written[key] == metrics[key] == metrics["systems"]["model"][key]
    assert written["num_queries"] == 4
    assert list(written["systems"]) == ["model", "baseline", "bm25", "hybrid"]
    assert list(written["comparisons"]) == ["model - baseline", "model - bm25", "model - hybrid"]
    for comparison in written["comparisons"].values():
        for name in metric_names():
            low, high = comparison[name]["ci_low"], comparison[name]["ci_high"]
            assert low <= comparison[name]["difference"] <= high
    # the base encoder and BM25 find the themed products; these queries are easy
    assert written["systems"]["baseline"]["mrr"] == 1.0 and written["systems"]["bm25"]["mrr"] == 1.0
    difference = written["comparisons"]["model - baseline"]["mrr"]["difference"]
    assert difference == pytest.approx(written["mrr"] - 1.0)
    rows = [json.loads(line) for line in (output_dir / "per_query.jsonl").read_text().splitlines()]
    assert len(rows) == 4 * 4 and {row["system"] for row in rows} == set(written["systems"])
    assert {row["query"] for row in rows} == {"running shoes", "coffee maker", "usb c cable", "yoga mat"}
    assert (output_dir / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "model - bm25" in (output_dir / "results.md").read_text()
    assert "ESCI rank nDCG" in (output_dir / "results.md").read_text()
    # ESCI task 1: the model's judged lists are ordered by its scores (all judged products, not only its top k)
    esci = load_esci(tiny_esci)
    queries, qrels = queries_and_qrels(esci.judgements.to_pandas(), "test")
    catalogue = esci.catalogue.to_pandas()
    model = load_model(str(tiny_encoder_dir))
    product_emb = model.encode_products(catalogue["product_text"].tolist(), batch_size=8)
    query_emb = model.encode_queries(list(queries.values()), batch_size=8)
    judged = judged_dense_run(queries, query_emb, catalogue["product_id"].tolist(), product_emb, qrels)
    for row in rows:
        if row["system"] == "model":
            expected = esci_rank_ndcg(judged[row["query_id"]], qrels[row["query_id"]])
            assert row["esci_rank_ndcg"] == pytest.approx(expected, abs=1e-6)


def test_eval_with_a_saved_index_matches_re_encoding(tiny_esci, tiny_encoder_dir, tmp_path):
    from ttsn_hf.data.esci import load_esci
    from ttsn_hf.modeling.model import load_model
    from ttsn_hf.retrieval.indexing import build_catalogue_index

    catalogue = load_esci(tiny_esci).catalogue.to_pandas()
    model = load_model(str(tiny_encoder_dir))
    index_dir = tmp_path / "index"
    build_catalogue_index(model, catalogue["product_id"].tolist(), catalogue["product_text"].tolist(), index_dir)
    common = dict(model_name_or_path=str(tiny_encoder_dir), esci_dir=str(tiny_esci), baseline="none", bm25=False)
    common["bootstrap_samples"] = 100
    encoded = run_evaluation(EvalArguments(output_dir=str(tmp_path / "a"), **common))
    indexed = run_evaluation(EvalArguments(output_dir=str(tmp_path / "b"), index_dir=str(index_dir), **common))
    for name in metric_names():
        assert indexed[name] == pytest.approx(encoded[name])
    queries, qrels = queries_and_qrels(load_esci(tiny_esci).judgements.to_pandas(), "test")
    in_memory, _ = evaluate_model(model, queries, qrels, catalogue["product_id"].tolist(), catalogue["product_text"])
    assert in_memory == {key: encoded[key] for key in in_memory}
    assert (tmp_path / "b" / "per_query.jsonl").read_text() == (tmp_path / "a" / "per_query.jsonl").read_text()


def test_a_second_model_is_compared_query_by_query(tiny_esci, tiny_encoder_dir, tmp_path):
    from ttsn_hf.evaluation.report import decode_data, embedded

    args = EvalArguments(
        model_name_or_path=str(tiny_encoder_dir), compare_model_name_or_path=str(tiny_encoder_dir),
        esci_dir=str(tiny_esci), baseline="none", bm25=False, bootstrap_samples=100, output_dir=str(tmp_path),
    )  # fmt: skip
    metrics = run_evaluation(args)
    assert list(metrics["systems"]) == ["model", "compare"]
    assert metrics["systems"]["compare"]["name"] == str(tiny_encoder_dir)
    for figure in metrics["comparisons"]["model - compare"].values():  # the same model: every query a tie
        assert (figure["difference"], figure["wins"], figure["losses"], figure["p_value"]) == (0, 0, 0, 1.0)
    data = decode_data(embedded((tmp_path / "report.html").read_text(), "data"))
    assert data["systems"] == ["model", "compare"] and data["top"]["model"] == data["top"]["compare"]


def test_eval_cli_reports_bad_input(eval_cli, tiny_esci, capsys):
    with pytest.raises(SystemExit) as exit_info:
        eval_cli.main(["--esci_dir", str(tiny_esci), "--split", "validation"])
    assert exit_info.value.code == 2
    assert "no judgements in split 'validation'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_cli.main(["--split", "test"])
    assert "--esci_dir" in capsys.readouterr().err
