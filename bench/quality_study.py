"""Retrieval-quality study: K-fold cross-validation by query over the labelled queries of an ESCI folder.

Each fold's queries become the "test" split of a fold copy of the data (official layout, under --work_dir); the
others are "train". A config (overrides of train.py's dataclasses) is trained on each fold with the library's own
`TrainingRun`, then its models are scored on the fold's queries over the whole catalogue and compared, paired per
query, with the zero-shot base model on the same queries. Results accumulate in --output (one entry per config).

    nice -n 10 .venv/bin/python bench/quality_study.py --configs default temperature_0.1 --folds 2
    .venv/bin/python bench/quality_study.py --list
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchlib import RESULTS, SAMPLE_DIR, load_now, machine, write_json  # noqa: E402

from ttsn_hf.data.esci import load_esci  # noqa: E402
from ttsn_hf.evaluation.evaluate import bm25_run, compare, dense_run, queries_and_qrels, rrf_fuse  # noqa: E402
from ttsn_hf.evaluation.metrics import evaluate_run  # noqa: E402
from ttsn_hf.modeling.model import load_model  # noqa: E402
from ttsn_hf.retrieval.encoding import encode_catalogue  # noqa: E402

EXAMPLES = "shopping_queries_dataset_examples.parquet"
PRODUCTS = "shopping_queries_dataset_products.parquet"
METRICS = ("recall@10", "mrr", "ndcg@10", "esci_rank_ndcg")
TEACHER = Path(os.environ.get("TTSN_TEACHER", "/tmp/teachers/all-mpnet-base-v2/model/all-mpnet-base-v2"))
SCREEN = {"schedule": {"stage": "1"}}  # stage 1 alone, with the default stage-1 epochs and rate

# name -> overrides per dataclass ("model", "data", "schedule", "training"); "screen" runs stage 1 only
TEACHER_DATA = {"teacher_model_name_or_path": str(TEACHER), "teacher_cache_dir": "/tmp/quality_study/teacher_cache"}
CONFIGS: dict[str, dict] = {
    "default": {},
    "teacher_mse_30": {"data": TEACHER_DATA, "schedule": {"distillation_weight": 30.0}},
    # measured with weight 1 before the KL loss took sentence-transformers' T^2 factor: 400 = 1 / 0.05^2 is that run
    "teacher_kl_1": {"data": TEACHER_DATA, "schedule": {"distillation_weight": 400.0, "distillation_loss": "kl"}},
    "negatives_4": {"data": {"negatives_per_query": 4}},
    "negatives_8": {"data": {"negatives_per_query": 8}},
    "unweighted_infonce": {"schedule": {"label_weighted_infonce": False}},
    "pseudo_teacher": {"data": {**TEACHER_DATA, "pseudo_queries": 2000}, "schedule": {"distillation_weight": 30.0}},
    "screen_default": SCREEN,
    "screen_temperature_0.02": {"schedule": {"stage": "1", "temperature": 0.02}},
    "screen_temperature_0.1": {"schedule": {"stage": "1", "temperature": 0.1}},
    "screen_infonce_only": {"schedule": {"stage": "1", "contrastive_weight": 0.0}},
    "screen_contrastive_only": {"schedule": {"stage": "1", "infonce_weight": 0.0}},
    "screen_lr_5e-5": {"schedule": {"stage": "1", "stage_learning_rates": "5e-5,2e-5,2e-6"}},
    "screen_epochs_1": {"schedule": {"stage": "1", "stage_epochs": "1,1,2"}},
    "screen_random_negatives_0": {"schedule": {"stage": "1"}, "data": {"num_random_negatives": 0}},
    "screen_random_negatives_16": {"schedule": {"stage": "1"}, "data": {"num_random_negatives": 16}},
    "screen_label_weights_S1": {"schedule": {"stage": "1", "label_weights": "E=1.0,S=1.0,C=0.25,I=1.0"}},
    "screen_margin_0.3": {"schedule": {"stage": "1", "margin": 0.3}},
    "screen_batch_128": {"schedule": {"stage": "1"}, "training": {"per_device_train_batch_size": 128}},
    "screen_product_max_length_64": {"schedule": {"stage": "1"}, "model": {"product_max_length": 64}},
    "screen_pseudo_queries_2000": {"schedule": {"stage": "1"}, "data": {"pseudo_queries": 2000}},
    "screen_pseudo_queries_6000": {"schedule": {"stage": "1"}, "data": {"pseudo_queries": 6000}},
    "screen_no_masking": {"schedule": {"stage": "1", "mask_false_negatives": False}},
    "screen_infonce_only_pseudo_2000": {
        "schedule": {"stage": "1", "contrastive_weight": 0.0},
        "data": {"pseudo_queries": 2000},
    },
    "infonce_only": {"schedule": {"contrastive_weight": 0.0}},
    "pseudo_queries_2000": {"data": {"pseudo_queries": 2000}},
    "mining_20": {"schedule": {"mining_num_negatives": 20}},
    "mining_margin_0.1": {"schedule": {"mining_relative_margin": 0.1}},
    "stage3_lr_2e-5": {"schedule": {"stage_learning_rates": "2e-5,2e-5,2e-5"}},
    "epochs_1_1_1": {"schedule": {"stage_epochs": "1,1,1"}},
    # for --ceiling only: stage 1 pushed hard, to see what the model can fit at all
    "memorise": {"schedule": {"stage": "1", "stage_epochs": "10,1,2", "stage_learning_rates": "1e-4,2e-5,2e-6"}},
}


# ------------------------------------------------------------------------------------------------ folds


def fold_queries(examples: pd.DataFrame, folds: int, seed: int) -> list[list[str]]:
    """The labelled queries, shuffled with ``seed`` and dealt into ``folds`` groups."""
    queries = np.array(sorted(examples["query_id"].astype(str).unique()), dtype=object)
    order = np.random.default_rng(seed).permutation(len(queries))
    return [sorted(queries[order[i::folds]].tolist()) for i in range(folds)]


def write_fold(examples: pd.DataFrame, held_out: list[str], folder: Path, esci_dir: Path) -> Path:
    """A copy of the data in the official layout where ``held_out`` is "test" and every other query "train"."""
    folder.mkdir(parents=True, exist_ok=True)
    split = np.where(examples["query_id"].astype(str).isin(set(held_out)), "test", "train")
    examples.assign(split=split).to_parquet(folder / EXAMPLES, index=False)
    if not (folder / PRODUCTS).exists():
        (folder / PRODUCTS).symlink_to((esci_dir / PRODUCTS).resolve())
    return folder


# ------------------------------------------------------------------------------------------------ training


def train_config(overrides: dict, fold_dir: Path, output_dir: Path, seed: int) -> dict:
    """Train one config on one fold in-process (what ``train.py`` does), return the schedule state."""
    from ttsn_hf.arguments import DataArguments, ModelArguments, ScheduleArguments, TwoTowerTrainingArguments
    from ttsn_hf.training.run import TrainingRun, configure_threads

    data = DataArguments(esci_dir=str(fold_dir), **overrides.get("data", {}))
    training = TwoTowerTrainingArguments(
        output_dir=str(output_dir),
        bf16=True,
        seed=seed,
        disable_tqdm=True,
        logging_steps=50,
        overwrite_output_dir=True,  # a study re-runs a config into its own folder
        **overrides.get("training", {}),
    )
    configure_threads(data.num_threads)
    run = TrainingRun(
        ModelArguments(**overrides.get("model", {})), data, ScheduleArguments(**overrides.get("schedule", {})), training
    )
    return run.run()


# ------------------------------------------------------------------------------------------------ scoring


class Scorer:
    """Scores models on given queries over the whole catalogue (the catalogue encoded once per model)."""

    def __init__(self, esci_dir: Path, text_template: str | None = None):
        options = {"text_template": text_template} if text_template else {}
        esci = load_esci(esci_dir, **options)
        self.catalogue = esci.catalogue.to_pandas().astype({"product_id": str})
        self.judgements = esci.judgements.to_pandas().assign(split="all")
        self.queries, self.qrels = queries_and_qrels(self.judgements, "all")
        self.product_ids = self.catalogue["product_id"].tolist()
        self.texts = self.catalogue["product_text"].fillna("").tolist()
        self._bm25 = None

    def run(self, model_path: str | None, query_ids: list[str]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """(top-100 run, judged products ranked by score) of ``query_ids``."""
        model = load_model(model_path)
        product_emb = encode_catalogue(model, self.product_ids, self.texts, batch_size=256, bf16=True)
        queries = {qid: self.queries[qid] for qid in query_ids}
        qrels = {qid: self.qrels[qid] for qid in query_ids}
        return dense_run(model, queries, self.product_ids, product_emb, 100, qrels, batch_size=256, bf16=True)

    def bm25(self) -> dict[str, list[str]]:
        if self._bm25 is None:
            self._bm25 = bm25_run(self.queries, self.product_ids, self.texts, 100)
        return self._bm25

    def per_query(self, run: dict[str, list[str]], judged: dict | None = None) -> dict[str, dict[str, float]]:
        if isinstance(run, tuple):
            run, judged = run
        qrels = {qid: self.qrels[qid] for qid in run}
        _, rows = evaluate_run(run, qrels, judged_run=judged)
        return {row["query_id"]: {name: row[name] for name in METRICS} for row in rows}


def summarise(per_query: dict[str, dict], reference: dict[str, dict]) -> dict:
    """Means of ``per_query`` and the paired difference (95% bootstrap CI) with ``reference`` on the same queries."""
    query_ids = sorted(per_query)
    summary = {"num_queries": len(query_ids)}
    for name in METRICS:
        ours = np.array([np.nan if per_query[q][name] is None else per_query[q][name] for q in query_ids])
        base = np.array([np.nan if reference[q][name] is None else reference[q][name] for q in query_ids])
        summary[name] = float(np.nanmean(ours))
        summary[f"{name}_zero_shot"] = float(np.nanmean(base))
        summary[f"{name}_ratio"] = float(np.nanmean(ours) / np.nanmean(base))
        summary[f"{name}_diff"] = compare(ours, base, bootstrap_samples=5000, seed=0)
    return summary


# ------------------------------------------------------------------------------------------------ driver


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"configs": {}}


def zero_shot(scorer: Scorer, results: dict, path: Path) -> dict[str, dict]:
    needs = "zero_shot_per_query" not in results
    needs = needs or "esci_rank_ndcg" not in next(iter(results["zero_shot_per_query"].values()))
    if needs:
        results["zero_shot_per_query"] = scorer.per_query(scorer.run(None, list(scorer.queries)))
        results["bm25_per_query"] = scorer.per_query(scorer.bm25())
        write_json(path, results)
    if "mpnet_per_query" not in results and TEACHER.is_dir():
        results["mpnet_per_query"] = scorer.per_query(scorer.run(str(TEACHER), list(scorer.queries)))
        write_json(path, results)
    return results["zero_shot_per_query"]


def study_config(name: str, args, scorer: Scorer, folds: list[list[str]], results: dict) -> dict:
    overrides = CONFIGS[name]
    examples = pd.read_parquet(args.esci_dir / EXAMPLES)
    per_query: dict[str, dict[str, dict]] = {"final": {}, "best": {}, "hybrid_final": {}}
    timings, best_epochs = [], []
    for index, held_out in enumerate(folds):
        fold_dir = write_fold(
            examples, held_out, args.work_dir / f"data_k{len(folds)}_s{args.seed}_fold{index}", args.esci_dir
        )
        output_dir = args.work_dir / "runs" / f"{name}_k{len(folds)}_s{args.seed}_fold{index}"
        shutil.rmtree(output_dir, ignore_errors=True)
        started = time.perf_counter()
        if args.selection_corpus_size:
            overrides = {
                **overrides,
                "data": {**overrides.get("data", {}), "selection_corpus_size": args.selection_corpus_size},
            }
        state = train_config(overrides, fold_dir, output_dir, args.seed)
        timings.append(round(time.perf_counter() - started, 1))
        last_epoch = max(int(epoch) for epoch in state["epochs"])
        best_epochs.append({"best": state["best"]["epoch"], "last": last_epoch})
        if args.all_epochs or args.epochs:
            for epoch in range(1, last_epoch) if args.all_epochs else [e for e in args.epochs if e < last_epoch]:
                run = scorer.run(str(output_dir / f"epoch_{epoch}"), held_out)
                per_query.setdefault(f"epoch_{epoch}", {}).update(scorer.per_query(run))
        final_run, final_judged = scorer.run(str(output_dir / f"epoch_{last_epoch}"), held_out)
        per_query["final"].update(scorer.per_query(final_run, final_judged))
        bm25 = {qid: scorer.bm25()[qid] for qid in held_out}
        per_query["hybrid_final"].update(scorer.per_query(rrf_fuse([final_run, bm25], k=60, depth=100)))
        if state["best"]["epoch"] != last_epoch:
            per_query["best"].update(scorer.per_query(scorer.run(str(output_dir / "best_model"), held_out)))
        else:
            per_query["best"].update({qid: per_query["final"][qid] for qid in held_out})
        logging.info("%s fold %d: %.0f s, best epoch %s", name, index, timings[-1], best_epochs[-1])
        if not args.keep_models:
            shutil.rmtree(output_dir, ignore_errors=True)
    reference = results["zero_shot_per_query"]
    epochs = {name: summarise(scores, reference) for name, scores in per_query.items() if name.startswith("epoch_")}
    return {
        "overrides": overrides,
        "defaults_commit": _commit(),
        "folds": len(folds),
        "seed": args.seed,
        "train_seconds_per_fold": timings,
        "epochs": best_epochs,
        "last_epoch": summarise(per_query["final"], reference),
        "best_model": summarise(per_query["best"], reference),
        "hybrid_last_epoch": summarise(per_query["hybrid_final"], reference),
        "earlier_epochs": epochs,
        "load_average": load_now(),
        "per_query_last_epoch": per_query["final"],
        "per_query_best_model": per_query["best"],
        "per_query_epochs": {name: scores for name, scores in per_query.items() if name.startswith("epoch_")},
    }


def _commit() -> str | None:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    )
    return done.stdout.strip() or None


def study_ceiling(name: str, args, scorer: Scorer, results: dict) -> dict:
    """A leak run, for the ceiling only: config ``name`` trained on every labelled query, test ones included, then
    scored on the official test queries it trained on. What the schedule can fit, not what it generalises."""
    from ttsn_hf.data.stages import split_queries as train_validation_split

    examples = pd.read_parquet(args.esci_dir / EXAMPLES)
    test_queries = set(examples.loc[examples["split"] == "test", "query_id"].astype(str))
    fold_dir = write_fold(examples, [], args.work_dir / "data_all_train", args.esci_dir)
    _, validation = train_validation_split(examples.assign(split="train"), 0.1, args.seed)
    trained_on = sorted(test_queries - {str(qid) for qid in validation})
    output_dir = args.work_dir / "runs" / f"ceiling_{name}"
    shutil.rmtree(output_dir, ignore_errors=True)
    started = time.perf_counter()
    state = train_config(CONFIGS[name], fold_dir, output_dir, args.seed)
    seconds = round(time.perf_counter() - started, 1)
    reference = results["zero_shot_per_query"]
    epochs = {}
    for epoch in sorted(int(epoch) for epoch in state["epochs"]):
        run = scorer.run(str(output_dir / f"epoch_{epoch}"), trained_on)
        epochs[f"epoch_{epoch}"] = summarise(scorer.per_query(run), reference)
    if not args.keep_models:
        shutil.rmtree(output_dir, ignore_errors=True)
    return {
        "overrides": CONFIGS[name],
        "num_test_queries_trained_on": len(trained_on),
        "train_seconds": seconds,
        "epochs": epochs,
    }


def study_merge(name: str, weight: float, args, scorer: Scorer, folds: list[list[str]], results: dict) -> dict:
    """WiSE-FT after the fact: each fold's kept best_model of ``name`` merged with the base encoder
    (``--merge_base_weight weight``), scored on the fold's held-out queries. Needs a ``--keep_models`` run."""
    from ttsn_hf.training.merge import merge_with_base

    per_query = {}
    for index, held_out in enumerate(folds):
        output_dir = args.work_dir / "runs" / f"{name}_k{len(folds)}_s{args.seed}_fold{index}"
        merged = merge_with_base(load_model(str(output_dir / "best_model")), load_model(None), weight)
        merged.save_pretrained(output_dir / f"merged_{weight}")
        per_query.update(scorer.per_query(scorer.run(str(output_dir / f"merged_{weight}"), held_out)))
    return {
        "overrides": {**CONFIGS[name], "merge_base_weight_after_the_fact": weight},
        "folds": len(folds),
        "seed": args.seed,
        "train_seconds_per_fold": [0.0],
        "best_model": summarise(per_query, results["zero_shot_per_query"]),
        "last_epoch": summarise(per_query, results["zero_shot_per_query"]),
        "per_query_last_epoch": per_query,
    }


def study_official(name: str, args, scorer: Scorer, results: dict) -> dict:
    """``name`` trained on the official train split (what ``train.py`` does with the sample as given), every epoch
    and best_model scored on the official test queries; the wall time includes teacher scoring (fresh cache)."""
    examples = pd.read_parquet(args.esci_dir / EXAMPLES)
    test_queries = sorted(set(examples.loc[examples["split"] == "test", "query_id"].astype(str)))
    output_dir = args.work_dir / "runs" / f"official_{name}"
    shutil.rmtree(output_dir, ignore_errors=True)
    overrides = json.loads(json.dumps(CONFIGS[name]))
    if "teacher_cache_dir" in overrides.get("data", {}):
        overrides["data"]["teacher_cache_dir"] = str(output_dir / "teacher_scores")
    started = time.perf_counter()
    state = train_config(overrides, args.esci_dir, output_dir, args.seed)
    seconds = round(time.perf_counter() - started, 1)
    reference = results["zero_shot_per_query"]
    epochs = {}
    for epoch in sorted(int(epoch) for epoch in state["epochs"]):
        run = scorer.run(str(output_dir / f"epoch_{epoch}"), test_queries)
        epochs[f"epoch_{epoch}"] = summarise(scorer.per_query(run), reference)
    best = scorer.per_query(scorer.run(str(output_dir / "best_model"), test_queries))
    if not args.keep_models:
        shutil.rmtree(output_dir, ignore_errors=True)
    return {
        "overrides": CONFIGS[name],
        "num_test_queries": len(test_queries),
        "train_seconds_including_teacher_scoring": seconds,
        "best_epoch": state["best"]["epoch"],
        "epochs": epochs,
        "best_model": summarise(best, reference),
        "per_query_best_model": best,
        "load_average": load_now(),
    }


def _ci(diff: dict) -> str:
    return f"{diff['difference']:+.3f} [{diff['ci_low']:+.3f}, {diff['ci_high']:+.3f}]"


def print_table(results: dict, which: str = "best_model") -> None:
    """Each config's ``which`` (best_model or last_epoch) against zero-shot MiniLM on the same queries."""
    deltas = " | ".join(f"Δ{name} vs zero-shot" for name in METRICS)
    print(f"| config ({which}) | " + " | ".join(METRICS) + f" | R@10 / zero-shot | {deltas} | s/fold |")
    print("|---|" + "---:|" * (len(METRICS) + 1) + "---|" * len(METRICS) + "---:|")
    for name, entry in results["configs"].items():
        summary = entry[which]
        if any(metric not in summary for metric in METRICS):
            continue
        print(
            f"| {name} | "
            + " | ".join(f"{summary[metric]:.3f}" for metric in METRICS)
            + f" | {summary['recall@10_ratio']:.3f} | "
            + " | ".join(_ci(summary[f"{metric}_diff"]) for metric in METRICS)
            + f" | {np.mean(entry['train_seconds_per_fold']):.0f} |"
        )


def per_query_of(entry: dict) -> dict:
    return entry.get("per_query_best_model") or entry["per_query_last_epoch"]


def print_versus(results: dict, reference_name: str) -> None:
    """Each config's best_model minus ``reference_name``'s, paired on the same queries (95% bootstrap CI)."""
    reference = per_query_of(results["configs"][reference_name])
    print("| config | " + " | ".join(f"Δ{metric} vs {reference_name}" for metric in METRICS) + " |")
    print("|---|" + "---|" * len(METRICS))
    for name, entry in results["configs"].items():
        if name == reference_name or set(per_query_of(entry)) != set(reference):
            continue
        summary = summarise(per_query_of(entry), reference)
        print(f"| {name} | " + " | ".join(_ci(summary[f"{metric}_diff"]) for metric in METRICS) + " |")


def pool_seeds(results: dict, names: list[str]) -> dict:
    """Several seeds of one config as one system: each query's score is its mean over the seeds' runs (every
    query is held out once per seed), compared paired with zero-shot; per model: best_model, last epoch and every
    scored earlier epoch, and stage 2 against epoch 2."""
    entries = [results["configs"][name] for name in names]
    reference = results["zero_shot_per_query"]

    def mean_over_seeds(per_query_of) -> dict[str, dict]:
        runs = [per_query_of(entry) for entry in entries]
        return {
            query: {metric: _nanmean([run[query][metric] for run in runs]) for metric in METRICS}
            for query in sorted(set.intersection(*(set(run) for run in runs)))
        }

    pooled = {
        "seeds": names,
        "train_seconds_per_fold": [t for entry in entries for t in entry["train_seconds_per_fold"]],
    }
    pooled["best_model"] = summarise(mean_over_seeds(lambda entry: entry["per_query_best_model"]), reference)
    pooled["last_epoch"] = summarise(mean_over_seeds(lambda entry: entry["per_query_last_epoch"]), reference)
    epochs = set.intersection(*(set(entry.get("per_query_epochs", {})) for entry in entries))
    per_epoch = {epoch: mean_over_seeds(lambda entry, e=epoch: entry["per_query_epochs"][e]) for epoch in epochs}
    pooled["earlier_epochs"] = {epoch: summarise(scores, reference) for epoch, scores in sorted(per_epoch.items())}
    if {"epoch_2", "epoch_3"} <= epochs:
        pooled["stage2_vs_epoch2"] = summarise(per_epoch["epoch_3"], per_epoch["epoch_2"])
    return pooled


def _nanmean(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return float(np.mean(known)) if known else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="*", default=["default"], help=f"among {list(CONFIGS)}")
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--esci_dir", type=Path, default=SAMPLE_DIR)
    parser.add_argument("--work_dir", type=Path, default=Path("/tmp/quality_study"))
    parser.add_argument("--output", type=Path, default=RESULTS / "quality_groups.json")
    parser.add_argument("--keep_models", action="store_true")
    parser.add_argument("--all_epochs", action="store_true", help="also score every earlier epoch")
    parser.add_argument("--epochs", type=int, nargs="*", help="also score these earlier epochs (cheaper than all)")
    parser.add_argument(
        "--selection_corpus_size", type=int, help="judged + sampled products searched by the per-epoch selection"
    )
    parser.add_argument("--ceiling", action="store_true", help="leak run of --configs: trains on test queries too")
    parser.add_argument("--table", action="store_true", help="print the results table and exit")
    parser.add_argument("--list", action="store_true", help="print the configs and exit")
    parser.add_argument("--suffix", default="", help="stored as NAME+SUFFIX (e.g. a second --seed)")
    parser.add_argument("--versus", help="with --table: paired differences against this config")
    parser.add_argument("--merge_weights", type=float, nargs="*", help="WiSE-FT of kept --configs runs, after the fact")
    parser.add_argument("--official", action="store_true", help="train --configs on the official split, score test")
    parser.add_argument("--pool", nargs="*", help="stored entries of one config, other seeds: pooled per query")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("transformers", "datasets", "ttsn_hf"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.list:
        print("\n".join(f"{name}: {json.dumps(overrides)}" for name, overrides in CONFIGS.items()))
        return
    unknown = [name for name in args.configs if name not in CONFIGS]
    if unknown:
        parser.error(f"unknown config(s) {unknown}; see --list")
    results = load_results(args.output)
    if args.pool:
        pooled = pool_seeds(results, args.pool)
        results.setdefault("pooled", {})["+".join(args.pool)] = pooled
        write_json(args.output, results)
        print_table({"configs": {"+".join(args.pool): pooled}})
        print_table({"configs": {"+".join(args.pool): pooled}}, "last_epoch")
        return
    if args.table:
        print_table(results)
        print_table(results, "last_epoch")
        if args.versus:
            print_versus(results, args.versus)
        return
    results.setdefault("machine", machine("cpu"))
    scorer = Scorer(args.esci_dir)
    zero_shot(scorer, results, args.output)
    if args.ceiling:
        for name in args.configs:
            entry = study_ceiling(name, args, scorer, results)
            results = load_results(args.output)
            results.setdefault("ceilings", {})[name] = entry
            write_json(args.output, results)
            print(json.dumps(entry, indent=2))
        return
    if args.official:
        for name in args.configs:
            entry = study_official(name, args, scorer, results)
            results = load_results(args.output)
            results.setdefault("official", {})[name + args.suffix] = entry
            write_json(args.output, results)
            print(json.dumps({key: value for key, value in entry.items() if not key.startswith("per_query")}, indent=1))
        return
    folds = fold_queries(pd.read_parquet(args.esci_dir / EXAMPLES), args.folds, args.seed)
    if args.merge_weights:
        for name in args.configs:
            for weight in args.merge_weights:
                entry = study_merge(name, weight, args, scorer, folds, results)
                results = load_results(args.output)
                results["configs"][f"{name}{args.suffix}+merge_{weight}"] = entry
                write_json(args.output, results)
                print_table({"configs": {f"{name}{args.suffix}+merge_{weight}": entry}})
        return
    for name in args.configs:
        entry = study_config(name, args, scorer, folds, load_results(args.output))
        results = load_results(args.output)  # another study may have written meanwhile
        results["configs"][name + args.suffix] = entry
        write_json(args.output, results)
        print_table({"configs": {name + args.suffix: entry}})


if __name__ == "__main__":
    main()
