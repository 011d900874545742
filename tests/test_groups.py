"""Query groups: one example = a query, one of its positives and negatives dealt per epoch from its own pool."""

from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from ttsn_hf import TwoTowerModel
from ttsn_hf.data.esci import load_esci
from ttsn_hf.data.groups import GroupSource, deal
from ttsn_hf.data.stages import build_stage
from ttsn_hf.labels import DEFAULT_LABEL_WEIGHTS
from ttsn_hf.losses import CombinedLoss
from ttsn_hf.training.collator import TwoTowerCollator, product_key
from ttsn_hf.training.trainer import LOSS_INPUTS, MODEL_INPUTS


@pytest.fixture(scope="module")
def esci(esci_sample):
    return load_esci(esci_sample)


@pytest.fixture(scope="module")
def judgements(esci):
    return esci.judgements.to_pandas()


@pytest.fixture(scope="module")
def setting(esci, judgements):
    train = judgements[judgements["split"] == "train"]
    counts = train[train["esci_label"].isin(["E", "S"])].groupby("query_id").size()
    query_id = counts[counts >= 2].index[0]
    judged = set(judgements["product_id"])
    unjudged = [pid for pid in esci.catalogue["product_id"] if pid not in judged][:2]
    return query_id, unjudged


@pytest.fixture(scope="module")
def tokenizer(tiny_encoder_dir):
    return TwoTowerModel.from_encoder(str(tiny_encoder_dir)).tokenizer


def source_for(esci, mined: pd.DataFrame, query_ids=None, randoms=2, seed=0):
    """Stage 2 (one mined product per query in ``mined``) as a group source, with ``query_ids``' rows only."""
    stage = build_stage(esci, 2, hard_negatives=mined, validation_fraction=0.0)
    rows = stage["train"]
    if query_ids is not None:
        rows = rows.filter(lambda row: row["query_id"] in set(query_ids))
    return GroupSource([rows], esci.products(), esci.judged(), num_random_negatives=randoms, seed=seed)


def collate(source, tokenizer, negatives=1, epoch=0, groups=None):
    groups = source.groups() if groups is None else groups
    collator = TwoTowerCollator(tokenizer, source, negatives_per_query=negatives, seed=0, epoch=epoch)
    return collator([groups[i] for i in range(len(groups))])


def test_group_carries_its_query_mined_negative_into_the_loss(esci, setting, tokenizer, tiny_encoder_dir):
    query_id, (first, second) = setting
    model = TwoTowerModel.from_encoder(str(tiny_encoder_dir))
    losses = []
    for mined in (first, second):
        source = source_for(esci, pd.DataFrame({"query_id": [query_id], "product_id": [mined]}), [query_id])
        row = source.parts[0][0]
        pool = len(row["negative_rows"]) + 2
        assert mined in row["negative_ids"] and "mined" in row["negative_sources"]
        batch = collate(source, tokenizer, negatives=pool)
        groups = len(row["positive_ids"])
        # the mined negative is a candidate of every group of its query, paired with that query
        rows = batch["product_keys"] == product_key(mined)
        assert rows.sum() == groups and set(batch["product_group"][rows].tolist()) == set(range(groups))
        assert (batch["targets"][rows] == 0).all()
        assert len(batch["query_input_ids"]) == groups  # each query encoded once per group
        torch.manual_seed(0)
        outputs = model(**{name: batch[name] for name in MODEL_INPUTS})
        inputs = {name: batch[name] for name in LOSS_INPUTS if name in batch}
        losses.append(CombinedLoss()(outputs.query_embeddings, outputs.product_embeddings, **inputs)["loss"])
    assert not torch.allclose(losses[0], losses[1])


def test_batch_keys_keep_their_meaning(esci, setting, judgements, tokenizer):
    query_id, (mined, _) = setting
    source = source_for(esci, pd.DataFrame({"query_id": [query_id], "product_id": [mined]}), [query_id])
    batch = collate(source, tokenizer, negatives=1)
    groups = len(source.parts[0][0]["positive_ids"])
    assert batch["positive_index"].tolist() == list(range(0, 2 * groups, 2))
    assert batch["targets"].tolist() == [1.0, 0.0] * groups
    assert batch["product_group"].tolist() == [i for i in range(groups) for _ in range(2)]
    labels = judgements[judgements["query_id"] == query_id].set_index("product_id")["esci_label"]
    known = {product_key(pid) for pid, label in labels.items() if label in "ESC"}
    for row in batch["mask_keys"]:
        assert set(row[row >= 0].tolist()) == known  # the query's E/S/C products: never its in-batch negatives
    keys = batch["product_keys"].tolist()
    weights = dict(zip(keys, batch["weights"].tolist(), strict=True))
    by_key = {product_key(pid): DEFAULT_LABEL_WEIGHTS[label] for pid, label in labels.items()}
    assert all(weights[key] == by_key.get(key, DEFAULT_LABEL_WEIGHTS[""]) for key in keys)
    assert "teacher_scores" not in batch
    texts = esci.catalogue.to_pandas().set_index("product_id")["product_text"]
    first = texts[source.parts[0][0]["positive_ids"][0]]
    expected = tokenizer(first, truncation=True, max_length=128)["input_ids"]
    assert batch["product_input_ids"][0, : len(expected)].tolist() == expected  # tokenised here, from the table


def test_deal_covers_the_pool_before_any_repeat():
    for size in (1, 3, 7, 10):
        for count in (1, 2, 4):
            for groups in (1, 2, 5, 12):
                dealt = [position for group in range(groups) for position in deal(size, group, count)]
                assert all(len(set(deal(size, group, count))) == min(count, size) for group in range(groups))
                used = Counter(dealt)
                # every position once before any twice: the counts differ by at most one
                assert max(used.values()) - min(used.get(p, 0) for p in range(size)) <= 1
                assert len(used) == min(size, len(dealt))


def test_an_epoch_deals_every_pool_negative_of_a_query_before_any_repeat(esci, judgements, tokenizer):
    """A query with more positives than pool negatives: in one epoch every negative of its pool (judged, mined,
    random) is used; with fewer, none twice. Drawn independently per group, some would repeat and others never
    come (about 60% of mined negatives were ever used in stage 2 of the sample that way)."""
    train = judgements[judgements["split"] == "train"]
    positives = train[train["esci_label"].isin(["E", "S"])].groupby("query_id").size()
    many, few = positives[positives >= 12].index[0], positives[positives.between(2, 4)].index[0]
    judged = set(judgements["product_id"])
    unjudged = [pid for pid in esci.catalogue["product_id"] if pid not in judged]
    mined = pd.DataFrame({"query_id": [many] * 3 + [few] * 5, "product_id": unjudged[:3] + unjudged[3:8]})
    source = source_for(esci, mined, [many, few], randoms=2)
    branches = set()
    for epoch in (0, 1):
        batch = collate(source, tokenizer, negatives=1, epoch=epoch)
        group_query = [source.parts[0][int(row)]["query_id"] for row in source.groups()["query_row"]]
        negatives = batch["targets"] == 0
        for query_id in (many, few):
            row = source.parts[0][[r["query_id"] for r in source.parts[0]].index(query_id)]
            groups = [i for i, q in enumerate(group_query) if q == query_id]
            dealt = batch["product_keys"][negatives & torch.isin(batch["product_group"], torch.tensor(groups))]
            stored = {product_key(pid) for pid in row["negative_ids"]}
            pool_size = len(stored) + 2
            used = Counter(dealt.tolist())
            if len(groups) >= pool_size:
                assert stored <= set(used) and len(used) == pool_size  # the stored ones and the 2 random ones
                branches.add("whole pool")
            else:
                assert max(used.values()) == 1 and len(used) == len(groups)
                branches.add("no repeat")
    assert branches == {"whole pool", "no repeat"}


def test_random_negatives_are_drawn_again_each_epoch_never_judged(esci, setting, judgements, tokenizer):
    query_id, (mined, _) = setting
    source = source_for(esci, pd.DataFrame({"query_id": [query_id], "product_id": [mined]}), [query_id], randoms=4)
    row = source.parts[0][0]
    position = source.judged.position(query_id)
    draws = []
    for epoch in range(4):
        rows, _, sources = source.pool(row, position, epoch)
        randoms = {r for r, s in zip(rows, sources, strict=True) if s == "random"}
        assert len(randoms) == 4
        draws.append(randoms)
    assert source.pool(row, position, 1)[0] == source.pool(row, position, 1)[0]  # the same for the same epoch
    assert len(set(map(frozenset, draws))) == 4  # other products each epoch
    judged_rows = set(source.products.rows_of(judgements.loc[judgements["query_id"] == query_id, "product_id"]))
    assert not set().union(*draws) & (judged_rows | set(row["negative_rows"]))  # never E/S/C/I, never mined


def test_fixed_groups_get_the_same_negatives_every_epoch(esci, setting, tokenizer):
    query_id, (mined, _) = setting
    source = source_for(esci, pd.DataFrame({"query_id": [query_id], "product_id": [mined]}), [query_id])
    fixed = source.groups(fixed=True)
    draws = [collate(source, tokenizer, epoch=epoch, groups=fixed)["product_keys"] for epoch in (1, 2, 3)]
    assert all(torch.equal(draws[0], other) for other in draws[1:])
    moving = [collate(source, tokenizer, epoch=epoch)["product_keys"] for epoch in (1, 2, 3)]
    assert any(not torch.equal(moving[0], other) for other in moving[1:])


def test_groups_index_every_positive_once_and_lengths_count_its_tokens(esci, tokenizer):
    stage = build_stage(esci, 1)
    source = GroupSource([stage["train"], stage["validation"]], esci.products(), esci.judged())
    train, validation = source.groups(0), source.groups(1, fixed=True, with_query_ids=True)
    frame = stage["train"].to_pandas()
    assert len(train) == frame["positive_ids"].map(len).sum()
    assert len(validation) == stage["validation"].to_pandas()["positive_ids"].map(len).sum()
    assert min(validation["query_row"]) == len(stage["train"]) and all(validation["fixed"])
    assert set(validation["query_id"]) == set(stage["validation"]["query_id"])
    sample = source.with_lengths(train.select(range(50)), tokenizer, 16)
    texts = esci.catalogue.to_pandas()["product_text"]
    for group in sample:
        row = frame.iloc[group["query_row"]]
        expected = len(tokenizer(texts.iloc[row["positive_rows"][group["positive"]]], truncation=True, max_length=16)
                       ["input_ids"])  # fmt: skip
        assert group["length"] == expected
    assert np.mean(sample["length"]) > 5
