"""report.html at the full release's size: how big the file is and how fast it opens, for 31.8k test queries.

A synthetic evaluation shaped like the full release's test split: 31,800 queries, each with 20 judged products
(the release's mean: 2,621,738 judgements / 130,652 queries; labels drawn at the ESCI sample's rates E 45% / S 36% /
I 15% / C 4%) and the top 100 of three systems (model, baseline, bm25, eval.py's default), each top 10 holding some
of the query's judged products and otherwise products drawn at random from the release's 1,814,924 products (so
few are shared between queries: a pessimistic case for the file size). Product ids look like ASINs; titles are
built from the words of the ESCI sample's titles, shuffled, at their lengths (mean 107 characters; the report keeps
100): shuffled words compress worse than real titles, another pessimistic choice. It goes through
``evaluate_systems`` and ``write_report``, as eval.py's output does, then (with Debian's chromium and chromedriver)
headless Chromium opens it from disk: the seconds until the first page of rows is shown, and until a re-sort.

    python bench/bench_report.py [--queries 31800] [--output bench/results/report_size.json]

Writes bench/results/report_size.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import string
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchlib, also when a test loads this file

from benchlib import RESULTS, SAMPLE_DIR, load_now, machine, print_table, write_json  # noqa: E402

from ttsn_hf.evaluation.evaluate import evaluate_systems, write_report  # noqa: E402
from ttsn_hf.evaluation.report import decode_data, embedded  # noqa: E402

LABEL_RATES = {"E": 0.45, "S": 0.36, "I": 0.15, "C": 0.04}
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FALLBACK_WORDS = "usb cable charger fast type c 6ft braided phone case black red running shoes men women size"


# ---------------------------------------------------------------- the synthetic evaluation


def title_words() -> tuple[list[str], np.ndarray]:
    """The words of the ESCI sample's titles, and the titles' lengths in words."""
    path = SAMPLE_DIR / "shopping_queries_dataset_products.parquet"
    if not path.is_file():
        words = FALLBACK_WORDS.split()
        return words, np.array([8, 12, 16, 20])
    titles = pd.read_parquet(path, columns=["product_title"])["product_title"].dropna().str.split()
    return [word for title in titles for word in title], titles.map(len).to_numpy()


def synthetic_evaluation(
    num_queries: int,
    catalogue_size: int = 1_814_924,
    judged_per_query: int = 20,
    systems: tuple[str, ...] = ("model", "baseline", "bm25"),
    depth: int = 100,
    bootstrap_samples: int = 10000,
    seed: int = 0,
) -> tuple[dict, list[dict], dict, dict]:
    """(metrics, per_query, qrels, texts) as ``run_evaluation`` has them before writing."""
    rng = np.random.default_rng(seed)
    alphabet = np.array(list(string.ascii_uppercase + string.digits))
    codes = rng.choice(alphabet, size=(catalogue_size, 8))
    product_ids = np.array(["B0" + "".join(row) for row in codes])
    labels = np.array(list(LABEL_RATES))
    rates = np.array(list(LABEL_RATES.values()))
    queries, qrels, runs = {}, {}, {system: {} for system in systems}
    words, lengths = title_words()
    vocabulary = np.array(words)
    for q in range(num_queries):
        query_id = str(q)
        queries[query_id] = " ".join(rng.choice(vocabulary, size=rng.integers(1, 6)))
        judged = product_ids[rng.choice(catalogue_size, size=judged_per_query, replace=False)]
        qrels[query_id] = dict(zip(judged, rng.choice(labels, size=judged_per_query, p=rates), strict=True))
        shared = list(rng.permutation(judged)[: rng.integers(2, 9)])  # judged products every system finds
        for system in systems:
            found = list(rng.permutation(judged)[: rng.integers(0, 5)])
            others = list(product_ids[rng.choice(catalogue_size, size=depth, replace=False)])
            top = list(dict.fromkeys(shared + found + others))
            top[: len(shared) + len(found)] = rng.permutation(top[: len(shared) + len(found)])
            runs[system][query_id] = top[:depth]
    metrics, per_query = evaluate_systems(runs, qrels, depth=depth, bootstrap_samples=bootstrap_samples, seed=seed)
    for row in per_query:
        row["query"] = queries[row["query_id"]]
    referenced = {p for rows in (qrels.values(), *(run.values() for run in runs.values())) for row in rows for p in row}
    texts = {product_id: _title(rng, vocabulary, lengths) for product_id in sorted(referenced)}
    metrics.update(split="test", catalogue_size=catalogue_size, model_name_or_path="synthetic")
    for system in systems:
        metrics["systems"][system]["name"] = f"synthetic {system}"
    return metrics, per_query, qrels, texts


def _title(rng: np.random.Generator, vocabulary: np.ndarray, lengths: np.ndarray) -> str:
    return " ".join(rng.choice(vocabulary, size=int(rng.choice(lengths))))


# ---------------------------------------------------------------- the browser


def chromium_driver(width: int = 1400, height: int = 1000):
    """Headless Debian Chromium through its chromedriver (nothing downloaded), logging the page's console; None
    when either binary is missing."""
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="ttsn-chromium-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", f"--window-size={width},{height}"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.profile_dir = profile
    return driver


def close(driver) -> None:
    driver.quit()
    shutil.rmtree(driver.profile_dir, ignore_errors=True)


def wait_until_ready(driver, timeout: float = 60.0) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(
        lambda d: d.execute_script(
            "return document.body.dataset.ready === '1' || !!document.getElementById('error').textContent"
        )
    )


def browser_seconds(path: Path) -> dict | None:
    """Seconds until report.html, opened from disk, shows its first page of rows; then until a re-sort by query
    text is shown (the click handler filters, sorts and renders synchronously)."""
    driver = chromium_driver()
    if driver is None:
        return None
    try:
        started = time.perf_counter()
        driver.get(path.resolve().as_uri())
        wait_until_ready(driver)
        opened = time.perf_counter() - started
        header = driver.find_element("css selector", "#queries th[data-sort=query]")
        started = time.perf_counter()
        header.click()
        driver.find_element("css selector", "#queries tbody tr.q")
        resorted = time.perf_counter() - started
        errors = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        rows = len(driver.find_elements("css selector", "#queries tbody tr.q"))
    finally:
        close(driver)
    return {"open_seconds": round(opened, 2), "resort_seconds": round(resorted, 2), "rows_shown": rows,
            "console_errors": errors}  # fmt: skip


# ---------------------------------------------------------------- the benchmark


def measure(num_queries: int, folder: Path, bootstrap_samples: int) -> dict:
    started = time.perf_counter()
    metrics, per_query, qrels, texts = synthetic_evaluation(num_queries, bootstrap_samples=bootstrap_samples)
    built = time.perf_counter() - started
    started = time.perf_counter()
    write_report(folder, metrics, per_query, qrels, texts)
    written = time.perf_counter() - started
    path = folder / "report.html"
    page = path.read_text(encoding="utf-8")
    data = embedded(page, "data")
    decoded = decode_data(data)
    row = {
        "queries": num_queries,
        "systems": len(metrics["systems"]),
        "products_in_report": len(decoded["product_ids"]),
        "report_bytes": path.stat().st_size,
        "report_mib": round(path.stat().st_size / 2**20, 2),
        "data_base64_bytes": len(data),
        "data_json_bytes_uncompressed": len(json.dumps(decoded, separators=(",", ":"), ensure_ascii=False).encode()),
        "per_query_jsonl_bytes": (folder / "per_query.jsonl").stat().st_size,
        "evaluate_seconds": round(built, 1),
        "write_seconds": round(written, 1),
    }
    browser = browser_seconds(path)
    if browser is not None:
        row.update(browser)
    return row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", default="50,31800", help="Comma-separated query counts.")
    parser.add_argument("--bootstrap_samples", type=int, default=10000)
    parser.add_argument("--output", default=str(RESULTS / "report_size.json"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    rows = []
    for count in (int(value) for value in args.queries.split(",")):
        with tempfile.TemporaryDirectory() as folder:
            rows.append(measure(count, Path(folder), args.bootstrap_samples))
        print_table(rows[-1:], list(rows[-1]))
    result = {
        "command": " ".join(["python bench/bench_report.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": {**machine("cpu"), "load_after": load_now()},
        "method": __doc__.split("\n\n")[1].replace("\n", " "),
        "results": rows,
    }
    write_json(args.output, result)
    return result


if __name__ == "__main__":
    main()
