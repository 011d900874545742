"""Evaluate a two-tower model against a baseline encoder and BM25 on ESCI: metrics.json, per_query.jsonl,
results.md, metrics.png and report.html (query by query, where the model wins and loses) in --output_dir.

    python eval.py --model_name_or_path checkpoints/best_model --esci_dir ../shared/data/esci-us-sample --split test
"""

from pathlib import Path

from ttsn_hf.arguments import EvalArguments, parse_args
from ttsn_hf.errors import cli_entry
from ttsn_hf.evaluation.evaluate import markdown_table, run_evaluation
from ttsn_hf.modeling.model import is_two_tower_folder
from ttsn_hf.modeling.model_card import record_eval_results


@cli_entry
def main(argv: list[str] | None = None) -> dict:
    (args,) = parse_args((EvalArguments,), argv)
    metrics = run_evaluation(args)
    print(markdown_table(metrics))
    print(f"written to {Path(args.output_dir)}: metrics.json, per_query.jsonl, results.md, metrics.png")
    print(f"query by query, open in a browser: {Path(args.output_dir) / 'report.html'}")
    model = metrics["model_name_or_path"]
    if args.update_model_card and is_two_tower_folder(model):
        record_eval_results(model, card_metrics(metrics))
        print(f"metrics written into the model card: {Path(model) / 'README.md'}")
    elif is_two_tower_folder(model):
        print("the model card was left as it is (--update_model_card writes these metrics into it)")
    return metrics


def card_metrics(metrics: dict) -> dict:
    keys = ("recall@10", "mrr", "ndcg@10", "num_queries", "split", "catalogue_size")
    summary = {key: metrics[key] for key in keys if key in metrics}
    summary["description"] = f"eval.py, {metrics.get('split')} split, over {metrics.get('catalogue_size')} products"
    return summary


if __name__ == "__main__":
    main()
