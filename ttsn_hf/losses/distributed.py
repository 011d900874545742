"""Collectives the losses need to see the whole global batch while keeping gradients exact."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_autograd


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_with_grad(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Concatenate every process's ``tensor`` along dim 0, gradients flowing back to every process.

    Shards may differ in length (a last, short batch): each is padded to the longest first. Returns the
    gathered tensor, a boolean mask of its real (unpadded) rows, and the offset of this process's rows.
    """
    if world_size() == 1:
        return tensor, torch.ones(len(tensor), dtype=torch.bool, device=tensor.device), 0
    sizes = torch.tensor([len(tensor)], device=tensor.device)
    all_sizes = [torch.zeros_like(sizes) for _ in range(world_size())]
    dist.all_gather(all_sizes, sizes)
    all_sizes = [int(size) for size in all_sizes]
    longest = max(all_sizes)
    padded = torch.nn.functional.pad(tensor, (0,) * (2 * tensor.dim() - 1) + (longest - len(tensor),))
    gathered = torch.cat(dist_autograd.all_gather(padded), dim=0)
    real = torch.cat([torch.arange(longest, device=tensor.device) < size for size in all_sizes])
    offset = dist.get_rank() * longest
    return gathered, real, offset


def global_mean(local_sum: torch.Tensor, local_count: torch.Tensor) -> torch.Tensor:
    """The global batch's mean, as this process's share: DDP averages gradients over processes, so scaling
    by the world size makes N processes of batch B match one process of batch N*B exactly."""
    count = local_count.detach().clone().float()
    if world_size() > 1:
        dist.all_reduce(count)
    return local_sum * world_size() / count.clamp(min=1e-12)
