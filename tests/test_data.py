import logging

import datasets
import pandas as pd
import pytest

from ttsn_hf.data.esci import DEFAULT_TEMPLATE, EXAMPLES_FILE, PRODUCTS_FILE, load_esci, product_text
from ttsn_hf.errors import UserInputError


@pytest.fixture(scope="module")
def grandi9(shared_data):
    return shared_data / "esci-raw" / "Grandi9__esci_dataset" / "sample_2c_full_data.csv"


@pytest.fixture(scope="module")
def sample_frames(esci_sample):
    return pd.read_parquet(esci_sample / EXAMPLES_FILE), pd.read_parquet(esci_sample / PRODUCTS_FILE)


def write_official(folder, examples, products):
    folder.mkdir(parents=True, exist_ok=True)
    examples.to_parquet(folder / EXAMPLES_FILE)
    products.to_parquet(folder / PRODUCTS_FILE)
    return folder


def small_official(tmp_path, sample_frames, name="esci"):
    """2 train and 1 test queries of the sample, with their products: a fast official-layout folder to corrupt."""
    examples, products = sample_frames
    queries = examples.drop_duplicates("query_id").groupby("split").head(2)["query_id"][:3]
    examples = examples[examples["query_id"].isin(queries)].reset_index(drop=True)
    products = products[products["product_id"].isin(examples["product_id"])].reset_index(drop=True)
    return examples.copy(), products.copy(), tmp_path / name


def plain_rows(tmp_path, rows, name="plain.csv"):
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


# ---------------------------------------------------------------- loading the supported sources


def test_official_sample_matches_pandas(esci_sample, sample_frames):
    examples, products = sample_frames
    esci = load_esci(esci_sample)
    judgements = esci.judgements.to_pandas()
    expected = examples[(examples["product_locale"] == "us") & (examples["small_version"] == 1)]
    assert len(judgements) == len(expected) == 4211
    assert judgements["query_id"].tolist() == expected["query_id"].astype(str).tolist()
    assert judgements["esci_label"].value_counts().to_dict() == expected["esci_label"].value_counts().to_dict()
    assert judgements.groupby("split")["query_id"].nunique().to_dict() == {"train": 150, "test": 50}
    assert sorted(esci.catalogue["product_id"]) == sorted(products["product_id"])
    titles = products.set_index("product_id")["product_title"]
    catalogue = esci.catalogue.to_pandas().set_index("product_id")["product_text"]
    # only titles in this sample: the text is the title, whitespace-normalised and capped
    assert (catalogue.str.len() <= 1000).all()
    assert catalogue["B00P68L9RO"] == " ".join(titles["B00P68L9RO"].split())
    assert esci.dropped == {}


def test_grandi9_joined_csv_with_multiline_fields(grandi9):
    raw = pd.read_csv(grandi9)
    esci = load_esci(grandi9)
    assert len(esci.judgements) == len(raw) == 485
    assert len(esci.catalogue) == raw["product_id"].nunique()
    texts = esci.catalogue.to_pandas().set_index("product_id")["product_text"]
    first = raw.iloc[0]
    text = texts[first["product_id"]]
    assert text.startswith(first["product_title"][:40])
    assert f"Brand: {first['product_brand']}" in text and f"Colour: {first['product_color']}" in text
    assert "<br>" in first["product_description"] and not texts.str.contains(r"<[a-zA-Z/][^>]*>").any()
    assert not texts.str.contains(r"\bNone\b|\bnan\b|\n").any()
    assert (texts.str.len() <= 1000).all() and (texts.str.len() > 0).all()
    no_brand = raw[raw["product_brand"].isna()]["product_id"]
    assert not texts[no_brand].str.contains("Brand:").any()


def test_plain_rows_get_stable_ids_and_train_split(tmp_path):
    rows = [
        {"query": "red shoes", "product_title": "Red Shoe", "label": "exact"},
        {"query": "red shoes", "product_title": "Blue Shoe", "label": "Irrelevant"},
        {"query": "lamp", "product_title": "Desk Lamp", "label": "s"},
    ]
    csv = plain_rows(tmp_path, rows)
    first, second = load_esci(csv), load_esci(csv)
    judgements = first.judgements.to_pandas()
    assert judgements["esci_label"].tolist() == ["E", "I", "S"]
    assert judgements["split"].tolist() == ["train"] * 3
    assert judgements["query_id"].nunique() == 2 and judgements["product_id"].nunique() == 3
    assert first.judgements.to_dict() == second.judgements.to_dict()
    jsonl = tmp_path / "plain.jsonl"
    pd.DataFrame(rows).to_json(jsonl, orient="records", lines=True)
    assert load_esci(jsonl).judgements.to_dict() == first.judgements.to_dict()


def test_plain_product_text_column_is_cleaned(tmp_path):
    csv = plain_rows(tmp_path, [{"query": "q", "product_text": "<b>Bold</b> &amp;   text", "esci_label": "E"}])
    assert load_esci(csv).catalogue["product_text"] == ["Bold & text"]


def test_saved_dataset_dict_takes_split_from_its_names(tmp_path, grandi9):
    raw = pd.read_csv(grandi9).drop(columns=["split"])
    half = raw["query_id"].isin(raw["query_id"].unique()[:10])
    saved = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_pandas(raw[~half], preserve_index=False),
            "test": datasets.Dataset.from_pandas(raw[half], preserve_index=False),
        }
    )
    saved.save_to_disk(tmp_path / "saved")
    judgements = load_esci(tmp_path / "saved").judgements.to_pandas()
    assert judgements.groupby("split")["query_id"].nunique().to_dict() == {"test": 10, "train": 40}


def test_hub_id_fails_fast_while_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserInputError, match="Hub is unreachable.*pass a local path"):
        load_esci("tasksource/esci")


def test_locale_and_small_version_filters(tmp_path, sample_frames):
    examples, products, folder = small_official(tmp_path, sample_frames)
    examples.loc[:4, "product_locale"] = "es"
    examples.loc[5:9, "small_version"] = 0
    write_official(folder, examples, products)
    assert len(load_esci(folder).judgements) == len(examples) - 10
    assert len(load_esci(folder, small_version=0).judgements) == len(examples) - 5
    assert len(load_esci(folder, split="test").judgements) == (examples.loc[10:, "split"] == "test").sum()
    with pytest.raises(UserInputError, match=r"no rows with product_locale == 'jp'.*\['es', 'us'\]"):
        load_esci(folder, locale="jp")


# ---------------------------------------------------------------- product text


def test_product_text_drops_absent_parts_and_strips_html():
    row = {
        "title": "Lamp.",
        "brand": None,
        "color": float("nan"),
        "bullets": "",
        "description": "<p>Warm &amp; bright</p>",
    }
    assert product_text(row) == "Lamp. Warm & bright"
    row = {"product_title": "Lamp", "product_brand": "Acme", "product_color": "red", "product_bullet_point": "a\nb"}
    assert product_text(row) == "Lamp. Brand: Acme. Colour: red. a b"
    assert product_text({"brand": "Acme", "description": "x"}) == "Brand: Acme. x"
    assert product_text({"title": "t", "bullets": ["<li>one</li>", "two"]}) == "t. one two"
    assert product_text({"title": "t", "brand": "b"}, template="{brand} | {title}") == "b | t"


def test_product_text_is_capped_at_a_word_boundary():
    text = product_text({"title": "word " * 100}, DEFAULT_TEMPLATE, max_chars=52)
    assert len(text) <= 52 and text.endswith("word") and "  " not in text


def test_template_with_unknown_field_is_rejected():
    with pytest.raises(UserInputError, match=r"unknown field \{size\}"):
        product_text({"title": "t"}, template="{title} {size}")


# ---------------------------------------------------------------- bad input


def test_missing_products_file(tmp_path, sample_frames):
    examples, _, folder = small_official(tmp_path, sample_frames)
    folder.mkdir()
    examples.to_parquet(folder / EXAMPLES_FILE)
    with pytest.raises(UserInputError, match=f"{PRODUCTS_FILE}: file not found"):
        load_esci(folder)


def test_missing_path():
    with pytest.raises(UserInputError, match="nowhere.csv: file or folder not found"):
        load_esci("/nonexistent/nowhere.csv")


def test_missing_column_is_named(tmp_path, sample_frames):
    examples, products, folder = small_official(tmp_path, sample_frames)
    write_official(folder, examples.drop(columns=["esci_label"]), products)
    with pytest.raises(UserInputError, match=f"{EXAMPLES_FILE}: missing column.*'esci_label'"):
        load_esci(folder)


def test_unknown_label_names_column_and_row(tmp_path, sample_frames):
    examples, products, folder = small_official(tmp_path, sample_frames)
    examples.loc[6, "esci_label"] = "X"
    write_official(folder, examples, products)
    with pytest.raises(UserInputError, match=r"column 'esci_label' has unknown labels at row 7 \('X'\)"):
        load_esci(folder)


def test_empty_query_names_row(tmp_path):
    csv = plain_rows(tmp_path, [{"query": "a", "product_title": "t", "esci_label": "E"}] * 2)
    csv.write_text(csv.read_text().replace("a,t,E", " ,t2,E", 1))
    with pytest.raises(UserInputError, match=r"plain.csv: column 'query' is empty at row 1"):
        load_esci(csv)


def test_null_title_is_an_error_unless_allowed(tmp_path, sample_frames):
    examples, products, folder = small_official(tmp_path, sample_frames)
    products.loc[2, "product_title"] = None
    products["product_description"] = products["product_description"].astype(object)
    products.loc[2, "product_description"] = "a description"
    write_official(folder, examples, products)
    with pytest.raises(UserInputError, match=rf"{PRODUCTS_FILE}: column 'product_title' is empty for product row 3"):
        load_esci(folder)
    esci = load_esci(folder, allow_missing_titles=True)
    texts = esci.catalogue.to_pandas().set_index("product_id")["product_text"]
    assert texts[products.loc[2, "product_id"]] == "a description"


def test_non_utf8_csv(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("query,product_title,esci_label\ncafé,crème,E\n".encode("latin-1"))
    with pytest.raises(UserInputError, match="latin1.csv: not UTF-8 text"):
        load_esci(path)


def test_corrupt_parquet(tmp_path, sample_frames):
    examples, products, folder = small_official(tmp_path, sample_frames)
    write_official(folder, examples, products)
    (folder / PRODUCTS_FILE).write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(UserInputError, match=f"{PRODUCTS_FILE}: not a readable parquet file"):
        load_esci(folder)


def test_judgement_without_product_is_dropped_and_counted(tmp_path, sample_frames, caplog):
    examples, products, folder = small_official(tmp_path, sample_frames)
    missing = examples.loc[[0, 1], "product_id"]
    write_official(folder, examples, products[~products["product_id"].isin(missing)])
    with caplog.at_level(logging.WARNING):
        esci = load_esci(folder)
    assert esci.dropped == {"judgement_product_missing": 2}
    assert len(esci.judgements) == len(examples) - 2
    assert "not in the catalogue" in caplog.text


def test_duplicate_judgements(tmp_path, sample_frames):
    examples, products, folder = small_official(tmp_path, sample_frames)
    write_official(folder, pd.concat([examples, examples.iloc[[3]]], ignore_index=True), products)
    esci = load_esci(folder)
    assert esci.dropped == {"duplicate_judgements": 1} and len(esci.judgements) == len(examples)
    conflicting = examples.iloc[[3]].assign(esci_label="I" if examples.loc[3, "esci_label"] != "I" else "E")
    write_official(folder, pd.concat([examples, conflicting], ignore_index=True), products)
    with pytest.raises(UserInputError, match=r"judged with different labels at rows 4, \d+"):
        load_esci(folder)


def test_query_id_with_two_texts(tmp_path, sample_frames):
    examples, products, folder = small_official(tmp_path, sample_frames)
    examples.loc[1, "query"] = "something else"
    write_official(folder, examples, products)
    with pytest.raises(UserInputError, match="query_id has more than one 'query' value"):
        load_esci(folder)


def test_repeated_products_are_dropped_within_and_across_read_batches(tmp_path, sample_frames, monkeypatch):
    from ttsn_hf.data import esci as esci_module

    examples, products, folder = small_official(tmp_path, sample_frames)
    monkeypatch.setattr(esci_module, "PRODUCT_BATCH_ROWS", 3)  # the repeats fall in the same and in later batches
    repeated = products.iloc[[0, 0, 1, 4]].assign(product_title="a later copy")
    write_official(folder, examples, pd.concat([products, repeated], ignore_index=True))
    esci = load_esci(folder)
    assert esci.dropped == {"duplicate_products": 4}
    assert sorted(esci.catalogue["product_id"]) == sorted(products["product_id"])
    assert "a later copy" not in esci.catalogue["product_text"]
