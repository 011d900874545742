"""Padding-free encoding: every real token of a batch in one flat sequence, attention per sequence.

The dense layers (~90% of a BERT step's FLOPs) see no pad token at all, and attention is computed per sequence:
sequences are bucketed by length (rounded up to ``BUCKET_STEP`` tokens) and each bucket goes through PyTorch's
``scaled_dot_product_attention`` as one padded batch, so attention and its dropout cost about ``sum(length**2)``
(packed rows of width ``w`` with a block-diagonal mask would cost ``w**2`` per row, 2x more for products and 10x
more for queries). This is what flash-attention's varlen kernels do on a GPU; here it is plain SDPA, on any device.
Queries and products can go through in one pass (``joint_packed_mean_embeddings``).

It plugs into transformers' attention interface: inside :func:`varlen_attention` the encoder's
``_attn_implementation`` names the function registered here, and the bucket plan reaches every layer through the
forward kwargs (as ``cu_seq_lens_q`` does for flash-attention). Only encoders checked to take it are packed
(``PACKABLE_MODEL_TYPES``: BERT family, 0-based position ids, attention through ``ALL_ATTENTION_FUNCTIONS``); the
others (MPNet with its own attention, RoBERTa's offset position ids) take the padded path.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .dropout import RandomBitsDropout, attention_with_random_bits_dropout

ATTENTION_NAME = "ttsn_varlen_sdpa"
PACKABLE_MODEL_TYPES = ("bert",)
BUCKET_STEP = 8  # bucket widths are multiples of this: at most 7 pad positions per sequence, in attention only


@dataclass
class Bucket:
    """``count`` sequences padded to ``width`` tokens; ``key_mask`` [count, 1, 1, width] (True: a real key), or
    None when every sequence fills the width."""

    count: int
    width: int
    key_mask: torch.Tensor | None


@dataclass
class VarlenPlan:
    """How to run attention over one flat sequence of real tokens. ``gather_index`` [slots] lists, bucket
    after bucket, the token in each padded slot (padding points at token 0); ``restore`` [tokens] is each token's
    slot, to put the buckets' outputs back in token order."""

    buckets: list[Bucket]
    gather_index: torch.Tensor
    restore: torch.Tensor


def can_pack(encoder: nn.Module) -> bool:
    """Whether the encoder is one the padding-free path is checked for (see the module docstring)."""
    module = sys.modules.get(type(encoder).__module__)
    model_type = getattr(getattr(encoder, "config", None), "model_type", None)
    return model_type in PACKABLE_MODEL_TYPES and hasattr(module, "ALL_ATTENTION_FUNCTIONS")


def plan_varlen(lengths: torch.Tensor, step: int = BUCKET_STEP) -> VarlenPlan:
    """The bucket plan for sequences of ``lengths`` laid back to back (``i`` starts at ``sum(lengths[:i])``)."""
    device = lengths.device
    lengths = lengths.to(torch.long)
    starts = torch.cumsum(lengths, 0) - lengths
    widths = (lengths + step - 1) // step * step
    buckets, gather, real_slots = [], [], []
    for width in torch.unique(widths).tolist():
        members = torch.nonzero(widths == width).flatten()
        columns = torch.arange(width, device=device)
        real = columns[None, :] < lengths[members, None]  # [count, width]
        gather.append(torch.where(real, starts[members, None] + columns[None, :], 0).flatten())
        real_slots.append(real.flatten())
        buckets.append(Bucket(len(members), int(width), None if bool(real.all()) else real[:, None, None, :]))
    gather_index, real_slots = torch.cat(gather), torch.cat(real_slots)
    restore = torch.empty(int(lengths.sum()), dtype=torch.long, device=device)
    restore[gather_index[real_slots]] = torch.nonzero(real_slots).flatten()
    return VarlenPlan(buckets=buckets, gather_index=gather_index, restore=restore)


def varlen_sdpa_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    varlen_plan: VarlenPlan | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """The attention function: ``query``/``key``/``value`` [1, heads, tokens, head_dim] -> [1, tokens, heads,
    head_dim], each token attending only to its own sequence."""
    if varlen_plan is None:
        raise RuntimeError(f"attention '{ATTENTION_NAME}' needs the varlen_plan of varlen_attention()")
    heads, head_dim = query.shape[1], query.shape[-1]
    attend = _sdpa
    if dropout > 0 and query.device.type == "cpu" and isinstance(getattr(module, "dropout", None), RandomBitsDropout):
        attend = attention_with_random_bits_dropout  # the module's dropout was swapped: its attention's too
    # [1, heads, tokens, d] is a transposed view of the projection's [tokens, heads, d]: one row gather per tensor
    sizes = [bucket.count * bucket.width for bucket in varlen_plan.buckets]
    # split, not slicing: one backward node per tensor (a slice's backward writes a zero-filled full-size grad)
    slots = [
        states[0].transpose(0, 1).index_select(0, varlen_plan.gather_index).split(sizes)
        for states in (query, key, value)
    ]
    outputs = []
    for bucket, size, *qkv in zip(varlen_plan.buckets, sizes, *slots, strict=True):
        q, k, v = (s.view(bucket.count, bucket.width, heads, head_dim).transpose(1, 2) for s in qkv)
        output = attend(q, k, v, bucket.key_mask, dropout, scaling)  # [count, heads, width, head_dim]
        outputs.append(output.transpose(1, 2).reshape(size, heads, head_dim))
    return torch.cat(outputs).index_select(0, varlen_plan.restore).unsqueeze(0), None


def _sdpa(query, key, value, key_mask, dropout: float, scale: float | None) -> torch.Tensor:
    return nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=key_mask, dropout_p=dropout, scale=scale
    )


ALL_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, varlen_sdpa_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, flash_attention_mask)  # no mask: the plan holds the structure


@contextmanager
def attention_implementation(config, name: str) -> Iterator[None]:
    """``config._attn_implementation = name`` inside the block; the previous one is restored after."""
    previous = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = previous


def varlen_attention(encoder: nn.Module):
    """Run the encoder's attention as :func:`varlen_sdpa_attention` inside the block (the config's own
    implementation is restored after, and is never saved: transformers does not serialise it)."""
    return attention_implementation(encoder.config, ATTENTION_NAME)


def recompute_with_the_same_attention(checkpoint: Callable, config) -> Callable:
    """Wrap a gradient-checkpointing function (``torch.utils.checkpoint.checkpoint`` with its kwargs) so that the
    backward's recompute runs the attention the forward ran. The packed path switches ``_attn_implementation``
    only around the forward call; a recompute outside that switch would run the config's own attention over the
    whole flat sequence (tokens attending across sequences) or fail torch's saved-tensor check."""

    def checkpointed(function: Callable, *args, **kwargs):
        implementation = config._attn_implementation  # what this forward runs

        def run_with_the_same_attention(*inner_args, **inner_kwargs):
            with attention_implementation(config, implementation):
                return function(*inner_args, **inner_kwargs)

        return checkpoint(run_with_the_same_attention, *args, **kwargs)

    return checkpointed


def _varlen_mean_embeddings(encoder: nn.Module, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean-pooled float32 embeddings of sequences given as their real ``tokens`` back to back and their
    ``lengths``: one flat sequence through the encoder, attention per sequence."""
    sequence_of_token = torch.repeat_interleave(torch.arange(len(lengths), device=tokens.device), lengths)
    starts = torch.cumsum(lengths, 0) - lengths
    position_ids = torch.arange(len(tokens), device=tokens.device) - starts[sequence_of_token]
    with varlen_attention(encoder):
        hidden = encoder(
            input_ids=tokens[None, :],
            position_ids=position_ids[None, :],
            token_type_ids=torch.zeros_like(tokens)[None, :],
            varlen_plan=plan_varlen(lengths),
        ).last_hidden_state[0]
    summed = torch.zeros(len(lengths), hidden.shape[-1], dtype=torch.float32, device=hidden.device)
    summed = summed.index_add(0, sequence_of_token, hidden.to(torch.float32))
    return summed / lengths.clamp(min=1).unsqueeze(-1).to(torch.float32)


def packed_mean_embeddings(encoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean-pooled (not normalised) float32 embeddings of a padded batch (any padding side), without its pads."""
    return joint_packed_mean_embeddings(encoder, [(input_ids, attention_mask)])[0]


def joint_packed_mean_embeddings(
    encoder: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> list[torch.Tensor]:
    """``packed_mean_embeddings`` of several padded batches in one encoder pass (one forward and one backward
    instead of one per batch): one tensor per batch."""
    if not can_pack(encoder):
        raise ValueError(f"{type(encoder).__name__} is not packable (see can_pack): encode it padded")
    reals = [mask.bool() for _, mask in batches]
    tokens = torch.cat([ids[real] for (ids, _), real in zip(batches, reals, strict=True)])
    lengths = torch.cat([real.sum(dim=1) for real in reals])
    return list(_varlen_mean_embeddings(encoder, tokens, lengths).split([len(ids) for ids, _ in batches]))
