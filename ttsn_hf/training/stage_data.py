"""Where each stage's rows come from: prepared data (``--data_dir``) or built from ESCI, with hard negatives mined
by the model the stage continues from (mined again when a file was mined by another model, with other selection
settings or over another catalogue). Data options apply to every stage alike: pseudo-queries are added to every
stage's training split and random negatives are drawn at training, whether a stage was prepared or built here."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import datasets
from accelerate import PartialState

from ..arguments import DataArguments, ScheduleArguments, TwoTowerTrainingArguments
from ..data.esci import load_esci
from ..data.groups import GroupSource
from ..data.stages import SUMMARY_FILE, build_stage, load_prepared, split_queries, with_pseudo_queries
from ..data.tables import Products
from ..errors import UserInputError
from ..modeling.model import TwoTowerModel
from ..retrieval.encoding import model_fingerprint
from ..retrieval.mining import MiningSettings, mine_to_file, mined_file_difference, read_mined_summary

logger = logging.getLogger(__name__)
MINED_FILE = "hard_negatives_stage2.parquet"
DEFAULT_VALIDATION_FRACTION = 0.1


def load_training_data(data_args: DataArguments):
    """(EsciData, {stage: DatasetDict}) from prepared data (``--data_dir``, default ``data/`` if it exists), or
    (EsciData, {}) from raw ESCI (``--esci_dir``)."""
    if data_args.esci_dir:
        return load_esci(data_args.esci_dir), {}
    return load_prepared(data_args.data_source)


def prepared_dir(data_args: DataArguments) -> str | None:
    return None if data_args.esci_dir else data_args.data_dir


def mined_by(parquet: str | Path) -> str | None:
    """The fingerprint of the model that mined ``parquet`` (from the JSON summary mining writes beside it)."""
    return read_mined_summary(parquet).get("model_fingerprint")


def validation_queries(splits: datasets.DatasetDict) -> set[str]:
    return set(splits["validation"].unique("query_id"))


class StageData:
    """Each stage's {train, validation} rows; all stages share one query split (the prepared one with
    ``--data_dir``, so no validation query is ever trained on: another ``--validation_fraction`` is refused)."""

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
        self.validation_fraction = self._validation_fraction(parameters)
        self.hard_negatives_per_query = parameters.get("hard_negatives_per_query")
        if self.prepared and self.seed != training_args.seed:
            logger.info("%s was split with seed %s: stages built here keep that split", self.data_dir, self.seed)
        self.products = Products(self.esci.catalogue)
        self.built: dict[int, datasets.DatasetDict] = {}

    def _validation_fraction(self, parameters: dict) -> float:
        given = self.data_args.validation_fraction
        if not self.prepared:
            return DEFAULT_VALIDATION_FRACTION if given is None else given
        prepared = parameters.get("validation_fraction", DEFAULT_VALIDATION_FRACTION)
        if given is not None and given != prepared:
            raise UserInputError(
                f"--validation_fraction {given}: {self.data_dir} was split with validation fraction {prepared} "
                f"(its {SUMMARY_FILE}); leave the flag out, or run prepare.py again with --validation_fraction {given}"
            )
        return prepared

    def split_record(self) -> dict:
        """The query split every stage uses: seed, validation fraction and the sha256 of its validation query ids
        (sorted, one per line)."""
        _, validation = split_queries(self.esci.judged().query_ids("train"), self.validation_fraction, self.seed)
        digest = hashlib.sha256("\n".join(validation).encode("utf-8")).hexdigest()
        return {
            "seed": self.seed,
            "validation_fraction": self.validation_fraction,
            "validation_query_ids_sha256": digest,
        }

    # ---------------------------------------------------------------- the stages' rows

    def validation(self, model: TwoTowerModel) -> datasets.Dataset:
        return (self.prepared.get(1) or self.build(1, model, model))["validation"]

    def for_stage(self, stage: int, model: TwoTowerModel, miner: TwoTowerModel) -> datasets.DatasetDict:
        """The prepared stage if it is complete (stages 2-3 need rows mined by ``miner`` with this run's mining
        settings), else built; with ``--pseudo_queries``, their rows are added to the training split."""
        splits = self.prepared.get(stage)
        if splits is None or (stage > 1 and not self.prepared_mined_by(miner)):
            splits = self.build(stage, model, miner)
        if self.data_args.pseudo_queries:
            pseudo = with_pseudo_queries(splits["train"], self.products, self.data_args.pseudo_queries, self.seed)
            splits = datasets.DatasetDict({**splits, "train": pseudo})
        return splits

    def prepared_mined_by(self, miner: TwoTowerModel) -> bool:
        if self.data_args.hard_negatives or not self.summary.get("hard_negatives"):
            return False
        summary = self.summary.get("hard_negatives_summary") or read_mined_summary(self.summary["hard_negatives"])
        difference = mined_file_difference(summary, model_fingerprint(miner), self.mining_settings(), self.products)
        if difference:
            logger.info(
                "%s: its mined rows differ from this run's (%s); the stage is rebuilt", self.data_dir, difference
            )
            return False
        return True

    def build(self, stage: int, model: TwoTowerModel, miner: TwoTowerModel) -> datasets.DatasetDict:
        """The stage built from the catalogue and judgements, written to ``OUTPUT/stageN/data`` (by the main
        process) and read back memory-mapped."""
        if stage in self.built and stage == 1:
            return self.built[stage]
        folder = self.output_dir / f"stage{stage}" / "data"
        state = PartialState()
        hard_negatives = self.hard_negatives(miner) if stage > 1 else None
        if state.is_main_process:
            build_stage(
                self.esci,
                stage,
                hard_negatives=hard_negatives,
                hard_negatives_per_query=self.hard_negatives_per_query,
                validation_fraction=self.validation_fraction,
                seed=self.seed,
                folder=folder,
            )
        state.wait_for_everyone()
        splits = datasets.load_from_disk(str(folder))
        if self.prepared:
            self.check_same_split(splits)
        self.built[stage] = splits
        return splits

    def check_same_split(self, built: datasets.DatasetDict) -> None:
        prepared = next(iter(self.prepared.values()))
        if validation_queries(built) != validation_queries(prepared):
            raise UserInputError(
                f"{self.data_dir}: its validation queries cannot be rebuilt from summary.json's seed and "
                "validation_fraction (edited data?); run `python prepare.py` again"
            )

    def group_source(self, parts: list[datasets.Dataset]) -> GroupSource:
        """What the collator looks up for groups of ``parts`` (e.g. [train, validation])."""
        return GroupSource(
            parts, self.products, self.esci.judged(), self.data_args.num_random_negatives, self.training_args.seed
        )

    # ---------------------------------------------------------------- mined negatives

    def mining_settings(self) -> MiningSettings:
        relative_margin = self.schedule_args.mining_relative_margin
        return MiningSettings(
            num_negatives=self.schedule_args.mining_num_negatives,
            margin=None,
            relative_margin=relative_margin if relative_margin is not None and relative_margin >= 0 else None,
            bf16=self.training_args.bf16,
            cache_dir=self.output_dir / "embedding_cache",
            seed=self.training_args.seed,
        )

    def hard_negatives(self, miner: TwoTowerModel) -> str:
        """The mined file given (a warning if another model mined it), else one mined by ``miner`` with this run's
        mining settings over this catalogue: beside the prepared data or in the output folder, mined now if
        missing or different (another model, other selection settings, another catalogue)."""
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
        settings = self.mining_settings()
        beside_data = Path(self.data_dir or "data", MINED_FILE)
        if self.prepared and beside_data.exists() and not self.mined_difference(beside_data, fingerprint, settings):
            return str(beside_data)
        path = self.output_dir / MINED_FILE
        difference = "no file yet" if not path.exists() else self.mined_difference(path, fingerprint, settings)
        PartialState().wait_for_everyone()  # every process decides before the main one may rewrite the file
        if difference:
            logger.info("mining %s (%s)", path, difference)
            self.mine(miner, path, settings)
        return str(path)

    def mined_difference(self, path: Path, fingerprint: str, settings: MiningSettings) -> str | None:
        return mined_file_difference(read_mined_summary(path), fingerprint, settings, self.products)

    def mine(self, miner: TwoTowerModel, path: Path, settings: MiningSettings) -> None:
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
        mine_to_file(miner, self.esci, path, accelerator=state, settings=settings)
