"""TwoTowerTrainer: a transformers.Trainer that routes pair batches to the combined loss and logs its parts."""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from accelerate.utils import broadcast_object_list
from torch import nn
from transformers import Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler

from ..errors import NonFiniteLossError
from ..losses import CombinedLoss

MODEL_INPUTS = ("query_input_ids", "query_attention_mask", "product_input_ids", "product_attention_mask")
LOSS_INPUTS = (
    "positive_index", "product_group", "targets", "weights", "product_keys", "mask_keys", "teacher_scores"
)  # fmt: skip


class TwoTowerTrainer(Trainer):
    """Trains a :class:`~ttsn_hf.TwoTowerModel`; ``loss`` defaults to :class:`~ttsn_hf.losses.CombinedLoss`."""

    loss_is_scaled_for_ga = False  # the loss is a per-batch mean: Trainer divides it over accumulation steps

    def __init__(self, *args, loss: nn.Module | None = None, retrieval_evaluator=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss = loss or CombinedLoss()
        self.retrieval_evaluator = retrieval_evaluator  # adds eval_recall@10, eval_ndcg@10 to each evaluation
        self._component_sums: dict[str, dict[str, float]] = {"train": defaultdict(float), "eval": defaultdict(float)}
        self._component_counts = {"train": 0, "eval": 0}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**{name: inputs[name] for name in MODEL_INPUTS})
        losses = self.loss(
            outputs.query_embeddings,
            outputs.product_embeddings,
            **{name: inputs[name] for name in LOSS_INPUTS if name in inputs},
        )
        if not math.isfinite(losses["loss"].item()):
            raise NonFiniteLossError(
                f"non-finite loss ({losses['loss'].item()}) at global step {self.state.global_step + 1}: "
                "lower the learning rate, or train in fp32 instead of fp16"
            )
        self._record_components(losses, "train" if model.training else "eval")
        return (losses["loss"], outputs) if return_outputs else losses["loss"]

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, LengthGroupedSampler):
            sampler.lengths = list(sampler.lengths)  # a datasets Column is read row by row: ~100x slower
        return sampler

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None, **kwargs):
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, **kwargs)
        if self.retrieval_evaluator is not None:
            scores = [None]
            if self.is_world_process_zero():  # searched once, the metrics sent to every process
                scores = [self.retrieval_evaluator(self.accelerator.unwrap_model(self.model))]
            scores = broadcast_object_list(scores)[0]
            prefix = kwargs.get("metric_key_prefix", "eval")
            output.metrics.update({f"{prefix}_{name}": value for name, value in scores.items()})
        return output

    def _record_components(self, losses: dict[str, torch.Tensor], mode: str) -> None:
        for name, value in losses.items():
            if name != "loss":
                self._component_sums[mode][name] += value.item()
        self._component_counts[mode] += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode, prefix = ("eval", "eval_") if "eval_loss" in logs else ("train", "")
        if "loss" in logs or mode == "eval":
            count = max(self._component_counts[mode], 1)
            for name, total in self._component_sums[mode].items():
                logs[f"{prefix}{name}"] = round(total / count, 6)
            self._component_sums[mode].clear()
            self._component_counts[mode] = 0
        super().log(logs, start_time)
