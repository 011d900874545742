"""Command-line arguments of train.py: TrainingArguments with this project's defaults, plus model, data and loss."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments


@dataclass(repr=False)  # keep TrainingArguments' repr, which masks tokens
class TwoTowerTrainingArguments(TrainingArguments):
    """``TrainingArguments`` with defaults for the stage schedule: evaluate and checkpoint every epoch."""

    output_dir: str | None = field(default="checkpoints", metadata={"help": "Where epoch_N/, best_model/ go."})
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Pairs per batch and process."})
    per_device_eval_batch_size: int = field(default=128, metadata={"help": "Pairs per eval batch and process."})
    eval_strategy: str = field(default="epoch", metadata={"help": "When to compute the validation loss."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to write checkpoint-N for resuming."})
    save_total_limit: int | None = field(default=1, metadata={"help": "checkpoint-N folders kept per stage."})
    logging_steps: float = field(default=10, metadata={"help": "Log the loss components every N steps."})
    warmup_steps: float = field(default=0.1, metadata={"help": "Linear warm-up: steps, or a ratio in [0, 1)."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep the pair columns."})
    report_to: None | str | list[str] = field(default="none", metadata={"help": "none, tensorboard, ..."})
    metric_for_best_model: str | None = field(
        default="eval_ndcg@10",
        metadata={"help": "best_model/: the epoch with the best validation retrieval metric (or eval_loss)."},
    )
    train_sampling_strategy: str = field(
        default="group_by_length", metadata={"help": "group_by_length batches products of similar length."}
    )

    def __post_init__(self):
        if not torch.cuda.is_available():
            self.use_cpu = True  # bf16 autocast on the CPU; gloo when several CPU processes are launched
        super().__post_init__()


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Base encoder (local folder or hub id); default: packaged all-MiniLM-L6-v2."}
    )
    tie_towers: bool = field(default=True, metadata={"help": "One encoder for queries and products."})
    query_max_length: int = field(default=32, metadata={"help": "Query token limit."})
    product_max_length: int = field(default=128, metadata={"help": "Product token limit."})


@dataclass
class DataArguments:
    esci_dir: str | None = field(default=None, metadata={"help": "ESCI data: official folder, file or dataset."})
    data_dir: str | None = field(default=None, metadata={"help": "Prepared data from `python prepare.py`."})
    hard_negatives: str | None = field(
        default=None, metadata={"help": "Mined negatives (parquet); default: mined after stage 1."}
    )
    num_random_negatives: int = field(default=4, metadata={"help": "Random catalogue negatives per query."})
    negatives_per_query: int = field(
        default=1, metadata={"help": "Negatives drawn per query group and epoch from the query's pool."}
    )
    teacher_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Distillation teacher: a SentenceTransformer folder or hub id (scores cached)."}
    )
    teacher_cross_encoder: bool = field(default=False, metadata={"help": "The teacher is a CrossEncoder."})
    teacher_cache_dir: str | None = field(
        default=None, metadata={"help": "Where teacher scores are cached; default OUTPUT_DIR/teacher_scores."}
    )
    selection_corpus_size: int = field(
        default=100_000, metadata={"help": "Products searched by the per-epoch validation retrieval (judged + sample)."}
    )
    pseudo_queries: int = field(
        default=0, metadata={"help": "Catalogue products given a pseudo-query from their title (domain adaptation)."}
    )
    validation_fraction: float = field(default=0.1, metadata={"help": "Share of train queries held out."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Cap the training pairs (for quick runs)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Cap the validation pairs."})
    num_threads: int = field(default=0, metadata={"help": "Torch CPU threads per process; 0: cores / processes."})


@dataclass
class ScheduleArguments:
    stage: str = field(default="all", metadata={"help": "1, 2, 3 or all.", "choices": ["1", "2", "3", "all"]})
    stage_epochs: str = field(default="2,1,2", metadata={"help": "Epochs of stages 1,2,3."})
    stage_learning_rates: str = field(default="2e-5,2e-5,2e-6", metadata={"help": "Learning rates of stages 1,2,3."})
    temperature: float = field(default=0.05, metadata={"help": "In-batch InfoNCE temperature."})
    mask_false_negatives: bool = field(
        default=True, metadata={"help": "Keep the query's known positives out of its in-batch negatives."}
    )
    margin: float = field(default=0.5, metadata={"help": "Contrastive margin (cosine distance)."})
    contrastive_weight: float = field(default=1.0, metadata={"help": "Weight of the contrastive loss."})
    infonce_weight: float = field(default=1.0, metadata={"help": "Weight of the in-batch InfoNCE loss."})
    label_weights: str = field(default="E=1.0,S=0.5,C=0.25,I=1.0", metadata={"help": "Pair weight per ESCI label."})
    label_weighted_infonce: bool = field(
        default=True, metadata={"help": "Weight each InfoNCE anchor by its positive's label weight."}
    )
    distillation_weight: float = field(default=0.0, metadata={"help": "Weight of the teacher distillation loss."})
    distillation_loss: str = field(
        default="margin_mse", metadata={"help": "margin_mse or kl.", "choices": ["margin_mse", "kl"]}
    )
    merge_base_weight: float = field(
        default=0.0, metadata={"help": "WiSE-FT: best_model = (1-w) trained + w base; 0 = off."}
    )
    mining_num_negatives: int = field(default=10, metadata={"help": "Hard negatives mined per query."})
    mining_relative_margin: float = field(
        default=0.05, metadata={"help": "Mined negatives score below (1 - this) x the positives' score."}
    )

    def parsed_label_weights(self) -> dict[str, float]:
        pairs = (item.split("=") for item in self.label_weights.split(","))
        return {label.strip(): float(weight) for label, weight in pairs} | {"": 1.0}
