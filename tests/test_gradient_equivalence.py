"""The gradient-equivalence matrix: every execution option computes the reference path's loss and gradients.

One training step of a tiny BERT on one fixed batch of query groups (the collated batch the trainer sees), with
the combined loss. Reference: padded sequences, no gradient checkpointing, one process, fp32. Each row changes one
execution option and states its tolerance (relative L2 error of the flattened gradient, and of the loss):

| option | compared with | dropout | tolerance |
|---|---|---|---|
| gradient checkpointing, non-reentrant and reentrant | the same path without it | on | 1e-5 |
| packed sequences (padding-free) | padded | off | 1e-4 |
| 2 processes (gloo), half the groups each | 1 process, the whole batch | off | 1e-5 |
| bf16 autocast | fp32 | off | 5e-2 |
| GradCache (`--infonce_mini_batch_size`), 1 and 2 processes | the whole batch at once | off | 1e-5 |
| GradCache | the same chunks embedded with a graph, in order | on | 1e-5 |

Dropout stays on where the option must replay the very same random masks (a recompute); it is off where the option
changes the shape masks are drawn over (a packed sequence, a half batch), which no implementation can replay.
A new execution option (an attention kernel, chunked losses) gets its row here.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import AutoTokenizer, BertConfig, BertModel

from ttsn_hf import default_base_model
from ttsn_hf.losses import CombinedLoss
from ttsn_hf.modeling.dropout import use_random_bits_dropout
from ttsn_hf.modeling.model import TwoTowerModel
from ttsn_hf.modeling.pretrained import resolve_pretrained
from ttsn_hf.training.grad_cache import cached_loss, chunks_of_groups
from ttsn_hf.training.trainer import LOSS_INPUTS, MODEL_INPUTS

GROUPS = [  # (query, positive, negative)
    ("usb c cable", "anker usb c to usb c cable 6ft braided fast charging", "hdmi cable 4k 10 ft"),
    ("dog toy", "squeaky plush dog toy for small dogs", "cat scratching post with sisal rope and a bed on top"),
    ("water bottle 32 oz", "stainless steel water bottle vacuum insulated 32 oz", "coffee mug"),
    ("kids rain boots size 12", "rubber rain boots for toddlers and kids, waterproof", "adult hiking boots leather"),
    ("green tea", "organic green tea bags, 100 count", "black tea loose leaf assam"),
    ("office chair lumbar", "ergonomic office chair with lumbar support and mesh back", "standing desk converter"),
]
REPO = Path(__file__).resolve().parents[1]
TOLERANCE = {"checkpointing": 1e-5, "packed": 1e-4, "processes": 1e-5, "bf16": 5e-2, "grad_cache": 1e-5}
# every part of the combined loss: contrastive, InfoNCE with a masked known positive, label weights, distillation
LOSS = CombinedLoss(distillation_weight=1.0)


def make_batch(tokenizer, groups=GROUPS) -> dict[str, torch.Tensor]:
    """Query groups of one positive and one negative each, as TwoTowerCollator lays them out."""
    queries = tokenizer([query for query, _, _ in groups], padding=True, return_tensors="pt")
    products = tokenizer([text for _, *texts in groups for text in texts], padding=True, return_tensors="pt")
    count = len(groups)
    return {
        "query_input_ids": queries["input_ids"],
        "query_attention_mask": queries["attention_mask"],
        "product_input_ids": products["input_ids"],
        "product_attention_mask": products["attention_mask"],
        "positive_index": torch.arange(0, 2 * count, 2),
        "product_group": torch.arange(count).repeat_interleave(2),
        "targets": torch.tensor([1.0, 0.0] * count),
        "weights": torch.tensor([1.0, 0.5] * count),
        "product_keys": torch.arange(2 * count),
        "mask_keys": torch.tensor([[2]] + [[-1]] * (count - 1)),  # group 1's positive is a known one of query 0
        "teacher_scores": torch.linspace(-0.5, 0.9, 2 * count),
    }


def shard(batch: dict[str, torch.Tensor], rank: int, world: int) -> dict[str, torch.Tensor]:
    """This process's groups of the batch (as a distributed sampler would give them)."""
    count = len(batch["query_input_ids"]) // world
    queries, products = slice(rank * count, (rank + 1) * count), slice(2 * rank * count, 2 * (rank + 1) * count)
    part = {name: batch[name][queries] for name in ("query_input_ids", "query_attention_mask", "mask_keys")}
    part |= {name: batch[name][products] for name in ("product_input_ids", "product_attention_mask", "targets")}
    part |= {name: batch[name][products] for name in ("weights", "product_keys", "teacher_scores")}
    part["positive_index"] = torch.arange(0, 2 * count, 2)
    part["product_group"] = torch.arange(count).repeat_interleave(2)
    return part


def tiny_model(encoder_dir, packed: bool, dropout: bool) -> TwoTowerModel:
    torch.manual_seed(0)
    model = TwoTowerModel.from_encoder(str(encoder_dir))
    model.config.packed_sequences = packed
    model.train()
    if dropout:
        use_random_bits_dropout(model)  # the CPU trainer's dropout
    else:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0  # attention's dropout reads it too
    return model


def step(
    model: TwoTowerModel, batch: dict, bf16: bool = False, seed: int = 1, mini_batch: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step's loss and flattened gradient, computed as TwoTowerTrainer.compute_loss does."""
    model.zero_grad()
    torch.manual_seed(seed)  # the dropout masks
    loss_inputs = {name: batch[name] for name in LOSS_INPUTS if name in batch}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        if mini_batch:
            losses = cached_loss(model, LOSS, batch, loss_inputs, mini_batch)
        else:
            outputs = model(**{name: batch[name] for name in MODEL_INPUTS})
            losses = LOSS(outputs.query_embeddings, outputs.product_embeddings, **loss_inputs)
    losses["loss"].backward()
    gradient = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
    return losses["loss"].detach(), gradient


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got.float() - expected.float()).norm() / expected.float().norm().clamp(min=1e-12))


def assert_equivalent(got, expected, tolerance: float) -> None:
    (loss, gradient), (expected_loss, expected_gradient) = got, expected
    assert gradient.shape == expected_gradient.shape
    assert relative_error(loss, expected_loss) < tolerance, (float(loss), float(expected_loss))
    assert relative_error(gradient, expected_gradient) < tolerance, relative_error(gradient, expected_gradient)


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_gradient_checkpointing_replays_the_same_step(tiny_encoder_dir, packed, reentrant):
    model = tiny_model(tiny_encoder_dir, packed, dropout=True)
    batch = make_batch(model.tokenizer)
    reference = step(model, batch)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    assert step(model, batch)[1].abs().sum() > 0
    assert_equivalent(step(model, batch), reference, TOLERANCE["checkpointing"])
    assert relative_error(step(model, batch, seed=2)[1], reference[1]) > 1e-3  # dropout is on: the masks matter


def test_packed_sequences_compute_the_padded_gradients(tiny_encoder_dir):
    padded = tiny_model(tiny_encoder_dir, packed=False, dropout=False)
    packed = tiny_model(tiny_encoder_dir, packed=True, dropout=False)
    batch = make_batch(padded.tokenizer)
    assert_equivalent(step(packed, batch), step(padded, batch), TOLERANCE["packed"])


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
def test_bf16_autocast_stays_close_to_fp32(tiny_encoder_dir, packed):
    model = tiny_model(tiny_encoder_dir, packed, dropout=False)
    batch = make_batch(model.tokenizer)
    assert_equivalent(step(model, batch, bf16=True), step(model, batch), TOLERANCE["bf16"])


def _process(rank: int, world: int, port: int, encoder_dir, results, mini_batch: int = 0) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = tiny_model(encoder_dir, packed=True, dropout=False)
    loss, gradient = step(model, shard(make_batch(model.tokenizer), rank, world), mini_batch=mini_batch)
    dist.all_reduce(gradient)  # what DDP does: the mean of the processes' gradients
    dist.all_reduce(loss)
    results[rank] = (loss / world, gradient / world)
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mini_batch", [0, 2], ids=["whole-batch", "grad-cache"])
def test_two_processes_compute_the_one_process_gradients(tiny_encoder_dir, mini_batch):
    model = tiny_model(tiny_encoder_dir, packed=True, dropout=False)
    reference = step(model, make_batch(model.tokenizer))
    results = mp.Manager().dict()
    mp.spawn(_process, args=(2, _free_port(), tiny_encoder_dir, results, mini_batch), nprocs=2)
    for rank in range(2):
        assert_equivalent(results[rank], reference, TOLERANCE["processes"])


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
@pytest.mark.parametrize("mini_batch", [1, 4])
def test_grad_cache_computes_the_whole_batch_gradients(tiny_encoder_dir, packed, mini_batch):
    model = tiny_model(tiny_encoder_dir, packed, dropout=False)
    batch = make_batch(model.tokenizer)
    assert_equivalent(step(model, batch, mini_batch=mini_batch), step(model, batch), TOLERANCE["grad_cache"])


def test_grad_cache_replays_each_chunks_dropout(tiny_encoder_dir):
    """Dropout on: the cached step's gradient is the one of its chunks embedded in order with a graph, drawing
    the same masks (the replay restores each chunk's random state), not of other masks."""
    model = tiny_model(tiny_encoder_dir, packed=True, dropout=True)
    batch = make_batch(model.tokenizer)
    model.zero_grad()
    torch.manual_seed(1)
    outputs = [model(**chunk) for chunk in chunks_of_groups(batch, 2)]
    query = torch.cat([output.query_embeddings for output in outputs])
    product = torch.cat([output.product_embeddings for output in outputs])
    losses = LOSS(query, product, **{name: batch[name] for name in LOSS_INPUTS})
    losses["loss"].backward()
    in_order = (
        losses["loss"].detach(),
        torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None]),
    )
    assert_equivalent(step(model, batch, mini_batch=2), in_order, TOLERANCE["grad_cache"])
    assert relative_error(step(model, batch, seed=2, mini_batch=2)[1], in_order[1]) > 1e-3  # the masks matter


def logged_grad_norms(esci_sample, encoder, output, *extra) -> list[float]:
    args = [
        "--esci_dir", esci_sample, "--model_name_or_path", encoder, "--output_dir", output, "--stage", "1",
        "--max_steps", 2, "--logging_steps", 1, "--seed", 1, "--max_train_samples", 64, "--max_eval_samples", 16,
        "--selection_corpus_size", 300, "--per_device_train_batch_size", 16, *extra,
    ]  # fmt: skip
    result = subprocess.run([sys.executable, str(REPO / "train.py"), *map(str, args)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    history = json.loads((output / "stage1" / "trainer_state.json").read_text())["log_history"]
    return [log["grad_norm"] for log in history if "grad_norm" in log]


def test_train_py_logs_the_same_grad_norm_with_each_execution_option(esci_sample, tmp_path):
    """End to end through train.py and the Trainer (accelerate-prepared model, the default packed path)."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    BertModel(config).save_pretrained(tmp_path / "encoder")
    AutoTokenizer.from_pretrained(resolve_pretrained(default_base_model())).save_pretrained(tmp_path / "encoder")
    reference = logged_grad_norms(esci_sample, tmp_path / "encoder", tmp_path / "reference")
    assert len(reference) == 2
    options = {"checkpointing": ["--gradient_checkpointing"], "grad_cache": ["--infonce_mini_batch_size", 4]}
    for name, extra in options.items():
        found = logged_grad_norms(esci_sample, tmp_path / "encoder", tmp_path / name, *extra)
        assert found == pytest.approx(reference, rel=1e-3), name
