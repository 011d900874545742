import math

import ir_measures
import numpy as np
import pytest
from ir_measures import RR, R, nDCG

from ttsn_hf.evaluation.metrics import (
    evaluate_run,
    metric_names,
    ndcg_at_k,
    paired_bootstrap,
    paired_randomisation_test,
    recall_at_k,
    reciprocal_rank,
    win_tie_loss,
)

# trec_eval needs integer relevance: ESCI gains x100 (nDCG is scale-invariant); E ∪ S is then rel >= 10.
SCALED = {"E": 100, "S": 10, "C": 1, "I": 0}


def random_case(seed: int, num_queries: int = 40, num_products: int = 300):
    """Random qrels and runs (distinct scores, so trec_eval's order is the run's) with the edge cases: a query
    judged only C/I, a query whose first relevant product ranks 101st, and a query missing from the run."""
    rng = np.random.default_rng(seed)
    products = [f"p{i:04d}" for i in range(num_products)]
    qrels, run_scores = {}, {}
    for q in range(num_queries):
        judged = rng.choice(products, size=rng.integers(1, 30), replace=False)
        labels = rng.choice(list("ESCI"), size=len(judged), p=[0.3, 0.3, 0.1, 0.3])
        qrels[f"q{q}"] = dict(zip(judged.tolist(), labels.tolist(), strict=True))
        retrieved = rng.choice(products, size=rng.integers(0, 150), replace=False)
        scores = rng.permutation(len(retrieved)).astype(float)
        run_scores[f"q{q}"] = dict(zip(retrieved.tolist(), scores.tolist(), strict=True))
    qrels["q0"] = {"p0001": "C", "p0002": "I"}
    run_scores["q0"] = {"p0001": 2.0, "p0002": 1.0}
    qrels["q1"] = {"p0001": "E", "p0002": "S", "p0003": "I"}
    run_scores["q1"] = {f"p{i:04d}": 200.0 - i for i in range(3, 103)} | {"p0001": 1.0, "p0002": 0.5}  # rank 101
    del run_scores["q2"]
    ranked = {qid: sorted(scores, key=scores.__getitem__, reverse=True) for qid, scores in run_scores.items()}
    return qrels, ranked, run_scores


def ir_measures_per_query(measures, qrels, run_scores):
    values = {}
    for metric in ir_measures.iter_calc(measures, qrels, run_scores):
        values[(metric.query_id, metric.measure)] = metric.value
    return values


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_ir_measures_per_query(seed):
    qrels, ranked, run_scores = random_case(seed)
    scaled = {qid: {pid: SCALED[label] for pid, label in labels.items()} for qid, labels in qrels.items()}
    exact = {qid: {pid: int(label == "E") for pid, label in labels.items()} for qid, labels in qrels.items()}
    graded = ir_measures_per_query([R(rel=10) @ 10, RR(rel=10) @ 100, nDCG @ 10], scaled, run_scores)
    exact_only = ir_measures_per_query([R @ 10, RR @ 100, nDCG @ 10], exact, run_scores)
    references = {
        "recall@10": (graded, R(rel=10) @ 10),
        "mrr": (graded, RR(rel=10) @ 100),
        "ndcg@10": (graded, nDCG @ 10),
        "recall@10_exact": (exact_only, R @ 10),
        "mrr_exact": (exact_only, RR @ 100),
        "ndcg@10_exact": (exact_only, nDCG @ 10),
    }
    summary, per_query = evaluate_run(ranked, qrels)
    assert {row["query_id"] for row in per_query} == set(qrels)
    for name, (values, measure) in references.items():
        defined = []
        for row in per_query:
            # trec_eval scores an undefined query 0 (and a query missing from the run not at all); we leave it out
            if row[name] is None:
                continue
            assert row[name] == pytest.approx(values.get((row["query_id"], measure), 0.0), abs=1e-9), name
            defined.append(row[name])
        assert summary[name] == pytest.approx(np.mean(defined))
    # the edge cases are really in there
    rows = {row["query_id"]: row for row in per_query}
    assert rows["q0"]["recall@10"] is None and rows["q0"]["mrr"] is None
    assert rows["q0"]["ndcg@10"] == pytest.approx(1.0)  # C is graded: the ideal ranking is met
    assert rows["q1"]["mrr"] == 0.0 and rows["q1"]["recall@10"] == 0.0
    assert rows["q2"]["recall@10"] == 0.0 and rows["q2"]["ndcg@10"] in (0.0, None)


def test_aggregates_equal_ir_measures_when_every_query_has_relevant():
    qrels, ranked, run_scores = random_case(7)
    qrels = {qid: labels | {"p0299": "E"} for qid, labels in qrels.items()}
    scaled = {qid: {pid: SCALED[label] for pid, label in labels.items()} for qid, labels in qrels.items()}
    run_scores["q2"] = {"p9999": 1.0}  # trec_eval averages only the queries in the run: give it q2 too
    reference = ir_measures.calc_aggregate([R(rel=10) @ 10, RR(rel=10) @ 100, nDCG @ 10], scaled, run_scores)
    summary, _ = evaluate_run(ranked, qrels)
    assert summary["recall@10"] == pytest.approx(reference[R(rel=10) @ 10])
    assert summary["mrr"] == pytest.approx(reference[RR(rel=10) @ 100])
    assert summary["ndcg@10"] == pytest.approx(reference[nDCG @ 10])
    assert summary["num_queries"] == summary["num_queries_with_relevant"] == len(qrels)


def test_hand_computed_values():
    ranked = ["a", "x", "b", "c"]
    assert recall_at_k(ranked, {"a", "b", "z"}, k=2) == pytest.approx(1 / 3)
    assert math.isnan(recall_at_k(ranked, set(), k=10))
    assert reciprocal_rank(ranked, {"b"}) == pytest.approx(1 / 3)
    assert reciprocal_rank(ranked, {"c"}, depth=3) == 0.0
    gains = {"a": 0.1, "b": 1.0, "c": 0.01, "d": 1.0}
    dcg = 0.1 / math.log2(2) + 1.0 / math.log2(4) + 0.01 / math.log2(5)
    ideal = 1.0 + 1.0 / math.log2(3) + 0.1 / math.log2(4) + 0.01 / math.log2(5)
    assert ndcg_at_k(ranked, gains, k=10) == pytest.approx(dcg / ideal)
    assert math.isnan(ndcg_at_k(ranked, {"a": 0.0}, k=10))


def test_summary_excludes_queries_without_relevant_judgements():
    qrels = {"q1": {"a": "E", "b": "I"}, "q2": {"c": "I", "d": "C"}}
    run = {"q1": ["b", "a"], "q2": ["c", "d"]}
    summary, per_query = evaluate_run(run, qrels)
    assert summary["num_queries"] == 2 and summary["num_queries_with_relevant"] == 1
    assert summary["recall@10"] == 1.0 and summary["mrr"] == 0.5
    assert per_query[1]["recall@10"] is None and per_query[1]["mrr_exact"] is None
    assert set(metric_names()) <= set(summary)


def test_paired_bootstrap_covers_the_true_difference_and_is_deterministic():
    rng = np.random.default_rng(0)
    b = rng.uniform(0, 1, size=500)
    a = b + 0.05 + rng.normal(0, 0.1, size=500)
    mean, low, high = paired_bootstrap(a, b, n=2000, seed=3)
    assert mean == pytest.approx(np.mean(a - b))
    assert low < 0.05 < high and low > 0  # the difference is real: the CI excludes 0
    standard_error = np.std(a - b, ddof=1) / np.sqrt(500)
    assert high - low == pytest.approx(2 * 1.96 * standard_error, rel=0.15)
    assert paired_bootstrap(a, b, n=2000, seed=3) == (mean, low, high)
    assert paired_bootstrap(a, b, n=2000, seed=4) != (mean, low, high)


def test_paired_bootstrap_drops_undefined_pairs():
    a = np.array([1.0, np.nan, 0.5, 0.0])
    b = np.array([0.0, 1.0, 0.5, np.nan])
    mean, low, high = paired_bootstrap(a, b, n=500, seed=0)
    assert mean == pytest.approx(0.5)
    assert 0.0 <= low <= mean <= high <= 1.0
    with pytest.raises(ValueError):
        paired_bootstrap(np.zeros(3), np.zeros(4))


@pytest.mark.parametrize("seed", [3, 4])
def test_esci_rank_ndcg_equals_ir_measures_ndcg_over_the_judged_list(seed):
    qrels, ranked, _ = random_case(seed)
    rng = np.random.default_rng(seed)
    judged_scores = {
        qid: dict(zip(labels, rng.permutation(len(labels)).astype(float).tolist(), strict=True))
        for qid, labels in qrels.items()
    }
    judged_run = {qid: sorted(scores, key=scores.__getitem__, reverse=True) for qid, scores in judged_scores.items()}
    scaled = {qid: {pid: SCALED[label] for pid, label in labels.items()} for qid, labels in qrels.items()}
    reference = ir_measures_per_query([nDCG], scaled, judged_scores)
    summary, per_query = evaluate_run(ranked, qrels, judged_run=judged_run)
    checked = 0
    for row in per_query:
        if row["esci_rank_ndcg"] is not None:
            assert row["esci_rank_ndcg"] == pytest.approx(reference[(row["query_id"], nDCG)], abs=1e-9)
            checked += 1
    assert checked > 30 and "esci_rank_ndcg" in metric_names()
    # without a judged run, the retrieval run's order is used, unretrieved judged products after it
    _, fallback = evaluate_run(ranked, qrels)
    assert any(a["esci_rank_ndcg"] != b["esci_rank_ndcg"] for a, b in zip(fallback, per_query, strict=True))


def test_esci_rank_ndcg_hand_value():
    labels = {"a": "I", "b": "E", "c": "S"}
    # order a, b, c: gains 0, 1, 0.1 -> DCG = 1/log2(3) + 0.1/2; ideal b, c, a: 1 + 0.1/log2(3)
    expected = (1 / math.log2(3) + 0.1 / 2) / (1 + 0.1 / math.log2(3))
    _, rows = evaluate_run({"q": []}, {"q": labels}, judged_run={"q": ["a", "b", "c"]})
    assert rows[0]["esci_rank_ndcg"] == pytest.approx(expected)


def scipy_randomisation_p(a: np.ndarray, b: np.ndarray, n: int) -> float:
    """The reference: scipy's paired permutation test of the mean difference (exact when n >= 2^m)."""
    from scipy.stats import permutation_test

    defined = ~(np.isnan(a) | np.isnan(b))
    result = permutation_test(
        (a[defined], b[defined]),
        lambda x, y, axis: np.mean(x - y, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=n,
        alternative="two-sided",
        random_state=0,
    )
    return float(result.pvalue)


@pytest.mark.parametrize("m", [4, 7, 11])
def test_randomisation_test_enumerates_every_sign_flip_like_scipy(m):
    rng = np.random.default_rng(m)
    a, b = rng.random(m).round(1), rng.random(m).round(1)  # rounded: ties between flipped sums occur
    a[0] = np.nan  # an undefined pair is left out
    expected = scipy_randomisation_p(a, b, n=10**6)
    assert paired_randomisation_test(a, b, n=10000) == pytest.approx(expected, abs=1e-12)


def test_randomisation_test_draws_agree_with_scipy_and_columns_share_them():
    rng = np.random.default_rng(5)
    a = rng.random((80, 3))
    b = a + rng.normal([0.0, 0.03, 0.2], 0.2, size=(80, 3))
    together = paired_randomisation_test(a, b, n=20000, seed=1)
    for column in range(3):
        alone = paired_randomisation_test(a[:, column], b[:, column], n=20000, seed=1)
        assert together[column] == alone  # the same draws for every column
        assert alone == pytest.approx(scipy_randomisation_p(a[:, column], b[:, column], n=20000), abs=0.01)
    assert together[2] == pytest.approx(1 / 20001)  # nothing drawn is as extreme: (0 + 1) / (n + 1), never 0


def test_randomisation_test_edges():
    same = np.array([0.1, 0.5, 0.9])
    assert paired_randomisation_test(same, same) == 1.0
    a, b = np.ones(10), np.zeros(10)
    assert paired_randomisation_test(a, b) == pytest.approx(2 / 2**10)  # all +1 or all -1 flips
    assert math.isnan(paired_randomisation_test(np.array([np.nan]), np.array([1.0])))
    with pytest.raises(ValueError, match="one shape"):
        paired_randomisation_test(np.zeros(3), np.zeros(4))


def test_win_tie_loss_counts_queries_to_four_decimals():
    a = np.array([0.5, 0.50001, 0.4, 0.7, np.nan, 0.2])
    b = np.array([0.4, 0.5, 0.5, 0.7, 0.1, np.nan])
    assert win_tie_loss(a, b) == (1, 2, 1)  # 0.50001 vs 0.5 is a tie at 4 decimals; nan pairs left out
