"""The padding-free (packed) path gives the padded path's embeddings, loss and gradients."""

import numpy as np
import pytest
import torch

from ttsn_hf.losses.in_batch_infonce import InBatchInfoNCELoss
from ttsn_hf.modeling.model import TwoTowerModel
from ttsn_hf.modeling.packing import can_pack, packed_mean_embeddings, plan_varlen, varlen_attention

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


def test_forward_packs_both_towers_into_one_pass_like_separate_padded_calls(tiny_encoder_dir):
    model = TwoTowerModel.from_encoder(str(tiny_encoder_dir))
    model.eval()
    queries, products = padded_batch(model, QUERIES), padded_batch(model, TEXTS[:5])

    def embeddings_and_gradient(joint: bool):
        model.zero_grad()
        if joint:
            output = model(queries["input_ids"], queries["attention_mask"], products["input_ids"],
                           products["attention_mask"])  # fmt: skip
            query_embeddings, product_embeddings = output.query_embeddings, output.product_embeddings
        else:
            query_embeddings = model.embed(queries["input_ids"], queries["attention_mask"], "query", packed=False)
            product_embeddings = model.embed(products["input_ids"], products["attention_mask"], "product", packed=False)
        (query_embeddings @ product_embeddings.T).square().sum().backward()
        gradient = torch.cat([p.grad.reshape(-1) for p in model.encoder.parameters() if p.grad is not None])
        return query_embeddings.detach(), product_embeddings.detach(), gradient

    calls = []
    hook = model.encoder.register_forward_hook(lambda module, args, output: calls.append(1))
    joint_queries, joint_products, joint_gradient = embeddings_and_gradient(joint=True)
    assert len(calls) == 1  # one encoder pass for both towers
    hook.remove()
    separate_queries, separate_products, separate_gradient = embeddings_and_gradient(joint=False)
    assert joint_queries.shape == (len(QUERIES), model.embedding_dim) and joint_products.shape[0] == 5
    torch.testing.assert_close(joint_queries, separate_queries, atol=1e-5, rtol=0)
    torch.testing.assert_close(joint_products, separate_products, atol=1e-5, rtol=0)
    assert torch.nn.functional.cosine_similarity(joint_gradient, separate_gradient, dim=0) > 1 - 1e-4


def test_varlen_plan_buckets_every_token_once_and_restores_token_order():
    lengths = torch.tensor([3, 9, 8, 1, 16, 12])
    plan = plan_varlen(lengths, step=8)
    assert sorted(bucket.width for bucket in plan.buckets) == [8, 16]
    assert sum(bucket.count for bucket in plan.buckets) == len(lengths) and len(plan.restore) == int(lengths.sum())
    assert len(plan.gather_index) == sum(bucket.count * bucket.width for bucket in plan.buckets)
    assert plan.gather_index[plan.restore].tolist() == list(range(int(lengths.sum())))  # every token, back in order
    masks = [bucket.key_mask for bucket in plan.buckets]
    assert masks[0] is not None and masks[0].sum().item() == 3 + 8 + 1  # bucket 8: lengths 3, 8, 1


def test_only_checked_encoders_are_packed_and_the_attention_switch_is_temporary(tiny_encoder_dir, tmp_path):
    from transformers import MPNetConfig, MPNetModel, RobertaConfig, RobertaModel

    model = TwoTowerModel.from_encoder(str(tiny_encoder_dir))
    assert can_pack(model.encoder)
    small = dict(vocab_size=100, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    assert not can_pack(MPNetModel(MPNetConfig(**small)))  # its own attention code
    assert not can_pack(RobertaModel(RobertaConfig(**small)))  # position ids offset by the padding index
    with varlen_attention(model.encoder):
        assert model.encoder.config._attn_implementation != "sdpa"
    assert model.encoder.config._attn_implementation == "sdpa"
    with pytest.raises(RuntimeError, match="a forward that fails"), varlen_attention(model.encoder):
        raise RuntimeError("a forward that fails")
    assert model.encoder.config._attn_implementation == "sdpa"
    with varlen_attention(model.encoder):  # saved inside the switch: what a reload gets is the encoder's own
        model.save_pretrained(tmp_path / "saved")
    assert TwoTowerModel.from_pretrained(tmp_path / "saved").encoder.config._attn_implementation == "sdpa"


def test_an_encoder_that_cannot_be_packed_takes_the_padded_path(tiny_encoder_dir, tmp_path):
    from transformers import AutoTokenizer, MPNetConfig, MPNetModel

    torch.manual_seed(0)
    config = MPNetConfig(vocab_size=30527, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32)  # fmt: skip
    MPNetModel(config).save_pretrained(tmp_path / "mpnet")
    AutoTokenizer.from_pretrained(tiny_encoder_dir).save_pretrained(tmp_path / "mpnet")
    model = TwoTowerModel.from_encoder(str(tmp_path / "mpnet")).eval()
    assert model.config.packed_sequences and not can_pack(model.encoder)
    queries, products = padded_batch(model, QUERIES), padded_batch(model, TEXTS)
    output = model(queries["input_ids"], queries["attention_mask"], products["input_ids"], products["attention_mask"])
    padded = model.embed(products["input_ids"], products["attention_mask"], "product", packed=False)
    torch.testing.assert_close(output.product_embeddings, padded)
    with pytest.raises(ValueError, match="MPNetModel"):
        packed_mean_embeddings(model.encoder, products["input_ids"], products["attention_mask"])
