"""RandomBitsDropout: torch's dropout semantics with cheaper CPU masks."""

import pytest
import torch
from torch import nn

from ttsn_hf.modeling.dropout import (
    RandomBitsDropout,
    attention_with_random_bits_dropout,
    random_keep_mask,
    use_random_bits_dropout,
)
from ttsn_hf.modeling.model import TwoTowerModel


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_every_lane_keeps_one_minus_p(p):
    torch.manual_seed(0)
    keep = random_keep_mask((1000, 1003), p).reshape(-1)  # not a multiple of 4: the tail is cut
    assert keep.shape == (1_003_000,)
    tolerance = 5 * (p * (1 - p) / (len(keep) / 4)) ** 0.5  # 5 standard deviations of a lane's mean
    for lane in range(4):  # the 4th lane comes from the random word's 15-bit top half
        assert abs(keep[lane::4].float().mean().item() - (1 - p)) < tolerance


def test_masks_follow_the_torch_seed():
    torch.manual_seed(3)
    first = random_keep_mask((64, 64), 0.1)
    torch.manual_seed(3)
    assert torch.equal(first, random_keep_mask((64, 64), 0.1))
    assert not torch.equal(first, random_keep_mask((64, 64), 0.1))


def test_training_output_and_gradient_are_the_kept_elements_scaled():
    dropout = RandomBitsDropout(0.25).train()
    x = torch.randn(37, 11, requires_grad=True)
    out = dropout(x)
    kept = out != 0
    assert 0.6 < kept.float().mean().item() < 0.9
    torch.testing.assert_close(out[kept], x[kept] / 0.75)
    out.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.75)


def test_eval_mode_and_bf16_inputs():
    dropout = RandomBitsDropout(0.1)
    x = torch.randn(8, 16, dtype=torch.bfloat16)
    assert torch.equal(dropout.eval()(x), x)
    out = dropout.train()(x)
    assert out.dtype == torch.bfloat16
    kept = out != 0
    torch.testing.assert_close(out[kept], (x[kept].float() / 0.9).bfloat16())


def test_swapping_an_encoders_dropouts_changes_no_weight_and_no_eval_output(tiny_encoder_dir):
    model = TwoTowerModel.from_encoder(str(tiny_encoder_dir)).eval()
    batch = model.tokenizer(["usb c cable", "kids rain boots"], padding=True, return_tensors="pt")
    before = model.embed(batch["input_ids"], batch["attention_mask"])
    plain = sum(type(module) is nn.Dropout for module in model.modules())
    keys = list(model.state_dict())
    assert use_random_bits_dropout(model) == plain > 0
    assert not any(type(module) is nn.Dropout for module in model.modules())
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(model.embed(batch["input_ids"], batch["attention_mask"]), before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_matches_sdpa_and_drops_probabilities_with_the_mask(dtype):
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 5, 8, dtype=dtype) for _ in range(3))
    key_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)[:, None, None, :]
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
    ours = attention_with_random_bits_dropout(q, k, v, key_mask, 0.0)
    torch.testing.assert_close(ours, expected, atol=1e-2 if dtype == torch.bfloat16 else 1e-5, rtol=0)

    torch.manual_seed(1)
    dropped = attention_with_random_bits_dropout(q, k, v, key_mask, 0.2)
    torch.manual_seed(1)
    keep = random_keep_mask((3, 2, 5, 5), 0.2)
    scores = (q.float() / 8**0.5) @ k.float().transpose(-2, -1)
    probabilities = scores.masked_fill(~key_mask, float("-inf")).softmax(-1) * keep / 0.8
    torch.testing.assert_close(dropped, (probabilities @ v.float()).to(dtype))


@pytest.mark.parametrize("switch", [True, False])
def test_the_trainer_swaps_dropouts_on_the_cpu_unless_switched_off(tiny_encoder_dir, tmp_path, switch):
    from ttsn_hf.arguments import TwoTowerTrainingArguments
    from ttsn_hf.training.trainer import TwoTowerTrainer

    model = TwoTowerModel.from_encoder(str(tiny_encoder_dir))
    args = TwoTowerTrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, eval_strategy="no", random_bits_dropout=switch
    )
    TwoTowerTrainer(model=model, args=args)
    swapped = [module for module in model.modules() if isinstance(module, RandomBitsDropout)]
    assert bool(swapped) == switch
    assert any(type(module) is nn.Dropout for module in model.modules()) != switch
