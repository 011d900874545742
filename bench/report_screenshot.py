"""Screenshots of a report.html in headless Chromium (Debian's chromium and chromedriver): the top of the page (the
summary), and the query-by-query view with the first query (the model's worst loss) opened. For docs/.

    python bench/report_screenshot.py runs/sample/eval/report.html docs/report.png docs/report_queries.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_report import chromium_driver, close, wait_until_ready  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("summary_png", type=Path)
    parser.add_argument("queries_png", type=Path)
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--summary_height", type=int, default=1050)
    parser.add_argument("--queries_height", type=int, default=1100)
    args = parser.parse_args(argv)
    driver = chromium_driver(args.width, args.summary_height)
    if driver is None:
        raise SystemExit("error: no chromium/chromedriver in /usr/bin: apt-get install chromium chromium-driver")
    try:
        driver.get(args.report.resolve().as_uri())
        wait_until_ready(driver)
        driver.save_screenshot(str(args.summary_png))
        driver.set_window_size(args.width, args.queries_height)
        driver.find_element("css selector", "#queries tbody tr.q").click()
        driver.execute_script("document.querySelector('.controls').scrollIntoView()")
        driver.save_screenshot(str(args.queries_png))
        errors = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    finally:
        close(driver)
    print(f"wrote {args.summary_png}, {args.queries_png}; console errors: {errors or 'none'}")


if __name__ == "__main__":
    main()
