"""Per-stage training datasets with stage markers, written with `datasets` (``python prepare.py``).

Stage rows (docs/ARCHITECTURE.md): ``query_id``, ``query``, ``product_id``, ``product_text``, ``esci_label``
(E/S/C/I, "" for unjudged products), ``target`` (1 positive, 0 negative), ``source`` (judged/random/mined), ``stage``.

- stage 1: E+S positives; I judgements as negatives (products the search showed for the query and judged
  irrelevant); random catalogue negatives. C judgements are left out: neither positive nor a safe negative.
- stage 2: stage 1 plus mined hard negatives.
- stage 3: E+S+C positives, I negatives, random negatives and mined hard negatives.

Random negatives: ``num_random_negatives`` per query (default 4), drawn without replacement from the catalogue
products not judged for that query (so never an E/S/C product of it), with a generator seeded by (seed, query id):
a query's draws do not depend on the other queries or the stage. Mined negatives: all the file gives unless
``hard_negatives_per_query`` caps them (best rank first).
Only ``split == "train"`` queries are used; a ``validation_fraction`` of them (chosen by the seed) is held out
whole, so no query is in both train and validation. Test queries never appear.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import zlib
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm.auto import tqdm

from ..atomic import atomic_path, write_text_atomic
from ..errors import UserInputError
from ..labels import NEGATIVE_LABELS, POSITIVE_LABELS_BY_STAGE
from .esci import (
    EsciData,
    describe_rows,
    in_memory_dataset,
    load_esci,
    load_prepared_esci,
    read_table,
)

logger = logging.getLogger(__name__)

STAGES = (1, 2, 3)
SOURCES = ("judged", "random", "mined", "pseudo")
STAGE_FEATURES = datasets.Features(
    {
        "query_id": datasets.Value("string"),
        "query": datasets.Value("string"),
        "product_id": datasets.Value("string"),
        "product_text": datasets.Value("string"),
        "esci_label": datasets.Value("string"),
        "target": datasets.Value("int64"),
        "source": datasets.Value("string"),
        "stage": datasets.Value("int64"),
    }
)
DEFAULT_NUM_RANDOM_NEGATIVES = 4
DEFAULT_HARD_NEGATIVES_PER_QUERY = None
SUMMARY_FILE = "summary.json"


# ---------------------------------------------------------------- queries


def split_queries(judgements: pd.DataFrame, validation_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, validation) query ids, both sorted, drawn from the ``split == "train"`` queries only."""
    if not 0 <= validation_fraction < 1:
        raise UserInputError(f"validation_fraction must be in [0, 1); got {validation_fraction}")
    queries = np.array(sorted(judgements.loc[judgements["split"] == "train", "query_id"].unique()), dtype=object)
    if len(queries) == 0:
        raise UserInputError("the judgements hold no split == 'train' query: nothing to train on")
    count = int(round(validation_fraction * len(queries)))
    if validation_fraction > 0 and len(queries) > 1:
        count = min(max(count, 1), len(queries) - 1)
    chosen = np.zeros(len(queries), dtype=bool)
    chosen[np.random.default_rng(seed).permutation(len(queries))[:count]] = True
    return queries[~chosen].tolist(), queries[chosen].tolist()


# ---------------------------------------------------------------- hard negatives


def load_hard_negatives(
    source: str | os.PathLike | pd.DataFrame | datasets.Dataset,
    esci: EsciData,
    per_query: int | None = DEFAULT_HARD_NEGATIVES_PER_QUERY,
    dropped: dict[str, int] | None = None,
) -> pd.DataFrame:
    """Mined (query_id, product_id) negatives, checked against ``esci`` and capped at ``per_query`` (best rank first).

    Products not in the catalogue or queries not in the judgements mean the file was mined from other data: an
    error. Rows of test queries, products judged for the query (E/S/C would be false negatives, I is already a
    judged negative) and repeats are dropped and counted in ``dropped``.
    """
    dropped = {} if dropped is None else dropped
    if per_query is not None and per_query < 0:
        raise UserInputError(f"hard_negatives_per_query must be >= 0; got {per_query}")
    name = "the hard negatives" if isinstance(source, pd.DataFrame | datasets.Dataset) else str(source)
    mined = _as_frame(source)
    if "query_id" not in mined.columns or "product_id" not in mined.columns:
        missing = [column for column in ("query_id", "product_id") if column not in mined.columns]
        raise UserInputError(f"{name}: missing column(s) {missing}; found {list(map(str, mined.columns))}")
    mined = mined.assign(query_id=mined["query_id"].astype(str), product_id=mined["product_id"].astype(str))
    judgements = esci.judgements.to_pandas()
    _check_known(mined, "product_id", set(esci.catalogue.to_pandas()["product_id"]), name, "catalogue")
    _check_known(mined, "query_id", set(judgements["query_id"]), name, "judgements")
    test_queries = set(judgements.loc[judgements["split"] == "test", "query_id"])
    judged = judgements[["query_id", "product_id"]].assign(judged=True)
    mined = mined.merge(judged, on=["query_id", "product_id"], how="left")
    masks = {
        "mined_test_query": mined["query_id"].isin(test_queries),
        "mined_judged": mined["judged"].eq(True),
    }
    for reason, mask in masks.items():
        if mask.any():
            logger.warning("%s: dropping %d rows (%s)", name, mask.sum(), reason)
            dropped[reason] = dropped.get(reason, 0) + int(mask.sum())
    mined = mined[~(masks["mined_test_query"] | masks["mined_judged"])]
    order = ["query_id", "rank"] if "rank" in mined.columns else ["query_id"]
    mined = mined.sort_values(order, kind="stable").drop_duplicates(["query_id", "product_id"])
    if per_query is not None:
        mined = mined.groupby("query_id", sort=False).head(per_query)
    return mined[["query_id", "product_id"]].reset_index(drop=True)


def _as_frame(source: str | os.PathLike | pd.DataFrame | datasets.Dataset) -> pd.DataFrame:
    if isinstance(source, pd.DataFrame):
        return source.reset_index(drop=True)
    if isinstance(source, datasets.Dataset):
        return source.to_pandas()
    return read_table(source)


def _check_known(mined: pd.DataFrame, column: str, known: set[str], name: str, where: str) -> None:
    unknown = ~mined[column].isin(known)
    if unknown.any():
        raise UserInputError(
            f"{name}: {unknown.sum()} of {len(mined)} values of column {column!r} are not in the {where} "
            f"({describe_rows(mined, unknown, column)}); was this file mined from another catalogue or data set?"
        )


# ---------------------------------------------------------------- stage rows


def _random_negatives(judged: pd.DataFrame, query_ids: list[str], product_ids: np.ndarray, count: int, seed: int):
    """``count`` catalogue products per query, none of them judged for that query."""
    judged_products = judged.groupby("query_id")["product_id"].agg(set)
    rows = []
    for query_id in tqdm(query_ids, desc="random negatives", leave=False) if count else ():
        excluded = judged_products.get(query_id, set())
        rng = np.random.default_rng([seed, zlib.crc32(query_id.encode("utf-8"))])
        draw = rng.choice(len(product_ids), size=min(len(product_ids), count + len(excluded)), replace=False)
        picked = [product for product in product_ids[draw] if product not in excluded][:count]
        rows.extend((query_id, product) for product in picked)
    return pd.DataFrame(rows, columns=["query_id", "product_id"])


def stage_rows(
    judgements: pd.DataFrame,
    catalogue: pd.DataFrame,
    stage: int,
    query_ids: list[str],
    hard_negatives: pd.DataFrame | None = None,
    num_random_negatives: int = DEFAULT_NUM_RANDOM_NEGATIVES,
    seed: int = 42,
) -> pd.DataFrame:
    """The rows of ``stage`` for ``query_ids``, sorted by (query_id, source, product_id).

    ``judgements`` and ``catalogue`` are :class:`EsciData`'s tables as pandas; ``hard_negatives`` comes from
    :func:`load_hard_negatives`.
    """
    judged = judgements[judgements["query_id"].isin(set(query_ids))]
    used = judged[judged["esci_label"].isin(POSITIVE_LABELS_BY_STAGE[stage] + NEGATIVE_LABELS)]
    used = used.assign(target=used["esci_label"].isin(POSITIVE_LABELS_BY_STAGE[stage]).astype("int64"), source="judged")
    catalogue_ids = catalogue["product_id"].to_numpy(dtype=object)
    random = _random_negatives(judged, sorted(query_ids), catalogue_ids, num_random_negatives, seed)
    parts = [used, random.assign(esci_label="", target=0, source="random")]
    if stage == 2 and hard_negatives is None:
        raise UserInputError("stage 2 needs mined hard negatives (--hard_negatives FILE)")
    if stage >= 2 and hard_negatives is not None:
        mined = hard_negatives[hard_negatives["query_id"].isin(set(query_ids))]
        parts.append(mined.assign(esci_label="", target=0, source="mined"))
    rows = pd.concat([part[["query_id", "product_id", "esci_label", "target", "source"]] for part in parts])
    # a mined product that is already a random negative of the query stays once, as the random one
    rows = rows.drop_duplicates(["query_id", "product_id"], keep="first")
    queries = judgements.drop_duplicates("query_id").set_index("query_id")["query"]
    texts = catalogue.set_index("product_id")["product_text"]
    rows = rows.assign(
        query=rows["query_id"].map(queries),
        product_text=rows["product_id"].map(texts),
        stage=stage,
        source_order=rows["source"].map(SOURCES.index),
    )
    rows = rows.sort_values(["query_id", "source_order", "product_id"], kind="stable")
    return rows[list(STAGE_FEATURES)].reset_index(drop=True)


def _stage_dataset_dict(
    judgements: pd.DataFrame,
    catalogue: pd.DataFrame,
    stage: int,
    query_splits: dict[str, list[str]],
    mined: pd.DataFrame | None,
    num_random_negatives: int,
    seed: int,
) -> datasets.DatasetDict:
    splits = {}
    for split, query_ids in query_splits.items():
        rows = stage_rows(judgements, catalogue, stage, query_ids, mined, num_random_negatives, seed)
        table = pa.Table.from_pandas(rows, STAGE_FEATURES.arrow_schema, preserve_index=False)
        splits[split] = in_memory_dataset(table)  # from_pandas would serialise every row to fingerprint it
    return datasets.DatasetDict(splits)


def _check_options(stage_list: tuple[int, ...], mined: object, num_random_negatives: int) -> None:
    if any(stage not in STAGES for stage in stage_list):
        raise UserInputError(f"stages must be among {STAGES}; got {stage_list}")
    if 2 in stage_list and mined is None:
        raise UserInputError("stage 2 needs mined hard negatives: pass --hard_negatives FILE")
    if num_random_negatives < 0:
        raise UserInputError(f"num_random_negatives must be >= 0; got {num_random_negatives}")


def build_stage(
    esci: EsciData,
    stage: int,
    hard_negatives: str | os.PathLike | pd.DataFrame | datasets.Dataset | None = None,
    num_random_negatives: int = DEFAULT_NUM_RANDOM_NEGATIVES,
    hard_negatives_per_query: int | None = DEFAULT_HARD_NEGATIVES_PER_QUERY,
    validation_fraction: float = 0.1,
    seed: int = 42,
    pseudo_queries: int = 0,
) -> datasets.DatasetDict:
    """Stage ``stage`` (1, 2 or 3) as a DatasetDict {train, validation}, held out by query.

    Stage 3 uses ``hard_negatives`` when given; stage 2 needs them. ``pseudo_queries`` adds that many
    (pseudo-query, product) positives made from catalogue titles to the training split.
    """
    _check_options((stage,), hard_negatives, num_random_negatives)
    mined = None
    if hard_negatives is not None and stage >= 2:
        mined = load_hard_negatives(hard_negatives, esci, hard_negatives_per_query)
    judgements, catalogue = esci.judgements.to_pandas(), esci.catalogue.to_pandas()
    train_queries, validation_queries = split_queries(judgements, validation_fraction, seed)
    query_splits = {"train": train_queries, "validation": validation_queries}
    splits = _stage_dataset_dict(judgements, catalogue, stage, query_splits, mined, num_random_negatives, seed)
    if pseudo_queries:
        pseudo = pseudo_query_pairs(catalogue, pseudo_queries, stage, seed, num_random_negatives)
        splits["train"] = datasets.concatenate_datasets([splits["train"], pseudo])
    return splits


_WORD = re.compile(r"[a-z0-9][a-z0-9'.+-]*")


def pseudo_query(title: str, rng: np.random.Generator) -> str:
    """A query-like span of a product title: 2 to 5 words from its first 12, lower-cased."""
    words = _WORD.findall(title.lower())[:12]
    length = int(rng.integers(2, 6))
    start = int(rng.integers(0, max(1, len(words) - length + 1)))
    return " ".join(words[start : start + length])


def pseudo_query_pairs(
    catalogue: pd.DataFrame, count: int, stage: int, seed: int, num_random_negatives: int = 0
) -> datasets.Dataset:
    """(pseudo-query, product) positives for ``count`` catalogue products: domain adaptation on the catalogue
    (no labels used), so the in-batch loss also learns to tell the catalogue's own products apart. Each
    pseudo-query also gets ``num_random_negatives`` random catalogue products (its group's pool, which a teacher
    scores for distillation)."""
    rng = np.random.default_rng([seed, 7])
    picked = catalogue.iloc[np.sort(rng.choice(len(catalogue), size=min(count, len(catalogue)), replace=False))]
    queries = [pseudo_query(text, rng) for text in picked["product_text"]]
    rows = pd.DataFrame(
        {
            "query_id": "pseudo:" + picked["product_id"],
            "query": queries,
            "product_id": picked["product_id"],
            "product_text": picked["product_text"],
            "esci_label": "",
            "target": 1,
            "source": "pseudo",
            "stage": stage,
        }
    )
    rows = rows[rows["query"].str.len() > 0]
    if num_random_negatives:
        catalogue_ids = catalogue["product_id"].to_numpy(dtype=object)
        own = rows[["query_id", "product_id"]]
        random = _random_negatives(own, sorted(own["query_id"]), catalogue_ids, num_random_negatives, seed)
        texts = catalogue.set_index("product_id")["product_text"]
        random = random.assign(
            query=random["query_id"].map(rows.set_index("query_id")["query"]),
            product_text=random["product_id"].map(texts),
            esci_label="",
            target=0,
            source="random",
            stage=stage,
        )
        rows = pd.concat([rows, random]).sort_values(["query_id", "target"], ascending=[True, False], kind="stable")
    return datasets.Dataset.from_pandas(rows[list(STAGE_FEATURES)], features=STAGE_FEATURES, preserve_index=False)


# ---------------------------------------------------------------- summary and writing


def _counts(series: pd.Series) -> dict[str, int]:
    return dict(sorted((str(key) or "unjudged", int(value)) for key, value in series.value_counts().items()))


def split_summary(dataset: datasets.Dataset) -> dict:
    frame = dataset.select_columns(["query_id", "esci_label", "target", "source"]).to_pandas()
    return {
        "rows": len(frame),
        "queries": int(frame["query_id"].nunique()),
        "by_label": _counts(frame["esci_label"]),
        "by_source": _counts(frame["source"]),
        "by_target": _counts(frame["target"]),
    }


def _write_dataset(dataset: datasets.Dataset | datasets.DatasetDict, folder: Path) -> None:
    with atomic_path(folder) as temporary:
        dataset.save_to_disk(str(temporary))


def prepare(
    esci_path: str | os.PathLike,
    output_dir: str | os.PathLike = "data",
    hard_negatives: str | os.PathLike | pd.DataFrame | None = None,
    stages: tuple[int, ...] | None = None,
    seed: int = 42,
    validation_fraction: float = 0.1,
    num_random_negatives: int = DEFAULT_NUM_RANDOM_NEGATIVES,
    hard_negatives_per_query: int | None = DEFAULT_HARD_NEGATIVES_PER_QUERY,
    **load_options,
) -> dict:
    """Load ``esci_path`` (see :func:`ttsn_hf.data.load_esci`, which takes ``load_options``), build the stages and
    write them with the catalogue, the judgements and ``summary.json`` under ``output_dir``.

    Stages default to (1, 2, 3) with ``hard_negatives`` and (1, 3) without. Everything is built in memory before
    anything is written, and each output is written under a temporary name then renamed: bad input leaves
    ``output_dir`` as it was. Stage folders of an earlier run that this run does not build are removed.
    """
    stages = tuple(stages) if stages else ((1, 2, 3) if hard_negatives is not None else (1, 3))
    _check_options(stages, hard_negatives, num_random_negatives)
    output = Path(output_dir)
    if output.exists() and not output.is_dir():
        raise UserInputError(f"{output}: output_dir exists and is not a folder")

    esci = load_esci(esci_path, **load_options)
    dropped = dict(esci.dropped)
    mined = None
    if hard_negatives is not None:
        mined = load_hard_negatives(hard_negatives, esci, hard_negatives_per_query, dropped)
    judgements, catalogue = esci.judgements.to_pandas(), esci.catalogue.to_pandas()
    train_queries, validation_queries = split_queries(judgements, validation_fraction, seed)
    query_splits = {"train": train_queries, "validation": validation_queries}
    built = {
        stage: _stage_dataset_dict(judgements, catalogue, stage, query_splits, mined, num_random_negatives, seed)
        for stage in stages
    }

    summary = {
        "source": esci.source,
        "hard_negatives": str(hard_negatives) if isinstance(hard_negatives, str | os.PathLike) else None,
        "hard_negatives_model_fingerprint": _miner_fingerprint(hard_negatives),
        "parameters": {
            "seed": seed,
            "validation_fraction": validation_fraction,
            "num_random_negatives": num_random_negatives,
            "hard_negatives_per_query": hard_negatives_per_query,
            **{key: value for key, value in load_options.items() if key != "num_proc"},
        },
        "catalogue_products": len(esci.catalogue),
        "judgements": {
            "rows": len(judgements),
            "queries": int(judgements["query_id"].nunique()),
            "by_label": _counts(judgements["esci_label"]),
            "queries_by_split": _counts(judgements.drop_duplicates("query_id")["split"]),
        },
        "queries": {"train": len(train_queries), "validation": len(validation_queries)},
        "dropped": dict(sorted(dropped.items())),
        "stages": {
            f"stage{stage}": {split: split_summary(dataset) for split, dataset in splits.items()}
            for stage, splits in built.items()
        },
    }
    _write_all(output, esci, built, summary)
    return summary


def _miner_fingerprint(hard_negatives: object) -> str | None:
    """The fingerprint of the model that mined the file, from the JSON summary mining writes beside it."""
    if not isinstance(hard_negatives, str | os.PathLike):
        return None
    summary = Path(hard_negatives).with_suffix(".json")
    return json.loads(summary.read_text()).get("model_fingerprint") if summary.is_file() else None


def _write_all(output: Path, esci: EsciData, built: dict[int, datasets.DatasetDict], summary: dict) -> None:
    _write_dataset(esci.catalogue, output / "catalogue")
    _write_dataset(esci.judgements, output / "judgements")
    for stage, splits in built.items():
        _write_dataset(splits, output / f"stage{stage}")
    for stage in set(STAGES) - set(built):
        stale = output / f"stage{stage}"
        if (stale / "dataset_dict.json").exists():
            shutil.rmtree(stale)
    write_text_atomic(output / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")


def load_prepared(data_dir: str | os.PathLike) -> tuple[EsciData, dict[int, datasets.DatasetDict]]:
    """The catalogue, judgements and stage datasets that :func:`prepare` wrote under ``data_dir``."""
    folder = Path(data_dir)
    for needed in ("catalogue", "judgements"):
        if not (folder / needed).is_dir():
            raise UserInputError(f"{folder / needed}: not found; run `python prepare.py` first")
    esci = load_prepared_esci(folder)
    stages = {
        stage: datasets.load_from_disk(str(folder / f"stage{stage}"))
        for stage in STAGES
        if (folder / f"stage{stage}" / "dataset_dict.json").exists()
    }
    if not stages:
        raise UserInputError(f"{folder}: holds no stage1/2/3 folder; run `python prepare.py` first")
    return esci, stages
