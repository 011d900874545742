"""Dropout whose CPU masks come from 16-bit random integers.

torch's CPU dropout draws one float Bernoulli sample per element through ``bernoulli_``, on one thread (~13% of a
packed MiniLM training step on the 2-core CPU here, and most of a padded long batch's non-matmul time); one 64-bit
random integer gives four 16-bit lanes, so a mask costs a quarter of the draws (~3x cheaper dropout). The drop
probability is rounded to a multiple of 2**-16 (p = 0.1 becomes 0.100006). On other devices (CUDA's dropout is
already fused) and in eval mode it is ``nn.Dropout``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

LANE_BITS = 16


def random_keep_mask(shape: torch.Size | tuple[int, ...], p: float) -> torch.Tensor:
    """A CPU bool mask, each element True with probability ``1 - p`` (``p`` rounded to a multiple of 2**-16)."""
    count = math.prod(shape)
    words = (count + 3) // 4
    lanes = torch.empty(words, dtype=torch.int64).random_().view(torch.int16).view(words, 4)
    keep = lanes >= round(p * 2**LANE_BITS) - 2 ** (LANE_BITS - 1)
    # random_() fills [0, 2**63): lanes 0-2 are uniform over int16, lane 3 (the sign bit's) over [0, 2**15)
    torch.ge(lanes[:, 3], round(p * 2 ** (LANE_BITS - 1)), out=keep[:, 3])
    return keep.view(-1)[:count].view(shape)


class _ScaleKept(torch.autograd.Function):
    """``x * keep / (1 - p)``, and the same for the gradient. The mask multiplies as uint8: a bool operand takes
    a slow conversion path on the CPU (~4x slower here)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        keep = keep.view(torch.uint8)
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return (x * keep).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return (grad * keep).mul_(ctx.scale), None, None


class RandomBitsDropout(nn.Dropout):
    """``nn.Dropout`` with :func:`random_keep_mask` masks on the CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or self.inplace or x.device.type != "cpu":
            return super().forward(x)
        if self.p == 1:
            return x * 0
        return _ScaleKept.apply(x, random_keep_mask(x.shape, self.p), 1.0 / (1.0 - self.p))


def use_random_bits_dropout(model: nn.Module) -> int:
    """Swap every plain ``nn.Dropout`` of ``model`` for :class:`RandomBitsDropout` (same ``p``; dropout has no
    weights, so nothing saved changes); returns how many were swapped."""
    swapped = 0
    for module in list(model.modules()):
        for name, child in module.named_children():
            if type(child) is nn.Dropout:
                setattr(module, name, RandomBitsDropout(child.p, child.inplace).train(child.training))
                swapped += 1
    return swapped


def attention_with_random_bits_dropout(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_mask: torch.Tensor | None,
    p: float,
    scale: float | None = None,
) -> torch.Tensor:
    """``scaled_dot_product_attention(query, key, value, key_mask, dropout_p=p)`` on the CPU, as its math kernel
    computes it in training (float32, for bf16 inputs too; CPU dropout needs that kernel), with a
    :func:`random_keep_mask` on the attention probabilities. (In bf16, as eager attention under autocast computes
    it, the small batched products were slower here.)"""
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    scores = (query.float() * scale) @ key.float().transpose(-2, -1)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask, float("-inf"))
    probabilities = scores.softmax(dim=-1)
    if p > 0:
        probabilities = _ScaleKept.apply(probabilities, random_keep_mask(probabilities.shape, p), 1.0 / (1.0 - p))
    return (probabilities @ value.float()).to(query.dtype)
