"""Hard-negative mining, like for like: ttsn_hf's ``mine_hard_negatives`` vs sentence-transformers'
``util.mine_hard_negatives``, wall time and process CPU time.

Same task for both: one (query, positive) pair per training query of the ESCI sample (its first Exact product), a
catalogue of ``--max_products`` products (every pair's positive plus a seeded sample), the same model
(all-MiniLM-L6-v2, max 128 tokens), batch size, precision and threads, FAISS search, the positive's own score as the
margin's reference (ttsn_hf's "mean" over one positive = sentence-transformers' per-pair score), relative margin
0.05, 10 negatives, "top" sampling, the same candidate count (``range_max`` = 10 x 10 + 1 both) and only the positive
excluded. The outputs must agree (the same negatives per query, compared by text). Systems run interleaved
(reversed every other round), ``--repeats`` times; the best counts. Cold = embeddings computed; warm (each library's
embedding cache filled by the cold run) is its own row, never a speedup.

    python bench/bench_mining.py [--max_products 2000] [--threads 2] [--batch_size 64] [--repeats 3]

Writes bench/results/mining.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import defaultdict

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Threads that sleep rather than spin while waiting: on a shared machine spinning threads slow each other 3-10x.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import datasets  # noqa: E402
import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from benchlib import RESULTS, SAMPLE_DIR, load_now, machine, print_table, write_json  # noqa: E402

from ttsn_hf.modeling.model import TwoTowerModel, default_base_model  # noqa: E402
from ttsn_hf.modeling.pretrained import resolve_pretrained  # noqa: E402
from ttsn_hf.retrieval.mining import MiningInput, load_mining_input, mine_hard_negatives  # noqa: E402

SETTINGS = dict(num_negatives=10, relative_margin=0.05, sampling_strategy="top")
MAX_LENGTH = 128


def like_for_like_input(esci_dir: str, max_products: int, seed: int) -> MiningInput:
    """One Exact pair per training query; the catalogue: the positives plus a seeded sample of the rest."""
    data = load_mining_input(esci_dir)
    judgements = data.judgements
    exact = judgements[judgements["query_id"].isin(data.train_query_ids) & (judgements["esci_label"] == "E")]
    pairs = exact.sort_values(["query_id", "product_id"]).drop_duplicates("query_id")
    positives = set(pairs["product_id"])
    others = [i for i, pid in enumerate(data.product_ids) if pid not in positives]
    count = max(0, min(len(others), max_products - len(positives)))
    keep = sorted(set(np.random.default_rng(seed).choice(others, size=count, replace=False).tolist()))
    keep = sorted(keep + [i for i, pid in enumerate(data.product_ids) if pid in positives])
    return MiningInput(
        [data.product_ids[i] for i in keep],
        [data.product_texts[i] for i in keep],
        pairs.reset_index(drop=True),
        sorted(pairs["query_id"]),
    )


def run_ours(model: TwoTowerModel, data: MiningInput, args, cache_dir: str) -> dict[str, list[str]]:
    mined = mine_hard_negatives(
        model,
        data,
        batch_size=args.batch_size,
        bf16=args.bf16,
        cache_dir=cache_dir,
        positive_labels=("E",),
        excluded_labels=("E",),
        positive_reference="mean",
        **SETTINGS,
    )
    text_of = dict(zip(data.product_ids, data.product_texts, strict=True))
    query_of = dict(zip(data.judgements["query_id"], data.judgements["query"], strict=True))
    found: dict[str, list[str]] = defaultdict(list)
    for query_id, product_id in zip(mined["query_id"], mined["product_id"], strict=True):
        found[query_of[query_id]].append(text_of[product_id])
    return dict(found)


def run_theirs(model, data: MiningInput, args, cache_dir: str) -> dict[str, list[str]]:
    from sentence_transformers.util import mine_hard_negatives as st_mine

    text_of = dict(zip(data.product_ids, data.product_texts, strict=True))
    pairs = datasets.Dataset.from_dict(
        {"query": data.judgements["query"].tolist(), "positive": [text_of[p] for p in data.judgements["product_id"]]}
    )
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
        mined = st_mine(
            pairs,
            model,
            corpus=list(data.product_texts),
            batch_size=args.batch_size,
            use_faiss=True,
            output_format="labeled-pair",
            verbose=False,
            cache_folder=cache_dir,
            **SETTINGS,
        )
    found: dict[str, list[str]] = defaultdict(list)
    for query, text, label in zip(mined["query"], mined["positive"], mined["label"], strict=True):
        if label == 0:
            found[query].append(text)
    return dict(found)


def timed(function, *arguments) -> tuple[float, float, dict]:
    start, cpu_start = time.perf_counter(), time.process_time()
    output = function(*arguments)
    return time.perf_counter() - start, time.process_time() - cpu_start, output


def agreement(ours: dict[str, list[str]], theirs: dict[str, list[str]]) -> dict:
    queries = sorted(set(ours) | set(theirs))
    same_list = sum(ours.get(q, []) == theirs.get(q, []) for q in queries)
    same_set = sum(set(ours.get(q, [])) == set(theirs.get(q, [])) for q in queries)
    overlap = [
        len(set(ours.get(q, [])) & set(theirs.get(q, []))) / max(1, len(set(ours.get(q, [])) | set(theirs.get(q, []))))
        for q in queries
    ]
    return {
        "queries": len(queries),
        "negatives": {"ttsn_hf": sum(map(len, ours.values())), "sentence_transformers": sum(map(len, theirs.values()))},
        "same_negatives_in_order": round(same_list / max(1, len(queries)), 4),
        "same_negative_sets": round(same_set / max(1, len(queries)), 4),
        "mean_jaccard": round(float(np.mean(overlap)) if overlap else 1.0, 4),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--esci_dir", default=str(SAMPLE_DIR))
    parser.add_argument("--max_products", type=int, default=2000, help="catalogue size (positives + a sample)")
    parser.add_argument("--threads", type=int, default=2, help="torch and faiss threads")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--bf16", action="store_true", help="autocast bf16 for both (default fp32)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(RESULTS / "mining.json"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    from sentence_transformers import SentenceTransformer

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    data = like_for_like_input(args.esci_dir, args.max_products, args.seed)
    ours_model = TwoTowerModel.from_encoder(default_base_model(), query_max_length=MAX_LENGTH)
    theirs_model = SentenceTransformer(str(resolve_pretrained(default_base_model())), device="cpu")
    theirs_model.max_seq_length = MAX_LENGTH
    systems = {"ttsn_hf": (run_ours, ours_model), "sentence_transformers": (run_theirs, theirs_model)}
    seconds, cpu, outputs, loads = defaultdict(list), defaultdict(list), {}, []
    for repeat in range(args.repeats):
        # interleaved, and reversed every other round, so a change of load hits both alike
        for name in list(systems) if repeat % 2 == 0 else list(systems)[::-1]:
            function, model = systems[name]
            with tempfile.TemporaryDirectory() as cache_dir:
                for mode in ("cold", "warm"):
                    loads.append(load_now()[0])
                    wall, cpu_seconds, outputs[name] = timed(function, model, data, args, cache_dir)
                    seconds[f"{name} {mode}"].append(round(wall, 3))
                    cpu[f"{name} {mode}"].append(round(cpu_seconds, 3))
                    print(f"{name} {mode}: {wall:.1f} s wall, {cpu_seconds:.1f} CPU s", flush=True)
    rows = [
        {
            "system": key.split()[0],
            "embeddings": key.split()[1],
            "seconds_best": min(seconds[key]),
            "cpu_seconds_best": min(cpu[key]),
            "seconds_all": seconds[key],
            "cpu_seconds_all": cpu[key],
        }
        for key in seconds
    ]
    best = {key: min(values) for key, values in seconds.items()}
    best_cpu = {key: min(values) for key, values in cpu.items()}
    check = agreement(outputs["ttsn_hf"], outputs["sentence_transformers"])
    result = {
        "benchmark": "mining",
        "machine": machine("cpu"),
        "faiss_threads": args.threads,
        "load_average_1min_per_run": loads,
        "load_average_after": load_now(),
        "settings": {
            **SETTINGS,
            "products": len(data.product_ids),
            "queries": len(data.train_query_ids),
            "batch_size": args.batch_size,
            "precision": "bf16" if args.bf16 else "fp32",
            "positive_reference": "the pair's positive (one per query)",
            "excluded": "the positive only",
            "repeats": args.repeats,
        },
        "outputs_agree": check,
        "runs": rows,
        # cold (embeddings computed) only; a warm cache is reported in `runs`, never as a speedup
        "speedup_vs_sentence_transformers": round(best["sentence_transformers cold"] / best["ttsn_hf cold"], 3),
        "speedup_vs_sentence_transformers_cpu_time": round(
            best_cpu["sentence_transformers cold"] / best_cpu["ttsn_hf cold"], 3
        ),
    }
    print_table(rows, ["system", "embeddings", "seconds_best", "cpu_seconds_best"])
    print("outputs agree:", check)
    print(
        "speedup (cold):",
        result["speedup_vs_sentence_transformers"],
        "by CPU time:",
        result["speedup_vs_sentence_transformers_cpu_time"],
    )
    write_json(args.output, result)
    return result


if __name__ == "__main__":
    main()
