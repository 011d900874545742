"""Query groups: one example = a query, its positive and negatives drawn per epoch from its own pool."""

import pandas as pd
import pytest
import torch

from ttsn_hf import TwoTowerModel
from ttsn_hf.data.esci import load_esci
from ttsn_hf.data.groups import build_groups
from ttsn_hf.data.stages import build_stage
from ttsn_hf.losses import CombinedLoss
from ttsn_hf.training.collator import TwoTowerCollator, product_key, tokenize_groups
from ttsn_hf.training.trainer import LOSS_INPUTS, MODEL_INPUTS


@pytest.fixture(scope="module")
def esci(esci_sample):
    return load_esci(esci_sample)


@pytest.fixture(scope="module")
def setting(esci):
    judgements = esci.judgements.to_pandas()
    train = judgements[judgements["split"] == "train"]
    counts = train[train["esci_label"].isin(["E", "S"])].groupby("query_id").size()
    query_id = counts[counts >= 2].index[0]
    judged = set(judgements["product_id"])
    unjudged = [pid for pid in esci.catalogue["product_id"] if pid not in judged][:2]
    return query_id, unjudged


def query_groups(esci, query_id, mined_product):
    mined = pd.DataFrame({"query_id": [query_id], "product_id": [mined_product]})
    stage = build_stage(esci, 2, hard_negatives=mined, num_random_negatives=2, validation_fraction=0.0)
    rows = stage["train"].filter(lambda row: row["query_id"] == query_id)
    return build_groups(rows)


def collate(groups, tokenizer, negatives=8, epoch=0):
    tokens = tokenize_groups(groups, tokenizer, 16, 32, {})
    collator = TwoTowerCollator(tokenizer, negatives_per_query=negatives, seed=0, epoch=epoch)
    return collator([tokens[i] for i in range(len(tokens))])


def test_group_carries_its_query_mined_negative_into_the_loss(esci, setting, tiny_encoder_dir):
    query_id, (first, second) = setting
    model = TwoTowerModel.from_encoder(str(tiny_encoder_dir))
    losses = []
    for mined in (first, second):
        groups = query_groups(esci, query_id, mined)
        pool = groups[0]["pool_ids"]
        assert mined in pool and set(groups["pool_sources"][0]) == {"judged", "random", "mined"} - (
            set() if "I" in groups["pool_labels"][0] else {"judged"}
        )
        assert all(row == pool for row in groups["pool_ids"])  # every positive of the query shares its pool
        batch = collate(groups, model.tokenizer, negatives=len(pool))
        # the mined negative is a candidate of every group of its query, paired with that query
        rows = batch["product_keys"] == product_key(mined)
        assert rows.sum() == len(groups) and set(batch["product_group"][rows].tolist()) == set(range(len(groups)))
        assert (batch["targets"][rows] == 0).all()
        assert len(batch["query_input_ids"]) == len(groups)  # each query encoded once per group
        torch.manual_seed(0)
        outputs = model(**{name: batch[name] for name in MODEL_INPUTS})
        inputs = {name: batch[name] for name in LOSS_INPUTS if name in batch}
        losses.append(CombinedLoss()(outputs.query_embeddings, outputs.product_embeddings, **inputs)["loss"])
    assert not torch.allclose(losses[0], losses[1])


def test_negatives_are_drawn_again_each_epoch_and_reproducibly(esci, setting, tiny_encoder_dir):
    query_id, (mined, _) = setting
    groups = query_groups(esci, query_id, mined)
    tokenizer = TwoTowerModel.from_encoder(str(tiny_encoder_dir)).tokenizer
    draws = [collate(groups, tokenizer, negatives=1, epoch=epoch)["product_keys"] for epoch in (0, 0, 1, 2, 3)]
    assert torch.equal(draws[0], draws[1])
    assert any(not torch.equal(draws[0], other) for other in draws[2:])
    batch = collate(groups, tokenizer, negatives=1)
    assert batch["positive_index"].tolist() == list(range(0, 2 * len(groups), 2))
    assert batch["targets"].tolist() == [1.0, 0.0] * len(groups)


def test_pool_limit_fixes_a_seeded_sample_and_queries_without_positive_give_no_group(esci, setting):
    query_id, (mined, _) = setting
    stage = build_stage(esci, 2, hard_negatives=pd.DataFrame({"query_id": [query_id], "product_id": [mined]}))
    pairs = stage["train"]
    limited = build_groups(pairs, pool_limit=2, seed=1)
    assert max(len(pool) for pool in limited["pool_ids"]) <= 2
    assert build_groups(pairs, pool_limit=2, seed=1)["pool_ids"] == limited["pool_ids"]
    frame = pairs.to_pandas()
    positives = frame.groupby("query_id")["target"].sum()
    assert set(limited["query_id"]) == set(positives[positives > 0].index)
    assert len(limited) == int(frame["target"].sum())
