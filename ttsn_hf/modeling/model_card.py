"""The model card (README.md) written into every saved model folder, built with huggingface_hub's ModelCard.

It is rendered from the folder's config and files only, so eval.py refreshes it without loading the model.
"""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from ..atomic import write_text_atomic
from .configuration import TwoTowerConfig

EVAL_RESULTS = "eval_results.json"
TAGS = ["ttsn-hf", "sentence-transformers", "feature-extraction", "sentence-similarity", "product-search", "two-tower"]
METRIC_TYPES = {"recall@10": "recall_at_10", "mrr": "mrr", "ndcg@10": "ndcg_at_10"}

USAGE = """## Usage

```python
from ttsn_hf import TwoTowerModel

model = TwoTowerModel.from_pretrained("PATH")
queries = model.encode_queries(["usb c cable"])
products = model.encode_products(["Anker USB-C to USB-C cable, 6 ft"])
scores = queries @ products.T
```

With plain sentence-transformers (the same embeddings):

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("PATH")
embeddings = model.encode(["usb c cable"])
```
"""

CITATION = """@article{reddy2022shopping,
  title={Shopping Queries Dataset: A Large-Scale {ESCI} Benchmark for Improving Product Search},
  author={Chandan K. Reddy and Llu\\'is M\\`arquez and Fran Valero and Nikhil Rao and Hugo Zaragoza and
          Sambaran Bandyopadhyay and Arnab Biswas and Anlu Xing and Karthik Subbian},
  journal={arXiv preprint arXiv:2206.06588},
  year={2022}
}"""


def hub_id_or_none(name: str | None) -> str | None:
    """``name`` if it can be a Hub model id (not a local path), else None."""
    if not name or Path(name).exists():
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def card_data(config: TwoTowerConfig, metrics: dict | None) -> ModelCardData:
    training = getattr(config, "training", None) or {}
    eval_results = None
    if metrics:
        dataset = metrics.get("dataset", "Amazon Shopping Queries (ESCI)")
        eval_results = [
            EvalResult(
                task_type="information-retrieval",
                dataset_type="esci",
                dataset_name=dataset,
                metric_type=metric_type,
                metric_value=float(metrics[key]),
                metric_name=key,
            )
            for key, metric_type in METRIC_TYPES.items()
            if key in metrics
        ]
    return ModelCardData(
        library_name="sentence-transformers",
        pipeline_tag="sentence-similarity",
        tags=TAGS,
        license="apache-2.0",
        language="en",
        base_model=hub_id_or_none(config.base_model_name_or_path),
        datasets=training.get("datasets"),
        model_name="ttsn-hf two-tower model",
        eval_results=eval_results or None,
    )


def _schedule_table(training: dict) -> str:
    rows = ["| stage | epochs | learning rate | data |", "|---|---|---|---|"]
    for stage in training.get("schedule", []):
        epochs = ", ".join(str(e) for e in stage["epochs"])
        rows.append(f"| {stage['number']} | {epochs} | {stage['learning_rate']:g} | {stage['data']} |")
    return "\n".join(rows)


def _metrics_table(metrics: dict) -> str:
    keys = [key for key in ("recall@10", "mrr", "ndcg@10", "num_queries") if key in metrics]
    return "\n".join(
        [
            "| " + " | ".join(keys) + " |",
            "|" + "---|" * len(keys),
            "| " + " | ".join(_fmt(metrics[k]) for k in keys) + " |",
        ]
    )


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def render_model_card(folder: Path, config: TwoTowerConfig) -> ModelCard:
    training = getattr(config, "training", None) or {}
    base = config.base_model_name_or_path or "unknown"
    towers = "one shared encoder" if config.tie_towers else "separate query and product encoders"
    parts = [
        "# Two-tower product search model (ttsn-hf)\n",
        f"A two-tower semantic network for product search: {towers} (base model: `{base}`), mean pooling, "
        f"L2-normalised {config.embedding_dim}-dim embeddings, cosine similarity. Queries are cut at "
        f"{config.query_max_length} tokens, products at {config.product_max_length}.\n",
    ]
    if training:
        parts += ["## Training\n", f"Data: {training.get('data', 'Amazon Shopping Queries (ESCI)')}\n"]
        parts += [_schedule_table(training), ""]
        if "loss" in training:
            parts += [
                "Loss (weighted contrastive + in-batch InfoNCE):\n",
                "```json",
                json.dumps(training["loss"], indent=2),
                "```\n",
            ]
    else:
        parts.append("Not trained yet: the base encoder wrapped as a two-tower model.\n")
    eval_file = folder / EVAL_RESULTS
    metrics = json.loads(eval_file.read_text()) if eval_file.exists() else None
    if metrics:
        parts += ["## Evaluation\n", f"{metrics.get('description', 'eval.py over the whole catalogue')}:\n"]
        parts += [_metrics_table(metrics), ""]
    parts += [USAGE, "## Citation\n", "```bibtex\n" + CITATION + "\n```\n"]
    content = f"---\n{card_data(config, metrics).to_yaml()}\n---\n\n" + "\n".join(parts)
    return ModelCard(content, ignore_metadata_errors=False)


def write_model_card(folder: Path, config: TwoTowerConfig) -> None:
    write_text_atomic(folder / "README.md", str(render_model_card(folder, config)))


def record_eval_results(folder: str | Path, metrics: dict) -> None:
    """Keep eval.py's metrics beside a saved model and refresh its card (from config.json; no model loaded)."""
    folder = Path(folder)
    write_text_atomic(folder / EVAL_RESULTS, json.dumps(metrics, indent=2))
    write_model_card(folder, TwoTowerConfig.from_pretrained(folder))
