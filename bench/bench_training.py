"""Training throughput (pairs/s): ttsn_hf's TwoTowerTrainer vs sentence-transformers' SentenceTransformerTrainer with
MultipleNegativesRankingLoss, on the same pairs, model, batch size, max lengths, precision and thread count.

Both train on the same E+S positive (query, product text) pairs of stage 1 of the ESCI sample (MNRL takes
(anchor, positive) pairs) for the same epochs, so both take the same optimizer steps. A run is timed from the start
of its first epoch to its last optimizer step (Trainer set-up excluded), after an untimed warm-up step per precision.
Each library runs at its best: sentence-transformers with random batches and with length-grouped batches (a
``batch_sampler`` callable around transformers' ``get_length_grouped_indices``, the same grouping as ttsn_hf's);
ttsn_hf padded (random, length-grouped; torch's dropout, so that padded-random does sentence-transformers' work:
the noise check) and packed (no pad tokens through the encoder, random-bits dropout; random, length-grouped).
Two measurements: whole runs (``--repeats``, interleaved run by run, each system's best repeat), and a
step-interleaved run (``--interleaved_epochs``): every system's trainer built once, then step i of each system in
turn, so a change of the machine's load, which here moves throughput by tens of percent over minutes, hits every
system within seconds; the headline ``speedup_vs_sentence_transformers_best`` comes from it (``..._whole_runs``
keeps the other). Achieved model FLOP/s (3x the forward FLOPs of the real tokens) are reported as a fraction of
this machine's measured matmul rate. A loss check first: on one batch, ttsn_hf's packed in-batch InfoNCE equals
sentence-transformers' MultipleNegativesRankingLoss. Then one profile of ttsn_hf's steps: where the time goes.

    python bench/bench_training.py [--device cpu|cuda] [--bf16] [--threads 2] [--max_pairs 0] [--repeats 1]
        [--interleaved_epochs 3] [--output FILE]

Writes bench/results/training.json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from collections import defaultdict

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Threads that sleep rather than spin while waiting: on a shared machine spinning threads slow each other 3-10x.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import datasets  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from benchlib import (  # noqa: E402
    RESULTS,
    SAMPLE_DIR,
    encoder_forward_flops,
    load_now,
    machine,
    matmul_rate,
    print_table,
    write_json,
)
from transformers import AutoConfig, AutoModel, TrainerCallback  # noqa: E402
from transformers.trainer_pt_utils import LengthGroupedSampler  # noqa: E402

from ttsn_hf.arguments import TwoTowerTrainingArguments  # noqa: E402
from ttsn_hf.data.esci import load_esci  # noqa: E402
from ttsn_hf.data.groups import build_groups  # noqa: E402
from ttsn_hf.data.stages import build_stage  # noqa: E402
from ttsn_hf.losses import CombinedLoss  # noqa: E402
from ttsn_hf.losses.in_batch_infonce import InBatchInfoNCELoss  # noqa: E402
from ttsn_hf.modeling.model import TwoTowerModel, default_base_model  # noqa: E402
from ttsn_hf.modeling.pretrained import resolve_pretrained  # noqa: E402
from ttsn_hf.training.collator import TwoTowerCollator, tokenize_groups  # noqa: E402
from ttsn_hf.training.run import known_positives  # noqa: E402
from ttsn_hf.training.trainer import LOSS_INPUTS, MODEL_INPUTS, TwoTowerTrainer  # noqa: E402

SYSTEMS = (
    "sentence_transformers",
    "sentence_transformers_grouped",
    "ttsn_hf_padded_random",
    "ttsn_hf_padded_grouped",
    "ttsn_hf_packed_random",
    "ttsn_hf_packed_grouped",
)
SAMPLING = {system: "group_by_length" if system.endswith("grouped") else "random" for system in SYSTEMS}
PACKED = {system: "packed" in system for system in SYSTEMS}
ENCODER_CONFIG = AutoConfig.from_pretrained(resolve_pretrained(default_base_model()))


# ---------------------------------------------------------------- data


def load_pairs(esci_dir: str, max_pairs: int | None, batch_size: int, seed: int):
    """Stage-1 E+S positive rows (a seeded subset, a whole number of batches) and the queries' known positives."""
    esci = load_esci(esci_dir)
    train = build_stage(esci, 1, seed=seed)["train"]
    positives = train.filter(lambda target: target == 1, input_columns="target").shuffle(seed=seed)
    count = min(len(positives), max_pairs or len(positives))
    count = max(batch_size, count // batch_size * batch_size)
    return positives.select(range(count)).flatten_indices(), known_positives(esci.judgements)


# ---------------------------------------------------------------- measuring


class CollateMeter:
    """Wraps a data collator: counts real and padded tokens per tower and the seconds spent collating."""

    def __init__(self, collate):
        self.collate = collate
        self.real: dict[str, int] = defaultdict(int)
        self.padded: dict[str, int] = defaultdict(int)
        self.lengths: list[int] = []
        self.seconds = 0.0

    def __getattr__(self, name):  # sentence-transformers reads attributes of its collator
        return getattr(self.collate, name)

    def __call__(self, features):
        start = time.perf_counter()
        batch = self.collate(features)
        self.seconds += time.perf_counter() - start
        for key, value in batch.items():
            if key.endswith("attention_mask"):
                tower = "query" if key.startswith(("query", "anchor")) else "product"
                self.real[tower] += int(value.sum())
                self.padded[tower] += value.numel()
                self.lengths += value.sum(dim=1).tolist()
        return batch

    def padding_waste(self) -> dict[str, float]:
        waste = {tower: 1 - self.real[tower] / self.padded[tower] for tower in self.padded}
        waste["all"] = 1 - sum(self.real.values()) / max(1, sum(self.padded.values()))
        return {tower: round(value, 4) for tower, value in waste.items()}


class StepTimer(TrainerCallback):
    """Wall and process CPU time from the start of the first epoch to each optimizer step's end.

    The CPU time (all threads; they sleep while waiting, see OMP_WAIT_POLICY) is what a run costs whatever else
    shares the cores, so it stays comparable when the wall time is stretched by other processes.
    """

    def __init__(self, device: str):
        self.device = device
        self.marks: list[tuple[float, float]] = []
        self.threads = 0

    def on_epoch_begin(self, args, state, control, **kwargs):
        if not self.marks:
            self.threads = torch.get_num_threads()
            self._mark()

    def on_step_end(self, args, state, control, **kwargs):
        self._mark()

    def _mark(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
        self.marks.append((time.perf_counter(), time.process_time()))

    def step_seconds(self) -> list[float]:
        return [later[0] - earlier[0] for earlier, later in zip(self.marks, self.marks[1:], strict=False)]

    def cpu_seconds(self) -> float:
        return self.marks[-1][1] - self.marks[0][1]


# ---------------------------------------------------------------- the two trainers


def common_arguments(args: argparse.Namespace, precision: str, output_dir: str, sampling: str) -> dict:
    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=args.epochs,
        learning_rate=2e-5,
        warmup_steps=0,
        bf16=precision == "bf16",
        use_cpu=args.device == "cpu",
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=args.seed,
        train_sampling_strategy=sampling,
    )


def ttsn_trainer(rows, known, args, precision: str, output_dir: str, sampling: str, packed: bool) -> TwoTowerTrainer:
    model = TwoTowerModel.from_encoder(default_base_model(), query_max_length=32, product_max_length=128)
    model.config.packed_sequences = packed
    dataset = tokenize_groups(build_groups(rows), model.tokenizer, 32, 128, known)
    # the padded systems keep torch's dropout: ttsn_hf_padded_random is the noise check (sentence-transformers' work)
    training_args = TwoTowerTrainingArguments(
        **common_arguments(args, precision, output_dir, sampling), random_bits_dropout=packed
    )
    return TwoTowerTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=TwoTowerCollator(model.tokenizer),
        loss=CombinedLoss(),
    )


def length_grouped_batch_sampler(lengths: list[int]):
    """A sentence-transformers ``batch_sampler`` callable: transformers' length grouping (the sampler ttsn_hf's
    Trainer uses for ``group_by_length``) over the positives' token lengths, in ST's batch sampler."""
    from sentence_transformers.base.sampler import DefaultBatchSampler

    def batch_sampler(dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0):
        sampler = LengthGroupedSampler(batch_size, lengths=lengths, generator=generator)
        return DefaultBatchSampler(sampler, batch_size=batch_size, drop_last=drop_last, generator=generator, seed=seed)

    return batch_sampler


def sentence_transformers_trainer(rows, args, precision: str, output_dir: str, sampling: str):
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    model = SentenceTransformer(str(resolve_pretrained(default_base_model())), device=args.device)
    model.max_seq_length = 128  # as ttsn_hf's product tower; queries are at most 16 tokens here
    dataset = datasets.Dataset.from_dict({"anchor": list(rows["query"]), "positive": list(rows["product_text"])})
    arguments = common_arguments(args, precision, output_dir, "random")
    if sampling == "group_by_length":
        lengths = [
            len(ids)
            for ids in model.tokenizer(list(rows["product_text"]), truncation=True, max_length=128)["input_ids"]
        ]
        arguments["batch_sampler"] = length_grouped_batch_sampler(lengths)
    training_args = SentenceTransformerTrainingArguments(**arguments)
    return SentenceTransformerTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        loss=MultipleNegativesRankingLoss(model),  # scale 20 = temperature 0.05, as ttsn_hf's InfoNCE
    )


def build_trainer(system: str, rows, known, args, precision: str, output_dir: str):
    if system.startswith("sentence_transformers"):
        return sentence_transformers_trainer(rows, args, precision, output_dir, SAMPLING[system])
    return ttsn_trainer(rows, known, args, precision, output_dir, SAMPLING[system], PACKED[system])


def time_training(system: str, rows, known, args, precision: str, matmul: dict) -> dict:
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = build_trainer(system, rows, known, args, precision, output_dir)
        meter = CollateMeter(trainer.data_collator)
        trainer.data_collator = meter
        timer = StepTimer(args.device)
        trainer.add_callback(timer)
        load_before = load_now()
        output = trainer.train()
    steps = timer.step_seconds()
    seconds = sum(steps)
    cpu_seconds = timer.cpu_seconds()
    model_flops = 3 * encoder_forward_flops(ENCODER_CONFIG, meter.lengths)  # forward + backward (2x forward)
    return {
        "system": system,
        "precision": precision,
        "sampling": SAMPLING[system],
        "packed": PACKED[system],
        "pairs": len(rows),
        "steps": len(steps),
        "seconds": round(seconds, 3),
        "examples_per_s": round(len(rows) * args.epochs / seconds, 2),
        "cpu_seconds": round(cpu_seconds, 3),
        "examples_per_cpu_s": round(len(rows) * args.epochs / cpu_seconds, 2),
        "step_seconds_median": round(statistics.median(steps), 4),
        "step_seconds": [round(step, 3) for step in steps],
        "collate_share": round(meter.seconds / seconds, 4),
        "padding_waste": meter.padding_waste(),
        "training_loss": round(output.training_loss, 4),
        "model_flops": model_flops,
        "model_flop_per_s": round(model_flops / seconds),
        "fraction_of_matmul_rate": round(model_flops / seconds / matmul["flop_per_s"], 4),
        "fraction_of_matmul_rate_cpu_time": round(model_flops / cpu_seconds / matmul["flop_per_cpu_s"], 4),
        "torch_threads": timer.threads,
        "load_average_before": load_before,
    }


def warm_up(args: argparse.Namespace, precision: str) -> None:
    """One untimed forward and backward pass, so the first timed run pays no one-off start-up cost."""
    encoder = AutoModel.from_pretrained(resolve_pretrained(default_base_model())).to(args.device)
    ids = torch.randint(1000, 20000, (args.batch_size, 64), device=args.device)
    with torch.autocast(args.device, dtype=torch.bfloat16, enabled=precision == "bf16"):
        hidden = encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    hidden.float().mean().backward()


INTERLEAVED_SYSTEMS = (
    "sentence_transformers",
    "sentence_transformers_grouped",
    "ttsn_hf_padded_random",
    "ttsn_hf_packed_random",
    "ttsn_hf_packed_grouped",
)


def time_interleaved_steps(systems: list[str], rows, known, args, precision: str) -> dict:
    """Every system's trainer built once, then their optimizer steps taken in turn: step i of each system, the
    order reversed every step, for ``args.interleaved_epochs`` epochs. A step is timed from fetching its batch
    (collation included) to the end of ``training_step``, gradient clipping, AdamW, the scheduler and zero_grad:
    the Trainer loop's own work without its callbacks. The load changes over minutes on a shared machine; here it
    hits every system within seconds of each other, so the ratios hold even when whole runs minutes apart disagree."""
    with contextlib.ExitStack() as stack:
        folders = {system: stack.enter_context(tempfile.TemporaryDirectory()) for system in systems}
        trainers = {system: build_trainer(system, rows, known, args, precision, folders[system]) for system in systems}
        steps_per_epoch = len(rows) // args.batch_size
        for trainer in trainers.values():
            trainer.create_optimizer_and_scheduler(num_training_steps=steps_per_epoch * args.interleaved_epochs)
            trainer.current_gradient_accumulation_steps = 1  # set by Trainer's own loop
            trainer.model.train()
        wall = {system: [0.0] * args.interleaved_epochs for system in systems}
        cpu = {system: [0.0] * args.interleaved_epochs for system in systems}
        for epoch in range(args.interleaved_epochs):
            batches = {system: iter(trainer.get_train_dataloader()) for system, trainer in trainers.items()}
            for step in range(steps_per_epoch):
                for system in systems if (epoch + step) % 2 == 0 else systems[::-1]:
                    seconds, cpu_seconds = _timed_step(trainers[system], batches[system], args.device)
                    wall[system][epoch] += seconds
                    cpu[system][epoch] += cpu_seconds
    examples = len(rows) * args.interleaved_epochs
    return {
        "epochs": args.interleaved_epochs,
        "steps_per_epoch": steps_per_epoch,
        "runs": [
            {
                "system": system,
                "precision": precision,
                "seconds_per_epoch": [round(value, 3) for value in wall[system]],
                "cpu_seconds_per_epoch": [round(value, 3) for value in cpu[system]],
                "examples_per_s": round(examples / sum(wall[system]), 2),
                "examples_per_cpu_s": round(examples / sum(cpu[system]), 2),
            }
            for system in systems
        ],
    }


def _timed_step(trainer, batches, device: str) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    inputs = trainer._prepare_inputs(next(batches))
    trainer.training_step(trainer.model, inputs)
    trainer.accelerator.clip_grad_norm_(trainer.model.parameters(), trainer.args.max_grad_norm)
    trainer.optimizer.step()
    trainer.lr_scheduler.step()
    trainer.model.zero_grad()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def per_epoch_ratios(interleaved: dict, ours: str, anchor: str) -> list[float]:
    runs = {run["system"]: run for run in interleaved["runs"]}
    return [
        round(theirs / mine, 3)
        for mine, theirs in zip(runs[ours]["seconds_per_epoch"], runs[anchor]["seconds_per_epoch"], strict=True)
    ]


# ---------------------------------------------------------------- loss check


def loss_check(rows, args, precision: str) -> dict:
    """On the first batch of pairs, the same pretrained weights in eval mode: sentence-transformers'
    MultipleNegativesRankingLoss and ttsn_hf's in-batch InfoNCE on packed embeddings (no masking: MNRL masks
    nothing) must agree. Proves both sides of the comparison compute the same loss."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    queries, products = list(rows["query"][: args.batch_size]), list(rows["product_text"][: args.batch_size])
    st_model = SentenceTransformer(str(resolve_pretrained(default_base_model())), device=args.device).eval()
    st_model.max_seq_length = 128
    ours = TwoTowerModel.from_encoder(default_base_model(), query_max_length=128, product_max_length=128)
    ours = ours.to(args.device).eval()
    features = [
        {key: value.to(args.device) if torch.is_tensor(value) else value for key, value in batch.items()}
        for batch in (st_model.preprocess(queries), st_model.preprocess(products))
    ]
    with torch.no_grad(), torch.autocast(args.device, dtype=torch.bfloat16, enabled=precision == "bf16"):
        st_loss = float(MultipleNegativesRankingLoss(st_model)(features, labels=None))
        embeddings = [ours.embed(f["input_ids"], f["attention_mask"], packed=True) for f in features]
        ttsn_loss = float(
            InBatchInfoNCELoss(mask_false_negatives=False)(
                *embeddings,
                positive_index=torch.arange(len(queries), device=args.device),
                product_keys=torch.arange(len(products), device=args.device),
                mask_keys=torch.full((len(queries), 1), -1, device=args.device),
            )
        )
    tolerance = 1e-3 if precision == "fp32" else 2e-2
    return {
        "precision": precision,
        "sentence_transformers_mnrl": round(st_loss, 5),
        "ttsn_hf_packed_infonce": round(ttsn_loss, 5),
        "abs_difference": abs(st_loss - ttsn_loss),
        "tolerance": tolerance,
        "passed": abs(st_loss - ttsn_loss) <= tolerance,
    }


# ---------------------------------------------------------------- profile


def profile_steps(rows, known, args, precision: str, sampling: str) -> dict:
    """ttsn_hf's first steps (the longest batch first) split into collate, forward, loss, backward and optimizer,
    plus the top operators of one more step."""
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = ttsn_trainer(rows, known, args, precision, output_dir, sampling, packed=True)
        trainer.create_optimizer_and_scheduler(num_training_steps=args.profile_steps)
        batches = iter(trainer.get_train_dataloader())
        model = trainer.model.to(args.device).train()
        phases: dict[str, float] = defaultdict(float)
        for _ in range(args.profile_steps):
            _profiled_step(trainer, model, batches, phases, precision, args.device)
        with torch.profiler.profile(activities=_activities(args.device)) as profiler:
            _profiled_step(trainer, model, batches, defaultdict(float), precision, args.device)
    total = sum(phases.values())
    return {
        "precision": precision,
        "sampling": sampling,
        "steps": args.profile_steps,
        "seconds_per_step": round(total / args.profile_steps, 4),
        "share": {phase: round(seconds / total, 4) for phase, seconds in phases.items()},
        "top_operators": top_operators(profiler, args.device),
    }


def _activities(device: str) -> list:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return activities


def _profiled_step(trainer, model, batches, phases: dict, precision: str, device: str) -> None:
    def mark(phase: str, since: float) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        phases[phase] += now - since
        return now

    now = time.perf_counter()
    inputs = {key: value.to(device) for key, value in next(batches).items()}
    now = mark("collate", now)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
        outputs = model(**{name: inputs[name] for name in MODEL_INPUTS})
        now = mark("forward", now)
        losses = trainer.loss(
            outputs.query_embeddings,
            outputs.product_embeddings,
            **{name: inputs[name] for name in LOSS_INPUTS if name in inputs},
        )
        now = mark("loss", now)
    losses["loss"].backward()
    now = mark("backward", now)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad()
    mark("optimizer", now)


def top_operators(profiler, device: str, limit: int = 8) -> list[dict]:
    """The operators with the most self time: CPU time, or GPU time on a GPU."""
    attribute = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    column = "self_gpu_ms" if device == "cuda" else "self_cpu_ms"
    events = [event for event in profiler.key_averages() if getattr(event, attribute, 0) > 0]
    total = sum(getattr(event, attribute) for event in events)
    events.sort(key=lambda event: getattr(event, attribute), reverse=True)
    return [
        {
            "operator": event.key,
            column: round(getattr(event, attribute) / 1000, 1),
            "share": round(getattr(event, attribute) / total, 4),
        }
        for event in events[:limit]
    ]


# ---------------------------------------------------------------- main


def best(runs: list[dict], metric: str) -> dict[tuple[str, str], float]:
    scores: dict[tuple[str, str], float] = {}
    for run in runs:
        key = (run["system"], run["precision"])
        scores[key] = max(scores.get(key, 0.0), run[metric])
    return scores


def speedups(runs: list[dict], ours: tuple[str, ...], theirs: tuple[str, ...], metric: str) -> dict[str, dict]:
    """Per precision: the best of ``ours`` over the best of ``theirs`` (each system's best repeat)."""
    scores = best(runs, metric)
    result = {}
    for precision in dict.fromkeys(run["precision"] for run in runs):
        mine = {system: scores[(system, precision)] for system in ours if (system, precision) in scores}
        other = {system: scores[(system, precision)] for system in theirs if (system, precision) in scores}
        if mine and other:
            top, anchor = max(mine, key=mine.get), max(other, key=other.get)
            result[precision] = {"ratio": round(mine[top] / other[anchor], 3), "ours": top, "anchor": anchor}
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--esci_dir", default=str(SAMPLE_DIR))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precisions", default="fp32,bf16", help="fp32, bf16 or both, in that order")
    parser.add_argument("--bf16", action="store_true", help="bf16 only: --precisions bf16")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (CPU)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--max_pairs", type=int, default=0, help="pairs per run (0: all 2,176)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per run (more for short GPU steps)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per system and precision; the best counts")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument(
        "--interleaved_epochs", type=int, default=3, help="epochs of the step-interleaved run (0: none)"
    )
    parser.add_argument("--profile_steps", type=int, default=0, help="ttsn_hf steps profiled per precision (0: none)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", default=str(RESULTS / "training.json"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    precisions = ["bf16"] if args.bf16 else args.precisions.split(",")
    systems = args.systems.split(",")
    rows, known = load_pairs(args.esci_dir, args.max_pairs or None, args.batch_size, args.seed)
    runs, profiles, checks, matmul, interleaved = [], [], [], {}, {}
    for precision in precisions:
        checks.append(loss_check(rows, args, precision))
        print(f"loss check {precision}: {checks[-1]}", flush=True)
        warm_up(args, precision)
        matmul[precision] = matmul_rate(args.device, torch.bfloat16 if precision == "bf16" else torch.float32)
        print(f"matmul {precision}: {matmul[precision]['flop_per_s'] / 1e9:.1f} GFLOP/s", flush=True)
        for repeat in range(args.repeats):
            # interleaved, and reversed every other round, so a change of load hits every system alike
            for system in systems if repeat % 2 == 0 else systems[::-1]:
                runs.append(time_training(system, rows, known, args, precision, matmul[precision]))
                print(f"{system} {precision}: {runs[-1]['examples_per_s']} pairs/s", flush=True)
        if args.interleaved_epochs:
            interleaved[precision] = time_interleaved_steps(
                [system for system in INTERLEAVED_SYSTEMS if system in systems], rows, known, args, precision
            )
            print_table(interleaved[precision]["runs"], ["system", "precision", "examples_per_s", "examples_per_cpu_s"])
        if args.profile_steps:
            profiles.append(profile_steps(rows, known, args, precision, "random"))
    ours = tuple(system for system in systems if system.startswith("ttsn_hf"))
    theirs = tuple(system for system in systems if system.startswith("sentence_transformers"))
    passed = {check["precision"]: check["passed"] for check in checks}
    whole_runs = speedups(runs, ours, theirs, "examples_per_s")
    stepwise_runs = [run for measured in interleaved.values() for run in measured["runs"]]
    stepwise = speedups(stepwise_runs, ours, theirs, "examples_per_s")
    for precision, value in stepwise.items():
        value["per_epoch"] = per_epoch_ratios(interleaved[precision], value["ours"], value["anchor"])
    headline = {**whole_runs, **stepwise}  # the step-interleaved figure where one was measured
    result = {
        "benchmark": "training",
        "machine": machine(args.device),
        "load_average_after": load_now(),
        "settings": {
            "pairs": len(rows),
            "batch_size": args.batch_size,
            "query_max_length": 32,
            "product_max_length": 128,
            "epochs": args.epochs,
            "threads": args.threads,
            "repeats": args.repeats,
        },
        "loss_check": checks,
        "matmul_rate": matmul,
        "runs": runs,
        "interleaved_steps": interleaved,
        # ours at its best over sentence-transformers at its best, each precision, from the step-interleaved run
        # (whole runs where there is none); only where the loss check passed
        "speedup_vs_sentence_transformers_best": {
            precision: value for precision, value in headline.items() if passed.get(precision)
        },
        # by CPU time: what the work costs, whatever else ran on the cores meanwhile
        "speedup_vs_sentence_transformers_best_cpu_time": speedups(
            stepwise_runs or runs, ours, theirs, "examples_per_cpu_s"
        ),
        # whole runs, each system's best repeat: minutes apart, so the load's swings weigh on them
        "speedup_vs_sentence_transformers_best_whole_runs": whole_runs,
        "speedup_vs_sentence_transformers_best_whole_runs_cpu_time": speedups(runs, ours, theirs, "examples_per_cpu_s"),
        # identical batches (padded, random) to sentence-transformers': far from 1 means the load changed
        "noise_check_padded_random_vs_sentence_transformers": speedups(
            stepwise_runs or runs, ("ttsn_hf_padded_random",), ("sentence_transformers",), "examples_per_cpu_s"
        ),
        "noise_check_whole_runs": speedups(
            runs, ("ttsn_hf_padded_random",), ("sentence_transformers",), "examples_per_cpu_s"
        ),
        "fraction_of_matmul_rate_best": {
            f"{system} {precision}": value
            for (system, precision), value in best(runs, "fraction_of_matmul_rate").items()
        },
        "profile": profiles,
    }
    columns = ["system", "precision", "steps", "seconds", "examples_per_s", "examples_per_cpu_s", "training_loss"]
    print_table(runs, [*columns, "fraction_of_matmul_rate", "fraction_of_matmul_rate_cpu_time"])
    print("speedup_vs_sentence_transformers_best:", result["speedup_vs_sentence_transformers_best"])
    print("by CPU time:", result["speedup_vs_sentence_transformers_best_cpu_time"])
    print("whole runs:", whole_runs)
    print("noise check (1.0 expected):", result["noise_check_padded_random_vs_sentence_transformers"])
    for profile in profiles:
        print(f"profile {profile['precision']}: {profile['seconds_per_step']} s/step, {profile['share']}")
    write_json(args.output, result)
    return result


if __name__ == "__main__":
    main()
