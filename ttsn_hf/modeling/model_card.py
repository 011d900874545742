"""The model card (README.md) written into every saved model folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import TwoTowerModel

EVAL_RESULTS = "eval_results.json"

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


def _front_matter(base_model: str | None) -> str:
    lines = ["---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity", "tags:"]
    lines += ["- ttsn-hf", "- sentence-transformers", "- feature-extraction", "- product-search", "- two-tower"]
    if base_model and not Path(base_model).exists():
        lines.append(f"base_model: {base_model}")
    return "\n".join(lines + ["license: apache-2.0", "---", ""])


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


def render_model_card(model: TwoTowerModel, folder: Path) -> str:
    config = model.config
    training = getattr(config, "training", None) or {}
    base = config.base_model_name_or_path or "unknown"
    towers = "one shared encoder" if config.tie_towers else "separate query and product encoders"
    parts = [
        _front_matter(base if base != "unknown" else None),
        "# Two-tower product search model (ttsn-hf)\n",
        f"A two-tower semantic network for product search: {towers} (base: `{Path(base).name}`), mean pooling, "
        f"L2-normalised {model.embedding_dim}-dim embeddings, cosine similarity. Queries are cut at "
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
    if eval_file.exists():
        metrics = json.loads(eval_file.read_text())
        parts += ["## Evaluation\n", f"{metrics.get('description', 'eval.py over the whole catalogue')}:\n"]
        parts += [_metrics_table(metrics), ""]
    parts += [
        USAGE,
        "## Citation\n",
        "```bibtex\n" + CITATION + "\n```\n",
    ]
    return "\n".join(parts)


def write_model_card(model: TwoTowerModel, folder: Path) -> None:
    (folder / "README.md").write_text(render_model_card(model, folder), encoding="utf-8")


def record_eval_results(folder: str | Path, metrics: dict) -> None:
    """Keep eval.py's metrics beside a saved model and refresh its card."""
    from .model import TwoTowerModel

    folder = Path(folder)
    (folder / EVAL_RESULTS).write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    write_model_card(TwoTowerModel.from_pretrained(folder), folder)
