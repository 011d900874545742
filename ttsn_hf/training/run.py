"""Runs the stage schedule: builds each stage's data, trains it, keeps epoch_N/ and best_model/."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
from pathlib import Path

import datasets
import torch
from transformers import TrainerCallback

from ..atomic import atomic_path, write_text_atomic
from ..data.groups import build_groups
from ..errors import HubUnreachableError, UserInputError
from ..evaluation.selection import RetrievalEvaluator
from ..losses import CombinedLoss, DistillKLDivLoss, InBatchInfoNCELoss, MarginMSELoss, WeightedContrastiveLoss
from ..modeling.hub import ensure_hub_reachable
from ..modeling.model import TwoTowerModel, load_model
from .arguments import DataArguments, ModelArguments, ScheduleArguments, TwoTowerTrainingArguments
from .collator import NegativeDrawCallback, TwoTowerCollator, tokenize_groups
from .merge import merge_saved_model
from .schedule import Stage, build_schedule
from .teacher import TeacherScorer
from .trainer import TwoTowerTrainer

logger = logging.getLogger(__name__)
STATE_FILE = "schedule_state.json"


class EpochCheckpointCallback(TrainerCallback):
    """After each epoch's validation: write ``epoch_N/`` and, on a new best ``metric_for_best_model`` (a validation
    retrieval metric by default, else the validation loss), ``best_model/``."""

    def __init__(self, output_dir: Path, stage: Stage):
        self.output_dir, self.stage = output_dir, stage

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        if not state.is_world_process_zero or model is None:
            return
        epoch = self.stage.epochs[0] + max(1, math.ceil(state.epoch - 1e-3)) - 1
        save_model(model, self.output_dir / f"epoch_{epoch}")
        record = read_state(self.output_dir)
        record["epochs"][str(epoch)] = {"stage": self.stage.number, **metrics}
        name, greater = selection_metric(args)
        best = record.get("best")
        if best is None or name not in best or is_better(metrics[name], best[name], greater):
            save_model(model, self.output_dir / "best_model")
            record["best"] = {"epoch": epoch, "eval_loss": metrics["eval_loss"], name: metrics[name]}
        write_state(self.output_dir, record)


def selection_metric(args) -> tuple[str, bool]:
    name = args.metric_for_best_model or "eval_loss"
    name = name if name.startswith("eval_") else f"eval_{name}"
    greater = args.greater_is_better if args.greater_is_better is not None else not name.endswith("loss")
    return name, greater


def is_better(value: float, best: float, greater: bool) -> bool:
    return value > best if greater else value < best


def save_model(model: TwoTowerModel, folder: Path) -> None:
    with atomic_path(folder) as temporary:
        model.save_pretrained(temporary)


def fresh_state() -> dict:
    return {"epochs": {}, "completed_stages": [], "best": None}


def read_state(output_dir: Path) -> dict:
    path = output_dir / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else fresh_state()


def write_state(output_dir: Path, record: dict) -> None:
    write_text_atomic(output_dir / STATE_FILE, json.dumps(record, indent=2))


def configure_threads(num_threads: int) -> None:
    """``accelerate launch`` gives each CPU process one thread unless told otherwise: use the cores we have."""
    if num_threads <= 0:
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
        num_threads = max(1, (os.cpu_count() or 1) // local_processes)
    torch.set_num_threads(num_threads)


class TrainingRun:
    """The whole schedule (or one stage of it) for one output folder."""

    def __init__(self, model_args, data_args, schedule_args, training_args):
        self.model_args: ModelArguments = model_args
        self.data_args: DataArguments = data_args
        self.schedule_args: ScheduleArguments = schedule_args
        self.training_args: TwoTowerTrainingArguments = training_args
        self.output_dir = Path(training_args.output_dir)
        if training_args.push_to_hub:
            self.warn_if_hub_unreachable()
        epochs = tuple(int(n) for n in schedule_args.stage_epochs.split(","))
        rates = tuple(float(r) for r in schedule_args.stage_learning_rates.split(","))
        self.schedule = build_schedule(epochs, rates)
        self.esci, self.prepared = load_training_data(data_args)
        self.known_positives = known_positives(self.esci.judgements)
        self.loss = CombinedLoss(
            WeightedContrastiveLoss(schedule_args.margin),
            InBatchInfoNCELoss(
                schedule_args.temperature, schedule_args.mask_false_negatives, schedule_args.label_weighted_infonce
            ),
            schedule_args.contrastive_weight,
            schedule_args.infonce_weight,
            MarginMSELoss() if schedule_args.distillation_loss == "margin_mse" else DistillKLDivLoss(),
            schedule_args.distillation_weight,
        )
        self.teacher = self.make_teacher()

    def make_teacher(self) -> TeacherScorer | None:
        if not self.data_args.teacher_model_name_or_path:
            if self.schedule_args.distillation_weight:
                raise UserInputError("--distillation_weight needs --teacher_model_name_or_path")
            return None
        return TeacherScorer(
            self.data_args.teacher_model_name_or_path,
            self.data_args.teacher_cache_dir or self.output_dir / "teacher_scores",
            cross_encoder=self.data_args.teacher_cross_encoder,
            bf16=self.training_args.bf16,
        )

    def stages_to_run(self) -> list[Stage]:
        if self.schedule_args.stage == "all":
            return list(self.schedule)
        return [self.schedule[int(self.schedule_args.stage) - 1]]

    def run(self) -> dict:
        stages = self.stages_to_run()
        if stages[0].number == 1 and not self.resume_requested() and self.training_args.should_save:
            write_state(self.output_dir, fresh_state())  # a new run forgets an earlier run's best
        completed = read_state(self.output_dir)["completed_stages"]
        for stage in stages:
            if stage.number in completed and self.resume_requested():
                logger.info("stage %d already completed: skipped", stage.number)
                continue
            self.train_stage(stage)
        if self.schedule_args.merge_base_weight and self.training_args.should_save:
            merge_saved_model(self.output_dir / "best_model", self._load_initial_model(self.schedule[0]),
                              self.schedule_args.merge_base_weight)  # fmt: skip
        if self.training_args.push_to_hub and self.training_args.should_save:
            self.push_best_model()
        return read_state(self.output_dir)

    def warn_if_hub_unreachable(self) -> None:
        try:
            ensure_hub_reachable(self.output_dir / "best_model")
        except HubUnreachableError as error:
            logger.warning("%s; training goes on, and the push after it will fail", error)

    def push_best_model(self) -> None:
        best = self.output_dir / "best_model"
        ensure_hub_reachable(best)
        repo_id = self.training_args.hub_model_id or self.output_dir.resolve().name
        model = TwoTowerModel.from_pretrained(best)
        model.push_to_hub(repo_id, token=self.training_args.hub_token, private=self.training_args.hub_private_repo)

    def training_record(self) -> dict:
        """What the model card says of the training; kept in the model's config."""
        source = self.data_args.esci_dir or self.data_args.data_dir or "data"
        return {
            "data": f"Amazon Shopping Queries (ESCI), from `{Path(source).name}`",
            "schedule": [dataclasses.asdict(stage) for stage in self.schedule],
            "loss": self.loss.get_config_dict(),
            "label_weights": self.schedule_args.parsed_label_weights(),
            "negatives_per_query": self.data_args.negatives_per_query,
            "selection_metric": selection_metric(self.training_args)[0],
            **({"teacher": self.teacher.get_config_dict()} if self.teacher else {}),
        }

    def initial_model(self, stage: Stage) -> TwoTowerModel:
        model = self._load_initial_model(stage)
        model.config.training = self.training_record()
        return model

    def _load_initial_model(self, stage: Stage) -> TwoTowerModel:
        if stage.number == 1:
            return load_model(
                self.model_args.model_name_or_path,
                tie_towers=self.model_args.tie_towers,
                query_max_length=self.model_args.query_max_length,
                product_max_length=self.model_args.product_max_length,
            )
        previous = self.output_dir / f"epoch_{stage.epochs[0] - 1}"
        if not previous.is_dir():
            raise UserInputError(
                f"stage {stage.number} continues from {previous}, which does not exist: run stage "
                f"{stage.number - 1} first, or --stage all"
            )
        return TwoTowerModel.from_pretrained(previous)

    def stage_data(self, stage: Stage, model: TwoTowerModel) -> datasets.DatasetDict:
        """The prepared stage if it is complete (stages 2-3 need mined rows), else built from the ESCI data."""
        prepared = self.prepared.get(stage.number)
        if prepared is not None and (stage.number == 1 or "mined" in set(prepared["train"]["source"])):
            return prepared
        from ..data.stages import build_stage

        return build_stage(
            self.esci,
            stage.number,
            hard_negatives=self.hard_negatives(model) if stage.number > 1 else None,
            num_random_negatives=self.data_args.num_random_negatives,
            validation_fraction=self.data_args.validation_fraction,
            seed=self.training_args.seed,
            pseudo_queries=self.data_args.pseudo_queries,
        )

    def hard_negatives(self, model: TwoTowerModel):
        """The mined file given, or the one mined after stage 1 (mined now if missing)."""
        if self.data_args.hard_negatives:
            return self.data_args.hard_negatives
        beside_data = Path(self.data_args.data_dir or "data", "hard_negatives_stage2.parquet")
        if self.prepared and beside_data.exists():
            return str(beside_data)
        path = self.output_dir / "hard_negatives_stage2.parquet"
        if not path.exists():
            from accelerate import PartialState

            from ..retrieval.mining import mine_to_file

            mine_to_file(
                model,
                self.esci,
                path,
                accelerator=PartialState(),
                num_negatives=self.schedule_args.mining_num_negatives,
                margin=None,
                relative_margin=self.schedule_args.mining_relative_margin,
                bf16=self.training_args.bf16,
                cache_dir=self.output_dir / "embedding_cache",
                seed=self.training_args.seed,
            )
        return str(path)

    def cap(self, dataset: datasets.Dataset, limit: int | None) -> datasets.Dataset:
        if limit is None or limit >= len(dataset):
            return dataset
        return dataset.shuffle(seed=self.training_args.seed).select(range(limit))

    def tokenize(self, dataset: datasets.Dataset, model: TwoTowerModel, pool_limit: int | None = None):
        """Query groups of the stage rows, tokenised (with the teacher's cached scores when there is a teacher)."""
        groups = build_groups(dataset, pool_limit, self.training_args.seed)
        teacher = self.teacher.score_groups(groups) if self.teacher else None
        return tokenize_groups(
            groups,
            model.tokenizer,
            model.config.query_max_length,
            model.config.product_max_length,
            self.known_positives,
            self.schedule_args.parsed_label_weights(),
            teacher,
        )

    def selection_evaluator(self, validation: datasets.Dataset) -> RetrievalEvaluator:
        return RetrievalEvaluator(
            self.esci.judgements.to_pandas(),
            self.esci.catalogue.to_pandas(),
            sorted(set(validation["query_id"])),
            self.data_args.selection_corpus_size,
            self.training_args.seed,
            bf16=self.training_args.bf16,
        )

    def train_stage(self, stage: Stage) -> None:
        model = self.initial_model(stage)
        splits = self.stage_data(stage, model)
        validation = self.prepared.get(1, None) or self.stage_data(self.schedule[0], model)
        args = dataclasses.replace(
            self.training_args,
            push_to_hub=False,  # the best model is pushed once, after the schedule
            output_dir=str(self.output_dir / f"stage{stage.number}"),
            num_train_epochs=len(stage.epochs),
            learning_rate=stage.learning_rate,
        )
        negatives = self.data_args.negatives_per_query
        collator = TwoTowerCollator(model.tokenizer, negatives, self.training_args.seed)
        evaluation = self.cap(validation["validation"], self.data_args.max_eval_samples)
        trainer = TwoTowerTrainer(
            model=model,
            args=args,
            train_dataset=self.tokenize(self.cap(splits["train"], self.data_args.max_train_samples), model),
            eval_dataset=self.tokenize(evaluation, model, pool_limit=negatives),
            data_collator=collator,
            loss=self.loss,
            retrieval_evaluator=self.selection_evaluator(evaluation),
            callbacks=[
                EpochCheckpointCallback(self.output_dir, stage),
                NegativeDrawCallback(collator, stage.epochs[0]),
            ],
        )
        trainer.train(resume_from_checkpoint=self.resume_checkpoint(args.output_dir))
        if trainer.is_world_process_zero():
            record = read_state(self.output_dir)
            record["completed_stages"] = sorted(set(record["completed_stages"]) | {stage.number})
            record.setdefault("loss", self.loss.get_config_dict())
            record["world_size"] = args.world_size
            write_state(self.output_dir, record)
        trainer.accelerator.wait_for_everyone()

    def resume_requested(self) -> bool:
        return self.training_args.resume_from_checkpoint not in (None, False, "false", "False")

    def resume_checkpoint(self, stage_dir: str) -> str | None:
        resume = self.training_args.resume_from_checkpoint
        if not self.resume_requested():
            return None
        if resume in (True, "true", "True"):
            return last_complete_checkpoint(Path(stage_dir), remove_incomplete=self.training_args.should_save)
        return resume


def last_complete_checkpoint(stage_dir: Path, remove_incomplete: bool = False) -> str | None:
    """The newest ``checkpoint-N`` whose save finished (Trainer writes ``trainer_state.json`` last); a checkpoint
    cut short by a crash is skipped, and removed when ``remove_incomplete``."""
    checkpoints = sorted(stage_dir.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[-1]))
    for checkpoint in reversed(checkpoints):
        if (checkpoint / "trainer_state.json").is_file():
            return str(checkpoint)
        if remove_incomplete:
            logger.warning("%s was cut short (no trainer_state.json): removed", checkpoint)
            shutil.rmtree(checkpoint, ignore_errors=True)
    return None


def load_training_data(data_args: DataArguments):
    """(EsciData, {stage: DatasetDict}) from prepared data (``--data_dir``, default ``data/`` if it exists), or
    (EsciData, {}) from raw ESCI (``--esci_dir``)."""
    if data_args.esci_dir:
        from ..data.esci import load_esci

        return load_esci(data_args.esci_dir), {}
    data_dir = data_args.data_dir or ("data" if Path("data", "summary.json").exists() else None)
    if data_dir:
        from ..data.stages import load_prepared

        return load_prepared(data_dir)
    raise UserInputError(
        "no training data: pass --esci_dir (ESCI files) or --data_dir (from `python prepare.py`; default data/)"
    )


def known_positives(judgements: datasets.Dataset) -> dict[str, list[str]]:
    """query_id -> products judged E, S or C: never a negative of that query in the in-batch loss."""
    positives: dict[str, list[str]] = {}
    for row in judgements.select_columns(["query_id", "product_id", "esci_label"]).to_pandas().itertuples():
        if row.esci_label in ("E", "S", "C"):
            positives.setdefault(row.query_id, []).append(row.product_id)
    return positives
