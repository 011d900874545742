import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pandas as pd
import pytest

from ttsn_hf.data.esci import EXAMPLES_FILE, PRODUCTS_FILE
from ttsn_hf.data.stages import STAGE_FEATURES, build_stage, load_hard_negatives, load_prepared, prepare
from ttsn_hf.errors import UserInputError

REPO = Path(__file__).resolve().parents[1]
POSITIVES = {1: {"E", "S"}, 2: {"E", "S"}, 3: {"E", "S", "C"}}


@pytest.fixture(scope="module")
def raw(esci_sample):
    examples = pd.read_parquet(esci_sample / EXAMPLES_FILE).astype({"query_id": str})
    products = pd.read_parquet(esci_sample / PRODUCTS_FILE)
    return examples, products


@pytest.fixture(scope="module")
def mined_file(raw, tmp_path_factory):
    """3 unjudged products per train query (ranks reversed), plus rows prepare must drop: a test query's row,
    a product judged E for its query, and a repeat."""
    examples, products = raw
    judged = examples.groupby("query_id")["product_id"].agg(set)
    catalogue = sorted(products["product_id"])
    rows = []
    for query_id in sorted(examples.loc[examples["split"] == "train", "query_id"].unique()):
        picked = [product for product in catalogue[int(query_id) % 1000 :] if product not in judged[query_id]][:3]
        rows += [(query_id, product, rank) for rank, product in zip((3, 2, 1), picked, strict=True)]
    test_query = examples.loc[examples["split"] == "test", "query_id"].iloc[0]
    exact = examples[(examples["split"] == "train") & (examples["esci_label"] == "E")].iloc[0]
    rows += [(test_query, catalogue[0], 1), (exact["query_id"], exact["product_id"], 1), rows[0]]
    path = tmp_path_factory.mktemp("mined") / "hard_negatives.parquet"
    pd.DataFrame(rows, columns=["query_id", "product_id", "rank"]).to_parquet(path)
    return path


@pytest.fixture(scope="module")
def prepared(esci_sample, mined_file, tmp_path_factory):
    output = tmp_path_factory.mktemp("prepared") / "data"
    summary = prepare(esci_sample, output, hard_negatives=mined_file, seed=42)
    esci, stages = load_prepared(output)
    return output, summary, esci, stages


def stage_frame(stages, stage, split):
    return stages[stage][split].to_pandas()


def pairs(frame, kind, where=None):
    """(query_id, product_id) pairs of the ``kind`` lists ("positive" or "negative"), optionally of one source."""
    found = set()
    for row in frame.itertuples():
        ids = getattr(row, f"{kind}_ids")
        tags = row.negative_sources if kind == "negative" else [None] * len(ids)
        found |= {(row.query_id, pid) for pid, tag in zip(ids, tags, strict=True) if where is None or tag == where}
    return found


def expected_mined(mined_file, raw, query_ids):
    """The mined pairs prepare should keep for ``query_ids``, computed here from the raw files."""
    examples, _ = raw
    mined = pd.read_parquet(mined_file).drop_duplicates(["query_id", "product_id"])
    judged = set(zip(examples["query_id"], examples["product_id"], strict=True))
    keep = pd.Series([(q, p) not in judged for q, p in zip(mined["query_id"], mined["product_id"], strict=True)])
    mined = mined[keep & mined["query_id"].isin(query_ids)]
    return set(zip(mined["query_id"], mined["product_id"], strict=True))


# ---------------------------------------------------------------- the stage datasets


def test_layout_and_columns(prepared):
    output, _, esci, stages = prepared
    assert sorted(path.name for path in output.iterdir()) == [
        "catalogue",
        "judgements",
        "queries",
        "stage1",
        "stage2",
        "stage3",
        "summary.json",
    ]
    assert set(stages) == {1, 2, 3}
    assert esci.catalogue.column_names == ["product_id", "product_text"]
    assert esci.judgements.column_names == ["query_id", "query", "product_id", "esci_label", "split"]
    assert datasets.load_from_disk(output / "queries").column_names == ["query_id", "query", "split"]
    for splits in stages.values():
        assert set(splits) == {"train", "validation"}
        assert splits["train"].column_names == list(STAGE_FEATURES)
        # ids to read, texts never copied: the stage folders hold no product text
        assert "product_text" not in splits["train"].column_names


def test_queries_held_out_by_query_and_test_queries_never_used(prepared, raw):
    _, summary, _, stages = prepared
    examples, _ = raw
    train_split = set(examples.loc[examples["split"] == "train", "query_id"])
    test_split = set(examples.loc[examples["split"] == "test", "query_id"])
    first_train = set(stage_frame(stages, 1, "train")["query_id"])
    first_validation = set(stage_frame(stages, 1, "validation")["query_id"])
    assert first_train | first_validation == train_split
    assert not first_train & first_validation
    assert len(first_validation) == round(0.1 * len(train_split)) == summary["queries"]["validation"]
    for stage in (1, 2, 3):
        assert set(stage_frame(stages, stage, "train")["query_id"]) == first_train
        assert set(stage_frame(stages, stage, "validation")["query_id"]) == first_validation
        for split in ("train", "validation"):
            assert not set(stage_frame(stages, stage, split)["query_id"]) & test_split


def test_rows_follow_the_stage_rules(prepared, raw):
    _, _, esci, stages = prepared
    examples, _ = raw
    labels = dict(
        zip(zip(examples["query_id"], examples["product_id"], strict=True), examples["esci_label"], strict=True)
    )
    catalogue = esci.catalogue.to_pandas()
    queries = examples.drop_duplicates("query_id").set_index("query_id")["query"]
    for stage in (1, 2, 3):
        for split in ("train", "validation"):
            frame = stage_frame(stages, stage, split)
            assert frame["query_id"].is_unique and (frame["query"] == frame["query_id"].map(queries)).all()
            for row in frame.itertuples():
                # each product both by id and by its catalogue row, in step
                for kind in ("positive", "negative"):
                    ids, rows = getattr(row, f"{kind}_ids"), getattr(row, f"{kind}_rows")
                    assert list(ids) == catalogue["product_id"].iloc[list(rows)].tolist()
                assert [labels[(row.query_id, pid)] for pid in row.positive_ids] == list(row.positive_labels)
                assert set(row.positive_labels) <= POSITIVES[stage]
                for pid, source in zip(row.negative_ids, row.negative_sources, strict=True):
                    # I judgements are judged negatives; mined ones are never judged for their query
                    assert labels.get((row.query_id, pid)) == ("I" if source == "judged" else None)
                assert set(row.negative_sources) <= ({"judged", "mined"} if stage > 1 else {"judged"})
                assert len(set(row.negative_ids)) == len(row.negative_ids)


def test_every_judgement_of_the_stage_labels_is_used(prepared, raw):
    _, _, _, stages = prepared
    examples, _ = raw
    for stage in (1, 3):
        frame = stage_frame(stages, stage, "train")
        expected = examples[examples["query_id"].isin(set(frame["query_id"]))]
        assert pairs(frame, "positive") == set(
            expected.loc[expected["esci_label"].isin(POSITIVES[stage]), ["query_id", "product_id"]].itertuples(False)
        )
        assert pairs(frame, "negative", "judged") == set(
            expected.loc[expected["esci_label"] == "I", ["query_id", "product_id"]].itertuples(False)
        )


def test_stage2_is_stage1_plus_mined(prepared, mined_file, raw):
    _, summary, _, stages = prepared
    for split in ("train", "validation"):
        first, second = stage_frame(stages, 1, split), stage_frame(stages, 2, split)
        assert pairs(second, "positive") == pairs(first, "positive")
        assert pairs(second, "negative", "judged") == pairs(first, "negative")
        expected = expected_mined(mined_file, raw, set(first["query_id"]))
        assert pairs(second, "negative", "mined") == expected and expected
    assert summary["dropped"] == {"mined_judged": 1, "mined_test_query": 1}


def test_summary_matches_independent_counts(prepared, raw, mined_file):
    output, summary, _, stages = prepared
    examples, products = raw
    assert json.loads((output / "summary.json").read_text()) == summary
    assert summary["catalogue_products"] == products["product_id"].nunique()
    assert summary["query_id_dtype"] == "int64"
    assert summary["judgements"]["rows"] == len(examples)
    assert summary["judgements"]["by_label"] == examples["esci_label"].value_counts().sort_index().to_dict()
    assert summary["judgements"]["queries_by_split"] == {"test": 50, "train": 150}
    for stage in (1, 2, 3):
        for split in ("train", "validation"):
            query_ids = set(stage_frame(stages, stage, split)["query_id"])
            judged = examples[examples["query_id"].isin(query_ids)]
            positives = judged[judged["esci_label"].isin(POSITIVES[stage])]
            mined = len(expected_mined(mined_file, raw, query_ids)) if stage > 1 else 0
            sources = {"judged": int((judged["esci_label"] == "I").sum())} | ({"mined": mined} if mined else {})
            assert summary["stages"][f"stage{stage}"][split] == {
                "queries": len(query_ids),
                "groups": len(positives),
                "positives_by_label": positives["esci_label"].value_counts().sort_index().to_dict(),
                "negatives_by_source": sources,
            }


def test_same_seed_same_bytes_other_seed_other_split(esci_sample, mined_file, tmp_path):
    first = prepare(esci_sample, tmp_path / "a", hard_negatives=mined_file, seed=7)
    second = prepare(esci_sample, tmp_path / "b", hard_negatives=mined_file, seed=7)
    assert first == second
    arrow_a = sorted(path.relative_to(tmp_path / "a") for path in (tmp_path / "a").rglob("*.arrow"))
    assert len(arrow_a) == 9
    for relative in arrow_a:
        assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes(), relative
    prepare(esci_sample, tmp_path / "c", seed=8, stages=(1,))
    validation = {
        seed: set(datasets.load_from_disk(tmp_path / name / "stage1")["validation"]["query_id"])
        for seed, name in ((7, "a"), (8, "c"))
    }
    assert validation[7] != validation[8]
    assert not list(tmp_path.glob(".*")), "a staging folder was left behind"


def test_written_in_chunks_the_same_as_at_once(esci_sample, mined_file, prepared, tmp_path, monkeypatch):
    """Stage rows a few queries at a time and the catalogue a few products at a time: the same data."""
    from ttsn_hf.data import esci as esci_module
    from ttsn_hf.data import stages as stages_module
    from ttsn_hf.data import tables

    monkeypatch.setattr(stages_module, "QUERIES_PER_CHUNK", 7)
    monkeypatch.setattr(esci_module, "PRODUCT_BATCH_ROWS", 500)
    monkeypatch.setattr(tables, "ROWS_PER_BATCH", 300)
    prepare(esci_sample, tmp_path / "chunked", hard_negatives=mined_file, seed=42)
    esci, stages = load_prepared(tmp_path / "chunked")
    _, _, reference_esci, reference = prepared
    assert esci.catalogue.to_pandas().equals(reference_esci.catalogue.to_pandas())
    assert esci.judgements.to_pandas().equals(reference_esci.judgements.to_pandas())
    for stage in (1, 2, 3):
        for split in ("train", "validation"):
            assert stage_frame(stages, stage, split).equals(stage_frame(reference, stage, split)), (stage, split)


def test_build_stage_caps_hard_negatives_by_rank(esci_sample, mined_file, prepared):
    _, _, esci, _ = prepared
    splits = build_stage(esci, 2, hard_negatives=mined_file, hard_negatives_per_query=1)
    frame = splits["train"].to_pandas()
    mined = frame.assign(mined=[list(zip(ids, src, strict=True)) for ids, src in
                                zip(frame["negative_ids"], frame["negative_sources"], strict=True)])  # fmt: skip
    per_query = {row.query_id: [pid for pid, source in row.mined if source == "mined"] for row in mined.itertuples()}
    assert max(map(len, per_query.values())) == 1
    file = pd.read_parquet(mined_file)
    best = file[file["rank"] == 1].drop_duplicates("query_id").set_index("query_id")["product_id"]
    assert all(products == [best[query_id]] for query_id, products in per_query.items() if products)


def test_train_py_consumes_the_prepared_folder(prepared):
    from transformers import AutoTokenizer

    from ttsn_hf import default_base_model
    from ttsn_hf.arguments import DataArguments
    from ttsn_hf.data.groups import GroupSource
    from ttsn_hf.modeling.pretrained import resolve_pretrained
    from ttsn_hf.training.collator import TwoTowerCollator
    from ttsn_hf.training.run import load_training_data

    output, _, _, _ = prepared
    esci, stages = load_training_data(DataArguments(data_dir=str(output)))
    tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(default_base_model()))
    source = GroupSource([stages[2]["train"]], esci.products(), esci.judged(), num_random_negatives=2)
    groups = source.groups().select(range(8))
    batch = TwoTowerCollator(tokenizer, source, negatives_per_query=2)([groups[i] for i in range(8)])
    assert batch["query_input_ids"].shape[0] == 8 and batch["targets"].sum() == 8
    assert batch["product_input_ids"].shape[0] == 8 * 3  # every query's pool holds at least its 2 random negatives


# ---------------------------------------------------------------- bad hard negatives


def test_hard_negatives_from_another_catalogue(prepared, tmp_path):
    _, _, esci, _ = prepared
    query_id = int(esci.judgements[0]["query_id"])
    foreign = tmp_path / "foreign.parquet"
    pd.DataFrame(
        {"query_id": [query_id, query_id], "product_id": [esci.catalogue[0]["product_id"], "B0NOTHERE"]}
    ).to_parquet(foreign)
    with pytest.raises(
        UserInputError, match=r"foreign.parquet: 1 of 2 values of column 'product_id' are not in the catalogue \(row 2"
    ):
        load_hard_negatives(foreign, esci)
    pd.DataFrame({"query_id": [999999999], "product_id": [esci.catalogue[0]["product_id"]]}).to_parquet(foreign)
    with pytest.raises(UserInputError, match="column 'query_id' are not in the judgements"):
        load_hard_negatives(foreign, esci)
    pd.DataFrame({"query": ["x"], "product_id": ["y"]}).to_parquet(foreign)
    with pytest.raises(UserInputError, match=r"foreign.parquet: missing column\(s\) \['query_id'\]"):
        load_hard_negatives(foreign, esci)


def test_stage2_needs_hard_negatives(prepared):
    with pytest.raises(UserInputError, match="stage 2 needs mined hard negatives"):
        build_stage(prepared[2], 2)


# ---------------------------------------------------------------- the CLI


def run_cli(*args: str, script: tuple[str, ...] = ("prepare.py",)) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, *script, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def test_cli_script_prints_and_saves_the_summary(esci_sample, tmp_path):
    result = run_cli(
        "--esci_dir", str(esci_sample), "--output_dir", str(tmp_path / "out"), "--stages", "1", script=("prepare.py",)
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed == json.loads((tmp_path / "out" / "summary.json").read_text())
    assert list(printed["stages"]) == ["stage1"]


def test_cli_missing_file_exits_2_without_traceback(tmp_path, raw):
    examples, _ = raw
    (tmp_path / "esci").mkdir()
    examples.head(20).to_parquet(tmp_path / "esci" / EXAMPLES_FILE)
    result = run_cli("--esci_dir", str(tmp_path / "esci"), "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 2
    assert f"error: {tmp_path / 'esci' / PRODUCTS_FILE}: file not found" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_foreign_hard_negatives_exit_2(esci_sample, tmp_path):
    foreign = tmp_path / "mined.csv"
    foreign.write_text("query_id,product_id\n1,B0NOTHERE\n")
    result = run_cli(
        "--esci_dir", str(esci_sample), "--output_dir", str(tmp_path / "out"), "--hard_negatives", str(foreign)
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "mined.csv: 1 of 1 values of column 'product_id' are not in the catalogue" in result.stderr
    assert not (tmp_path / "out").exists()


def corrupt(kind: str, folder: Path, raw) -> Path:
    """An official-layout folder (2 queries) broken in one way; returns the --esci_dir to pass."""
    examples, products = raw
    examples = examples[examples["query_id"].isin(examples["query_id"].unique()[:2])].reset_index(drop=True)
    products = products[products["product_id"].isin(examples["product_id"])]
    if kind == "column":
        examples = examples.drop(columns="query")
    elif kind == "label":
        examples.loc[4, "esci_label"] = "maybe"
    elif kind == "query":
        examples.loc[2, "query"] = "  "
    elif kind == "title":
        products = products.assign(product_title=[None] + products["product_title"].tolist()[1:])
    folder.mkdir()
    examples.to_parquet(folder / EXAMPLES_FILE)
    products.to_parquet(folder / PRODUCTS_FILE)
    if kind == "parquet":
        (folder / EXAMPLES_FILE).write_bytes((folder / EXAMPLES_FILE).read_bytes()[:200])
    if kind == "encoding":
        path = folder / "rows.csv"
        path.write_bytes("query,product_title,esci_label\nniño,señal,E\n".encode("cp1252"))
        return path
    return folder


@pytest.mark.parametrize(
    "kind, message",
    [
        ("column", f"{EXAMPLES_FILE}: missing column(s) 'query'"),
        ("label", f"{EXAMPLES_FILE}: column 'esci_label' has unknown labels at row 5 ('maybe')"),
        ("query", f"{EXAMPLES_FILE}: column 'query' is empty at row 3"),
        ("title", f"{PRODUCTS_FILE}: column 'product_title' is empty for product row 1"),
        ("parquet", f"{EXAMPLES_FILE}: not a readable parquet file"),
        ("encoding", "rows.csv: not UTF-8 text"),
    ],
)
def test_cli_bad_input_exits_2_and_leaves_output_alone(kind, message, raw, tmp_path, capsys, load_cli):
    source = corrupt(kind, tmp_path / "esci", raw)
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("earlier output")
    with pytest.raises(SystemExit) as exit_info:
        load_cli("prepare").main(["--esci_dir", str(source), "--output_dir", str(output)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert [path.name for path in output.iterdir()] == ["keep.txt"]


def test_pseudo_queries_are_title_spans_added_to_training_only(esci_sample):
    from ttsn_hf.data.esci import load_esci

    esci = load_esci(esci_sample)
    plain = build_stage(esci, 1)
    adapted = build_stage(esci, 1, pseudo_queries=500)
    again = build_stage(esci, 1, pseudo_queries=500)
    train = adapted["train"].to_pandas()
    pseudo = train[train["query_id"].str.startswith("pseudo:")]
    assert len(train) == len(plain["train"]) + len(pseudo) and 450 <= len(pseudo) <= 500
    assert train.head(len(plain["train"])).equals(plain["train"].to_pandas())
    assert adapted["validation"].to_pandas().equals(plain["validation"].to_pandas())
    # one positive each (its own product, no label), no stored negatives: training draws random ones
    assert (pseudo["positive_ids"].map(len) == 1).all() and (pseudo["negative_ids"].map(len) == 0).all()
    assert (pseudo["positive_labels"].map(list) == pd.Series([[""]] * len(pseudo), index=pseudo.index)).all()
    assert (pseudo["query_id"] == "pseudo:" + pseudo["positive_ids"].str[0]).all()
    texts = esci.catalogue.to_pandas().set_index("product_id")["product_text"]
    for query, product in zip(pseudo["query"], pseudo["positive_ids"].str[0], strict=True):
        text = texts[product]
        assert 2 <= len(query.split()) <= 5 or len(query.split()) == len(text.split()), (query, text)
        assert all(word in text.lower() for word in query.split()), (query, text)
    assert again["train"].to_pandas().equals(train)


def test_show_joins_the_texts_of_a_stage(prepared, load_cli, capsys):
    output, _, esci, stages = prepared
    load_cli("prepare").main(["--show", str(output), "--stages", "2"])
    printed = capsys.readouterr().out
    first = stages[2]["train"][0]
    texts = esci.catalogue.to_pandas().set_index("product_id")["product_text"]
    assert f"stage2/train: {len(stages[2]['train'])} queries" in printed
    assert f"query {first['query_id']}: {first['query']!r}" in printed
    assert texts[first["positive_ids"][0]][:90] in printed and "mined" in printed


def test_missing_esci_dir_names_the_flag(tmp_path, load_cli, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_cli("prepare").main(["--esci_dir", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"--esci_dir {tmp_path / 'nowhere'}: no such file or folder; pass the official ESCI folder" in error
    assert not (tmp_path / "out").exists()
