import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from ttsn_hf.losses import CombinedLoss, DistillKLDivLoss, InBatchInfoNCELoss, MarginMSELoss, WeightedContrastiveLoss


def normalized(*shape, seed=0):
    return nn.functional.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def no_masks(n):
    return torch.full((n, 1), -1, dtype=torch.long)


def test_infonce_without_masks_equals_plain_cross_entropy():
    q, p = normalized(6, 8, seed=1), normalized(6, 8, seed=2)
    loss = InBatchInfoNCELoss(temperature=0.05)(q, p, torch.arange(6), torch.arange(6), no_masks(6))
    expected = nn.functional.cross_entropy(q @ p.T / 0.05, torch.arange(6))
    torch.testing.assert_close(loss, expected)


def test_group_negatives_are_candidates_but_not_anchors():
    # 3 queries; products: q0's positive and 2 negatives, q1's positive and 1 negative, q2 without positive
    q, p = normalized(3, 8, seed=3), normalized(6, 8, seed=4)
    positive_index = torch.tensor([0, 3, -1])
    loss = InBatchInfoNCELoss(0.1)(q, p, positive_index, torch.arange(6), no_masks(3))
    expected = nn.functional.cross_entropy(q[:2] @ p.T / 0.1, torch.tensor([0, 3]))
    torch.testing.assert_close(loss, expected)


def test_label_weighted_infonce_is_the_weighted_mean_of_anchor_terms():
    q, p = normalized(3, 8, seed=11), normalized(6, 8, seed=12)
    positive_index, weights = torch.tensor([0, 2, 4]), torch.tensor([1.0, 0.5, 0.25])
    per_anchor = nn.functional.cross_entropy(q @ p.T / 0.05, positive_index, reduction="none")
    weighted = InBatchInfoNCELoss(0.05, label_weighted=True)(
        q, p, positive_index, torch.arange(6), no_masks(3), weights
    )
    torch.testing.assert_close(weighted, (weights * per_anchor).sum() / weights.sum())
    plain = InBatchInfoNCELoss(0.05)(q, p, positive_index, torch.arange(6), no_masks(3), weights)
    torch.testing.assert_close(plain, per_anchor.mean())


def test_known_positive_and_duplicate_product_are_masked_out():
    q, p = normalized(4, 8, seed=5), normalized(4, 8, seed=6)
    keys = torch.tensor([10, 11, 10, 12])  # row 2 repeats row 0's product
    mask_keys = torch.tensor([[10, 12], [11, -1], [10, -1], [12, -1]])  # row 0's query also likes product 12
    loss = InBatchInfoNCELoss(0.05)(q, p, torch.arange(4), keys, mask_keys)
    logits = q @ p.T / 0.05
    blocked = torch.tensor(
        [[False, False, True, True], [False, False, False, False], [True, False, False, False], [False] * 4]
    )
    expected = nn.functional.cross_entropy(logits.masked_fill(blocked, torch.finfo(logits.dtype).min), torch.arange(4))
    torch.testing.assert_close(loss, expected)
    assert not torch.allclose(loss, nn.functional.cross_entropy(logits, torch.arange(4)))
    unmasked = InBatchInfoNCELoss(0.05, mask_false_negatives=False)(q, p, torch.arange(4), keys, mask_keys)
    torch.testing.assert_close(unmasked, nn.functional.cross_entropy(logits, torch.arange(4)))


def test_weighted_contrastive_matches_formula_and_weights_matter():
    q, p = normalized(2, 8, seed=7), normalized(4, 8, seed=8)
    groups = torch.tensor([0, 1, 0, 1])  # each product pairs with its group's query
    targets, weights = torch.tensor([1.0, 1, 0, 0]), torch.tensor([1.0, 0.5, 1, 2])
    loss = WeightedContrastiveLoss(margin=0.5)(q, p, groups, targets, weights)
    d = 1 - (q[groups] * p).sum(-1)
    per_pair = targets * d**2 + (1 - targets) * torch.relu(0.5 - d) ** 2
    torch.testing.assert_close(loss, (0.5 * weights * per_pair).sum() / weights.sum())
    unweighted = WeightedContrastiveLoss(margin=0.5)(q, p, groups, targets, torch.ones(4))
    assert not torch.allclose(loss, unweighted)


def group_inputs(targets=(1.0, 0, 1, 0), groups=(0, 0, 1, 1), teacher=None):
    targets = torch.tensor(targets)
    groups = torch.tensor(groups)
    positive_index = torch.tensor([int(torch.nonzero((groups == g) & (targets > 0))[0]) for g in groups.unique()])
    return {
        "positive_index": positive_index,
        "product_group": groups,
        "targets": targets,
        "weights": torch.ones(len(targets)),
        "product_keys": torch.arange(len(targets)),
        "mask_keys": no_masks(len(positive_index)),
        **({"teacher_scores": torch.tensor(teacher)} if teacher is not None else {}),
    }


def test_combined_loss_is_weighted_sum_of_components():
    q, p = normalized(2, 8, seed=9), normalized(4, 8, seed=10)
    inputs = group_inputs(teacher=[0.9, 0.2, 0.8, 0.5])
    out = CombinedLoss(contrastive_weight=0.3, infonce_weight=2.0, distillation_weight=0.7)(q, p, **inputs)
    expected = 0.3 * out["contrastive_loss"] + 2.0 * out["infonce_loss"] + 0.7 * out["distillation_loss"]
    torch.testing.assert_close(out["loss"], expected)
    assert CombinedLoss().get_config_dict()["infonce"] == {
        "temperature": 0.05, "mask_false_negatives": True, "label_weighted": False
    }  # fmt: skip
    assert "distillation_loss" not in CombinedLoss()(q, p, **inputs)
    assert CombinedLoss(distillation_weight=1.0).get_config_dict()["distillation"] == {"name": "margin_mse"}


def test_margin_mse_matches_hand_computed_value():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[0.8, 0.6], [0.6, 0.8], [0.0, 1.0], [1.0, 0.0]])
    inputs = group_inputs(teacher=[0.9, 0.5, 0.7, float("nan")])
    # student scores: 0.8, 0.6 (group 0); 1.0, 0.0 (group 1). Group 0: (0.8-0.6) - (0.9-0.5) = -0.2; group 1's
    # negative has no teacher score: skipped.
    loss = MarginMSELoss()(q, p, inputs["product_group"], inputs["positive_index"], inputs["teacher_scores"])
    torch.testing.assert_close(loss, torch.tensor(0.04))


def group_batch(groups=4, negatives=3, seed=0):
    """Groups of one positive and ``negatives`` negatives each, in the collator's layout, with teacher scores."""
    q = normalized(groups, 8, seed=seed)
    p = normalized(groups * (1 + negatives), 8, seed=seed + 1)
    teacher = torch.rand(groups * (1 + negatives), generator=torch.Generator().manual_seed(seed + 2)) * 2 - 1
    product_group = torch.arange(groups).repeat_interleave(1 + negatives)
    positive_index = torch.arange(0, groups * (1 + negatives), 1 + negatives)
    columns = [p[i :: 1 + negatives] for i in range(1 + negatives)]  # sentence-transformers: one column each
    return q, p, product_group, positive_index, teacher, columns, teacher.view(groups, 1 + negatives)


@pytest.mark.parametrize("temperature", [0.05, 1.0, 2.0])
def test_kl_distillation_equals_sentence_transformers(temperature):
    from sentence_transformers.sentence_transformer.losses import DistillKLDivLoss as Reference

    q, p, product_group, positive_index, teacher, columns, labels = group_batch()
    ours = DistillKLDivLoss(temperature)(q, p, product_group, positive_index, teacher)
    reference = Reference(model=None, temperature=temperature).compute_loss_from_embeddings([q, *columns], labels)
    torch.testing.assert_close(ours, reference)


def test_margin_mse_equals_sentence_transformers():
    from sentence_transformers.sentence_transformer.losses import MarginMSELoss as Reference

    q, p, product_group, positive_index, teacher, columns, labels = group_batch()
    ours = MarginMSELoss()(q, p, product_group, positive_index, teacher)
    torch.testing.assert_close(ours, Reference(model=None).compute_loss_from_embeddings([q, *columns], labels))


def test_kl_distillation_matches_hand_computed_value():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[0.8, 0.6], [0.6, 0.8], [0.0, 1.0], [1.0, 0.0]])
    inputs = group_inputs(teacher=[0.9, 0.5, 0.7, 0.1])
    loss = DistillKLDivLoss(temperature=1.0)(
        q, p, inputs["product_group"], inputs["positive_index"], inputs["teacher_scores"]
    )
    expected = 0.0
    for student, teacher in (([0.8, 0.6], [0.9, 0.5]), ([1.0, 0.0], [0.7, 0.1])):
        s, t = torch.softmax(torch.tensor(student), 0), torch.softmax(torch.tensor(teacher), 0)
        expected += float((t * (t.log() - s.log())).sum()) / 2
    torch.testing.assert_close(loss, torch.tensor(expected))
    # the temperature divides the scores and scales the loss by its square
    cooler = DistillKLDivLoss(temperature=0.5)(
        q, p, inputs["product_group"], inputs["positive_index"], inputs["teacher_scores"]
    )
    expected = 0.0
    for student, teacher in (([0.8, 0.6], [0.9, 0.5]), ([1.0, 0.0], [0.7, 0.1])):
        s, t = torch.softmax(torch.tensor(student) / 0.5, 0), torch.softmax(torch.tensor(teacher) / 0.5, 0)
        expected += float((t * (t.log() - s.log())).sum()) / 2 * 0.25
    torch.testing.assert_close(cooler, torch.tensor(expected))


def _batch(seed=0, n=8):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, 16, generator=g)
    product_features = torch.randn(n, 16, generator=g)
    targets = torch.tensor([1.0, 1, 0, 1, 1, 0, 0, 1][:n])  # unequal anchors per shard
    keys = torch.tensor([1, 2, 3, 4, 1, 6, 7, 8][:n])  # a duplicate product across the two shards
    mask_keys = keys[:, None].clone()
    return features, product_features, targets, torch.rand(n, generator=g) + 0.5, keys, mask_keys


def _loss_and_grads(encoder, batch):
    features, product_features, targets, weights, keys, mask_keys = batch
    q = nn.functional.normalize(encoder(features), dim=-1)
    p = nn.functional.normalize(encoder(product_features), dim=-1)
    positive_index = torch.where(targets > 0, torch.arange(len(targets)), -1)  # a pair batch: one product per query
    loss = CombinedLoss()(q, p, positive_index, torch.arange(len(targets)), targets, weights, keys, mask_keys)["loss"]
    encoder.zero_grad()
    loss.backward()
    return loss.detach(), [param.grad.clone() for param in encoder.parameters()]


def _worker(rank, world, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    encoder = nn.Linear(16, 8)
    full = _batch()
    shard = tuple(t[rank * 4 : (rank + 1) * 4] for t in full)
    loss, grads = _loss_and_grads(encoder, shard)
    for grad in grads:  # what DDP does: average gradients over processes
        dist.all_reduce(grad)
        grad /= world
    dist.all_reduce(loss)
    results[rank] = (loss / world, grads, dist.get_world_size())
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("world", [2])
def test_two_processes_match_one_process_with_double_batch(world):
    torch.manual_seed(0)
    encoder = nn.Linear(16, 8)
    loss, grads = _loss_and_grads(encoder, _batch())
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(world, _free_port(), results), nprocs=world)
    for rank in range(world):
        shard_loss, shard_grads, world_size = results[rank]
        assert world_size == world
        torch.testing.assert_close(shard_loss, loss, rtol=1e-5, atol=1e-6)
        for got, expected in zip(shard_grads, grads, strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_known_positive_masking_matches_the_broadcast_comparison():
    """The memory-light lookup equals ``(candidates == row keys).any()``, duplicates and padding included."""
    from ttsn_hf.losses.in_batch_infonce import key_matches

    generator = torch.Generator().manual_seed(0)
    for _ in range(100):
        candidates = torch.randint(0, 15, (int(torch.randint(1, 40, (1,), generator=generator)),), generator=generator)
        rows = torch.randint(-1, 15, (int(torch.randint(1, 10, (1,), generator=generator)), 4), generator=generator)
        expected = (candidates[None, :, None] == rows[:, None, :]).any(dim=-1)
        assert torch.equal(key_matches(candidates, rows), expected)
