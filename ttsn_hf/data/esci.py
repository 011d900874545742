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
import json
import logging
import os
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from ..errors import UserInputError
from ..labels import LABEL_NAMES, LABELS
from .tables import CATALOGUE_FEATURES, Judgements, Products, in_memory_dataset, write_dataset

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
EXAMPLE_BATCH_ROWS = 200_000  # judgements read and filtered at a time from the official examples file
JUDGEMENT_COLUMNS = ["query_id", "query", "product_id", "esci_label", "split"]
ROW = "__row"  # a judgement's position in its file (0-based), for messages

_HTML_TAG = re.compile(r"</?[A-Za-z][^<>]*>")
_SEPARATOR = re.compile(r"^([\s.,;:!?]*)(.*)$", re.DOTALL)
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


@dataclass
class EsciData:
    """A product catalogue and the query-product judgements over it (Arrow: in memory, or memory-mapped when
    prepared). ``query_id_dtype`` is the source's type of ``query_id`` ("int64" in the official layout, "string" in
    plain tables): the tables hold it as a string, files written for users (mined negatives) as the source did."""

    catalogue: datasets.Dataset
    judgements: datasets.Dataset
    source: str = ""
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows dropped while loading
    query_id_dtype: str = "string"
    _judged: Judgements | None = field(default=None, repr=False)

    def products(self) -> Products:
        return Products(self.catalogue)

    def judged(self) -> Judgements:
        """The judgements as sorted arrays (built once, on first use)."""
        if self._judged is None:
            self._judged = Judgements.build(self.judgements, self.products())
        return self._judged


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


def require_columns(frame: pd.DataFrame | list[str], columns: list[str], source: str) -> None:
    present = list(frame.columns) if isinstance(frame, pd.DataFrame) else list(frame)
    missing = [column for column in columns if column not in present]
    if missing:
        raise UserInputError(
            f"{source}: missing column(s) {', '.join(map(repr, missing))}; found {list(map(str, present))}"
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


def describe_table_rows(table: pa.Table, mask: np.ndarray, column: str, limit: int = 5) -> str:
    """:func:`describe_rows` for an Arrow table with a ``__row`` column (the rows' positions in their file)."""
    bad = np.flatnonzero(mask)
    first = pa.array(bad[:limit])
    shown = ", ".join(str(row + 1) for row in table.column(ROW).take(first).to_pylist())
    values = ", ".join(repr(value) for value in table.column(column).take(first).to_pylist())
    more = f" and {len(bad) - limit} more" if len(bad) > limit else ""
    return f"row{'s' if len(bad) > 1 else ''} {shown}{more} ({values})"


def _blank(column: pa.ChunkedArray) -> np.ndarray:
    text = pc.utf8_trim_whitespace(pc.cast(column, pa.string()))
    return _mask(pc.or_kleene(pc.is_null(column), pc.equal(text, "")))


def _mask(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.array(pc.fill_null(values, False).to_numpy(zero_copy_only=False), dtype=bool)


def _codes(column: pa.ChunkedArray) -> np.ndarray:
    """A small integer per distinct value (in order of first appearance)."""
    encoded = pc.dictionary_encode(column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column)
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)


def _conflicting(groups: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Rows whose group holds more than one distinct value."""
    order = np.lexsort((values, groups))
    sorted_groups, sorted_values = groups[order], values[order]
    differs = (sorted_groups[1:] == sorted_groups[:-1]) & (sorted_values[1:] != sorted_values[:-1])
    return np.isin(groups, sorted_groups[1:][differs])


# ---------------------------------------------------------------- validation of the judgements


def _normalise_labels(table: pa.Table, source: str) -> pa.ChunkedArray:
    raw = table.column("esci_label")
    letters = pc.utf8_trim_whitespace(pc.cast(raw, pa.string()))
    named = pa.array(list(LABEL_NAMES.values())).take(pc.index_in(pc.utf8_lower(letters), pa.array(list(LABEL_NAMES))))
    letters = pc.coalesce(named, pc.utf8_upper(letters))
    bad = _mask(pc.is_null(raw)) | ~_mask(pc.is_in(letters, pa.array(LABELS)))
    if bad.any():
        raise UserInputError(
            f"{source}: column 'esci_label' has unknown labels at {describe_table_rows(table, bad, 'esci_label')}; "
            f"expected one of {', '.join(LABELS)} (or exact/substitute/complement/irrelevant)"
        )
    return letters


def _check_judgements(table: pa.Table, source: str) -> pa.Table:
    """``table``: the judgement columns and ``__row``; returns them checked and normalised (strings, E/S/C/I
    labels, train/test splits)."""
    for column in ("query", "query_id", "product_id"):
        blank = _blank(table.column(column))
        if blank.any():
            raise UserInputError(f"{source}: column {column!r} is empty at {describe_table_rows(table, blank, column)}")
    for column in ("query", "query_id", "product_id"):
        table = table.set_column(
            table.column_names.index(column),
            column,
            pc.utf8_trim_whitespace(pc.cast(table.column(column), pa.string())),
        )
    table = table.set_column(table.column_names.index("esci_label"), "esci_label", _normalise_labels(table, source))
    split = pc.utf8_lower(pc.utf8_trim_whitespace(pc.cast(table.column("split"), pa.string())))
    table = table.set_column(table.column_names.index("split"), "split", split)
    bad_split = ~_mask(pc.is_in(split, pa.array(SPLITS)))
    if bad_split.any():
        raise UserInputError(
            f"{source}: column 'split' must be train or test; got {describe_table_rows(table, bad_split, 'split')}"
        )
    queries = _codes(table.column("query_id"))
    for column in ("query", "split"):
        conflicting = _conflicting(queries, _codes(table.column(column)))
        if conflicting.any():
            raise UserInputError(
                f"{source}: a query_id has more than one {column!r} value at "
                f"{describe_table_rows(table, conflicting, 'query_id')}"
            )
    return table


def _drop_duplicate_judgements(table: pa.Table, source: str, dropped: dict[str, int]) -> pa.Table:
    """Repeated (query_id, product_id) rows with one label are dropped (first kept); conflicting labels are errors."""
    products = _codes(table.column("product_id"))
    pairs = _codes(table.column("query_id")) * (int(products.max(initial=0)) + 1) + products
    conflict = _conflicting(pairs, _codes(table.column("esci_label")))
    if conflict.any():
        raise UserInputError(
            f"{source}: the same (query_id, product_id) is judged with different labels at "
            f"{describe_table_rows(table, conflict, 'product_id')}"
        )
    order = np.argsort(pairs, kind="stable")  # file order within a pair: the first one is kept
    duplicate = np.zeros(len(pairs), dtype=bool)
    duplicate[order[1:][pairs[order[1:]] == pairs[order[:-1]]]] = True
    if duplicate.any():
        logger.warning(
            "%s: dropping %d repeated (query_id, product_id) judgements, e.g. %s",
            source,
            duplicate.sum(),
            describe_table_rows(table, duplicate, "product_id"),
        )
        dropped["duplicate_judgements"] = int(duplicate.sum())
        table = table.filter(pa.array(~duplicate))
    return table


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


def _read_examples(path: Path, locale: str | None, small_version: int, split: str | None) -> tuple[pa.Table, str]:
    """The official examples file's judgement columns (and ``__row``), filtered as :func:`_filter_examples` does,
    read ``EXAMPLE_BATCH_ROWS`` rows at a time; and the file's ``query_id`` type ("int64" or "string")."""
    source = str(path)
    parquet = _open_parquet(path)
    names = parquet.schema_arrow.names
    require_columns(names, JUDGEMENT_COLUMNS, source)
    filters = [("product_locale", locale), ("small_version", int(small_version) if small_version else None)]
    filters = [(column, value) for column, value in filters if value and column in names]
    if split:
        if "split" not in names:
            raise UserInputError(f"{source}: cannot keep split {split!r}: there is no 'split' column")
        filters.append(("split", split))
    present: list[set[str]] = [set() for _ in filters]  # values of each filter's column past the earlier filters
    kept_any = [False] * len(filters)
    columns = list(dict.fromkeys(JUDGEMENT_COLUMNS + [column for column, _ in filters]))
    parts, offset = [], 0
    for batch in parquet.iter_batches(batch_size=EXAMPLE_BATCH_ROWS, columns=columns):
        table = pa.Table.from_batches([batch]).append_column(ROW, pa.array(np.arange(offset, offset + len(batch))))
        offset += len(batch)
        for number, (column, value) in enumerate(filters):
            present[number].update(pc.unique(pc.cast(table.column(column), pa.string())).to_pylist())
            table = table.filter(_matches(table.column(column), value))
            kept_any[number] |= len(table) > 0
        parts.append(table.select([*JUDGEMENT_COLUMNS, ROW]))
    for number, (column, value) in enumerate(filters):
        if not kept_any[number]:
            values = sorted(str(item) for item in present[number])[:10]
            raise UserInputError(f"{source}: no rows with {column} == {value!r} (values present: {values})")
    schema = parquet.schema_arrow
    id_type = "int64" if pa.types.is_integer(schema.field("query_id").type) else "string"
    table = pa.concat_tables(parts) if parts else pa.table({name: [] for name in [*JUDGEMENT_COLUMNS, ROW]})
    return table, id_type


def _matches(column: pa.ChunkedArray, value: object) -> pa.ChunkedArray:
    if isinstance(value, int) and (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        return pc.fill_null(pc.equal(column, value), False)
    return pc.fill_null(pc.equal(pc.utf8_trim_whitespace(pc.cast(column, pa.string())), str(value)), False)


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
    table = _without_text(catalogue.data.table, dropped)
    _warn_textless(source, dropped)
    return catalogue if len(table) == len(catalogue) else in_memory_dataset(table)


def _without_text(table: pa.Table, dropped: dict[str, int]) -> pa.Table:
    """``table`` without its products of empty text (counted in ``dropped``)."""
    has_text = pc.fill_null(pc.not_equal(table.column("product_text"), ""), False)
    empty = len(table) - (pc.sum(has_text).as_py() or 0) if len(table) else 0
    if empty:
        dropped["products_without_text"] = dropped.get("products_without_text", 0) + empty
        table = table.filter(has_text)
    return table


def _warn_textless(source: str, dropped: dict[str, int]) -> None:
    if dropped.get("products_without_text"):
        logger.warning("%s: dropping %d products with no text at all", source, dropped["products_without_text"])


def _dataset(frame: pd.DataFrame, columns: list[str]) -> datasets.Dataset:
    """String columns of ``frame`` as a Dataset (nulls stay null)."""
    schema = pa.schema([(name, pa.string()) for name in columns])
    return in_memory_dataset(pa.Table.from_pandas(frame[columns].astype("string"), schema, preserve_index=False))


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


def _judgement_table(frame: pd.DataFrame) -> pa.Table:
    """The judgement columns of a (filtered) DataFrame as Arrow, each row's file position in ``__row``."""
    columns = {name: pa.array(frame[name].astype("string"), pa.string()) for name in JUDGEMENT_COLUMNS}
    return pa.table({**columns, ROW: pa.array(frame.index.to_numpy(dtype=np.int64))})


def _assemble(
    examples: pa.Table,
    catalogue: datasets.Dataset,
    examples_source: str,
    products_source: str,
    *,
    dropped: dict[str, int],
    source: str,
    query_id_dtype: str,
) -> EsciData:
    table = _drop_duplicate_judgements(_check_judgements(examples, examples_source), examples_source, dropped)
    products = Products(catalogue)
    missing = products.rows_of(table.column("product_id")) < 0
    if missing.any():
        logger.warning(
            "%s: dropping %d judgements whose product is not in the catalogue %s, e.g. %s",
            examples_source,
            missing.sum(),
            products_source,
            describe_table_rows(table, missing, "product_id"),
        )
        dropped["judgement_product_missing"] = int(missing.sum())
        table = table.filter(pa.array(~missing))
    if len(table) == 0:
        raise UserInputError(f"{examples_source}: no judgements left to use")
    judgements = in_memory_dataset(table.select(JUDGEMENT_COLUMNS).combine_chunks())
    return EsciData(
        catalogue=catalogue, judgements=judgements, source=source, dropped=dropped, query_id_dtype=query_id_dtype
    )


def _load_official(
    folder: Path, locale: str | None, small_version: int, split: str | None, catalogue_dir=None, **options
) -> EsciData:
    examples_path, products_path = folder / EXAMPLES_FILE, folder / PRODUCTS_FILE
    examples, id_type = _read_examples(examples_path, locale, small_version, split)
    catalogue = _official_catalogue(products_path, locale, folder=catalogue_dir, **options)
    return _assemble(
        examples,
        catalogue,
        str(examples_path),
        str(products_path),
        dropped=options["dropped"],
        source=str(folder),
        query_id_dtype=id_type,
    )


def _official_catalogue(
    path: Path,
    locale: str | None,
    *,
    text_template: str,
    max_text_chars: int | None,
    allow_missing_titles: bool,
    dropped: dict[str, int],
    num_proc: int | None = None,
    folder: Path | None = None,
) -> datasets.Dataset:
    """The catalogue of the official products file, read ``PRODUCT_BATCH_ROWS`` rows and only the needed columns at
    a time, rendered and checked batch by batch: the full release's 1.8M products never sit in memory as Python
    objects. With ``folder`` each batch is written there as it is done (and the result is memory-mapped); without,
    the texts are kept as one Arrow table. Checks, messages and results are those of the in-memory path
    (``_catalogue``); row numbers are the file's."""
    source = str(path)
    parquet = _open_parquet(path)
    names = parquet.schema_arrow.names
    require_columns(names, ["product_id", "product_title"], source)
    batches = _catalogue_batches(parquet, source, locale, text_template, max_text_chars, allow_missing_titles, dropped)
    if folder is not None:
        catalogue = write_dataset(batches, CATALOGUE_FEATURES, folder)
    else:
        tables = list(batches)
        catalogue = in_memory_dataset(pa.concat_tables(tables).combine_chunks() if tables else _empty_catalogue())
    if dropped.get("duplicate_products"):
        logger.warning(
            "%s: %d repeated product_id rows, keeping the first of each", source, dropped["duplicate_products"]
        )
    _warn_textless(source, dropped)
    return catalogue


def _empty_catalogue() -> pa.Table:
    return CATALOGUE_FEATURES.arrow_schema.empty_table()


def _catalogue_batches(
    parquet: pq.ParquetFile,
    source: str,
    locale: str | None,
    template: str,
    max_chars: int | None,
    allow_missing_titles: bool,
    dropped: dict[str, int],
):
    names = parquet.schema_arrow.names
    filter_locale = bool(locale) and "product_locale" in names
    columns = ["product_id", *[column for column in TEXT_FIELDS.values() if column in names]]
    columns += ["product_locale"] if filter_locale else []
    pieces = template_pieces(template)
    seen: list[pa.Array] = []  # the ids kept so far: ~14 bytes a product, not a Python set
    locales, offset = set(), 0
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
        ids = pa.array(frame["product_id"].tolist(), pa.string())
        seen.append(ids)
        table = pa.table(
            {"product_id": ids, "product_text": pa.array(_render_frame(frame, pieces, max_chars), pa.string())}
        )
        yield _without_text(table, dropped)
    if filter_locale and not any(len(ids) for ids in seen):
        raise UserInputError(
            f"{source}: no rows with product_locale == {locale!r} (values present: {sorted(locales)[:10]})"
        )


def _new_products(products: pd.DataFrame, seen: list[pa.Array], dropped: dict[str, int]) -> pd.DataFrame:
    """``products`` without the ids already ``seen`` (in earlier batches or earlier in this one); counts the drops."""
    repeated = products["product_id"].duplicated().to_numpy().copy()
    if seen and len(products):
        earlier = pa.concat_arrays(seen)
        repeated |= _mask(pc.is_in(pa.array(products["product_id"].tolist(), pa.string()), value_set=earlier))
    if repeated.any():
        dropped["duplicate_products"] = dropped.get("duplicate_products", 0) + int(repeated.sum())
        products = products[~repeated]
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
    id_type = "int64" if pd.api.types.is_integer_dtype(frame.get("query_id", pd.Series(dtype=str))) else "string"
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
    if options.get("catalogue_dir") is not None:
        catalogue = write_dataset([catalogue.data.table], CATALOGUE_FEATURES, options["catalogue_dir"])
    return _assemble(
        _judgement_table(frame), catalogue, source, source, dropped=dropped, source=source, query_id_dtype=id_type
    )


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
    """The ``catalogue/`` and ``judgements/`` datasets (memory-mapped) of a folder written by
    ``ttsn_hf.data.stages.prepare``; ``summary.json`` says the source's query_id type."""
    folder = Path(folder)
    try:
        catalogue = datasets.load_from_disk(str(folder / "catalogue"))
        judgements = datasets.load_from_disk(str(folder / "judgements"))
    except (FileNotFoundError, ValueError, OSError) as error:
        raise UserInputError(f"{folder}: not a readable prepared data folder ({error})") from None
    summary = folder / "summary.json"
    id_type = json.loads(summary.read_text()).get("query_id_dtype", "string") if summary.is_file() else "string"
    return EsciData(catalogue=catalogue, judgements=judgements, source=str(folder), query_id_dtype=id_type)


def load_esci(
    path: str | os.PathLike,
    locale: str | None = "us",
    small_version: int = 1,
    split: str | None = None,
    text_template: str = DEFAULT_TEMPLATE,
    max_text_chars: int | None = DEFAULT_MAX_TEXT_CHARS,
    allow_missing_titles: bool = False,
    num_proc: int | None = None,
    catalogue_dir: str | os.PathLike | None = None,
) -> EsciData:
    """Load ESCI judgements and their catalogue from any of the supported sources.

    ``path`` is one of: the official folder (``shopping_queries_dataset_{examples,products}.parquet``; a
    ``..._sources.csv`` beside them is ignored), a single CSV/TSV/Parquet/JSONL table (joined ESCI schema or plain
    rows), a ``save_to_disk`` folder, a prepared folder (``catalogue/`` + ``judgements/``) or a Hub dataset id.
    Rows are kept where ``product_locale == locale`` and (when ``small_version`` is 1) ``small_version == 1``,
    where those columns exist; ``split`` keeps only train or test rows. Products with no title are an error
    unless ``allow_missing_titles``, which renders the other fields and drops products left with no text.
    With ``catalogue_dir`` the catalogue is written there as it is rendered (a saved dataset; memory-mapped).
    """
    template_pieces(text_template)  # fail on a bad template before reading anything
    options = dict(
        text_template=text_template,
        max_text_chars=max_text_chars,
        allow_missing_titles=allow_missing_titles,
        dropped={},
        num_proc=num_proc,
        catalogue_dir=Path(catalogue_dir) if catalogue_dir is not None else None,
    )
    filters = dict(locale=locale, small_version=small_version, split=split)
    path_text = os.fspath(path)
    folder = Path(path_text)
    if folder.is_dir():
        if (folder / EXAMPLES_FILE).exists() or (folder / PRODUCTS_FILE).exists():
            return _load_official(folder, **filters, **options)
        if (folder / "catalogue").is_dir() and (folder / "judgements").is_dir():
            if catalogue_dir is not None:
                raise UserInputError(f"{folder}: already prepared data; pass the raw ESCI files to prepare")
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
