"""GradCache (Gao et al. 2021): the loss over a global batch larger than memory allows, with the same gradients.

``--infonce_mini_batch_size M``: the batch's query groups are embedded ``M`` at a time without a graph (the random
state of each chunk kept), the combined loss is computed over all the embeddings at once and its gradient with
respect to each embedding cached; when the trainer back-propagates the loss, each chunk is embedded again with
a graph, under its saved random state (the same dropout masks), and back-propagated with its cached gradients.
Memory holds one chunk's activations, whatever the batch; the in-batch InfoNCE still sees every product of the
global batch. As sentence-transformers' ``CachedMultipleNegativesRankingLoss`` and Tevatron's grad_cache do.
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import partial

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import get_device_states, set_device_states

QUERY_INPUTS = ("query_input_ids", "query_attention_mask")
PRODUCT_INPUTS = ("product_input_ids", "product_attention_mask")


class RandomState:
    """The CPU and accelerator random states at creation, restored inside ``with`` (the generators' own states
    are put back after): a second forward draws the first forward's dropout masks."""

    def __init__(self, *tensors: torch.Tensor):
        self.cpu_state = torch.get_rng_state()
        self.devices, self.device_states = get_device_states(*tensors)

    def __enter__(self) -> None:
        self._fork = torch.random.fork_rng(devices=self.devices, enabled=True)
        self._fork.__enter__()
        torch.set_rng_state(self.cpu_state)
        set_device_states(self.devices, self.device_states)

    def __exit__(self, *exc) -> None:
        self._fork.__exit__(*exc)


def chunks_of_groups(inputs: dict[str, torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
    """The model inputs of each run of ``size`` query groups: their queries, and their products (a group's
    products are contiguous, groups in order), each without the columns that are padding in the whole chunk."""
    groups = inputs["product_group"]
    chunks = []
    for start in range(0, len(inputs["query_input_ids"]), size):
        rows = torch.nonzero((groups >= start) & (groups < start + size)).squeeze(-1)
        chunk = {name: inputs[name][start : start + size] for name in QUERY_INPUTS}
        chunk |= {name: inputs[name][rows] for name in PRODUCT_INPUTS}
        for ids, mask in (QUERY_INPUTS, PRODUCT_INPUTS):
            columns = chunk[mask].bool().any(dim=0)  # any padding side
            chunk[ids], chunk[mask] = chunk[ids][:, columns], chunk[mask][:, columns]
        chunks.append(chunk)
    return chunks


def cached_loss(model: nn.Module, loss: nn.Module, inputs: dict, loss_inputs: dict, size: int) -> dict:
    """``loss``'s components over the whole batch, the gradients flowing into ``model`` chunk by chunk when
    the returned ``"loss"`` is back-propagated (see the module docstring)."""
    chunks, states, queries, products = chunks_of_groups(inputs, size), [], [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(RandomState(*chunk.values()))
            output = model(**chunk)
            queries.append(output.query_embeddings)
            products.append(output.product_embeddings)
    query_embeddings = torch.cat(queries).detach().requires_grad_()
    product_embeddings = torch.cat(products).detach().requires_grad_()
    with torch.enable_grad():
        losses = loss(query_embeddings, product_embeddings, **loss_inputs)
        losses["loss"].backward()
    gradients = zip(
        query_embeddings.grad.split([len(q) for q in queries]),
        product_embeddings.grad.split([len(p) for p in products]),
        strict=True,
    )
    total = losses["loss"].detach().requires_grad_()
    total.register_hook(partial(_replay, model=model, chunks=chunks, states=states, gradients=list(gradients)))
    return {**losses, "loss": total}


def _replay(grad_output: torch.Tensor, model: nn.Module, chunks: list, states: list, gradients: list) -> None:
    """Each chunk embedded again with a graph, under its first pass's random state, and back-propagated with its
    cached embedding gradients (scaled as the outer backward scales the loss); DDP syncs after the last one."""
    for position, (chunk, state, (query_grad, product_grad)) in enumerate(zip(chunks, states, gradients, strict=True)):
        last = position == len(chunks) - 1
        sync = nullcontext() if last or not isinstance(model, DistributedDataParallel) else model.no_sync()
        with torch.enable_grad(), state, sync:
            output = model(**chunk)
            surrogate = (output.query_embeddings * query_grad).sum() + (output.product_embeddings * product_grad).sum()
            (surrogate * grad_output).backward()
