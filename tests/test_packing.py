"""The padding-free (packed) path gives the padded path's embeddings, loss and gradients."""

import numpy as np
import pytest
import torch

from ttsn_hf.losses.in_batch_infonce import InBatchInfoNCELoss
from ttsn_hf.modeling.model import TwoTowerModel
from ttsn_hf.modeling.packing import assign_rows, pack

TEXTS = [
    "wireless noise cancelling headphones with 30 hour battery life and a carrying case",
    "usb c cable",
    "stainless steel water bottle, vacuum insulated, 32 oz, keeps drinks cold for 24 hours",
    "kids rain boots",
    "organic green tea bags",
    "a",
    "ergonomic office chair with lumbar support, adjustable arms and breathable mesh back for long working days",
    "phone case",
]
QUERIES = ["headphones", "cable usb c", "water bottle", "boots for kids", "green tea", "a", "office chair", "case"]


def padded_batch(model: TwoTowerModel, texts: list[str]) -> dict[str, torch.Tensor]:
    return model.tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")


def test_assign_rows_packs_first_fit_decreasing_within_capacity():
    lengths = [70, 60, 50, 30, 10, 200]
    rows, starts = assign_rows(lengths, capacity=128)
    for row in set(rows.tolist()):
        members = sorted((starts[i], lengths[i]) for i in range(len(lengths)) if rows[i] == row)
        assert members[0][0] == 0
        for (start, length), (next_start, _) in zip(members, members[1:], strict=False):
            assert start + length == next_start  # back to back, no overlap
        if len(members) > 1:
            assert sum(length for _, length in members) <= 128
    assert rows[5] != rows[0] and sum(rows == rows[5]) == 1  # longer than the capacity: a row of its own
    assert len(set(rows.tolist())) == 3  # 200 | 70+50 | 60+30+10


def test_pack_keeps_every_real_token_with_its_own_positions_and_a_block_diagonal_mask():
    input_ids = torch.tensor([[101, 5, 6, 102, 0], [101, 7, 102, 0, 0], [101, 8, 9, 10, 102]])
    attention_mask = (input_ids != 0).long()
    packed = pack(input_ids, attention_mask, capacity=8)
    flat = packed.input_ids.reshape(-1)
    assert flat[packed.slots].tolist() == input_ids[attention_mask.bool()].tolist()
    assert packed.position_ids.reshape(-1)[packed.slots].tolist() == [0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3, 4]
    mask = packed.attention_mask[:, 0].reshape(-1, packed.input_ids.shape[1])
    width = packed.input_ids.shape[1]
    for a, sequence_a in zip(packed.slots.tolist(), packed.sequence_of_token.tolist(), strict=True):
        for b, sequence_b in zip(packed.slots.tolist(), packed.sequence_of_token.tolist(), strict=True):
            same_row = a // width == b // width
            assert bool(same_row and mask[a, b % width]) == (sequence_a == sequence_b)
    assert packed.padding_fraction < 0.3


def test_pack_handles_left_padding():
    input_ids = torch.tensor([[0, 101, 5, 102], [101, 7, 8, 102]])
    packed = pack(input_ids, (input_ids != 0).long(), capacity=4)
    assert packed.input_ids.reshape(-1)[packed.slots].tolist() == [101, 5, 102, 101, 7, 8, 102]


def embeddings_and_loss(model: TwoTowerModel, packed: bool):
    model.zero_grad()
    queries, products = padded_batch(model, QUERIES), padded_batch(model, TEXTS)
    query_embeddings = model.embed(queries["input_ids"], queries["attention_mask"], "query", packed=packed)
    product_embeddings = model.embed(products["input_ids"], products["attention_mask"], "product", packed=packed)
    loss = InBatchInfoNCELoss()(
        query_embeddings,
        product_embeddings,
        positive_index=torch.arange(len(QUERIES)),
        product_keys=torch.arange(len(TEXTS)),
        mask_keys=torch.full((len(QUERIES), 1), -1),
    )
    loss.backward()
    gradient = torch.cat([p.grad.reshape(-1) for p in model.encoder.parameters() if p.grad is not None])
    return product_embeddings.detach(), loss.detach(), gradient


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_packed_matches_padded_on_the_tiny_encoder(tiny_encoder_dir, attn_implementation):
    model = TwoTowerModel.from_encoder(str(tiny_encoder_dir))
    model.encoder.config._attn_implementation = attn_implementation
    model.eval()  # no dropout: both paths must see the same function
    padded, padded_loss, padded_grad = embeddings_and_loss(model, packed=False)
    packed, packed_loss, packed_grad = embeddings_and_loss(model, packed=True)
    assert torch.nn.functional.cosine_similarity(padded, packed).min() > 1 - 1e-5
    assert abs(float(padded_loss - packed_loss)) < 1e-4
    assert torch.nn.functional.cosine_similarity(padded_grad, packed_grad, dim=0) > 1 - 1e-4


def test_packed_matches_padded_on_minilm_in_fp32_and_bf16():
    model = TwoTowerModel.from_encoder()
    model.eval()
    padded, padded_loss, _ = embeddings_and_loss(model, packed=False)
    packed, packed_loss, _ = embeddings_and_loss(model, packed=True)
    assert torch.nn.functional.cosine_similarity(padded, packed).min() > 1 - 1e-3
    assert abs(float(padded_loss - packed_loss)) < 1e-3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        padded_bf16, padded_loss_bf16, _ = embeddings_and_loss(model, packed=False)
        packed_bf16, packed_loss_bf16, _ = embeddings_and_loss(model, packed=True)
    assert torch.nn.functional.cosine_similarity(padded_bf16, packed).min() > 0.99
    assert torch.nn.functional.cosine_similarity(packed_bf16, packed).min() > 0.99
    assert abs(float(packed_loss_bf16 - packed_loss)) < 0.1 and abs(float(padded_loss_bf16 - padded_loss)) < 0.1


def test_encode_packed_matches_padded_and_follows_the_config(tiny_encoder_dir):
    model = TwoTowerModel.from_encoder(str(tiny_encoder_dir))
    padded = model.encode_products(TEXTS, batch_size=3, packed=False)
    packed = model.encode_products(TEXTS, batch_size=3, packed=True)
    np.testing.assert_allclose(packed, padded, atol=1e-5)
    model.config.packed_sequences = True
    np.testing.assert_allclose(model.encode_products(TEXTS, batch_size=3), packed, atol=0)


def test_packed_sequences_flag_defaults_on_and_can_be_turned_off():
    from ttsn_hf.arguments import ModelArguments, parse_args

    (default,) = parse_args((ModelArguments,), [])
    (padded,) = parse_args((ModelArguments,), ["--packed_sequences", "false"])
    assert default.packed_sequences is True and padded.packed_sequences is False


def test_saved_model_keeps_its_packing_choice(tiny_encoder_dir, tmp_path):
    model = TwoTowerModel.from_encoder(str(tiny_encoder_dir))
    assert model.config.packed_sequences is True
    model.config.packed_sequences = False
    model.save_pretrained(tmp_path / "saved")
    assert TwoTowerModel.from_pretrained(tmp_path / "saved").config.packed_sequences is False
