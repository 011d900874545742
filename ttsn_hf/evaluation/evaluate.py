"""Evaluation driver: the model, a baseline encoder, BM25 (and optionally a dense + BM25 hybrid) retrieve over
the whole catalogue for every query of a split; the report compares them with paired-bootstrap CIs.

Outputs (``output_dir``): ``metrics.json`` (the model's metrics at top level, every system under "systems", the
differences under "comparisons"), ``per_query.jsonl``, ``results.md``, ``metrics.png`` and ``report.html`` (query by
query: where the model wins and loses, see ``report.py``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from ..arguments import EvalArguments
from ..atomic import atomic_path, write_text_atomic
from ..errors import UserInputError
from ..extras import require
from ..labels import ESCI_GAINS
from ..retrieval.bm25 import BM25Retriever
from ..retrieval.encoding import encode_catalogue
from ..retrieval.indexing import search
from .metrics import (
    TIE_DECIMALS,
    evaluate_run,
    metric_label,
    metric_names,
    paired_bootstrap,
    paired_randomisation_test,
    win_tie_loss,
)
from .report import json_safe, render_report

Run = dict[str, list[str]]
Qrels = dict[str, dict[str, str]]

MAIN_SYSTEM = "model"
PLOTTED_METRICS = ("recall@10", "mrr", "ndcg@10", "esci_rank_ndcg")


# ---------------------------------------------------------------------------------------------- retrieval


def rows_to_run(query_ids: Sequence[str], rows: np.ndarray, product_ids: Sequence[str]) -> Run:
    """A run (query_id -> ranked product ids) from search result rows; faiss's -1 padding is dropped."""
    product_ids = np.asarray(product_ids, dtype=object)
    return {qid: product_ids[row[row >= 0]].tolist() for qid, row in zip(query_ids, rows, strict=True)}


def rrf_fuse(runs: Sequence[Mapping[str, Sequence[str]]], k: int = 60, depth: int | None = None) -> Run:
    """Reciprocal rank fusion: each product scores sum(1 / (k + rank)) over the runs that retrieve it.

    Ties keep the order of first appearance (runs in the given order), so the result is deterministic.
    """
    fused: Run = {}
    for query_id in dict.fromkeys(qid for run in runs for qid in run):
        scores: dict[str, float] = {}
        for run in runs:
            for rank, product_id in enumerate(run.get(query_id, []), start=1):
                scores[product_id] = scores.get(product_id, 0.0) + 1.0 / (k + rank)
        ranked = sorted(scores, key=scores.__getitem__, reverse=True)
        fused[query_id] = ranked[:depth] if depth else ranked
    return fused


def dense_run(
    model,
    queries: Mapping[str, str],
    product_ids: Sequence[str],
    product_emb: np.ndarray,
    top_k: int = 100,
    qrels: Qrels | None = None,
    **encode_kwargs,
) -> Run | tuple[Run, Run]:
    """Encode the queries with ``model`` and retrieve the top ``top_k`` products by inner product. With ``qrels``
    also each query's judged products ranked by score (for ``esci_rank_ndcg``): returns (run, judged run)."""
    query_emb = model.encode_queries(list(queries.values()), **encode_kwargs)
    _, rows = search(product_emb, query_emb, top_k)
    run = rows_to_run(list(queries), rows, product_ids)
    if qrels is None:
        return run
    return run, judged_dense_run(queries, query_emb, product_ids, product_emb, qrels)


def judged_dense_run(
    queries: Mapping[str, str], query_emb: np.ndarray, product_ids: Sequence[str], product_emb: np.ndarray, qrels: Qrels
) -> Run:
    """Each query's judged catalogue products, best score first (ties by id)."""
    row_of = {pid: row for row, pid in enumerate(product_ids)}
    judged: Run = {}
    for query_id, vector in zip(queries, query_emb, strict=True):
        products = sorted(pid for pid in qrels.get(query_id, {}) if pid in row_of)
        scores = product_emb[[row_of[pid] for pid in products]] @ vector if products else np.empty(0)
        judged[query_id] = [products[i] for i in np.argsort(-scores, kind="stable")]
    return judged


def evaluate_model(
    model,
    queries: Mapping[str, str],
    qrels: Qrels,
    product_ids: Sequence[str],
    product_texts: Sequence[str],
    top_k: int = 100,
    batch_size: int = 256,
    bf16: bool = False,
) -> tuple[dict, list[dict]]:
    """Dense retrieval with an in-memory model (e.g. during training) scored on ``qrels``: (summary, per_query)."""
    product_emb = encode_catalogue(model, product_ids, product_texts, batch_size=batch_size, bf16=bf16)
    run, judged = dense_run(model, queries, product_ids, product_emb, top_k, qrels, batch_size=batch_size, bf16=bf16)
    return evaluate_run(run, qrels, depth=top_k, judged_run=judged)


def bm25_run(
    queries: Mapping[str, str], product_ids: Sequence[str], product_texts: Sequence[str], top_k: int = 100
) -> Run:
    """BM25 (bm25s, English stopwords) over the product texts."""
    retriever = BM25Retriever(product_texts, product_ids)
    ranked, _ = retriever.search(list(queries.values()), top_k)
    return dict(zip(queries, ranked, strict=True))


# ------------------------------------------------------------------------------------------------ scoring


def queries_and_qrels(judgements: pd.DataFrame, split: str) -> tuple[dict[str, str], Qrels]:
    """The queries (query_id -> text) and qrels (query_id -> {product_id: label}) of one split."""
    for column in ("query_id", "query", "product_id", "esci_label", "split"):
        if column not in judgements.columns:
            raise UserInputError(f"judgements have no column {column!r} (columns: {list(judgements.columns)})")
    rows = judgements[judgements["split"] == split]
    if rows.empty:
        raise UserInputError(f"no judgements in split {split!r} (splits: {sorted(judgements['split'].unique())})")
    rows = rows.astype({"query_id": str, "product_id": str})
    queries = dict(zip(rows["query_id"], rows["query"].fillna(""), strict=True))
    qrels: Qrels = {}
    for query_id, product_id, label in zip(rows["query_id"], rows["product_id"], rows["esci_label"], strict=True):
        qrels.setdefault(query_id, {})[product_id] = label
    return queries, qrels


def evaluate_systems(
    runs: Mapping[str, Run],
    qrels: Qrels,
    main: str = MAIN_SYSTEM,
    k: int = 10,
    depth: int = 100,
    bootstrap_samples: int = 10000,
    seed: int = 0,
    queries: Mapping[str, str] | None = None,
    judged_runs: Mapping[str, Run] | None = None,
) -> tuple[dict, list[dict]]:
    """Score every system's run, and compare ``main`` with each other system over the same queries: mean
    difference, paired-bootstrap CI, randomisation-test p-value, wins / ties / losses.

    Returns the metrics dict (the main system's metrics at top level, then "systems" and "comparisons") and the
    per-query rows of all systems (with the query text when ``queries`` is given). ``judged_runs`` (system ->
    judged products by score) feed ``esci_rank_ndcg``; a system without one is judged by its run's order.
    """
    queries, judged_runs = queries or {}, judged_runs or {}
    systems, per_query, values, names = {}, [], {}, metric_names(k)
    for system, run in runs.items():
        summary, rows = evaluate_run(run, qrels, k=k, depth=depth, judged_run=judged_runs.get(system))
        systems[system] = summary
        values[system] = {name: np.array([_nan(row[name]) for row in rows]) for name in names}
        for row in rows:
            query_id = row["query_id"]
            per_query.append({"system": system, "query_id": query_id, "query": queries.get(query_id), **row})
            per_query[-1][f"top{k}"] = run.get(query_id, [])[:k]
    others = [system for system in runs if system != main]
    comparisons = {
        f"{main} - {other}": {
            name: compare(values[main][name], values[other][name], bootstrap_samples, seed) for name in names
        }
        for other in others
    }
    if others:  # one randomisation test for every (system, metric) pair, on shared sign draws
        columns = [(other, name) for other in others for name in names]
        p_values = paired_randomisation_test(
            np.stack([values[main][name] for _, name in columns], axis=1),
            np.stack([values[other][name] for other, name in columns], axis=1),
            n=bootstrap_samples,
            seed=seed,
        )
        for (other, name), p_value in zip(columns, p_values, strict=True):
            comparisons[f"{main} - {other}"][name]["p_value"] = float(p_value)
    metrics = {
        **systems.get(main, {}),
        "systems": systems,
        "comparisons": comparisons,
        "bootstrap": {"samples": bootstrap_samples, "seed": seed, "confidence": 0.95},
        "randomisation_test": {"samples": bootstrap_samples, "seed": seed, "sides": 2},
        "ties": f"per-query values equal to {TIE_DECIMALS} decimals",
        "k": k,
        "depth": depth,
    }
    return metrics, per_query


def compare(a: np.ndarray, b: np.ndarray, bootstrap_samples: int = 10000, seed: int = 0) -> dict[str, float]:
    """The mean per-query difference ``a - b``, its 95% paired-bootstrap CI, and on how many queries ``a`` wins,
    ties and loses."""
    difference, low, high = paired_bootstrap(a, b, n=bootstrap_samples, seed=seed)
    wins, ties, losses = win_tie_loss(a, b, TIE_DECIMALS)
    return {"difference": difference, "ci_low": low, "ci_high": high, "wins": wins, "ties": ties, "losses": losses}


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


# ------------------------------------------------------------------------------------------------ report


def system_label(metrics: dict, system: str) -> str:
    """``model (runs/sample/best_model)``: a system with the folder or Hub id it names (its last two parts)."""
    name = metrics["systems"][system].get("name")
    if system not in (MAIN_SYSTEM, "baseline", "compare") or not name:
        return system
    return f"{system} ({'/'.join(Path(name).parts[-2:])})"


def markdown_table(metrics: dict) -> str:
    """What was evaluated, the systems' metrics, the differences with their 95% CIs, the wins / ties / losses with
    the randomisation test's p-values, and what each metric means, as Markdown."""
    names = [name for name in metric_names() if name in metrics["systems"][next(iter(metrics["systems"]))]]
    headers = " | ".join(metric_label(name) for name in names)
    lines = [_scope(metrics), "", f"| system | queries | {headers} |", "|---|---:|" + "---:|" * len(names)]
    for system, summary in metrics["systems"].items():
        cells = [f"{summary[name]:.3f}" for name in names]
        lines.append(f"| {system_label(metrics, system)} | {summary['num_queries']} | " + " | ".join(cells) + " |")
    if metrics["comparisons"]:
        lines += ["", f"| difference (95% CI) | {headers} |", "|---|" + "---:|" * len(names)]
        for comparison, by_metric in metrics["comparisons"].items():
            cells = [_format_difference(by_metric[name]) for name in names]
            lines.append(f"| {comparison} | " + " | ".join(cells) + " |")
        lines += ["", f"| queries won / tied / lost (p) | {headers} |", "|---|" + "---:|" * len(names)]
        for comparison, by_metric in metrics["comparisons"].items():
            cells = [_format_outcomes(by_metric[name]) for name in names]
            lines.append(f"| {comparison} | " + " | ".join(cells) + " |")
    return "\n".join([*lines, "", _definitions(metrics)]) + "\n"


def _scope(metrics: dict) -> str:
    split, catalogue = metrics.get("split"), metrics.get("catalogue_size")
    where = f"a catalogue of {catalogue:,} products" if catalogue else "the catalogue"
    return f"{split or 'Evaluation'} split: {metrics.get('num_queries', '?')} queries, each retrieving from {where}."


def _definitions(metrics: dict) -> str:
    gains = ", ".join(f"{label} {gain:g}" for label, gain in ESCI_GAINS.items())
    samples = metrics.get("bootstrap", {}).get("samples", "?")
    return (
        f"Relevant: E ∪ S. Recall@10 and nDCG@10 look at the top 10, MRR at the first relevant product within the top "
        f"{metrics.get('depth', 100)}; nDCG gains {gains} (unjudged products count as I). (E): the same metric with "
        "Exact products alone relevant. ESCI rank nDCG: the ESCI task-1 (query-product ranking) metric, nDCG of "
        "each query's whole judged list in the system's score order, same gains, no cut-off. Differences are paired "
        f"over queries: 95% bootstrap CI and two-sided randomisation test p ({samples} resamples each); a tie is "
        f"a query whose two values are equal to {TIE_DECIMALS} decimals."
    )


def _format_difference(difference: dict) -> str:
    return f"{difference['difference']:+.3f} [{difference['ci_low']:+.3f}, {difference['ci_high']:+.3f}]"


def _format_outcomes(figure: dict) -> str:
    p_value = figure.get("p_value")
    p_text = "–" if p_value is None or math.isnan(p_value) else f"{p_value:.3g}"
    return f"{figure['wins']} / {figure['ties']} / {figure['losses']} (p {p_text})"


def plot_metrics(metrics: dict, path: Path) -> None:
    """Bars of each system's Recall@10 / MRR / nDCG@10 / ESCI rank nDCG, beside a forest plot of the differences."""
    matplotlib = require("matplotlib", "metrics.png (the evaluation plot)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, systems = list(PLOTTED_METRICS), list(metrics["systems"])
    figure, (bars, forest) = plt.subplots(
        1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1.2, 1]}, layout="constrained"
    )
    width = 0.8 / len(systems)
    for i, system in enumerate(systems):
        heights = [metrics["systems"][system][name] for name in names]
        positions = np.arange(len(names)) + (i - (len(systems) - 1) / 2) * width
        drawn = bars.bar(positions, heights, width, label=system_label(metrics, system))
        bars.bar_label(drawn, fmt="%.3f", fontsize=7)
    bars.set_xticks(np.arange(len(names)), [metric_label(name) for name in names])
    bars.set_ylim(0, 1.15)
    bars.set_title(f"{metrics.get('split', '')} split, {metrics.get('num_queries', '?')} queries")
    bars.legend(fontsize=8, loc="upper center", ncols=len(systems), frameon=False)

    comparisons = list(metrics["comparisons"])
    for j, comparison in enumerate(comparisons):
        color = f"C{systems.index(comparison.split(' - ', 1)[1])}"  # the compared system's bar colour
        for i, name in enumerate(names):
            d = metrics["comparisons"][comparison][name]
            y = i * (len(comparisons) + 1) + j
            error = [[d["difference"] - d["ci_low"]], [d["ci_high"] - d["difference"]]]
            forest.errorbar(d["difference"], y, xerr=error, fmt="o", capsize=3, color=color)
            label = f"{d['difference']:+.3f}"
            forest.annotate(label, (d["difference"], y), xytext=(0, 5), textcoords="offset points", ha="center", size=7)
    ticks = [i * (len(comparisons) + 1) + j for i in range(len(names)) for j in range(len(comparisons))]
    forest.set_yticks(ticks, [f"{metric_label(n)}: {c}" for n in names for c in comparisons], fontsize=8)
    forest.invert_yaxis()
    forest.axvline(0, color="grey", linewidth=1)
    forest.set_title("difference per query:\nmean and 95% paired-bootstrap CI", fontsize=11)
    figure.savefig(path, dpi=120, format="png")
    plt.close(figure)


def write_report(
    output_dir: str | Path,
    metrics: dict,
    per_query: list[dict],
    qrels: Qrels | None = None,
    texts: Mapping[str, str] | None = None,
) -> None:
    """Write metrics.json, per_query.jsonl, results.md and metrics.png into ``output_dir``; with the ``qrels`` and
    the product texts (product_id -> text) also report.html, the query-by-query comparison."""
    output_dir = Path(output_dir)
    write_text_atomic(output_dir / "metrics.json", json.dumps(json_safe(metrics), indent=2) + "\n")
    rows = "".join(json.dumps(json_safe(row)) + "\n" for row in per_query)
    write_text_atomic(output_dir / "per_query.jsonl", rows)
    write_text_atomic(output_dir / "results.md", markdown_table(metrics))
    with atomic_path(output_dir / "metrics.png") as temporary:
        plot_metrics(metrics, temporary)
        png = temporary.read_bytes()
    if qrels is not None:
        page = render_report(metrics, per_query, qrels, texts or {}, png)
        write_text_atomic(output_dir / "report.html", page)


# ------------------------------------------------------------------------------------------------ driver


def load_eval_data(args: EvalArguments) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The catalogue (product_id, product_text) and judgements as DataFrames, from --esci_dir or --data_dir."""
    from ..data.esci import load_esci

    data = load_esci(args.data_source)
    catalogue, judgements = data.catalogue.to_pandas(), data.judgements.to_pandas()
    if catalogue.empty:
        raise UserInputError(f"{data.source}: the catalogue is empty, nothing to retrieve")
    return catalogue.astype({"product_id": str}), judgements


def _load_encoder(name_or_path: str | None):
    import torch

    from ..modeling.model import load_model

    model = load_model(name_or_path)
    return model.to("cuda") if torch.cuda.is_available() else model


def _index_run(args: EvalArguments, queries: Mapping[str, str], product_ids: list[str]) -> tuple[Run, str]:
    """Retrieve with a saved index: only the queries are encoded, with the index's model unless one is given."""
    from ..retrieval.indexing import load_index, read_manifest

    name = args.model_name_or_path or read_manifest(args.index_dir).get("model_name_or_path")
    if not name:
        raise UserInputError(f"{args.index_dir}: the manifest names no model; pass --model_name_or_path")
    model = _load_encoder(name)
    loaded = load_index(args.index_dir, model)
    if set(loaded.product_ids) != set(product_ids):
        raise UserInputError(
            f"{args.index_dir}: the index holds {len(loaded.product_ids)} products, not the {len(product_ids)} of "
            "the evaluation catalogue; rebuild it with index.py on the same data, or evaluate without --index_dir"
        )
    query_emb = model.encode_queries(list(queries.values()), batch_size=args.batch_size, bf16=args.bf16)
    _, rows = search(loaded.index, query_emb, args.top_k)
    return rows_to_run(list(queries), rows, loaded.product_ids), name


def build_runs(
    args: EvalArguments,
    queries: Mapping[str, str],
    product_ids: list[str],
    product_texts: list[str],
    qrels: Qrels | None = None,
    judged_runs: dict[str, Run] | None = None,
) -> tuple[dict[str, Run], dict[str, str]]:
    """Every system's run over the catalogue ("model" first), and what each system is. With ``qrels``, the dense
    systems' judged products ranked by score go into ``judged_runs`` (for ``esci_rank_ndcg``)."""
    from ..modeling.model import default_base_model

    encode_kwargs = {"batch_size": args.batch_size, "bf16": args.bf16}
    judged_runs = {} if judged_runs is None else judged_runs
    judged_by_name: dict[str, Run] = {}

    def encoder_run(name: str) -> Run:
        model = _load_encoder(name)
        product_emb = encode_catalogue(model, product_ids, product_texts, cache_dir=args.cache_dir, **encode_kwargs)
        if qrels is None:
            return dense_run(model, queries, product_ids, product_emb, args.top_k, **encode_kwargs)
        run, judged_by_name[name] = dense_run(
            model, queries, product_ids, product_emb, args.top_k, qrels, **encode_kwargs
        )
        return run

    runs, names = {}, {}
    if args.index_dir:
        runs[MAIN_SYSTEM], names[MAIN_SYSTEM] = _index_run(args, queries, product_ids)
    else:
        names[MAIN_SYSTEM] = args.model_name_or_path or default_base_model()
        runs[MAIN_SYSTEM] = encoder_run(names[MAIN_SYSTEM])
    if args.baseline.lower() != "none":
        names["baseline"] = default_base_model() if args.baseline == "base" else args.baseline
        same_as_model = names["baseline"] == names[MAIN_SYSTEM] and not args.index_dir
        runs["baseline"] = runs[MAIN_SYSTEM] if same_as_model else encoder_run(names["baseline"])
    if args.compare_model_name_or_path:
        names["compare"] = args.compare_model_name_or_path
        runs["compare"] = encoder_run(names["compare"])
    for system, name in names.items():
        if name in judged_by_name:
            judged_runs[system] = judged_by_name[name]
    if args.bm25 or args.hybrid:
        bm25 = bm25_run(queries, product_ids, product_texts, args.top_k)
    if args.bm25:
        runs["bm25"], names["bm25"] = bm25, "bm25s (lowercase, English stopwords)"
    if args.hybrid:
        runs["hybrid"] = rrf_fuse([runs[MAIN_SYSTEM], bm25], k=60, depth=args.top_k)
        names["hybrid"] = "reciprocal rank fusion (k=60) of model and bm25"
    return runs, names


def run_evaluation(args: EvalArguments) -> dict:
    """Evaluate the model against the baseline, BM25 (and the hybrid), write the report, return the metrics."""
    catalogue, judgements = load_eval_data(args)
    queries, qrels = queries_and_qrels(judgements, args.split)
    product_ids, product_texts = catalogue["product_id"].tolist(), catalogue["product_text"].fillna("").tolist()
    judged_runs: dict[str, Run] = {}
    runs, names = build_runs(args, queries, product_ids, product_texts, qrels, judged_runs)
    metrics, per_query = evaluate_systems(
        runs,
        qrels,
        depth=args.top_k,
        bootstrap_samples=args.bootstrap_samples,
        seed=args.seed,
        queries=queries,
        judged_runs=judged_runs,
    )
    for system, name in names.items():
        metrics["systems"][system]["name"] = name
    metrics.update(
        model_name_or_path=names[MAIN_SYSTEM],
        split=args.split,
        catalogue_size=len(product_ids),
        arguments=asdict(args),
    )
    write_report(args.output_dir, metrics, per_query, qrels, dict(zip(product_ids, product_texts, strict=True)))
    return metrics
