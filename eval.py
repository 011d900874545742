"""Evaluate a two-tower model against a baseline encoder and BM25 on ESCI: metrics.json, per_query.jsonl,
results.md and metrics.png in --output_dir.

    python eval.py --model_name_or_path checkpoints/best_model --esci_dir ../shared/data/esci-us-sample --split test
"""

from ttsn_hf.cli import parse_args
from ttsn_hf.errors import cli_entry
from ttsn_hf.evaluation.evaluate import EvalArguments, markdown_table, run_evaluation
from ttsn_hf.modeling.model import is_two_tower_folder
from ttsn_hf.modeling.model_card import record_eval_results


@cli_entry
def main(argv: list[str] | None = None) -> dict:
    (args,) = parse_args((EvalArguments,), argv=argv)
    metrics = run_evaluation(args)
    print(markdown_table(metrics))
    print(f"report written to {args.output_dir}/")
    model = metrics["model_name_or_path"]
    if is_two_tower_folder(model):
        record_eval_results(model, card_metrics(metrics))
    return metrics


def card_metrics(metrics: dict) -> dict:
    keys = ("recall@10", "mrr", "ndcg@10", "num_queries", "split", "catalogue_size")
    summary = {key: metrics[key] for key in keys if key in metrics}
    summary["description"] = f"eval.py, {metrics.get('split')} split, over {metrics.get('catalogue_size')} products"
    return summary


if __name__ == "__main__":
    main()
