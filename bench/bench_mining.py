"""Wall time of ttsn_hf's hard-negative mining vs sentence-transformers' ``util.mine_hard_negatives``.

Both mine the sample's 150 training queries against its whole catalogue (6,122 products) with all-MiniLM-L6-v2, the
same batch size, fp32, the same torch thread count, FAISS search, relative margin 0.05, 10 negatives, "top"
sampling. Runs alternate between the two (the best of --repeats is reported). ttsn_hf is timed cold (empty
embedding cache: encodes the catalogue) and warm (the cache of the cold run).

    python bench/bench_mining.py [--esci_dir ../shared/data/esci-us-sample] [--threads 2] [--batch_size 64]

Writes bench/results/mining.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import datasets  # noqa: E402
import torch  # noqa: E402

from ttsn_hf.atomic import write_text_atomic  # noqa: E402
from ttsn_hf.labels import RELEVANT_LABELS  # noqa: E402
from ttsn_hf.modeling.model import TwoTowerModel, default_base_model  # noqa: E402
from ttsn_hf.modeling.pretrained import resolve_pretrained  # noqa: E402
from ttsn_hf.retrieval.mining import load_mining_input, mine_hard_negatives  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SETTINGS = dict(num_negatives=10, relative_margin=0.05)


def time_ours(data, batch_size: int, cache_dir: str) -> tuple[float, int]:
    model = TwoTowerModel.from_encoder(default_base_model())
    start = time.perf_counter()
    mined = mine_hard_negatives(model, data, batch_size=batch_size, cache_dir=cache_dir, **SETTINGS)
    return time.perf_counter() - start, len(mined)


def time_sentence_transformers(data, batch_size: int) -> tuple[float, int]:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives as st_mine

    model = SentenceTransformer(resolve_pretrained(default_base_model()), device="cpu")
    model.max_seq_length = 128  # as the product tower of ttsn_hf
    text_of = dict(zip(data.product_ids, data.product_texts, strict=True))
    judgements = data.judgements
    positives = judgements[
        judgements["query_id"].isin(data.train_query_ids) & judgements["esci_label"].isin(RELEVANT_LABELS)
    ]
    positives = positives[positives["product_id"].isin(text_of)]
    pairs = datasets.Dataset.from_dict(
        {"query": positives["query"].tolist(), "positive": [text_of[pid] for pid in positives["product_id"]]}
    )
    start = time.perf_counter()
    mined = st_mine(
        pairs,
        model,
        corpus=list(data.product_texts),
        batch_size=batch_size,
        use_faiss=True,
        sampling_strategy="top",
        output_format="labeled-pair",
        verbose=False,
        **SETTINGS,
    )
    return time.perf_counter() - start, sum(1 for label in mined["label"] if label == 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--esci_dir", default=str(REPO.parent / "shared" / "data" / "esci-us-sample"))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "mining.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_mining_input(args.esci_dir)
    load_before = os.getloadavg()
    times = {"sentence_transformers": [], "ttsn_hf_cold": [], "ttsn_hf_warm": []}
    for repeat in range(args.repeats):  # alternate the order: the machine may be shared
        for contender in ("st", "ours") if repeat % 2 == 0 else ("ours", "st"):
            if contender == "st":
                seconds, st_negatives = time_sentence_transformers(data, args.batch_size)
                times["sentence_transformers"].append(round(seconds, 2))
                continue
            with tempfile.TemporaryDirectory() as cache_dir:
                cold, negatives = time_ours(data, args.batch_size, cache_dir)
                warm, _ = time_ours(data, args.batch_size, cache_dir)
            times["ttsn_hf_cold"].append(round(cold, 2))
            times["ttsn_hf_warm"].append(round(warm, 2))
    best = {name: min(values) for name, values in times.items()}
    results = {
        "products": len(data.product_ids),
        "training_queries": len(data.train_query_ids),
        "batch_size": args.batch_size,
        "torch_threads": args.threads,
        "precision": "fp32",
        "settings": SETTINGS,
        "seconds_best": best,
        "seconds_all_runs": times,
        "speedup_cold": round(best["sentence_transformers"] / best["ttsn_hf_cold"], 2),
        "speedup_warm": round(best["sentence_transformers"] / best["ttsn_hf_warm"], 2),
        "negatives": {"sentence_transformers": st_negatives, "ttsn_hf": negatives},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }
    write_text_atomic(args.output, json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
