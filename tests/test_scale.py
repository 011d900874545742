"""bench/scale.py at a tiny fraction: the synthetic release is shaped like the official files, and the pipeline steps
run as the real CLIs with their figures recorded (so the full-release benchmark cannot rot)."""

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]


def load_scale():
    spec = importlib.util.spec_from_file_location("scale_bench", REPO / "bench" / "scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scale():
    return load_scale()


@pytest.fixture(scope="module")
def synthetic(scale, tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    return scale.write_synthetic_esci(folder, fraction=0.01, chunk_rows=5_000), folder


def test_synthetic_release_has_the_official_layout_sizes_and_label_shares(scale, synthetic, esci_sample):
    sizes, folder = synthetic
    assert sizes == {"queries": 1307, "judgements": 26217, "products": 18149}
    for name in ("examples", "products"):
        official = pq.read_schema(esci_sample / f"shopping_queries_dataset_{name}.parquet")
        written = pq.read_schema(folder / f"shopping_queries_dataset_{name}.parquet")
        assert written.names == official.names
        assert pq.ParquetFile(folder / f"shopping_queries_dataset_{name}.parquet").metadata.num_row_groups > 1
    examples = pd.read_parquet(folder / "shopping_queries_dataset_examples.parquet")
    products = pd.read_parquet(folder / "shopping_queries_dataset_products.parquet")
    assert len(examples) == sizes["judgements"] and examples["query_id"].nunique() == sizes["queries"]
    assert len(products) == products["product_id"].nunique() == sizes["products"]
    assert set(examples["product_id"]) <= set(products["product_id"])
    assert not examples.duplicated(["query_id", "product_id"]).any()
    shares = examples["esci_label"].value_counts(normalize=True)
    for label, share in scale.LABEL_SHARES.items():
        assert shares[label] == pytest.approx(share, abs=0.01)
    assert (examples.groupby("query_id")["split"].nunique() == 1).all()  # split by query, as in the release
    test_share = (examples.drop_duplicates("query_id")["split"] == "test").mean()
    assert test_share == pytest.approx(scale.TEST_QUERY_SHARE, abs=0.04)
    sample_titles = pd.read_parquet(esci_sample / "shopping_queries_dataset_products.parquet")["product_title"]
    assert products["product_title"].str.len().median() == pytest.approx(sample_titles.str.len().median(), rel=0.15)
    assert products["product_description"].isna().mean() == pytest.approx(0.47, abs=0.03)
    again = folder.parent / "again"
    assert scale.write_synthetic_esci(again, fraction=0.01, chunk_rows=5_000) == sizes
    pd.testing.assert_frame_equal(pd.read_parquet(again / "shopping_queries_dataset_products.parquet"), products)


def test_scale_runs_the_cli_steps_and_records_their_figures(scale, tmp_path):
    output = tmp_path / "scale.json"
    steps = ["prepare", "index", "eval"]
    results = scale.main(["--fractions", "0.0005", "--steps", ",".join(steps), "--work_dir", str(tmp_path / "work"),
                          "--output", str(output)])  # fmt: skip
    assert json.loads(output.read_text()) == json.loads(json.dumps(results))
    (run,) = results["runs"]
    assert run["completed"] and list(run["steps"]) == steps and run["queries"] == 65
    for figures in run["steps"].values():
        assert figures["returncode"] == 0 and figures["wall_s"] > 0 and figures["cpu_s"] > 0
        # the exact peak of the largest process (wait4) and the polled peak of the whole tree (can miss a spike)
        assert figures["peak_rss_gib"] > 0.05 and figures["peak_tree_rss_gib"] > 0
        assert figures["output_disk_bytes"] > 0
    assert output.with_suffix(".png").stat().st_size > 10_000
    assert not (tmp_path / "work" / "fraction-0.0005").exists()  # deleted without --keep
