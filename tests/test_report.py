"""report.html: every figure it shows equals metrics.json and per_query.jsonl, and the page needs no network."""

import importlib.util
import json
import re
from html.parser import HTMLParser
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from ttsn_hf.evaluation.evaluate import markdown_table, write_report
from ttsn_hf.evaluation.report import decode_data, embedded, git_commit, metric_label

REPO = Path(__file__).resolve().parents[1]
MARKUP_TITLE = '<img src=x onerror="window.hacked=1">Kettle </script> 1.7 L'


def load_bench_report():
    spec = importlib.util.spec_from_file_location("bench_report", REPO / "bench" / "bench_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_small_report(folder: Path, num_queries: int = 60) -> tuple[Path, dict]:
    """A deterministic synthetic evaluation (3 systems, 20 judged products a query) written as eval.py writes it;
    the model's first product for the query with the longest text has a title full of markup. Returns the folder
    and the qrels."""
    bench = load_bench_report()
    metrics, per_query, qrels, texts = bench.synthetic_evaluation(
        num_queries, catalogue_size=2000, bootstrap_samples=500, seed=0
    )
    longest = max((row for row in per_query if row["system"] == "model"), key=lambda row: len(row["query"]))
    texts[longest["top10"][0]] = MARKUP_TITLE
    write_report(folder, metrics, per_query, qrels, texts)
    return folder, qrels


@pytest.fixture(scope="module")
def small_report(tmp_path_factory):
    return write_small_report(tmp_path_factory.mktemp("report"))


class Tables(HTMLParser):
    """The text of every cell of the page's ``table.figures``, row by row."""

    def __init__(self):
        super().__init__()
        self.tables, self.depth, self.cell = [], 0, None

    def handle_starttag(self, tag, attrs):
        if tag == "table" and ("class", "figures") in attrs:
            self.tables.append([])
            self.depth = 1
        elif self.depth and tag == "tr":
            self.tables[-1].append([])
        elif self.depth and tag in ("td", "th"):
            self.cell = []
        elif self.depth and tag == "br" and self.cell is not None:
            self.cell.append(" ")

    def handle_endtag(self, tag):
        if tag == "table":
            self.depth = 0
        elif self.depth and tag in ("td", "th"):
            self.tables[-1][-1].append(" ".join("".join(self.cell).split()))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def read_outputs(folder: Path) -> tuple[str, dict, list[dict]]:
    page = (folder / "report.html").read_text(encoding="utf-8")
    metrics = json.loads((folder / "metrics.json").read_text())
    rows = [json.loads(line) for line in (folder / "per_query.jsonl").read_text().splitlines()]
    return page, metrics, rows


def test_per_query_data_equals_per_query_jsonl_and_the_judgements(small_report):
    folder, qrels = small_report
    page, metrics, rows = read_outputs(folder)
    data = decode_data(embedded(page, "data"))
    assert data["systems"] == list(metrics["systems"]) == ["model", "baseline", "bm25"]
    by_key = {(row["system"], row["query_id"]): row for row in rows}
    assert sorted(data["query_ids"]) == sorted({row["query_id"] for row in rows}) and len(data["query_ids"]) == 60
    for i, query_id in enumerate(data["query_ids"]):
        for system in data["systems"]:
            row = by_key[(system, query_id)]
            assert data["queries"][i] == row["query"]
            for name in data["metrics"]:
                assert data["values"][system][name][i] == (None if row[name] is None else np.round(row[name], 4))
            assert [data["product_ids"][p] for p in data["top"][system][i]] == row["top10"]
        labels = dict(zip((data["product_ids"][p] for p in data["judged"][i]), data["labels"][i], strict=True))
        assert labels == qrels[query_id]
        assert list(data["labels"][i]) == sorted(data["labels"][i], key="ESCI".index)  # best label first
    assert MARKUP_TITLE in data["titles"]  # stored as data, rendered as text (test_report_browser.py)
    assert max(map(len, data["titles"])) <= 100


def test_summary_tables_and_counts_equal_metrics_json(small_report):
    page, metrics, _ = read_outputs(small_report[0])
    assert json.loads(embedded(page, "summary")) == metrics
    data = decode_data(embedded(page, "data"))
    parser = Tables()
    parser.feed(page)
    systems_table, comparisons_table = parser.tables
    names = data["metrics"]
    assert systems_table[0] == ["system", "queries", *map(metric_label, names)]
    for row, (system, figures) in zip(systems_table[1:], metrics["systems"].items(), strict=True):
        assert row[0].startswith(system) and figures["name"] in row[0]
        assert row[1:] == [str(figures["num_queries"]), *(f"{figures[name]:.3f}" for name in names)]
    for row, (comparison, by_metric) in zip(comparisons_table[1:], metrics["comparisons"].items(), strict=True):
        main, other = comparison.split(" - ")
        assert row[0] == f"{main} − {other}"
        for cell, name in zip(row[1:], names, strict=True):
            figure = by_metric[name]
            p_value = figure["p_value"]
            p_text = f"{p_value:.4f}" if p_value < 0.001 else f"{p_value:.3f}"
            expected = (
                f"{figure['difference']:+.3f} [{figure['ci_low']:+.3f}, {figure['ci_high']:+.3f}] p = {p_text} "
                f"won {figure['wins']} · tied {figure['ties']} · lost {figure['losses']}"
            )
            assert cell == expected
            # the page's own count (its filter) from the per-query values it embeds: the same wins / ties / losses
            a = np.array([np.nan if v is None else v for v in data["values"][main][name]])
            b = np.array([np.nan if v is None else v for v in data["values"][other][name]])
            defined = ~(np.isnan(a) | np.isnan(b))
            difference = a[defined] - b[defined]
            counts = ((difference > 0).sum(), (difference == 0).sum(), (difference < 0).sum())
            assert counts == (figure["wins"], figure["ties"], figure["losses"])


def test_how_it_was_made_names_models_catalogue_metrics_and_version(small_report):
    page, metrics, _ = read_outputs(small_report[0])
    made = page.split("How this report was made", 1)[1]
    for system in metrics["systems"].values():
        assert system["name"] in made
    assert f"{metrics['catalogue_size']:,}</b> products" in made and "<b>test</b> split" in made
    assert "gains E 1, S 0.1, C 0.01, I 0" in made and "Recall@10" in made and "top 100" in made
    assert f"ttsn-hf {metadata.version('ttsn-hf')}" in made
    assert (git_commit() or "no git commit") in made


def test_the_page_is_self_contained(small_report):
    page = (small_report[0] / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"https?://", page)
    assert "<link" not in page and not re.search(r"<script[^>]+src=", page)
    sources = re.findall(r"""\bsrc=["']?([^"'\s>]+)""", page.split("<script>", 1)[0])
    assert sources and all(source.startswith("data:image/png;base64,") for source in sources)
    assert MARKUP_TITLE not in page  # the markup title lives only inside the encoded data


def test_results_md_defines_its_abbreviations_and_scope(small_report):
    _, metrics, _ = read_outputs(small_report[0])
    text = markdown_table(metrics)
    assert text.startswith("test split: 60 queries, each retrieving from a catalogue of 2,000 products.")
    assert "(E): the same metric with Exact products alone relevant" in text
    assert "ESCI rank nDCG: the ESCI task-1 (query-product ranking) metric" in text
    first = metrics["comparisons"]["model - baseline"]["recall@10"]
    assert f"| model - baseline | {first['wins']} / {first['ties']} / {first['losses']} (p " in text
