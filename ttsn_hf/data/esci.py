"""ESCI loading: the official Shopping Queries Dataset layout, plain tables, saved or Hub `datasets`; product text.

Every loader ends in the same two tables (see docs/ARCHITECTURE.md):

- ``catalogue``: ``product_id``, ``product_text`` (one row per product);
- ``judgements``: ``query_id``, ``query``, ``product_id``, ``esci_label`` (E/S/C/I), ``split`` (train/test).

Bad input raises :class:`~ttsn_hf.errors.UserInputError` naming the file, the column and the rows (numbered from 1,
header not counted, in the file's own order).
"""

from __future__ import annotations

import hashlib
import html
import logging
import os
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets.fingerprint import generate_random_fingerprint
from datasets.table import InMemoryTable
from tqdm.auto import tqdm

from ..errors import UserInputError
from ..labels import LABEL_NAMES, LABELS

logger = logging.getLogger(__name__)

EXAMPLES_FILE = "shopping_queries_dataset_examples.parquet"
PRODUCTS_FILE = "shopping_queries_dataset_products.parquet"
SPLITS = ("train", "test")
DEFAULT_TEMPLATE = "{title}. Brand: {brand}. Colour: {color}. {bullets} {description}"
DEFAULT_MAX_TEXT_CHARS = 1000
# template field -> column of the official products file
TEXT_FIELDS = {
    "title": "product_title",
    "brand": "product_brand",
    "color": "product_color",
    "bullets": "product_bullet_point",
    "description": "product_description",
}
TABLE_SUFFIXES = (".parquet", ".csv", ".tsv", ".jsonl", ".json")
PRODUCT_BATCH_ROWS = 50_000  # products read, checked and rendered at a time from the official products file

_HTML_TAG = re.compile(r"</?[A-Za-z][^<>]*>")
_SEPARATOR = re.compile(r"^([\s.,;:!?]*)(.*)$", re.DOTALL)
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


@dataclass
class EsciData:
    """A product catalogue and the query-product judgements over it."""

    catalogue: datasets.Dataset
    judgements: datasets.Dataset
    source: str = ""
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows dropped while loading


# ---------------------------------------------------------------- product text


def clean_text(value: object, max_chars: int | None = None) -> str:
    """Plain text from a field that may be null or hold HTML: tags removed, entities decoded, whitespace collapsed."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if not isinstance(value, str) and hasattr(value, "__iter__"):  # bullet points stored as a list
        return clean_text(" ".join(clean_text(item) for item in value), max_chars)
    text = str(value)
    if "<" in text or "&" in text:  # most fields hold neither: skip the HTML passes (a third of prepare's time)
        text = _HTML_TAG.sub(" ", html.unescape(_HTML_TAG.sub(" ", text)))
    return truncate(" ".join(text.split()), max_chars)  # split() is re's \s, several times faster


def truncate(text: str, max_chars: int | None) -> str:
    """Cut ``text`` to at most ``max_chars`` characters, at a word boundary when one is near."""
    if not max_chars or len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ")
    return (cut[:space] if space > max_chars // 2 else cut).rstrip(" ,;:")


def template_pieces(template: str) -> list[tuple[str, str | None]]:
    """``(literal, field)`` pieces of a product-text template; the literal before a field goes with that field."""
    pieces = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise UserInputError(f"text template {template!r} is malformed: {error}") from None
    for literal, name, _, _ in parsed:
        if name is not None and name not in TEXT_FIELDS:
            raise UserInputError(
                f"text template {template!r} has an unknown field {{{name}}}; known fields: "
                + ", ".join(f"{{{known}}}" for known in TEXT_FIELDS)
            )
        pieces.append((literal, name))
    if not any(name for _, name in pieces):
        raise UserInputError(f"text template {template!r} uses none of the fields {list(TEXT_FIELDS)}")
    return pieces


def product_text(
    row: Mapping[str, object], template: str = DEFAULT_TEMPLATE, max_chars: int | None = DEFAULT_MAX_TEXT_CHARS
) -> str:
    """The text of one product from its fields, through ``template``.

    ``row`` holds template fields by name (``title``, ``brand``, ...) or by ESCI column (``product_title``, ...).
    A field that is null or empty is dropped with its label (the literal text before it, after any punctuation), so
    no "Brand: None" appears; HTML is stripped, whitespace collapsed and the result cut to ``max_chars``.
    """
    return _render(template_pieces(template), row, max_chars)


def _render(pieces: list[tuple[str, str | None]], row: Mapping[str, object], max_chars: int | None) -> str:
    # A literal is "terminator + label" (". " + "Brand: "): a missing field drops its label, but its terminator
    # is kept if it is stronger than the next one, so "{color}. {bullets} {description}" never loses the ". ".
    text, skipped = "", ""
    for literal, name in pieces:
        terminator, label = _SEPARATOR.match(literal).groups()
        value = clean_text(row.get(name, row.get(TEXT_FIELDS[name]))) if name else ""
        if name and not value:
            skipped = skipped or (terminator if terminator.strip() else "")
            continue
        if text:
            terminator = terminator if terminator.strip() else skipped or terminator
            if text.endswith((".", "!", "?")):
                terminator = terminator.lstrip(".")
            text += terminator + label
        elif name:
            text = label
        text, skipped = text + value, ""
        if max_chars and len(text) > max_chars + 1:
            break  # the first max_chars characters are settled: later fields would be cut off anyway
    return truncate(" ".join(text.split()).strip(" .,;:"), max_chars)


def _text_column(products: datasets.Dataset, template: str, max_chars: int | None, num_proc: int | None):
    pieces = template_pieces(template)
    fields = [name for name in TEXT_FIELDS if name in products.column_names]

    def render_batch(batch: dict[str, list]) -> dict[str, list[str]]:
        rows = [dict(zip(fields, values, strict=True)) for values in zip(*(batch[f] for f in fields), strict=True)]
        return {"product_text": [_render(pieces, row, max_chars) for row in rows]}

    return products.map(render_batch, batched=True, remove_columns=fields, num_proc=num_proc, desc="product text")


# ---------------------------------------------------------------- reading files


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """A CSV/TSV, Parquet or JSON(L) file as a DataFrame; ids are read as strings, only empty CSV fields are null."""
    frame = _read(Path(path))
    # row numbers in messages are positions in the file: an index stored by pandas becomes a column (or goes)
    if not isinstance(frame.index, pd.RangeIndex):
        frame = frame.reset_index(drop=all(name is None for name in frame.index.names))
    return frame


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise UserInputError(f"{path}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix in (".csv", ".tsv"):
            return pd.read_csv(
                path,
                sep="\t" if suffix == ".tsv" else ",",
                encoding="utf-8",
                dtype={"query_id": str, "product_id": str, "query": str, "esci_label": str, "label": str},
                keep_default_na=False,
                na_values=[""],
            )
        if suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=suffix == ".jsonl", dtype=False)
    except UnicodeDecodeError as error:
        raise UserInputError(
            f"{path}: not UTF-8 text (bad byte at offset {error.start}); re-save it as UTF-8"
        ) from None
    except (pa.ArrowException, OSError) as error:
        raise UserInputError(f"{path}: not a readable parquet file ({error})") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as error:
        raise UserInputError(f"{path}: cannot parse as {suffix[1:]} ({error})") from None
    raise UserInputError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(TABLE_SUFFIXES)}")


def require_columns(frame: pd.DataFrame, columns: list[str], source: str) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise UserInputError(
            f"{source}: missing column(s) {', '.join(map(repr, missing))}; found {list(map(str, frame.columns))}"
        )


def describe_rows(frame: pd.DataFrame, mask: pd.Series, column: str, limit: int = 5) -> str:
    """'rows 3, 9 ('x', 'y')' for the first rows where ``mask`` holds (index = 0-based row in the file)."""
    bad = frame.loc[mask, column]
    shown = ", ".join(str(int(index) + 1) for index in bad.index[:limit])
    values = ", ".join(repr(value) for value in bad.iloc[:limit])
    more = f" and {len(bad) - limit} more" if len(bad) > limit else ""
    return f"row{'s' if len(bad) > 1 else ''} {shown}{more} ({values})"


def _is_blank(series: pd.Series) -> pd.Series:
    return series.isna() | series.astype(str).str.strip().eq("")


# ---------------------------------------------------------------- validation of the judgements


def _normalise_labels(frame: pd.DataFrame, source: str) -> pd.Series:
    raw = frame["esci_label"]
    letters = raw.astype(str).str.strip()
    letters = letters.str.lower().map(LABEL_NAMES).fillna(letters.str.upper())
    bad = raw.isna() | ~letters.isin(LABELS)
    if bad.any():
        raise UserInputError(
            f"{source}: column 'esci_label' has unknown labels at {describe_rows(frame, bad, 'esci_label')}; "
            f"expected one of {', '.join(LABELS)} (or exact/substitute/complement/irrelevant)"
        )
    return letters


def _check_judgements(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    for column in ("query", "query_id", "product_id"):
        blank = _is_blank(frame[column])
        if blank.any():
            raise UserInputError(f"{source}: column {column!r} is empty at {describe_rows(frame, blank, column)}")
    frame = frame.assign(
        query=frame["query"].astype(str).str.strip(),
        query_id=frame["query_id"].astype(str).str.strip(),
        product_id=frame["product_id"].astype(str).str.strip(),
        esci_label=_normalise_labels(frame, source),
        split=frame["split"].astype(str).str.strip().str.lower(),
    )
    bad_split = ~frame["split"].isin(SPLITS)
    if bad_split.any():
        raise UserInputError(
            f"{source}: column 'split' must be train or test; got {describe_rows(frame, bad_split, 'split')}"
        )
    for column in ("query", "split"):
        per_query = frame.groupby("query_id", sort=False)[column].nunique()
        conflicting = frame["query_id"].isin(per_query.index[per_query > 1])
        if conflicting.any():
            raise UserInputError(
                f"{source}: a query_id has more than one {column!r} value at "
                f"{describe_rows(frame, conflicting, 'query_id')}"
            )
    return frame


def _drop_duplicate_judgements(frame: pd.DataFrame, source: str, dropped: dict[str, int]) -> pd.DataFrame:
    """Repeated (query_id, product_id) rows with one label are dropped (first kept); conflicting labels are errors."""
    keys = ["query_id", "product_id"]
    labels_per_pair = frame.groupby(keys, sort=False)["esci_label"].transform("nunique")
    if (labels_per_pair > 1).any():
        conflict = labels_per_pair > 1
        raise UserInputError(
            f"{source}: the same (query_id, product_id) is judged with different labels at "
            f"{describe_rows(frame, conflict, 'product_id')}"
        )
    duplicate = frame.duplicated(keys)
    if duplicate.any():
        logger.warning(
            "%s: dropping %d repeated (query_id, product_id) judgements, e.g. %s",
            source,
            duplicate.sum(),
            describe_rows(frame, duplicate, "product_id"),
        )
        dropped["duplicate_judgements"] = int(duplicate.sum())
    return frame[~duplicate]


def _filter(frame: pd.DataFrame, column: str, value: object, source: str) -> pd.DataFrame:
    if column not in frame.columns:
        return frame
    if isinstance(value, int):
        kept = frame[pd.to_numeric(frame[column], errors="coerce") == value]
    else:
        kept = frame[frame[column].astype(str).str.strip() == value]
    if kept.empty:
        present = sorted(frame[column].astype(str).unique().tolist())[:10]
        raise UserInputError(f"{source}: no rows with {column} == {value!r} (values present: {present})")
    return kept


def _filter_examples(
    frame: pd.DataFrame, source: str, locale: str | None, small_version: int, split: str | None
) -> pd.DataFrame:
    if locale:
        frame = _filter(frame, "product_locale", locale, source)
    if small_version:
        frame = _filter(frame, "small_version", int(small_version), source)
    if split:
        if "split" not in frame.columns:
            raise UserInputError(f"{source}: cannot keep split {split!r}: there is no 'split' column")
        frame = _filter(frame, "split", split, source)
    return frame


# ---------------------------------------------------------------- building EsciData


def _catalogue(
    products: pd.DataFrame,
    source: str,
    template: str,
    max_chars: int | None,
    allow_missing_titles: bool,
    dropped: dict[str, int],
    num_proc: int | None,
) -> datasets.Dataset:
    """``products`` has product_id and either template-field columns (title, brand, ...) or product_text."""
    _check_titles(products, source, allow_missing_titles)
    products = products.reset_index(drop=True)
    if "product_text" in products.columns:
        texts = products["product_text"].map(lambda value: clean_text(value, max_chars))
        catalogue = _dataset(products.assign(product_text=texts), ["product_id", "product_text"])
    else:
        columns = ["product_id", *[name for name in TEXT_FIELDS if name in products.columns]]
        catalogue = _text_column(_dataset(products, columns), template, max_chars, num_proc)
    return _drop_textless(catalogue, source, dropped)


def _drop_textless(catalogue: datasets.Dataset, source: str, dropped: dict[str, int]) -> datasets.Dataset:
    has_text = pc.not_equal(catalogue.data.column("product_text"), "")
    empty = len(catalogue) - pc.sum(has_text).as_py() if len(catalogue) else 0
    if empty:
        logger.warning("%s: dropping %d products with no text at all", source, empty)
        dropped["products_without_text"] = dropped.get("products_without_text", 0) + empty
        catalogue = in_memory_dataset(catalogue.data.table.filter(has_text))
    return catalogue


def _dataset(frame: pd.DataFrame, columns: list[str]) -> datasets.Dataset:
    """String columns of ``frame`` as a Dataset (nulls stay null)."""
    schema = pa.schema([(name, pa.string()) for name in columns])
    return in_memory_dataset(pa.Table.from_pandas(frame[columns].astype("string"), schema, preserve_index=False))


def in_memory_dataset(table: pa.Table) -> datasets.Dataset:
    """An Arrow table as an in-memory Dataset, without ``datasets`` fingerprinting it by serialising every row (a
    transient copy of the whole table: gigabytes for the full release). Nothing caches an in-memory dataset's
    transforms on disk, so a random fingerprint loses nothing."""
    return datasets.Dataset(InMemoryTable(table), fingerprint=generate_random_fingerprint())


def _products_with_fields(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """product_id plus template fields renamed from the ESCI product columns (or product_text as it is)."""
    blank_id = _is_blank(frame["product_id"])
    if blank_id.any():
        raise UserInputError(
            f"{source}: column 'product_id' is empty at {describe_rows(frame, blank_id, 'product_id')}"
        )
    frame = frame.assign(product_id=frame["product_id"].astype(str).str.strip())
    if "product_title" in frame.columns:
        renamed = {column: name for name, column in TEXT_FIELDS.items() if column in frame.columns}
        return frame[["product_id", *renamed]].rename(columns=renamed)
    return frame[["product_id", "product_text"]]


def _dedupe_products(products: pd.DataFrame, source: str, dropped: dict[str, int]) -> pd.DataFrame:
    duplicate = products.duplicated("product_id")
    if duplicate.any():
        dropped["duplicate_products"] = int(duplicate.sum())
        logger.warning("%s: %d repeated product_id rows, keeping the first of each", source, duplicate.sum())
    return products[~duplicate]


def _assemble(
    examples: pd.DataFrame,
    catalogue: datasets.Dataset,
    examples_source: str,
    products_source: str,
    *,
    dropped: dict[str, int],
    source: str,
) -> EsciData:
    examples = _drop_duplicate_judgements(_check_judgements(examples, examples_source), examples_source, dropped)
    missing = ~examples["product_id"].isin(catalogue.data.column("product_id").to_pandas())
    if missing.any():
        logger.warning(
            "%s: dropping %d judgements whose product is not in the catalogue %s, e.g. %s",
            examples_source,
            missing.sum(),
            products_source,
            describe_rows(examples, missing, "product_id"),
        )
        dropped["judgement_product_missing"] = int(missing.sum())
        examples = examples[~missing]
    if examples.empty:
        raise UserInputError(f"{examples_source}: no judgements left to use")
    columns = ["query_id", "query", "product_id", "esci_label", "split"]
    judgements = _dataset(examples, columns)
    return EsciData(catalogue=catalogue, judgements=judgements, source=source, dropped=dropped)


def _load_official(folder: Path, locale: str | None, small_version: int, split: str | None, **options) -> EsciData:
    examples_path, products_path = folder / EXAMPLES_FILE, folder / PRODUCTS_FILE
    examples = read_table(examples_path)
    require_columns(examples, ["query_id", "query", "product_id", "esci_label", "split"], str(examples_path))
    examples = _filter_examples(examples, str(examples_path), locale, small_version, split)
    catalogue = _official_catalogue(products_path, locale, **options)
    dropped = options["dropped"]
    return _assemble(examples, catalogue, str(examples_path), str(products_path), dropped=dropped, source=str(folder))


def _official_catalogue(
    path: Path,
    locale: str | None,
    *,
    text_template: str,
    max_text_chars: int | None,
    allow_missing_titles: bool,
    dropped: dict[str, int],
    num_proc: int | None = None,
) -> datasets.Dataset:
    """The catalogue of the official products file, read ``PRODUCT_BATCH_ROWS`` rows and only the needed columns at
    a time: the full release's 1.8M products never sit in memory as a DataFrame of every field, only their texts.
    Checks, messages and results are those of the in-memory path (``_catalogue``); row numbers are the file's."""
    source = str(path)
    parquet = _open_parquet(path)
    names = parquet.schema_arrow.names
    require_columns(pd.DataFrame(columns=names), ["product_id", "product_title"], source)
    filter_locale = bool(locale) and "product_locale" in names
    columns = ["product_id", *[column for column in TEXT_FIELDS.values() if column in names]]
    columns += ["product_locale"] if filter_locale else []
    pieces = template_pieces(text_template)
    seen: set[str] = set()
    ids, texts, locales, offset = [], [], set(), 0
    batches = parquet.iter_batches(batch_size=PRODUCT_BATCH_ROWS, columns=columns)
    total = -(-parquet.metadata.num_rows // PRODUCT_BATCH_ROWS)
    for batch in tqdm(batches, total=total, desc="product text", unit="batch", disable=total < 2):
        frame = batch.to_pandas().set_axis(pd.RangeIndex(offset, offset + batch.num_rows))  # file row numbers
        offset += batch.num_rows
        if filter_locale:
            locale_values = frame["product_locale"].astype(str).str.strip()
            locales.update(locale_values.unique().tolist())
            frame = frame[locale_values == locale]
        frame = _new_products(_products_with_fields(frame, source), seen, dropped)
        _check_titles(frame, source, allow_missing_titles)
        ids.append(pa.array(frame["product_id"].tolist(), pa.string()))
        texts.append(pa.array(_render_frame(frame, pieces, max_text_chars), pa.string()))
    if filter_locale and not seen:
        raise UserInputError(
            f"{source}: no rows with product_locale == {locale!r} (values present: {sorted(locales)[:10]})"
        )
    if dropped.get("duplicate_products"):
        logger.warning(
            "%s: %d repeated product_id rows, keeping the first of each", source, dropped["duplicate_products"]
        )
    table = pa.table(
        {"product_id": pa.chunked_array(ids, pa.string()), "product_text": pa.chunked_array(texts, pa.string())}
    )
    return _drop_textless(in_memory_dataset(table), source, dropped)


def _new_products(products: pd.DataFrame, seen: set[str], dropped: dict[str, int]) -> pd.DataFrame:
    """``products`` without the ids already ``seen`` (in earlier batches or earlier in this one); counts the drops."""
    # a lookup per row, not isin(seen): isin would hash all of seen (up to 1.8M ids) again for every batch
    repeated = products["product_id"].duplicated() | products["product_id"].map(seen.__contains__).astype(bool)
    if repeated.any():
        dropped["duplicate_products"] = dropped.get("duplicate_products", 0) + int(repeated.sum())
        products = products[~repeated]
    seen.update(products["product_id"].tolist())
    return products


def _render_frame(products: pd.DataFrame, pieces: list[tuple[str, str | None]], max_chars: int | None) -> list[str]:
    fields = [name for name in TEXT_FIELDS if name in products.columns]
    rows = zip(*(products[name] for name in fields), strict=True)
    return [_render(pieces, dict(zip(fields, values, strict=True)), max_chars) for values in rows]


def _open_parquet(path: Path) -> pq.ParquetFile:
    if not path.is_file():
        raise UserInputError(f"{path}: file not found")
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        raise UserInputError(f"{path}: not a readable parquet file ({error})") from None


def _check_titles(products: pd.DataFrame, source: str, allow_missing_titles: bool) -> None:
    untitled = _is_blank(products["title" if "title" in products.columns else "product_text"])
    if untitled.any() and not allow_missing_titles:
        column = "product_title" if "title" in products.columns else "product_text"
        raise UserInputError(
            f"{source}: column {column!r} is empty for product {describe_rows(products, untitled, 'product_id')}; "
            "fix the file, or pass --allow_missing_titles to use the other fields (products left with no text "
            "are dropped)"
        )


def _stable_id(prefix: str, text: str) -> str:
    return prefix + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def load_table(
    frame: pd.DataFrame,
    source: str,
    locale: str | None = "us",
    small_version: int = 1,
    split: str | None = None,
    **options,
) -> EsciData:
    """One table of judgements with product text: the joined ESCI schema, or plain (query, text, label) rows.

    Plain rows need ``query``, ``esci_label`` (or ``label``) and ``product_title`` or ``product_text``; missing
    ``query_id``/``product_id`` are derived from the query/product text (stable hashes), a missing split is train.
    """
    frame = frame.rename(columns={"label": "esci_label"}) if "esci_label" not in frame.columns else frame
    if "product_title" not in frame.columns and "product_text" not in frame.columns:
        require_columns(frame, ["product_title"], source)
    require_columns(frame, ["query", "esci_label"], source)
    frame = _filter_examples(frame, source, locale, small_version, split)
    if "split" not in frame.columns:
        frame = frame.assign(split="train")
    if "query_id" not in frame.columns:
        blank = _is_blank(frame["query"])
        if blank.any():
            raise UserInputError(f"{source}: column 'query' is empty at {describe_rows(frame, blank, 'query')}")
        frame = frame.assign(query_id=[_stable_id("q", str(query).strip()) for query in frame["query"]])
    if "product_id" not in frame.columns:
        text_column = "product_title" if "product_title" in frame.columns else "product_text"
        text_parts = frame.filter(items=[text_column, *TEXT_FIELDS.values()]).astype(str)
        frame = frame.assign(product_id=[_stable_id("p", "\x1f".join(row)) for row in text_parts.itertuples(False)])
    products = _dedupe_products(_products_with_fields(frame, source), source, {})
    dropped = options.pop("dropped")
    catalogue = _catalogue(
        products, source, options["text_template"], options["max_text_chars"], options["allow_missing_titles"],
        dropped, options.get("num_proc"),
    )  # fmt: skip
    return _assemble(frame, catalogue, source, source, dropped=dropped, source=source)


def _load_saved(folder: Path, **options) -> EsciData:
    try:
        loaded = datasets.load_from_disk(str(folder))
    except (FileNotFoundError, ValueError, OSError) as error:
        raise UserInputError(f"{folder}: not a readable saved `datasets` folder ({error})") from None
    return load_table(_dataset_frame(loaded), str(folder), **options)


def _dataset_frame(loaded: datasets.Dataset | datasets.DatasetDict) -> pd.DataFrame:
    """A Dataset as pandas; a DatasetDict's splits are stacked, its split names filling a missing split column."""
    if isinstance(loaded, datasets.Dataset):
        return loaded.to_pandas()
    frames = []
    for name, part in loaded.items():
        frame = part.to_pandas()
        if "split" not in frame.columns:
            frame["split"] = "test" if name.startswith("test") else "train"
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def hub_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return flag or bool(constants.HF_HUB_OFFLINE) or bool(datasets.config.HF_HUB_OFFLINE)


def _load_hub(dataset_id: str, **options) -> EsciData:
    if hub_offline():
        raise UserInputError(
            f"{dataset_id!r} is not a local file or folder, and the Hugging Face Hub is unreachable "
            "(HF_HUB_OFFLINE=1): pass a local path (the official ESCI folder, a CSV/Parquet/JSONL file or a saved "
            "datasets folder)"
        )
    try:
        loaded = datasets.load_dataset(dataset_id)
    except Exception as error:  # the Hub raises many kinds; all mean "cannot get it"
        raise UserInputError(f"cannot load {dataset_id!r} from the Hugging Face Hub: {error}") from None
    return load_table(_dataset_frame(loaded), dataset_id, **options)


def load_prepared_esci(folder: str | os.PathLike) -> EsciData:
    """The ``catalogue/`` and ``judgements/`` datasets of a folder written by ``ttsn_hf.data.stages.prepare``."""
    folder = Path(folder)
    try:
        catalogue = datasets.load_from_disk(str(folder / "catalogue"))
        judgements = datasets.load_from_disk(str(folder / "judgements"))
    except (FileNotFoundError, ValueError, OSError) as error:
        raise UserInputError(f"{folder}: not a readable prepared data folder ({error})") from None
    return EsciData(catalogue=catalogue, judgements=judgements, source=str(folder))


def load_esci(
    path: str | os.PathLike,
    locale: str | None = "us",
    small_version: int = 1,
    split: str | None = None,
    text_template: str = DEFAULT_TEMPLATE,
    max_text_chars: int | None = DEFAULT_MAX_TEXT_CHARS,
    allow_missing_titles: bool = False,
    num_proc: int | None = None,
) -> EsciData:
    """Load ESCI judgements and their catalogue from any of the supported sources.

    ``path`` is one of: the official folder (``shopping_queries_dataset_{examples,products}.parquet``; a
    ``..._sources.csv`` beside them is ignored), a single CSV/TSV/Parquet/JSONL table (joined ESCI schema or plain
    rows), a ``save_to_disk`` folder, a prepared folder (``catalogue/`` + ``judgements/``) or a Hub dataset id.
    Rows are kept where ``product_locale == locale`` and (when ``small_version`` is 1) ``small_version == 1``,
    where those columns exist; ``split`` keeps only train or test rows. Products with no title are an error
    unless ``allow_missing_titles``, which renders the other fields and drops products left with no text.
    """
    template_pieces(text_template)  # fail on a bad template before reading anything
    options = dict(
        text_template=text_template,
        max_text_chars=max_text_chars,
        allow_missing_titles=allow_missing_titles,
        dropped={},
        num_proc=num_proc,
    )
    filters = dict(locale=locale, small_version=small_version, split=split)
    path_text = os.fspath(path)
    folder = Path(path_text)
    if folder.is_dir():
        if (folder / EXAMPLES_FILE).exists() or (folder / PRODUCTS_FILE).exists():
            return _load_official(folder, **filters, **options)
        if (folder / "catalogue").is_dir() and (folder / "judgements").is_dir():
            return load_prepared_esci(folder)
        if (folder / "dataset_dict.json").exists() or (folder / "state.json").exists():
            return _load_saved(folder, **filters, **options)
        raise UserInputError(
            f"{folder}: neither the official ESCI layout ({EXAMPLES_FILE}, {PRODUCTS_FILE}) nor a saved "
            "`datasets` folder"
        )
    if folder.is_file():
        return load_table(read_table(folder), str(folder), **filters, **options)
    if folder.suffix.lower() in TABLE_SUFFIXES or not _HUB_ID.match(path_text):
        raise UserInputError(f"{path_text}: file or folder not found")
    return _load_hub(path_text, **filters, **options)
