"""What a train.py run will do, resolved from its arguments before any data or model is loaded.

:class:`TrainingRun` takes its settings from here (each stage's ``TrainingArguments``, the loss, the base model,
mining, the teacher, selection, what follows the schedule), and ``OUTPUT_DIR/run_plan.json`` records
:meth:`RunPlan.resolved` at the start of every run. ``tests/test_every_flag.py`` checks that each option of
train.py changes it or is refused in one line: an option accepted and then ignored shows up there.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..arguments import DataArguments, ModelArguments, ScheduleArguments, TwoTowerTrainingArguments
from ..errors import UserInputError
from ..losses import CombinedLoss, DistillKLDivLoss, InBatchInfoNCELoss, MarginMSELoss, WeightedContrastiveLoss
from .schedule import Stage, build_schedule

PLAN_FILE = "run_plan.json"


class RunPlan:
    def __init__(
        self,
        model_args: ModelArguments,
        data_args: DataArguments,
        schedule_args: ScheduleArguments,
        training_args: TwoTowerTrainingArguments,
    ):
        self.model_args, self.data_args = model_args, data_args
        self.schedule_args, self.training_args = schedule_args, training_args
        self.schedule = build_schedule(schedule_args.epochs_per_stage, schedule_args.learning_rates)
        self.refuse_unused_options()

    def refuse_unused_options(self) -> None:
        """Options that would have no effect with the others given: a one-line error naming what they need."""
        d, s, t = self.data_args, self.schedule_args, self.training_args
        distilling = s.distillation_weight > 0
        needs = {
            "--distillation_weight": (distilling and not d.teacher_model_name_or_path, "--teacher_model_name_or_path"),
            "--teacher_model_name_or_path": (
                d.teacher_model_name_or_path and not distilling,
                "--distillation_weight > 0",
            ),
            "--teacher_cross_encoder": (d.teacher_cross_encoder and not d.teacher_model_name_or_path, "a teacher"),
            "--teacher_cache_dir": (d.teacher_cache_dir and not d.teacher_model_name_or_path, "a teacher"),
            "--distillation_loss": (
                s.distillation_loss != "margin_mse" and not distilling,
                "--distillation_weight > 0",
            ),
            "--distillation_temperature": (
                s.distillation_temperature != 0.05 and not (distilling and s.distillation_loss == "kl"),
                "--distillation_loss kl and --distillation_weight > 0",
            ),
            "--metric_for_best_model eval_distillation_loss": (
                t.metric_for_best_model == "eval_distillation_loss" and not distilling,
                "--distillation_weight > 0",
            ),
            **{
                f"--{name}": (getattr(t, name) not in (None, False) and not t.push_to_hub, "--push_to_hub")
                for name in ("hub_model_id", "hub_private_repo", "hub_revision", "hub_token")
            },
        }
        for flag, (unused, what) in needs.items():
            if unused:
                raise UserInputError(f"{flag} needs {what}: without it, it would change nothing")
        if not 0 <= s.merge_base_weight <= 1:
            raise UserInputError(f"--merge_base_weight must be in [0, 1]; got {s.merge_base_weight}")

    def stage_training_args(self, stage: Stage) -> TwoTowerTrainingArguments:
        """The arguments the stage's Trainer gets: the run's, with the stage's folder, epochs and rate."""
        return dataclasses.replace(
            self.training_args,
            push_to_hub=False,  # the best model is pushed once, after the schedule
            output_dir=str(Path(self.training_args.output_dir) / f"stage{stage.number}"),
            num_train_epochs=len(stage.epochs),
            learning_rate=stage.learning_rate,
        )

    def loss(self) -> CombinedLoss:
        s = self.schedule_args
        distillation = (
            MarginMSELoss() if s.distillation_loss == "margin_mse" else DistillKLDivLoss(s.distillation_temperature)
        )
        return CombinedLoss(
            WeightedContrastiveLoss(s.margin),
            InBatchInfoNCELoss(s.temperature, s.mask_false_negatives, s.label_weighted_infonce),
            s.contrastive_weight,
            s.infonce_weight,
            distillation,
            s.distillation_weight,
        )

    def base_model_kwargs(self) -> dict:
        """``load_model``'s arguments for the base encoder (stage 1 starts from it)."""
        m = self.model_args
        return {
            "name_or_path": m.model_name_or_path,
            "tie_towers": m.tie_towers,
            "query_max_length": m.query_max_length,
            "product_max_length": m.product_max_length,
        }

    def teacher_kwargs(self) -> dict | None:
        d = self.data_args
        if not d.teacher_model_name_or_path:
            return None
        cache = d.teacher_cache_dir or Path(self.training_args.output_dir) / "teacher_scores"
        return {
            "name_or_path": d.teacher_model_name_or_path,
            "cache_dir": str(cache),
            "cross_encoder": d.teacher_cross_encoder,
            "bf16": self.training_args.bf16,
        }

    def mining(self) -> dict:
        """The settings the hard negatives between stages 1 and 2 are mined with."""
        return {
            "num_negatives": self.schedule_args.mining_num_negatives,
            "relative_margin": self.schedule_args.mining_relative_margin,
            "bf16": self.training_args.bf16,
            "seed": self.training_args.seed,
        }

    def after_schedule(self) -> dict:
        t = self.training_args
        push = None
        if t.push_to_hub:
            repo_id = t.hub_model_id or Path(t.output_dir).resolve().name
            push = {"repo_id": repo_id, "private": t.hub_private_repo, "revision": t.hub_revision}
            push["token"] = "given" if t.hub_token else "from the login"  # never the token itself
        return {"merge_base_weight": self.schedule_args.merge_base_weight, "push": push}

    def resolved(self) -> dict:
        """Every setting of the run, as the run uses it (JSON-able)."""
        s = self.schedule_args
        return {
            "schedule": [dataclasses.asdict(stage) for stage in self.schedule],
            "stage": s.stage,
            "keep_checkpoints": s.keep_checkpoints,
            "overwrite_output_dir": self.training_args.overwrite_output_dir,
            "trainer": {str(stage.number): self.stage_training_args(stage).to_dict() for stage in self.schedule},
            "random_bits_dropout": self.training_args.random_bits_dropout,
            "model": {**self.base_model_kwargs(), "packed_sequences": self.model_args.packed_sequences},
            "loss": self.loss().get_config_dict() | {"label_weights": s.parsed_label_weights()},
            "threads": self.data_args.num_threads,
            "data": {
                name: value
                for name, value in dataclasses.asdict(self.data_args).items()
                if not name.startswith("teacher_") and name != "num_threads"
            },
            "mining": self.mining(),
            "teacher": self.teacher_kwargs(),
            "selection": {
                "metric": self.training_args.metric_for_best_model,
                "greater_is_better": self.training_args.greater_is_better,
                "corpus_size": self.data_args.selection_corpus_size,
            },
            "after_schedule": self.after_schedule(),
        }
