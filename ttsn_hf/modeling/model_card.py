"""The model card (README.md) written into every saved model folder, built with huggingface_hub's ModelCard.

It is rendered from the folder's config and files only, so eval.py refreshes it without loading the model.
"""

from __future__ import annotations

import json
import re
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

`"{name}"` is this model's folder (give its path) or its Hub id. With sentence-transformers, `encode_query` and
`encode_document` embed as the query and product towers (`encode_query` cuts at {query_length} tokens,
`encode_document` at {product_length}); plain `encode` embeds as a product.

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("{name}")
queries = model.encode_query(["usb c cable"])
products = model.encode_document(["Anker USB-C to USB-C cable, 6 ft"])
scores = model.similarity(queries, products)
```

With ttsn-hf (the same embeddings for the same text):

```python
from ttsn_hf import TwoTowerModel

model = TwoTowerModel.from_pretrained("{name}")
queries = model.encode_queries(["usb c cable"])
products = model.encode_products(["Anker USB-C to USB-C cable, 6 ft"])
scores = queries @ products.T
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
    metrics = metrics or {}
    record = getattr(config, "checkpoint_record", None) or {}
    validation = {key.removeprefix("eval_"): value for key, value in (record.get("validation") or {}).items()}
    eval_results = _eval_results(metrics, metrics.get("dataset")) + _eval_results(validation, split="validation")
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


def _eval_results(metrics: dict, dataset: str | None = None, split: str | None = None) -> list[EvalResult]:
    return [
        EvalResult(
            task_type="information-retrieval",
            dataset_type="esci",
            dataset_name=dataset or "Amazon Shopping Queries (ESCI)",
            dataset_split=split,
            metric_type=metric_type,
            metric_value=float(metrics[key]),
            metric_name=key if split is None else f"{split} {key}",
        )
        for key, metric_type in METRIC_TYPES.items()
        if key in metrics
    ]


def _schedule_table(schedule: list[dict]) -> str:
    rows = ["| stage | epochs | learning rate | data |", "|---|---|---|---|"]
    for row in schedule:
        epochs = ", ".join(str(e) for e in row["epochs"])
        rows.append(f"| {row['number']} | {epochs} | {row['learning_rate']:g} | {row['data']} |")
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


def render_model_card(folder: Path, config: TwoTowerConfig, name: str | None = None) -> ModelCard:
    """The card of the model saved in ``folder``, its usage naming ``name`` (default: the folder's name). A model
    saved by train.py's schedule carries ``config.checkpoint_record`` (see :func:`checkpoint_record`): its card
    says which epoch and stage it is, what it was trained on up to then and its validation figures."""
    name = name or final_name(folder)
    training = getattr(config, "training", None) or {}
    record = getattr(config, "checkpoint_record", None) or {}
    base = config.base_model_name_or_path or "unknown"
    towers = "one shared encoder" if config.tie_towers else "separate query and product encoders"
    parts = [
        f"# {name}: two-tower product search model (ttsn-hf)\n",
        f"A two-tower semantic network for product search: {towers} (base model: `{base}`), mean pooling, "
        f"L2-normalised {config.embedding_dim}-dim embeddings, cosine similarity. Queries are cut at "
        f"{config.query_max_length} tokens, products at {config.product_max_length}.\n",
    ]
    if record:
        parts.append(_checkpoint_paragraph(record, training))
    parts += _training_section(training, record)
    if record.get("validation"):
        parts += _validation_section(record, base)
    eval_file = folder / EVAL_RESULTS
    metrics = json.loads(eval_file.read_text()) if eval_file.exists() else None
    if metrics:
        parts += ["## Evaluation\n", f"{metrics.get('description', 'eval.py over the whole catalogue')}:\n"]
        parts += [_metrics_table(metrics), ""]
    parts += [_usage(name, config), "## Citation\n", "```bibtex\n" + CITATION + "\n```\n"]
    content = f"---\n{card_data(config, metrics).to_yaml()}\n---\n\n" + "\n".join(parts)
    return ModelCard(content, ignore_metadata_errors=False)


def final_name(folder: Path) -> str:
    """The folder's name, that of its final place while it is written under an ``atomic_path`` temporary name."""
    temporary = re.fullmatch(r"\.(.+)\.tmp-[0-9a-f]{8}", Path(folder).name)
    return temporary.group(1) if temporary else Path(folder).name


def checkpoint_record(epoch: int, stage: int, metrics: dict, base_metrics: dict | None = None) -> dict:
    """What a model saved after an epoch of the schedule records of itself (``config.checkpoint_record``, plain
    JSON): its epoch, stage and validation figures, and those of the base model (epoch 0) when they were scored."""
    record = {"epoch": epoch, "stage": stage, "validation": validation_figures(metrics)}
    if base_metrics:
        record["base_validation"] = validation_figures(base_metrics)
    return record


def validation_figures(metrics: dict) -> dict:
    """The ``eval_`` figures of a Trainer evaluation, without its timings."""
    return {
        key: float(value)
        for key, value in metrics.items()
        if key.startswith("eval_") and not key.endswith(("_runtime", "_per_second")) and isinstance(value, int | float)
    }


def _checkpoint_paragraph(record: dict, training: dict) -> str:
    epoch, stage = record["epoch"], record.get("stage")
    planned = [e for row in training.get("schedule", []) for e in row["epochs"]]
    of_epochs = f" of {max(planned)}" if planned else ""
    of_stages = f" of {len(training['schedule'])}" if training.get("schedule") else ""
    text = (
        "**Epoch 0: the base model before training.**"
        if epoch == 0
        else f"**Epoch {epoch}{of_epochs} (stage {stage}{of_stages}) of a ttsn-hf training run.**"
    )
    if "best_of" in record:
        metric = record.get("selected_by", training.get("selection_metric", "the validation metric"))
        text += (
            f" Kept as the run's best model: the best {_label(metric)} over the validation queries among the epochs "
            f"validated when it was saved ({_epochs(record['best_of'])}); an epoch validated later that did not beat "
            "it left it as it is."
        )
    if "merge_base_weight" in training:
        text += (
            f" Its weights were then interpolated with the base model's (WiSE-FT, base weight "
            f"{training['merge_base_weight']:g}): the validation figures below are those of the epoch before the merge."
        )
    return text + "\n"


def _training_section(training: dict, record: dict) -> list[str]:
    epoch = record.get("epoch")
    if epoch == 0 or not (training or epoch):
        return ["Not trained yet: the base encoder wrapped as a two-tower model.\n"]
    if not training:
        return []
    parts = ["## Training\n", f"Data: {training.get('data', 'Amazon Shopping Queries (ESCI)')}\n"]
    if epoch is None:
        parts += ["The training schedule:\n", _schedule_table(training.get("schedule", [])), ""]
    else:
        done = [
            {**row, "epochs": [e for e in row["epochs"] if e <= epoch]}
            for row in training.get("schedule", [])
            if row["epochs"][0] <= epoch
        ]
        parts += [f"Trained on, up to epoch {epoch}:\n", _schedule_table(done), ""]
        later = [
            f"stage {row['number']} ({_epochs([e for e in row['epochs'] if e > epoch])}: {row['data']})"
            for row in training.get("schedule", [])
            if row["epochs"][-1] > epoch
        ]
        if later:
            parts.append(f"Not in this model: the run's schedule goes on with {'; '.join(later)}.\n")
    if "loss" in training:
        loss = json.dumps(training["loss"], indent=2)
        parts += ["Loss (weighted contrastive + in-batch InfoNCE):\n", "```json", loss, "```\n"]
    return parts


def _validation_section(record: dict, base: str) -> list[str]:
    ours, theirs = record["validation"], record.get("base_validation") or {}
    keys = sorted(ours, key=lambda key: (key.removeprefix("eval_") not in METRIC_TYPES, key != "eval_loss"))
    rows = [(f"this model (epoch {record['epoch']})", ours)]
    if theirs:
        rows.append((f"base model `{base}` (epoch 0)", theirs))
    table = ["| model | " + " | ".join(_label(key) for key in keys) + " |", "|---|" + "---|" * len(keys)]
    table += ["| " + " | ".join([who, *(_fmt(figures.get(key, "-")) for key in keys)]) + " |" for who, figures in rows]
    intro = "Validation figures, as train.py scored the epoch (the validation queries, searched in the run's "
    intro += "selection catalogue):" if theirs else "selection catalogue; the base model was not scored):"
    return ["## Validation\n", intro + "\n", *table, ""]


def _usage(name: str, config: TwoTowerConfig) -> str:
    return USAGE.format(name=name, query_length=config.query_max_length, product_length=config.product_max_length)


def _label(metric: str) -> str:
    return metric.removeprefix("eval_")


def _epochs(epochs: list[int]) -> str:
    """``epoch 2`` or ``epochs 4, 5``."""
    return ("epoch " if len(epochs) == 1 else "epochs ") + ", ".join(str(e) for e in epochs)


def write_model_card(folder: Path, config: TwoTowerConfig, name: str | None = None) -> None:
    write_text_atomic(folder / "README.md", str(render_model_card(folder, config, name)))


def record_eval_results(folder: str | Path, metrics: dict) -> None:
    """Keep eval.py's metrics beside a saved model and refresh its card (from config.json; no model loaded)."""
    folder = Path(folder)
    write_text_atomic(folder / EVAL_RESULTS, json.dumps(metrics, indent=2))
    write_model_card(folder, TwoTowerConfig.from_pretrained(folder))
