"""Padding-free encoding: the real tokens of a padded batch packed into rows of bounded width.

Each row holds several sequences back to back, each with its own position ids (0, 1, ...) and a block-diagonal
attention mask, so a token attends only to its own sequence and the dense layers (which cost ~90% of a BERT step)
see almost no padding. Rows stay short (``capacity`` tokens, at least the longest sequence) so that attention over
a row costs ``capacity**2``, not ``total_tokens**2``. Mean pooling then sums each sequence's tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

DEFAULT_ROW_CAPACITY = 128
PACKABLE_ATTENTION = ("sdpa", "eager")  # they take a 4D mask; flash-attention's varlen path would need its own


def can_pack(encoder: nn.Module) -> bool:
    return getattr(encoder.config, "_attn_implementation", "sdpa") in PACKABLE_ATTENTION


@dataclass
class PackedBatch:
    """``input_ids``/``position_ids`` [rows, width]; ``attention_mask`` [rows, 1, width, width] (True: may attend);
    ``slots`` [tokens]: the flat position (row * width + column) of each real token, sequence by sequence;
    ``sequence_of_token`` [tokens]: its sequence; ``lengths`` [sequences]."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    slots: torch.Tensor
    sequence_of_token: torch.Tensor
    lengths: torch.Tensor

    @property
    def padding_fraction(self) -> float:
        return 1.0 - int(self.lengths.sum()) / self.input_ids.numel()


def assign_rows(lengths: list[int] | np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """First-fit decreasing bin packing: the row and the start column of each sequence, rows holding at most
    ``capacity`` tokens (a longer sequence gets a row of its own)."""
    row_of = np.zeros(len(lengths), dtype=np.int64)
    start_of = np.zeros(len(lengths), dtype=np.int64)
    filled: list[int] = []
    for index in np.argsort(-np.asarray(lengths), kind="stable"):
        length = int(lengths[index])
        row = next((r for r, used in enumerate(filled) if used + length <= capacity), None)
        if row is None:
            row = len(filled)
            filled.append(0)
        row_of[index], start_of[index] = row, filled[row]
        filled[row] += length
    return row_of, start_of


def pack(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, capacity: int = DEFAULT_ROW_CAPACITY, pad_token_id: int = 0
) -> PackedBatch:
    """Pack a padded batch (any padding side) into rows of at most ``max(capacity, longest)`` tokens."""
    real = attention_mask.bool()
    lengths = real.sum(dim=1)
    lengths_np = lengths.cpu().numpy()
    row_of, start_of = assign_rows(lengths_np, capacity)
    width = int(max(capacity, lengths_np.max(initial=1)))
    rows = int(row_of.max(initial=0)) + 1
    width = min(width, int(np.bincount(row_of, weights=lengths_np, minlength=rows).max(initial=1)))
    sequence_of_token = np.repeat(np.arange(len(lengths_np)), lengths_np)
    first_token = np.cumsum(lengths_np) - lengths_np
    position = np.arange(len(sequence_of_token)) - first_token[sequence_of_token]
    slots = row_of[sequence_of_token] * width + start_of[sequence_of_token] + position

    device = input_ids.device
    slots_t = torch.from_numpy(slots).to(device)
    packed_ids = torch.full((rows * width,), pad_token_id, dtype=input_ids.dtype, device=device)
    packed_ids[slots_t] = input_ids[real]
    position_ids = torch.zeros(rows * width, dtype=torch.long, device=device)
    position_ids[slots_t] = torch.from_numpy(position).to(device)
    segment = torch.full((rows * width,), -1, dtype=torch.long, device=device)  # padding: a block of its own
    segment[slots_t] = torch.from_numpy(sequence_of_token).to(device)
    segment = segment.view(rows, width)
    return PackedBatch(
        input_ids=packed_ids.view(rows, width),
        position_ids=position_ids.view(rows, width),
        attention_mask=(segment[:, :, None] == segment[:, None, :]).unsqueeze(1),
        slots=slots_t,
        sequence_of_token=torch.from_numpy(sequence_of_token).to(device),
        lengths=lengths,
    )


def encoder_mask(packed: PackedBatch, encoder: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """The 4D mask in the form the encoder's attention takes: boolean for SDPA, additive for eager attention."""
    if getattr(encoder.config, "_attn_implementation", "sdpa") == "sdpa":
        return packed.attention_mask
    additive = torch.zeros(packed.attention_mask.shape, dtype=dtype, device=packed.attention_mask.device)
    return additive.masked_fill(~packed.attention_mask, torch.finfo(dtype).min)


def packed_mean_embeddings(
    encoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, capacity: int = DEFAULT_ROW_CAPACITY
) -> torch.Tensor:
    """Mean-pooled (not normalised) float32 embeddings of a padded batch, computed on packed rows."""
    pad_token_id = getattr(encoder.config, "pad_token_id", None) or 0
    packed = pack(input_ids, attention_mask, capacity, pad_token_id)
    hidden = encoder(
        input_ids=packed.input_ids,
        attention_mask=encoder_mask(packed, encoder, encoder.dtype),
        position_ids=packed.position_ids,
        token_type_ids=torch.zeros_like(packed.input_ids),
    ).last_hidden_state
    tokens = hidden.reshape(-1, hidden.shape[-1])[packed.slots].to(torch.float32)
    summed = torch.zeros(len(packed.lengths), tokens.shape[-1], dtype=torch.float32, device=tokens.device)
    summed = summed.index_add(0, packed.sequence_of_token, tokens)
    return summed / packed.lengths.clamp(min=1).unsqueeze(-1).to(torch.float32)
