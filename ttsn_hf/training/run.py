"""Runs the stage schedule: each stage's model, data and Trainer; epoch_N/ and best_model/ kept (see state.py)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import datasets
import torch
from accelerate import PartialState

from ..arguments import DataArguments, ModelArguments, ScheduleArguments, TwoTowerTrainingArguments
from ..atomic import write_text_atomic
from ..errors import HubUnreachableError, UserInputError
from ..evaluation.selection import RetrievalEvaluator
from ..modeling.hub import ensure_hub_reachable
from ..modeling.model import TwoTowerModel, load_model
from .collator import NegativeDrawCallback, TwoTowerCollator
from .merge import merge_saved_model
from .plan import PLAN_FILE, RunPlan
from .progress import ScheduleEstimateCallback
from .schedule import Stage
from .stage_data import StageData, load_training_data
from .state import (
    EpochCheckpointCallback,
    checkpoint_epochs,
    checkpoint_stage,
    forget_epochs_from,
    fresh_state,
    last_complete_checkpoint,
    read_state,
    record_stage_finished,
    remove_checkpoints,
    remove_earlier_run,
    selection_metric,
    write_state,
)
from .teacher import TeacherScorer
from .trainer import TwoTowerTrainer

# load_training_data and last_complete_checkpoint are imported from here by benchmarks and tests
__all__ = [
    "TrainingRun",
    "configure_threads",
    "environment_line",
    "last_complete_checkpoint",
    "load_training_data",
]
logger = logging.getLogger(__name__)


def configure_threads(num_threads: int) -> None:
    """``accelerate launch`` gives each CPU process one thread unless told otherwise: use the cores we have."""
    if num_threads <= 0:
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
        num_threads = max(1, (os.cpu_count() or 1) // local_processes)
    torch.set_num_threads(num_threads)


def environment_line(training_args: TwoTowerTrainingArguments) -> str:
    """Device, processes, precision and threads, in one line."""
    device = training_args.device  # sets up accelerate's state (process group included)
    name = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    precision = "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "fp32"
    return (
        f"device {device}{name}, {PartialState().num_processes} process(es), {precision}, "
        f"{torch.get_num_threads()} torch thread(s) per process"
    )


class TrainingRun:
    """The whole schedule (or one stage of it) for one output folder."""

    def __init__(self, model_args, data_args, schedule_args, training_args):
        self.model_args: ModelArguments = model_args
        self.data_args: DataArguments = data_args
        self.schedule_args: ScheduleArguments = schedule_args
        self.training_args: TwoTowerTrainingArguments = training_args
        training_args.refuse_changed_options()
        self.plan = RunPlan(model_args, data_args, schedule_args, training_args)
        self.output_dir = Path(training_args.output_dir)
        self.resume_stage = self.checked_resume_stage()  # before anything is written
        if training_args.push_to_hub:
            self.warn_if_hub_unreachable()
        self.schedule = self.plan.schedule
        self.check_not_overwriting()
        self.data = StageData(data_args, schedule_args, training_args, self.output_dir)
        self.lineage = self.current_lineage()
        self.check_same_lineage()
        self.loss = self.plan.loss()
        teacher = self.plan.teacher_kwargs()
        self.teacher = TeacherScorer(**teacher) if teacher else None
        self.stages_in_run: list[Stage] = []

    # ---------------------------------------------------------------- which stages, resumed from where

    def resume_requested(self) -> bool:
        return self.training_args.resume_from_checkpoint not in (None, False, "false", "False")

    def resume_from_path(self) -> bool:
        return self.resume_requested() and self.training_args.resume_from_checkpoint not in (True, "true", "True")

    def checked_resume_stage(self) -> int | None:
        """The stage ``--resume_from_checkpoint PATH`` belongs to (None without a path)."""
        if not self.resume_from_path():
            return None
        stage = checkpoint_stage(self.training_args.resume_from_checkpoint, self.output_dir)
        if self.schedule_args.stage not in ("all", str(stage)):
            raise UserInputError(
                f"--resume_from_checkpoint {self.training_args.resume_from_checkpoint} belongs to stage {stage}, "
                f"not to --stage {self.schedule_args.stage}: pass --stage {stage} or --stage all"
            )
        return stage

    def stages_to_run(self) -> list[Stage]:
        if self.schedule_args.stage == "all":
            stages = list(self.schedule)
        else:
            stages = [self.schedule[int(self.schedule_args.stage) - 1]]
        stages = [stage for stage in stages if stage.number >= (self.resume_stage or 1)]
        if self.resume_requested() and not self.resume_from_path():
            completed = read_state(self.output_dir)["completed_stages"]
            for stage in [stage for stage in stages if stage.number in completed]:
                logger.info("stage %d already completed: skipped", stage.number)
            stages = [stage for stage in stages if stage.number not in completed]
        return stages

    def continues_a_run(self) -> bool:
        """Whether this run builds on the output folder's earlier epochs (a later stage, or a resume)."""
        return self.resume_requested() or self.schedule_args.stage not in ("all", "1")

    def resume_checkpoint(self, stage: Stage, stage_dir: Path) -> str | None:
        """Only the stage a checkpoint path belongs to resumes from it; ``true`` resumes each stage's last one."""
        if self.resume_from_path():
            return self.training_args.resume_from_checkpoint if stage.number == self.resume_stage else None
        if self.resume_requested():
            return last_complete_checkpoint(stage_dir, remove_incomplete=self.training_args.should_save)
        return None

    # ---------------------------------------------------------------- one lineage per output folder

    def check_not_overwriting(self) -> None:
        """transformers' convention: an output folder's finished epochs are not trained over without
        ``--overwrite_output_dir`` (or a resume)."""
        if self.resume_requested() or self.training_args.overwrite_output_dir:
            return
        epochs = [epoch for stage in self.stages_to_run() for epoch in stage.epochs]
        existing = [epoch for epoch in epochs if (self.output_dir / f"epoch_{epoch}").is_dir()]
        if existing:
            raise UserInputError(
                f"--output_dir {self.output_dir} already holds epoch(s) {', '.join(map(str, existing))} of an "
                "earlier run: pass --overwrite_output_dir to train them again, --resume_from_checkpoint true to "
                "finish an interrupted run, or another --output_dir"
            )

    def current_lineage(self) -> dict:
        """What this run's epochs are compared on: the query split and the selection corpus."""
        return {
            "split": self.data.split_record(),
            "selection": {
                "corpus_size": self.data_args.selection_corpus_size,
                "max_eval_samples": self.data_args.max_eval_samples,
                "seed": self.training_args.seed,
            },
        }

    def check_same_lineage(self) -> None:
        """A run that continues an output folder must validate on the queries its epochs were validated on: else
        best_model would compare epochs scored on two validation sets (and train on the other's queries)."""
        recorded = read_state(self.output_dir).get("lineage") or {}
        if not self.continues_a_run() or not recorded:
            return
        for part, settings in self.lineage.items():
            differences = [
                f"{name} {recorded[part].get(name)!r} there, {value!r} here"
                for name, value in settings.items()
                if part in recorded and recorded[part].get(name) != value
            ]
            if differences:
                raise UserInputError(
                    f"--output_dir {self.output_dir} was trained with another {part} ({'; '.join(differences)}): "
                    "pass the flags it was trained with (--seed, --validation_fraction, --selection_corpus_size, "
                    "--max_eval_samples), or start over with --stage all --overwrite_output_dir"
                )

    # ---------------------------------------------------------------- the schedule

    def run(self) -> dict:
        stages = self.stages_in_run = self.stages_to_run()
        if stages and self.training_args.should_save:
            self.start_state(stages[0])
        for stage in stages:
            self.train_stage(stage)
        if self.schedule_args.merge_base_weight and self.training_args.should_save:
            merge_saved_model(self.output_dir / "best_model", self.base_model(), self.schedule_args.merge_base_weight)
        if self.training_args.push_to_hub and self.training_args.should_save:
            self.push_best_model()
        return read_state(self.output_dir)

    def start_state(self, first: Stage) -> None:
        """A new run forgets an earlier run's epochs and resume points; a run that continues the folder forgets
        the epochs it trains again, and best_model is re-picked among those that stay. The run's resolved
        settings are recorded in run_plan.json."""
        write_text_atomic(self.output_dir / PLAN_FILE, json.dumps(self.plan.resolved(), indent=2, default=str))
        if not self.continues_a_run():
            write_state(self.output_dir, {**fresh_state(), "lineage": self.lineage})
            remove_earlier_run(self.output_dir)
            return
        checkpoint = self.resume_checkpoint(first, self.output_dir / f"stage{first.number}")
        first_epoch = first.epochs[0] + (checkpoint_epochs(checkpoint) if checkpoint else 0)
        record = forget_epochs_from(self.output_dir, first, first_epoch, *selection_metric(self.training_args))
        if not record.get("lineage"):
            write_state(self.output_dir, {**record, "lineage": self.lineage})

    def train_stage(self, stage: Stage) -> None:
        started = time.monotonic()
        model = self.initial_model(stage)
        splits = self.data.for_stage(stage.number, model, self.miner(stage, model))
        trainer = self.trainer(stage, model, splits["train"], self.data.validation(model))
        stage_dir = Path(trainer.args.output_dir)
        checkpoint = self.resume_checkpoint(stage, stage_dir)
        if stage.number == 1 and checkpoint is None:
            trainer.evaluate()  # the base model, by the same evaluator: epoch 0 of the summary
        trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_state()  # stageN/trainer_state.json: the stage's log history outlives its checkpoints
        if trainer.is_world_process_zero():
            record_stage_finished(
                self.output_dir, stage, time.monotonic() - started, trainer.args.world_size, self.loss.get_config_dict()
            )
            if not self.schedule_args.keep_checkpoints:
                remove_checkpoints(stage_dir)
        trainer.accelerator.wait_for_everyone()

    # ---------------------------------------------------------------- a stage's model and trainer

    def base_model(self) -> TwoTowerModel:
        return load_model(**self.plan.base_model_kwargs())

    def initial_model(self, stage: Stage) -> TwoTowerModel:
        if stage.number == 1:
            model = self.base_model()
        else:
            model = TwoTowerModel.from_pretrained(self.epoch_folder(stage.epochs[0] - 1, stage))
        model.config.packed_sequences = self.model_args.packed_sequences
        model.config.training = self.training_record()
        return model

    def epoch_folder(self, epoch: int, stage: Stage) -> Path:
        folder = self.output_dir / f"epoch_{epoch}"
        if not folder.is_dir():
            raise UserInputError(
                f"stage {stage.number} continues from {folder}, which does not exist: run stage "
                f"{stage.number - 1} first, or --stage all"
            )
        return folder

    def miner(self, stage: Stage, model: TwoTowerModel) -> TwoTowerModel:
        """The model whose hard negatives the stage trains on: the one stage 1 ended with."""
        stage1_end = self.schedule[0].epochs[-1]
        if stage.number == 1 or stage.epochs[0] - 1 == stage1_end:
            return model
        return TwoTowerModel.from_pretrained(self.epoch_folder(stage1_end, stage))

    def trainer(
        self, stage: Stage, model: TwoTowerModel, train: datasets.Dataset, validation: datasets.Dataset
    ) -> TwoTowerTrainer:
        args = self.plan.stage_training_args(stage)
        source = self.data.group_source([train, validation])
        collator = TwoTowerCollator(
            model.tokenizer,
            source,
            self.data_args.negatives_per_query,
            self.training_args.seed,
            epoch=stage.epochs[0],
            query_max_length=model.config.query_max_length,
            product_max_length=model.config.product_max_length,
            label_weights=self.schedule_args.parsed_label_weights(),
        )
        train_groups = self.cap(source.groups(0), self.data_args.max_train_samples)
        evaluation = self.cap(source.groups(1, fixed=True, with_query_ids=True), self.data_args.max_eval_samples)
        evaluator = self.selection_evaluator(evaluation)
        return TwoTowerTrainer(
            model=model,
            args=args,
            train_dataset=self.tokenize(train_groups, model, collator, stage.epochs),
            eval_dataset=self.tokenize(evaluation, model, collator, (collator.epoch,)),
            data_collator=collator,
            loss=self.loss,
            retrieval_evaluator=evaluator,
            callbacks=[
                EpochCheckpointCallback(self.output_dir, stage, evaluator),
                NegativeDrawCallback(collator, stage.epochs[0]),
                ScheduleEstimateCallback([len(s.epochs) for s in self.stages_in_run if s.number > stage.number]),
            ],
        )

    def cap(self, groups: datasets.Dataset, limit: int | None) -> datasets.Dataset:
        """A seeded sample of ``limit`` query groups (all of them without a limit)."""
        if limit is None or limit >= len(groups):
            return groups
        return groups.shuffle(seed=self.training_args.seed).select(range(limit)).flatten_indices()

    def tokenize(self, groups: datasets.Dataset, model: TwoTowerModel, collator: TwoTowerCollator, epochs):
        """Query groups ready to train on: tokens are made per batch by the collator, so only each positive's token
        count is added (one streamed pass, for length-grouped batches); with a teacher, it scores once every pair
        the groups meet in ``epochs`` (cached), and the collator looks the scores up."""
        if self.teacher:
            texts = collator.source.texts(groups, epochs, collator.negatives_per_query)
            collator.teacher = self.teacher.score_groups(texts)
        if self.training_args.train_sampling_strategy == "group_by_length":
            groups = collator.source.with_lengths(groups, model.tokenizer, model.config.product_max_length)
        return groups

    def selection_evaluator(self, validation: datasets.Dataset) -> RetrievalEvaluator:
        return RetrievalEvaluator(
            self.data.esci.judgements,
            self.data.esci.catalogue,
            sorted(set(validation["query_id"])),
            self.data_args.selection_corpus_size,
            self.training_args.seed,
            bf16=self.training_args.bf16,
        )

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

    # ---------------------------------------------------------------- the hub

    def warn_if_hub_unreachable(self) -> None:
        try:
            ensure_hub_reachable(self.output_dir / "best_model")
        except HubUnreachableError as error:
            logger.warning("%s; training goes on, and the push after it will fail", error)

    def push_best_model(self) -> None:
        best = self.output_dir / "best_model"
        ensure_hub_reachable(best)
        push = self.plan.after_schedule()["push"]
        model = TwoTowerModel.from_pretrained(best)
        model.push_to_hub(
            push["repo_id"],
            token=self.training_args.hub_token,
            private=push["private"],
            revision=push["revision"],
        )
