"""TwoTowerTrainer: a transformers.Trainer that routes query-group batches to the combined loss and logs its parts."""

from __future__ import annotations

import os

import torch
from accelerate.utils import broadcast_object_list
from torch import nn
from transformers import Trainer
from transformers.integrations import TensorBoardCallback
from transformers.integrations.integration_utils import default_logdir
from transformers.trainer_pt_utils import LengthGroupedSampler

from ..errors import NonFiniteLossError
from ..losses import CombinedLoss
from ..modeling.dropout import use_random_bits_dropout
from ..modeling.model import TwoTowerModel
from .grad_cache import cached_loss

MODEL_INPUTS = ("query_input_ids", "query_attention_mask", "product_input_ids", "product_attention_mask")
LOSS_INPUTS = (
    "positive_index", "product_group", "targets", "weights", "product_keys", "mask_keys", "teacher_scores"
)  # fmt: skip


class TwoTowerTrainer(Trainer):
    """Trains a :class:`~ttsn_hf.TwoTowerModel`; ``loss`` defaults to :class:`~ttsn_hf.losses.CombinedLoss`."""

    loss_is_scaled_for_ga = False  # the loss is a per-batch mean: Trainer divides it over accumulation steps

    def __init__(self, *args, loss: nn.Module | None = None, retrieval_evaluator=None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.device.type == "cpu" and getattr(self.args, "random_bits_dropout", True):
            use_random_bits_dropout(self.model)
        self.loss = loss or CombinedLoss()
        self.retrieval_evaluator = retrieval_evaluator  # adds eval_recall@10, eval_ndcg@10 to each evaluation
        self._component_sums: dict[str, dict[str, torch.Tensor]] = {"train": {}, "eval": {}}
        self._component_counts = {"train": 0, "eval": 0}
        self._first_nonfinite_step: torch.Tensor | None = None  # global step of the first non-finite loss, or -1
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
                # set at train begin otherwise: the base model's evaluation before it would log into ./runs
                callback.logging_dir = os.path.join(self.args.output_dir, default_logdir())

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss_inputs = {name: inputs[name] for name in LOSS_INPUTS if name in inputs}
        mini_batch = getattr(self.args, "infonce_mini_batch_size", 0)
        if model.training and mini_batch and not return_outputs:
            losses = cached_loss(model, self.loss, inputs, loss_inputs, mini_batch)  # GradCache
            self._record_components(losses, "train")
            return losses["loss"]
        outputs = model(**{name: inputs[name] for name in MODEL_INPUTS})
        losses = self.loss(outputs.query_embeddings, outputs.product_embeddings, **loss_inputs)
        self._record_components(losses, "train" if model.training else "eval")
        return (losses["loss"], outputs) if return_outputs else losses["loss"]

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # a TwoTowerModel checkpoint keeps its weights in 0_Transformer/, where Trainer does not look
        target = self.accelerator.unwrap_model(model or self.model)
        if not (isinstance(target, TwoTowerModel) and target.load_saved_weights(resume_from_checkpoint)):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

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
        """Sums kept as detached tensors on the device: no host sync per step (``.item()`` would wait for the GPU)."""
        sums = self._component_sums[mode]
        for name, value in losses.items():
            if name != "loss":
                value = value.detach().float()
                sums[name] = sums[name] + value if name in sums else value.clone()
        self._component_counts[mode] += 1
        if mode == "train":
            self._track_nonfinite(losses["loss"].detach())

    def _track_nonfinite(self, loss: torch.Tensor) -> None:
        """Remember the first step whose loss was not finite, with tensor ops only; checked when logging/saving."""
        if self._first_nonfinite_step is None:
            self._first_nonfinite_step = torch.tensor(-1, device=loss.device)
        step = self.state.global_step + 1
        first = self._first_nonfinite_step
        self._first_nonfinite_step = torch.where(torch.isfinite(loss) | (first >= 0), first, step)

    def _raise_if_nonfinite(self) -> None:
        if self._first_nonfinite_step is None:
            return
        step = int(self.accelerator.gather(self._first_nonfinite_step.reshape(1)).max())  # every process raises
        if step >= 0:
            raise NonFiniteLossError(
                f"non-finite loss at global step {step}: lower the learning rate, or train in fp32 instead of fp16"
            )

    def _reduced_components(self, mode: str) -> dict[str, float]:
        """Each component's mean over the steps since the last log, then over the processes (one sync per log)."""
        sums = self._component_sums[mode]
        if not sums:
            return {}
        names = sorted(sums)
        means = torch.stack([sums[name] for name in names]) / max(self._component_counts[mode], 1)
        means = self.accelerator.reduce(means, reduction="mean")
        return dict(zip(names, means.tolist(), strict=True))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        self._raise_if_nonfinite()
        mode, prefix = ("eval", "eval_") if "eval_loss" in logs else ("train", "")
        if "loss" in logs or mode == "eval":
            for name, value in self._reduced_components(mode).items():
                logs[f"{prefix}{name}"] = round(value, 6)
            self._component_sums[mode].clear()
            self._component_counts[mode] = 0
        super().log(logs, start_time)

    def _save_checkpoint(self, model, trial):
        self._raise_if_nonfinite()  # never save a resume point of weights a non-finite loss has already changed
        return super()._save_checkpoint(model, trial)
