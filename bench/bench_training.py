"""Training throughput (pairs/s): ttsn_hf's TwoTowerTrainer vs sentence-transformers' SentenceTransformerTrainer with
MultipleNegativesRankingLoss, on the same pairs, model, batch size, max lengths, precision and thread count.

Both train on the same E+S positive (query, product text) pairs of stage 1 of the ESCI sample (MNRL takes
(anchor, positive) pairs) for the same epochs, so both take the same optimizer steps. A run is timed from the start
of its first epoch to its last optimizer step (Trainer set-up excluded), after an untimed warm-up step per precision.
ttsn_hf runs twice: with its default length-grouped batches and with random batches (sentence-transformers'
default), which separates the padding lever from the rest. Then one profile of ttsn_hf's steps: where the time goes.

    python bench/bench_training.py [--device cpu|cuda] [--bf16] [--threads 2] [--max_pairs 0] [--output FILE]

Writes bench/results/training.json.
"""

from __future__ import annotations

import argparse
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
from benchlib import RESULTS, SAMPLE_DIR, load_now, machine, print_table, write_json  # noqa: E402
from transformers import AutoModel, TrainerCallback  # noqa: E402
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices  # noqa: E402

from ttsn_hf.arguments import TwoTowerTrainingArguments  # noqa: E402
from ttsn_hf.data.esci import load_esci  # noqa: E402
from ttsn_hf.data.groups import build_groups  # noqa: E402
from ttsn_hf.data.stages import build_stage  # noqa: E402
from ttsn_hf.losses import CombinedLoss  # noqa: E402
from ttsn_hf.modeling.model import TwoTowerModel, default_base_model  # noqa: E402
from ttsn_hf.modeling.pretrained import resolve_pretrained  # noqa: E402
from ttsn_hf.training.collator import TwoTowerCollator, tokenize_groups  # noqa: E402
from ttsn_hf.training.run import known_positives  # noqa: E402
from ttsn_hf.training.trainer import LOSS_INPUTS, MODEL_INPUTS, TwoTowerTrainer  # noqa: E402

SYSTEMS = ("sentence_transformers", "ttsn_hf", "ttsn_hf_random", "ttsn_hf_proposed_sampler")
SAMPLING = {
    "sentence_transformers": "random",
    "ttsn_hf": "group_by_length",
    "ttsn_hf_random": "random",
    "ttsn_hf_proposed_sampler": "group_by_length",
}


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


# ---------------------------------------------------------------- a proposed sampler (not in ttsn_hf yet)


class ShuffledLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped batches from mega-batches of 50 batches, in shuffled batch order (the longest batch first).

    transformers shrinks its mega-batches to a quarter of a small dataset (8 batches for the sample's 2,176 pairs),
    which leaves 18% of the product tokens as padding; 50 batches leave 4%. Shuffling the batches keeps each epoch
    from running from the longest products to the shortest.
    """

    def __iter__(self):
        indices = get_length_grouped_indices(
            self.lengths, self.batch_size, mega_batch_mult=50, generator=self.generator
        )
        full = len(indices) // self.batch_size
        if full <= 1:
            return iter(indices)
        middle = (torch.randperm(full - 1, generator=self.generator) + 1).tolist()
        order = [0, *middle] + ([full] if len(indices) > full * self.batch_size else [])  # a short batch stays last
        return iter(
            [index for batch in order for index in indices[batch * self.batch_size : (batch + 1) * self.batch_size]]
        )


class ProposedSamplerTrainer(TwoTowerTrainer):
    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if not isinstance(sampler, LengthGroupedSampler):
            return sampler
        # a list: indexing a datasets Column one item at a time is ~90x slower
        return ShuffledLengthGroupedSampler(
            sampler.batch_size, lengths=list(sampler.lengths), generator=sampler.generator
        )


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


def ttsn_trainer(
    rows, known, args, precision: str, output_dir: str, sampling: str, proposed: bool = False
) -> TwoTowerTrainer:
    model = TwoTowerModel.from_encoder(default_base_model(), query_max_length=32, product_max_length=128)
    dataset = tokenize_groups(build_groups(rows), model.tokenizer, 32, 128, known)
    training_args = TwoTowerTrainingArguments(**common_arguments(args, precision, output_dir, sampling))
    trainer_class = ProposedSamplerTrainer if proposed else TwoTowerTrainer
    return trainer_class(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=TwoTowerCollator(model.tokenizer),
        loss=CombinedLoss(),
    )


def sentence_transformers_trainer(rows, args, precision: str, output_dir: str):
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    model = SentenceTransformer(resolve_pretrained(default_base_model()), device=args.device)
    model.max_seq_length = 128  # as ttsn_hf's product tower; queries are at most 16 tokens here
    dataset = datasets.Dataset.from_dict({"anchor": list(rows["query"]), "positive": list(rows["product_text"])})
    training_args = SentenceTransformerTrainingArguments(**common_arguments(args, precision, output_dir, "random"))
    return SentenceTransformerTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        loss=MultipleNegativesRankingLoss(model),  # scale 20 = temperature 0.05, as ttsn_hf's InfoNCE
    )


def build_trainer(system: str, rows, known, args, precision: str, output_dir: str):
    if system == "sentence_transformers":
        return sentence_transformers_trainer(rows, args, precision, output_dir)
    proposed = system == "ttsn_hf_proposed_sampler"
    return ttsn_trainer(rows, known, args, precision, output_dir, SAMPLING[system], proposed)


def time_training(system: str, rows, known, args, precision: str) -> dict:
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = build_trainer(system, rows, known, args, precision, output_dir)
        meter = CollateMeter(trainer.data_collator)
        trainer.data_collator = meter
        timer = StepTimer(args.device)
        trainer.add_callback(timer)
        load_before = load_now()
        trainer.train()
    steps = timer.step_seconds()
    seconds = sum(steps)
    cpu_seconds = timer.cpu_seconds()
    return {
        "system": system,
        "precision": precision,
        "sampling": SAMPLING[system],
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


# ---------------------------------------------------------------- profile


def profile_steps(rows, known, args, precision: str, sampling: str) -> dict:
    """ttsn_hf's first steps (the longest batch first) split into collate, forward, loss, backward and optimizer,
    plus the top operators of one more step."""
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = ttsn_trainer(rows, known, args, precision, output_dir, sampling)
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


def speedups(runs: list[dict], system: str, metric: str = "examples_per_s") -> dict[str, float]:
    """Best ``metric`` of ``system`` over the best of sentence-transformers, per precision."""
    best = {}
    for run in runs:
        key = (run["system"], run["precision"])
        best[key] = max(best.get(key, 0.0), run[metric])
    return {
        precision: round(best[(system, precision)] / best[("sentence_transformers", precision)], 3)
        for (name, precision) in best
        if name == system and ("sentence_transformers", precision) in best
    }


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
    parser.add_argument("--profile_steps", type=int, default=4, help="ttsn_hf steps profiled per precision (0: none)")
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
    runs, profiles = [], []
    for precision in precisions:
        warm_up(args, precision)
        for repeat in range(args.repeats):
            # interleaved, and reversed every other round, so a change of load hits every system alike
            for system in systems if repeat % 2 == 0 else systems[::-1]:
                runs.append(time_training(system, rows, known, args, precision))
                print(f"{system} {precision}: {runs[-1]['examples_per_s']} pairs/s", flush=True)
        if args.profile_steps:
            profiles.append(profile_steps(rows, known, args, precision, "group_by_length"))
    result = {
        "benchmark": "training",
        "machine": machine(args.device),
        "settings": {
            "pairs": len(rows),
            "batch_size": args.batch_size,
            "query_max_length": 32,
            "product_max_length": 128,
            "epochs": args.epochs,
            "threads": args.threads,
            "repeats": args.repeats,
        },
        "runs": runs,
        "speedup_vs_sentence_transformers": speedups(runs, "ttsn_hf"),
        # identical batches to sentence-transformers': far from 1 means the load changed during the measurement
        "speedup_vs_sentence_transformers_random_batches": speedups(runs, "ttsn_hf_random"),
        "speedup_vs_sentence_transformers_proposed_sampler": speedups(runs, "ttsn_hf_proposed_sampler"),
        # by CPU time: what the work costs, whatever else ran on the cores meanwhile
        "speedup_vs_sentence_transformers_cpu_time": {
            system: speedups(runs, system, "examples_per_cpu_s") for system in systems if system != SYSTEMS[0]
        },
        "profile": profiles,
    }
    columns = ["system", "precision", "sampling", "steps", "seconds", "examples_per_s", "examples_per_cpu_s"]
    print_table(runs, [*columns, "collate_share"])
    print("speedup_vs_sentence_transformers:", result["speedup_vs_sentence_transformers"])
    print("by CPU time:", result["speedup_vs_sentence_transformers_cpu_time"])
    for precision, ratio in result["speedup_vs_sentence_transformers_random_batches"].items():
        if abs(ratio - 1) > 0.1:
            print(f"warning: {precision}: identical batches ran {ratio:.2f}x apart: the load changed; rerun")
    for profile in profiles:
        print(f"profile {profile['precision']}: {profile['seconds_per_step']} s/step, {profile['share']}")
    write_json(args.output, result)
    return result


if __name__ == "__main__":
    main()
