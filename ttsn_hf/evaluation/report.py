"""``report.html``: where the model wins and loses, query by query, in one self-contained page.

The page needs no network (inline CSS and JS, the metrics plot as a ``data:`` URI) and opens from disk. Its summary
is static HTML; the per-query data is one compact, column-wise JSON document, gzipped and base64-encoded inside the
page, which the page's script decodes (the browser's ``DecompressionStream``) and renders a page of rows at a time,
so 31.8k queries stay small and fast. Per-query values are stored to ``TIE_DECIMALS`` places, the precision that
decides a win or a tie.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import math
import re
import subprocess
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata, resources
from pathlib import Path

import numpy as np

from ..labels import ESCI_GAINS, EXACT_GAINS, LABELS, RELEVANT_LABELS
from .metrics import TIE_DECIMALS, metric_label, metric_names

PACKAGE_DIR = Path(__file__).resolve().parent
TITLE_CHARS = 100  # product texts are cut to this many characters: the report is for reading, not for search
LABEL_ORDER = {label: rank for rank, label in enumerate(LABELS)}


# ------------------------------------------------------------------------------------------------ data


def report_data(
    metrics: Mapping,
    per_query: Sequence[Mapping],
    qrels: Mapping[str, Mapping[str, str]],
    texts: Mapping[str, str],
    decimals: int = TIE_DECIMALS,
) -> dict:
    """The per-query document the page renders, column-wise (one list entry per query, in per_query's order):
    each system's metric values (rounded to ``decimals``) and top-k (indices into ``product_ids``/``titles``), and
    each query's judged products (indices, best label first) with their labels as one string ("EESI")."""
    systems, k = list(metrics["systems"]), metrics.get("k", 10)
    names = metric_names(k)
    rows = {(row["system"], row["query_id"]): row for row in per_query}
    query_ids = list(dict.fromkeys(row["query_id"] for row in per_query))
    products: dict[str, int] = {}

    def index(product_id: str) -> int:
        return products.setdefault(product_id, len(products))

    judged, labels = [], []
    for query_id in query_ids:
        ranked = sorted(qrels.get(query_id, {}).items(), key=lambda item: (LABEL_ORDER[item[1]], item[0]))
        judged.append([index(product_id) for product_id, _ in ranked])
        labels.append("".join(label for _, label in ranked))
    first = {query_id: rows[(systems[0], query_id)] for query_id in query_ids}
    return {
        "systems": systems,
        "metrics": names,
        "k": k,
        "query_ids": query_ids,
        "queries": [first[query_id].get("query") or "" for query_id in query_ids],
        "values": {
            system: {name: _rounded([rows[(system, q)][name] for q in query_ids], decimals) for name in names}
            for system in systems
        },
        "top": {system: [[index(p) for p in rows[(system, q)][f"top{k}"]] for q in query_ids] for system in systems},
        "judged": judged,
        "labels": labels,
        "product_ids": list(products),
        "titles": [_cut(texts.get(product_id, "")) for product_id in products],
    }


def _rounded(values: list[float | None], decimals: int) -> list[float | None]:
    """Rounded as ``win_tie_loss`` rounds (numpy), so the page's wins and ties are metrics.json's."""
    rounded = np.round(np.array([math.nan if value is None else value for value in values], dtype=float), decimals)
    return [None if math.isnan(value) else value for value in rounded.tolist()]


def _cut(text: str) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= TITLE_CHARS else text[: TITLE_CHARS - 1].rstrip() + "…"


def encode_data(data: dict) -> str:
    """gzip + base64 of the compact JSON: the form the page embeds (and ``decode_data`` reads back)."""
    raw = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return base64.b64encode(gzip.compress(raw, compresslevel=9, mtime=0)).decode("ascii")


def decode_data(encoded: str) -> dict:
    return json.loads(gzip.decompress(base64.b64decode(encoded)).decode("utf-8"))


def embedded(page: str, element_id: str) -> str:
    """The text of the page's ``<script id=element_id>`` (the summary JSON, or the encoded per-query data)."""
    start = page.index(">", page.index(f'<script id="{element_id}"')) + 1
    return page[start : page.index("</script>", start)].strip()


# ------------------------------------------------------------------------------------------------ page


def render_report(
    metrics: Mapping,
    per_query: Sequence[Mapping],
    qrels: Mapping[str, Mapping[str, str]],
    texts: Mapping[str, str],
    plot_png: bytes | None = None,
) -> str:
    """The whole page as one string."""
    summary = json_safe(dict(metrics))
    page = resources.files(__package__).joinpath("report_template.html").read_text(encoding="utf-8")
    parts = {
        "TITLE": html.escape(_title(summary)),
        "HEADLINE": _headline(summary),
        "SYSTEMS_TABLE": _systems_table(summary),
        "COMPARISONS_TABLE": _comparisons_table(summary),
        "PLOT": _plot(plot_png),
        "MADE": _how_it_was_made(summary),
        "SUMMARY_JSON": json.dumps(summary, ensure_ascii=False).replace("</", "<\\/"),
        "DATA": encode_data(report_data(metrics, per_query, qrels, texts)),
    }
    return re.sub(r"\{\{([A-Z_]+)\}\}", lambda match: parts[match.group(1)], page)


def _title(summary: Mapping) -> str:
    split, queries = summary.get("split"), summary.get("num_queries")
    return f"ttsn-hf evaluation: {split or 'the'} split, {queries} queries"


def system_name(summary: Mapping, system: str) -> str:
    """``model`` or ``model: runs/sample/best_model`` where the system names a model."""
    name = summary["systems"][system].get("name")
    return f"{system}: {name}" if name and system in ("model", "baseline", "compare") else system


def _headline(summary: Mapping) -> str:
    """One line per comparison: on how many queries the model is better, equal, worse, with the p-value."""
    systems = list(summary["systems"])
    lines = []
    for comparison, by_metric in summary["comparisons"].items():
        main, other = comparison.split(" - ", 1)
        parts = [
            f"{metric_label(name)} better on <b class=win>{figure['wins']}</b> queries, equal on "
            f"<b>{figure['ties']}</b>, worse on <b class=loss>{figure['losses']}</b> "
            f"(mean {_signed(figure['difference'])}, p = {_p(figure.get('p_value'))})"
            for name in ("recall@10", "ndcg@10")
            if (figure := by_metric.get(name)) is not None
        ]
        if parts:
            pair = f"{_chip_system(systems, main)} vs {_chip_system(systems, other)}"
            lines.append(f"<li>{pair}: {'; '.join(parts)}</li>")
    return "<ul class=headline>" + "".join(lines) + "</ul>" if lines else ""


def _chip_system(systems: list[str], system: str) -> str:
    return f'<span class="sys sys{systems.index(system)}">{html.escape(system)}</span>'


def _systems_table(summary: Mapping) -> str:
    systems = list(summary["systems"])
    names = [name for name in metric_names(summary.get("k", 10)) if name in summary["systems"][systems[0]]]
    head = "".join(f"<th>{metric_label(name)}</th>" for name in names)
    body = []
    for system in systems:
        figures = summary["systems"][system]
        cells = "".join(f"<td>{_number(figures[name])}</td>" for name in names)
        name = html.escape(figures.get("name") or "")
        body.append(
            f"<tr><th>{_chip_system(systems, system)} <span class=muted>{name}</span></th>"
            f"<td>{figures['num_queries']}</td>{cells}</tr>"
        )
    return f"<table class=figures><tr><th>system</th><th>queries</th>{head}</tr>{''.join(body)}</table>"


def _comparisons_table(summary: Mapping) -> str:
    if not summary["comparisons"]:
        return "<p>No other system was evaluated: nothing to compare.</p>"
    systems = list(summary["systems"])
    names = [name for name in metric_names(summary.get("k", 10)) if name in summary["systems"][systems[0]]]
    head = "".join(f"<th>{metric_label(name)}</th>" for name in names)
    body = []
    for comparison, by_metric in summary["comparisons"].items():
        main, other = comparison.split(" - ", 1)
        cells = "".join(_comparison_cell(by_metric[name]) for name in names)
        body.append(f"<tr><th>{_chip_system(systems, main)} − {_chip_system(systems, other)}</th>{cells}</tr>")
    return f"<table class=figures><tr><th>difference</th>{head}</tr>{''.join(body)}</table>"


def _comparison_cell(figure: Mapping) -> str:
    low, high = figure["ci_low"], figure["ci_high"]
    verdict = "better" if low is not None and low > 0 else "worse" if high is not None and high < 0 else "level"
    return (
        f'<td class="{verdict}"><b>{_signed(figure["difference"])}</b><br>'
        f"<span class=ci>[{_signed(low)}, {_signed(high)}]</span><br>"
        f"<span class=p>p = {_p(figure.get('p_value'))}</span><br>"
        f"<span class=wtl title='queries won / tied / lost'><span class=win>won {figure['wins']}</span> · "
        f"tied {figure['ties']} · <span class=loss>lost {figure['losses']}</span></span></td>"
    )


def _plot(png: bytes | None) -> str:
    if not png:
        return ""
    encoded = base64.b64encode(png).decode("ascii")
    return f'<img class=plot alt="metrics per system and differences with CIs" src="data:image/png;base64,{encoded}">'


def _how_it_was_made(summary: Mapping) -> str:
    systems = list(summary["systems"])
    k, depth = summary.get("k", 10), summary.get("depth", 100)
    gains = ", ".join(f"{label} {gain:g}" for label, gain in ESCI_GAINS.items())
    exact = ", ".join(f"{label} {gain:g}" for label, gain in EXACT_GAINS.items())
    relevant = " ∪ ".join(sorted(RELEVANT_LABELS))
    bootstrap = summary.get("bootstrap", {})
    randomisation = summary.get("randomisation_test", {})
    items = [f"<li>{_chip_system(systems, s)} {html.escape(system_name(summary, s))}</li>" for s in systems]
    catalogue = summary.get("catalogue_size")
    facts = [
        ("systems", "<ul>" + "".join(items) + "</ul>"),
        (
            "queries",
            f"{summary.get('num_queries')} queries of the <b>{html.escape(str(summary.get('split')))}</b> split, each "
            f"retrieving from the whole catalogue of <b>{f'{catalogue:,}' if catalogue else '?'}</b> products "
            f"(top {depth} kept; the top {k} shown)",
        ),
        (
            "relevance",
            f"ESCI labels: <b>E</b>xact, <b>S</b>ubstitute, <b>C</b>omplement, <b>I</b>rrelevant. Relevant = "
            f"{relevant}. A product nobody judged for the query is <i>unjudged</i>: scored like I (gain 0), but it "
            "is not known to be irrelevant.",
        ),
        (
            "metrics",
            f"Recall@{k}: share of the query's relevant products in the top {k}. MRR: 1 / rank of the first relevant "
            f"product within the top {depth} (0 if none). nDCG@{k}: linear gains {gains}, over the ideal order of "
            f"the query's judgements. <b>(E)</b>: the same metric counting Exact products alone (gains {exact}). "
            "ESCI rank nDCG: the ESCI task-1 metric, nDCG of the query's whole judged list in the system's score "
            "order, same gains, no cut-off. A query with nothing relevant judged has no value for a metric and is "
            "left out of its mean.",
        ),
        (
            "statistics",
            f"Differences are paired (same queries): mean over queries, 95% percentile-bootstrap CI "
            f"({bootstrap.get('samples')} resamples, seed {bootstrap.get('seed')}); p = two-sided paired "
            f"randomisation test ({randomisation.get('samples')} random sign flips of the per-query differences, "
            "every flip when there are fewer). Wins / ties / losses count queries; "
            f"{html.escape(summary.get('ties', 'equal values are ties'))} are ties. Per-query values in the table "
            "below are stored to 4 decimals.",
        ),
        ("software", html.escape(_software())),
    ]
    return "<dl>" + "".join(f"<dt>{term}</dt><dd>{text}</dd>" for term, text in facts) + "</dl>"


def _software() -> str:
    try:
        version = metadata.version("ttsn-hf")
    except metadata.PackageNotFoundError:
        version = "not installed"
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"ttsn-hf {version}, {git_commit() or 'no git commit (not a checkout)'}; written {made}"


def git_commit(folder: Path = PACKAGE_DIR) -> str | None:
    """``commit 1a2b3c4d5e6f`` (``+ uncommitted changes`` when the tree differs) of the checkout holding the
    package, or None when it is not one."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    dirty = " + uncommitted changes" if status.returncode == 0 and status.stdout.strip() else ""
    return f"commit {commit.stdout.strip()}{dirty}"


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.3f}"


def _p(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if value < 0.001 else f"{value:.3f}"


def json_safe(value):
    """NaN (an undefined mean) becomes null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value
