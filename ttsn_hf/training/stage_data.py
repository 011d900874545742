"""Where each stage's rows come from: prepared data (``--data_dir``) or built from ESCI, with hard negatives mined
by the model the stage continues from (re-mined when a file was mined by another model)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import datasets
from accelerate import PartialState

from ..arguments import DataArguments, ScheduleArguments, TwoTowerTrainingArguments
from ..data.esci import load_esci
from ..data.stages import SUMMARY_FILE, build_stage, load_prepared, split_queries
from ..errors import UserInputError
from ..labels import KNOWN_POSITIVE_LABELS
from ..modeling.model import TwoTowerModel
from ..retrieval.encoding import model_fingerprint
from ..retrieval.mining import mine_to_file

logger = logging.getLogger(__name__)
MINED_FILE = "hard_negatives_stage2.parquet"


def load_training_data(data_args: DataArguments):
    """(EsciData, {stage: DatasetDict}) from prepared data (``--data_dir``, default ``data/`` if it exists), or
    (EsciData, {}) from raw ESCI (``--esci_dir``)."""
    if data_args.esci_dir:
        return load_esci(data_args.esci_dir), {}
    return load_prepared(data_args.data_source)


def prepared_dir(data_args: DataArguments) -> str | None:
    return None if data_args.esci_dir else data_args.data_dir


def known_positives(judgements: datasets.Dataset) -> dict[str, list[str]]:
    """query_id -> products judged E, S or C: never a negative of that query in the in-batch loss."""
    positives: dict[str, list[str]] = {}
    for row in judgements.select_columns(["query_id", "product_id", "esci_label"]).to_pandas().itertuples():
        if row.esci_label in KNOWN_POSITIVE_LABELS:
            positives.setdefault(row.query_id, []).append(row.product_id)
    return positives


def mined_by(parquet: str | Path) -> str | None:
    """The fingerprint of the model that mined ``parquet`` (from the JSON summary mining writes beside it)."""
    summary = Path(parquet).with_suffix(".json")
    return json.loads(summary.read_text()).get("model_fingerprint") if summary.is_file() else None


def validation_queries(splits: datasets.DatasetDict) -> set[str]:
    return set(splits["validation"].unique("query_id"))


class StageData:
    """Each stage's {train, validation} rows; all stages share one query split (the prepared one with
    ``--data_dir``, whatever ``--seed``, so no validation query is ever trained on)."""

    def __init__(self, data_args: DataArguments, schedule_args: ScheduleArguments, training_args, output_dir: Path):
        self.data_args, self.schedule_args = data_args, schedule_args
        self.training_args: TwoTowerTrainingArguments = training_args
        self.output_dir = output_dir
        self.esci, self.prepared = load_training_data(data_args)
        self.data_dir = prepared_dir(data_args)
        summary = Path(self.data_dir or "data", SUMMARY_FILE)
        self.summary = json.loads(summary.read_text()) if self.prepared and summary.is_file() else {}
        parameters = self.summary.get("parameters", {})
        self.seed = parameters.get("seed", training_args.seed)
        self.validation_fraction = parameters.get("validation_fraction", data_args.validation_fraction)
        if self.prepared and (self.seed, self.validation_fraction) != (
            training_args.seed,
            data_args.validation_fraction,
        ):
            logger.info(
                "%s was split with seed %s, validation fraction %s: stages built here keep that split",
                self.data_dir,
                self.seed,
                self.validation_fraction,
            )
        self.known_positives = known_positives(self.esci.judgements)

    def split_record(self) -> dict:
        """The query split every stage uses: its seed, validation fraction and a hash of the validation query ids."""
        if self.prepared:
            validation = sorted(validation_queries(next(iter(self.prepared.values()))))
        else:
            judgements = self.esci.judgements.select_columns(["query_id", "split"]).to_pandas()
            validation = split_queries(judgements, self.validation_fraction, self.seed)[1]
        digest = hashlib.sha256("\n".join(map(str, validation)).encode()).hexdigest()
        return {
            "seed": self.seed,
            "validation_fraction": self.validation_fraction,
            "validation_queries": len(validation),
            "validation_query_ids_sha256": digest,
        }

    def validation(self, model: TwoTowerModel) -> datasets.Dataset:
        return (self.prepared.get(1) or self.build(1, model, model))["validation"]

    def for_stage(self, stage: int, model: TwoTowerModel, miner: TwoTowerModel) -> datasets.DatasetDict:
        """The prepared stage if it is complete (stages 2-3 need rows mined by ``miner``), else built."""
        prepared = self.prepared.get(stage)
        if prepared is not None and (stage == 1 or self.prepared_mined_by(prepared, miner)):
            return prepared
        return self.build(stage, model, miner)

    def prepared_mined_by(self, prepared: datasets.DatasetDict, miner: TwoTowerModel) -> bool:
        if self.data_args.hard_negatives or "mined" not in set(prepared["train"]["source"]):
            return False
        fingerprint = self.summary.get("hard_negatives_model_fingerprint")
        if fingerprint is None and self.summary.get("hard_negatives"):
            fingerprint = mined_by(self.summary["hard_negatives"])
        if fingerprint != model_fingerprint(miner):
            logger.info("%s: its mined rows come from another model; the stage is rebuilt", self.data_dir)
            return False
        return True

    def build(self, stage: int, model: TwoTowerModel, miner: TwoTowerModel) -> datasets.DatasetDict:
        splits = build_stage(
            self.esci,
            stage,
            hard_negatives=self.hard_negatives(miner) if stage > 1 else None,
            num_random_negatives=self.data_args.num_random_negatives,
            validation_fraction=self.validation_fraction,
            seed=self.seed,
            pseudo_queries=self.data_args.pseudo_queries,
        )
        if self.prepared:
            self.check_same_split(splits)
        return splits

    def check_same_split(self, built: datasets.DatasetDict) -> None:
        prepared = next(iter(self.prepared.values()))
        if validation_queries(built) != validation_queries(prepared):
            raise UserInputError(
                f"{self.data_dir}: its validation queries cannot be rebuilt from summary.json's seed and "
                "validation_fraction (edited data?); run `python prepare.py` again"
            )

    def hard_negatives(self, miner: TwoTowerModel) -> str:
        """The mined file given (a warning if another model mined it), else one mined by ``miner``: beside the
        prepared data or in the output folder, mined now if missing or mined by another model."""
        fingerprint = model_fingerprint(miner)
        if self.data_args.hard_negatives:
            owner = mined_by(self.data_args.hard_negatives)
            if owner != fingerprint:
                logger.warning(
                    "--hard_negatives %s were mined by %s, not by the model this stage continues from (%s)",
                    self.data_args.hard_negatives,
                    f"model {owner[:12]}" if owner else "an unknown model (no summary JSON beside the file)",
                    fingerprint[:12],
                )
            return self.data_args.hard_negatives
        beside_data = Path(self.data_dir or "data", MINED_FILE)
        if self.prepared and beside_data.exists() and mined_by(beside_data) == fingerprint:
            return str(beside_data)
        path = self.output_dir / MINED_FILE
        stale = not path.exists() or mined_by(path) != fingerprint
        PartialState().wait_for_everyone()  # every process decides before the main one may rewrite the file
        if stale:
            self.mine(miner, path)
        return str(path)

    def mine(self, miner: TwoTowerModel, path: Path) -> None:
        """Mine on the trainer's device, the catalogue encoding sharded over the processes (as ``mine.py``)."""
        state = PartialState()
        miner.to(self.training_args.device)
        logger.info(
            "mining hard negatives with model %s on %s (%d process(es)) into %s",
            model_fingerprint(miner)[:12],
            miner.device,
            state.num_processes,
            path,
        )
        mine_to_file(
            miner,
            self.esci,
            path,
            accelerator=state,
            num_negatives=self.schedule_args.mining_num_negatives,
            margin=None,
            relative_margin=self.schedule_args.mining_relative_margin,
            bf16=self.training_args.bf16,
            cache_dir=self.output_dir / "embedding_cache",
            seed=self.training_args.seed,
        )
