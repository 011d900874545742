"""Catalogue encoding throughput (products/s): TwoTowerModel.encode_products vs SentenceTransformer.encode vs the
raw forward-pass limit, on the same product texts, model, batch size, max length (128), precision and threads.

The raw limit is the encoder alone (forward, mean pooling, L2 normalisation) on batches tokenised, sorted by token
length and padded before the clock starts: what an encoding loop cannot beat. The other two are timed end to end
(tokenisation included), returning L2-normalised float32 arrays. bf16 is autocast for all three. Systems run
interleaved, ``--repeats`` times each after an untimed warm-up; the best run counts, by wall time and by process CPU
time (robust to other processes on the cores).

    python bench/bench_encoding.py [--device cpu|cuda] [--bf16] [--threads 2] [--max_products 3000] [--output FILE]

Writes bench/results/encoding.json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Threads that sleep rather than spin while waiting: on a shared machine spinning threads slow each other 3-10x.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from benchlib import RESULTS, SAMPLE_DIR, load_now, machine, print_table, write_json  # noqa: E402

from ttsn_hf.data.esci import load_esci  # noqa: E402
from ttsn_hf.modeling.model import TwoTowerModel, default_base_model, mean_pool  # noqa: E402
from ttsn_hf.modeling.pretrained import resolve_pretrained  # noqa: E402

SYSTEMS = ("raw_limit", "ttsn_hf", "sentence_transformers")
MAX_LENGTH = 128


def catalogue_texts(esci_dir: str, max_products: int | None, seed: int) -> list[str]:
    texts = list(load_esci(esci_dir).catalogue["product_text"])
    if max_products and max_products < len(texts):
        keep = np.random.default_rng(seed).choice(len(texts), size=max_products, replace=False)
        texts = [texts[i] for i in np.sort(keep)]
    return texts


def autocast(device: str, bf16: bool):
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device, dtype=torch.bfloat16)


class RawLimit:
    """The encoder on pre-tokenised, length-sorted, pre-padded batches: no tokenisation, no sorting in the loop."""

    def __init__(self, model: TwoTowerModel, texts: list[str], batch_size: int, device: str):
        self.model, self.device = model, device
        input_ids = model.tokenizer(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]
        self.order = np.argsort([-len(ids) for ids in input_ids], kind="stable")
        self.batches = [
            model.tokenizer.pad(
                {"input_ids": [input_ids[i] for i in self.order[start : start + batch_size]]}, return_tensors="pt"
            ).to(device)
            for start in range(0, len(texts), batch_size)
        ]

    @torch.inference_mode()
    def encode(self, bf16: bool) -> np.ndarray:
        self.model.eval()
        parts = []
        for batch in self.batches:
            with autocast(self.device, bf16):
                hidden = self.model.encoder(**batch).last_hidden_state
                parts.append(torch.nn.functional.normalize(mean_pool(hidden, batch["attention_mask"]), dim=-1))
        embeddings = torch.cat(parts).float().cpu().numpy()
        restored = np.empty_like(embeddings)
        restored[self.order] = embeddings
        return restored


def load_models(args: argparse.Namespace):
    from sentence_transformers import SentenceTransformer

    model = TwoTowerModel.from_encoder(default_base_model(), product_max_length=MAX_LENGTH).to(args.device)
    sentence_transformer = SentenceTransformer(resolve_pretrained(default_base_model()), device=args.device)
    sentence_transformer.max_seq_length = MAX_LENGTH
    return model, sentence_transformer


def encoders(texts: list[str], models, args: argparse.Namespace) -> dict:
    """system -> f(bf16) -> embeddings of ``texts``."""
    model, sentence_transformer = models
    raw = RawLimit(model, texts, args.batch_size, args.device)

    def ours(bf16: bool) -> np.ndarray:
        return model.encode_products(texts, batch_size=args.batch_size, bf16=bf16, show_progress_bar=False)

    def theirs(bf16: bool) -> np.ndarray:
        with autocast(args.device, bf16):
            embeddings = sentence_transformer.encode(
                texts, batch_size=args.batch_size, normalize_embeddings=True, convert_to_numpy=True
            )
        return embeddings.astype(np.float32)

    return {"raw_limit": raw.encode, "ttsn_hf": ours, "sentence_transformers": theirs}


def timed(encode, bf16: bool, device: str) -> tuple[float, float, np.ndarray]:
    """(wall seconds, process CPU seconds, embeddings). The CPU time is what the work costs whatever else shares
    the cores (waiting threads sleep: OMP_WAIT_POLICY), so it stays comparable when other processes stretch the
    wall time."""
    if device == "cuda":
        torch.cuda.synchronize()
    start, cpu_start = time.perf_counter(), time.process_time()
    embeddings = encode(bf16)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu_start, embeddings


def measure(texts: list[str], models, args: argparse.Namespace, precision: str) -> list[dict]:
    bf16 = precision == "bf16"
    for encode in encoders(texts[: args.batch_size], models, args).values():  # untimed warm-up
        encode(bf16)
    systems = encoders(texts, models, args)
    best: dict[str, float] = {}
    best_cpu: dict[str, float] = {}
    outputs: dict[str, np.ndarray] = {}
    loads = []
    for repeat in range(args.repeats):
        # interleaved, and reversed every other round, so a change of load hits every system alike
        for name in SYSTEMS if repeat % 2 == 0 else SYSTEMS[::-1]:
            loads.append(load_now()[0])
            seconds, cpu_seconds, outputs[name] = timed(systems[name], bf16, args.device)
            best[name] = min(best.get(name, float("inf")), seconds)
            best_cpu[name] = min(best_cpu.get(name, float("inf")), cpu_seconds)
    rows = []
    for name in SYSTEMS:
        rows.append(
            {
                "system": name,
                "precision": precision,
                "products": len(texts),
                "seconds": round(best[name], 3),
                "products_per_s": round(len(texts) / best[name], 1),
                "ratio_to_raw_limit": round(best["raw_limit"] / best[name], 3),
                "cpu_seconds": round(best_cpu[name], 3),
                "products_per_cpu_s": round(len(texts) / best_cpu[name], 1),
                "ratio_to_raw_limit_cpu_time": round(best_cpu["raw_limit"] / best_cpu[name], 3),
                "max_abs_diff_vs_raw": round(float(np.abs(outputs[name] - outputs["raw_limit"]).max()), 5),
                "load_average_1min": loads,
            }
        )
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--esci_dir", default=str(SAMPLE_DIR))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--bf16", action="store_true", help="bf16 only (default: fp32 and bf16)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (CPU)")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--max_products", type=int, default=3000, help="a seeded subset of the 6,122 (0: all)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per system and precision; the best counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(RESULTS / "encoding.json"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    texts = catalogue_texts(args.esci_dir, args.max_products or None, args.seed)
    models = load_models(args)
    rows = []
    for precision in ["bf16"] if args.bf16 else ["fp32", "bf16"]:
        rows.extend(measure(texts, models, args, precision))
        columns = ["system", "precision", "seconds", "products_per_s", "ratio_to_raw_limit", "products_per_cpu_s"]
        print_table(rows[-3:], [*columns, "ratio_to_raw_limit_cpu_time"])
    ratios = {row["precision"]: row["ratio_to_raw_limit"] for row in rows if row["system"] == "ttsn_hf"}
    cpu_ratios = {row["precision"]: row["ratio_to_raw_limit_cpu_time"] for row in rows if row["system"] == "ttsn_hf"}
    by_key = {(row["system"], row["precision"]): row["products_per_s"] for row in rows}
    result = {
        "benchmark": "encoding",
        "machine": machine(args.device),
        "settings": {
            "products": len(texts),
            "batch_size": args.batch_size,
            "max_length": MAX_LENGTH,
            "threads": args.threads,
            "repeats": args.repeats,
        },
        "runs": rows,
        "ratio_to_raw_limit": ratios,
        "ratio_to_raw_limit_cpu_time": cpu_ratios,
        "speedup_vs_sentence_transformers": {
            precision: round(by_key[("ttsn_hf", precision)] / by_key[("sentence_transformers", precision)], 3)
            for precision in ratios
        },
    }
    print("ratio_to_raw_limit:", ratios, "by CPU time:", cpu_ratios)
    print("speedup_vs_sentence_transformers:", result["speedup_vs_sentence_transformers"])
    write_json(args.output, result)
    return result


if __name__ == "__main__":
    main()
