"""report.html opened from disk in headless Chromium (Debian's chromium and chromium-driver, driven by selenium):
it renders without console errors, sorting and the wins / losses filter change the rows shown, and a query opens
onto each system's top 10 with ESCI label chips. Without the browser the test fails under CI=true (.ci/run installs
it) and is skipped elsewhere, saying what to install."""

import importlib.util
import json
import os
from pathlib import Path

import pytest

from ttsn_hf.evaluation.report import decode_data, embedded

MARKUP_TITLE = '<img src=x onerror="window.hacked=1">Kettle </script> 1.7 L'  # as tests/test_report.py writes it

REPO = Path(__file__).resolve().parents[1]
INSTALL = "apt-get install chromium chromium-driver (Debian), pip install selenium (the dev extra)"


def load_test_report():
    spec = importlib.util.spec_from_file_location("test_report_helpers", REPO / "tests" / "test_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def helpers():
    return load_test_report()


@pytest.fixture(scope="module")
def browser(helpers):
    bench = helpers.load_bench_report()
    missing = [path for path in (bench.CHROMIUM, bench.CHROMEDRIVER) if not Path(path).is_file()]
    if importlib.util.find_spec("selenium") is None:
        missing.append("the selenium package")
    if missing:
        reason = f"no headless browser for the report test: {', '.join(missing)} missing; {INSTALL}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    driver = bench.chromium_driver(width=1400, height=1000)
    yield driver, bench
    bench.close(driver)


@pytest.fixture(scope="module")
def report(helpers, tmp_path_factory):
    folder, _ = helpers.write_small_report(tmp_path_factory.mktemp("browser_report"))
    page = (folder / "report.html").read_text(encoding="utf-8")
    return folder / "report.html", decode_data(embedded(page, "data")), json.loads(embedded(page, "summary"))


def shown_queries(driver) -> list[str]:
    """The query ids of the rows shown, read in one script (the page may re-render between two selenium calls)."""
    rows = "document.querySelectorAll('#queries tbody tr.q')"
    return driver.execute_script(f"return [...{rows}].map(row => row.dataset.query)")


def selected_deltas(driver) -> list[float]:
    """The selected metric's Δ column (columns: query, judged, model, other, then Δ Recall@10, Δ MRR, Δ nDCG@10)."""
    texts = driver.execute_script(
        "return [...document.querySelectorAll('#queries tbody tr.q td:nth-child(7)')].map(c => c.textContent)"
    )
    return [float(text.replace("−", "-").replace("±", "")) for text in texts]


def page_info(driver) -> str:
    return driver.find_element("id", "page-info").text


def test_report_in_headless_chromium(browser, report, tmp_path):
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver, bench = browser
    path, data, summary = report
    driver.get(path.resolve().as_uri())
    bench.wait_until_ready(driver, timeout=30)
    assert driver.find_element("id", "error").text == ""
    header = driver.find_element("css selector", "#queries th[aria-sort]")
    assert header.get_attribute("data-sort") == "d:ndcg@10" and header.get_attribute("aria-sort") == "ascending"
    by_delta = shown_queries(driver)
    assert len(by_delta) == 50 and page_info(driver) == "queries 1–50 of 60 (page 1 of 2)"
    deltas = selected_deltas(driver)
    assert deltas == sorted(deltas) and deltas[0] < 0 < deltas[-1]  # worst loss first

    texts = {query_id: text.lower() for query_id, text in zip(data["query_ids"], data["queries"], strict=True)}
    ascending = sorted(data["query_ids"], key=texts.get)  # ties keep the data's order, as the page's sort does
    driver.find_element("css selector", "#queries th[data-sort=query]").click()
    assert shown_queries(driver) == ascending[:50] != by_delta
    driver.find_element("css selector", "#queries th[data-sort=query]").click()
    assert shown_queries(driver) == sorted(data["query_ids"], key=texts.get, reverse=True)[:50]
    Select(driver.find_element("id", "other")).select_by_value("bm25")
    assert driver.find_element("css selector", "#queries th[data-sort=b]").text == "bm25 nDCG@10"
    Select(driver.find_element("id", "other")).select_by_value("baseline")

    figures = summary["comparisons"]["model - baseline"]["ndcg@10"]
    for outcome, count, sign in (("win", figures["wins"], 1), ("loss", figures["losses"], -1)):
        driver.find_element("css selector", f"input[name=outcome][value={outcome}]").click()
        assert page_info(driver).startswith(f"queries 1–{min(count, 50)} of {count} ")
        assert driver.find_element("id", f"n-{outcome}").text == f"({count})"
        assert set(shown_queries(driver)) != set(by_delta) and all(d * sign > 0 for d in selected_deltas(driver))
    driver.find_element("css selector", "input[name=outcome][value=all]").click()

    markup = data["titles"].index(MARKUP_TITLE)
    q = next(i for i, top in enumerate(data["top"]["model"]) if top[0] == markup)
    query_id = data["query_ids"][q]
    driver.find_element("id", "search").send_keys(data["queries"][q])
    WebDriverWait(driver, 5).until(lambda d: query_id in shown_queries(d) and len(shown_queries(d)) < 50)
    assert all(data["queries"][q].lower() in texts[shown] for shown in shown_queries(driver))
    driver.find_element("css selector", f'#queries tr.q[data-query="{query_id}"]').click()
    detail = driver.find_element("css selector", f'#queries tr.detail[data-query="{query_id}"]')
    columns = detail.find_elements("css selector", ".col")
    assert [column.get_attribute("data-system") for column in columns] == ["model", "baseline", "bm25"]
    for column in columns[:2]:
        items = column.find_elements("css selector", "li")
        assert len(items) == 10
        chips = [item.find_element("css selector", ".chip").text for item in items]
        assert set(chips) <= {"E", "S", "C", "I", "unjudged"} and "unjudged" in chips
    judged = {data["product_ids"][p]: label for p, label in zip(data["judged"][q], data["labels"][q], strict=True)}
    first_item = columns[0].find_element("css selector", "li")
    assert first_item.find_element("css selector", ".chip").text == judged.get(data["product_ids"][markup], "unjudged")
    assert MARKUP_TITLE in first_item.text  # shown as text, not run as markup
    assert driver.execute_script("return window.hacked") is None
    assert detail.find_elements("css selector", ".col li.moved")  # products in one list and not the other
    assert "in neither model's nor baseline's top 10" in detail.find_element("css selector", ".missed h4").text

    errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
    screenshot = tmp_path / "report.png"
    assert driver.save_screenshot(str(screenshot))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
