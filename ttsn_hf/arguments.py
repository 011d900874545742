"""Every command-line argument, in one place: shared dataclasses that check themselves, and the one parser.

Each script parses through :func:`parse_args` into dataclasses of this module. Shared pieces: the data source
(``--esci_dir`` or ``--data_dir``, never both), the output location (a folder, or a file for mine.py). Bad input,
an unknown or abbreviated flag included, raises :class:`~ttsn_hf.errors.UserInputError`: one line, exit 2.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import ClassVar

import torch
from transformers import HfArgumentParser, TrainingArguments

from .atomic import check_output_path
from .data.esci import DEFAULT_MAX_TEXT_CHARS, DEFAULT_TEMPLATE
from .data.stages import DEFAULT_NUM_RANDOM_NEGATIVES
from .errors import UserInputError
from .evaluation.metrics import metric_names
from .extras import require
from .labels import DEFAULT_LABEL_WEIGHTS_TEXT, parse_label_weights
from .losses.combined import COMPONENTS

DEFAULT_DATA_DIR = "data"
# TrainingArguments options that --help shows (all of them are accepted; --help-all lists every one)
BRIEF_TRAINING_OPTIONS = {
    "output_dir", "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
    "bf16", "seed", "max_steps", "logging_steps", "report_to", "resume_from_checkpoint", "save_total_limit",
    "dataloader_num_workers", "gradient_checkpointing", "push_to_hub", "hub_model_id", "hub_private_repo",
    "warmup_steps", "weight_decay",
}  # fmt: skip
# what those options mean here, in place of TrainingArguments' own texts
TRAINING_HELP = {
    "max_steps": "Steps per stage, in place of the stage's epochs (for quick runs; -1: off).",
    "gradient_checkpointing": "Recompute activations in the backward pass (less memory); same gradients, tested.",
    "push_to_hub": "Push best_model/ to the Hub after the schedule.",
    "hub_model_id": "Hub repo for --push_to_hub (default: the output folder's name).",
    "hub_private_repo": "Create the --push_to_hub repo private (default: the account's default).",
}
# what --metric_for_best_model can name: the validation loss and its components, and every retrieval metric the
# per-epoch selection evaluator computes (ttsn_hf/evaluation/selection.py)
SELECTABLE_METRICS = ("eval_loss", *(f"eval_{name}" for name in COMPONENTS), *(f"eval_{m}" for m in metric_names(10)))


# ---------------------------------------------------------------------------------------------- parsing


class _Parser(HfArgumentParser):
    def error(self, message: str):  # argparse would print the whole usage, then exit
        raise UserInputError(f"{message} (see --help)")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option under its first spelling only (HfArgumentParser also accepts --dashed-names)."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings:
            return super()._format_action_invocation(action)
        if action.nargs == 0:
            return action.option_strings[0]
        return f"{action.option_strings[0]} {self._format_args(action, self._get_default_metavar_for_optional(action))}"


def parse_args(dataclass_types: tuple, argv: list[str] | None = None, aliases: dict[str, str] | None = None):
    """Parse ``argv`` into instances of ``dataclass_types``; flags must match exactly (no abbreviations).

    ``aliases`` maps old flag names onto the canonical ones. ``--help`` lists this package's options first and a
    short list of ``TrainingArguments``; ``--help-all`` lists every option.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = [_rename(arg, aliases or {}) for arg in argv]
    parser = build_parser(dataclass_types)
    if "--help-all" in argv:
        parser.print_help()
        raise SystemExit(0)
    if any(issubclass(kind, TrainingArguments) for kind in dataclass_types):
        _brief_help(parser)
    try:
        *parsed, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except UserInputError:
        raise
    except (ValueError, ImportError) as error:  # a dataclass's own check (TrainingArguments' among them)
        raise UserInputError(str(error).strip().splitlines()[0]) from None
    if unknown:
        raise UserInputError(_unknown_flag_message(unknown, parser))
    for arguments in parsed:
        if isinstance(arguments, DataSourceArguments):
            arguments.check_paths()
    return tuple(parsed)


def build_parser(dataclass_types: tuple) -> HfArgumentParser:
    """The parser of ``dataclass_types``: exact flags only, one line per mistake, each option under one name."""
    parser = _Parser(dataclass_types, allow_abbrev=False, formatter_class=_HelpFormatter, usage="%(prog)s [options]")
    _fold_negations(parser)
    return parser


def _rename(arg: str, aliases: dict[str, str]) -> str:
    name, sep, value = arg.partition("=")
    return aliases.get(name, name) + sep + value


def _fold_negations(parser: argparse.ArgumentParser) -> None:
    """HfArgumentParser gives a boolean option defaulting to True a ``--no_X`` twin with the same help: name
    the twin in the option's own help instead of repeating it."""
    by_dest = {action.dest: action for action in parser._actions if not action.option_strings[0].startswith("--no")}
    for action in parser._actions:
        if action.option_strings and action.option_strings[0].startswith("--no_") and action.dest in by_dest:
            action.help = argparse.SUPPRESS
            positive = by_dest[action.dest]
            positive.help = f"{positive.help} ({action.option_strings[0]}: off)"


def _brief_help(parser: argparse.ArgumentParser) -> None:
    shown = BRIEF_TRAINING_OPTIONS | set(TwoTowerTrainingArguments.__annotations__)  # ours and re-defaulted ones
    training = {spec.name for spec in fields(TrainingArguments)}
    for action in parser._actions:
        if action.dest in training and action.dest not in shown:
            action.help = argparse.SUPPRESS
        elif action.dest in TRAINING_HELP:
            action.help = TRAINING_HELP[action.dest]
    parser.epilog = "Every transformers TrainingArguments option is accepted too: --help-all lists them all."


def _unknown_flag_message(unknown: list[str], parser: argparse.ArgumentParser) -> str:
    flag = next((arg for arg in unknown if arg.startswith("-")), unknown[0])
    known = [option for action in parser._actions for option in action.option_strings]
    close = difflib.get_close_matches(flag.split("=")[0], known, n=1)
    hint = f"; did you mean {close[0]}?" if close else "; see --help"
    return f"unknown argument {flag!r}{hint}"


# ---------------------------------------------------------------------------------------------- shared pieces


def refuse_changed(arguments, names: tuple[str, ...], why: str) -> None:
    """A one-line error for the first of ``names`` whose value differs from its default: an option that the
    mode in use would ignore (``why`` says what it needs)."""
    defaults = {spec.name: spec for spec in fields(arguments)}
    for name in names:
        spec = defaults[name]
        default = spec.default_factory() if spec.default is MISSING else spec.default
        if getattr(arguments, name) != default:
            raise UserInputError(f"--{name} {why}")


@dataclass
class DataSourceArguments:
    """Where the ESCI data comes from: raw files (``--esci_dir``) or prepared data (``--data_dir``), not both.
    With neither, ``data/`` is used when ``prepare.py`` wrote it there."""

    esci_dir: str | None = field(
        default=None,
        metadata={"help": "ESCI data: the official folder, a CSV/Parquet/JSONL table, a saved datasets folder."},
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "Prepared data from `python prepare.py` (default data/ when it exists)."}
    )

    def __post_init__(self):
        if self.esci_dir and self.data_dir:
            raise UserInputError("pass one of --esci_dir (ESCI data) and --data_dir (prepared data), not both")
        if not self.esci_dir and not self.data_dir and Path(DEFAULT_DATA_DIR, "summary.json").is_file():
            self.data_dir = DEFAULT_DATA_DIR

    def check_paths(self) -> None:
        """A data path that does not exist: one line naming the flag and the fix (``parse_args`` calls this once
        every flag is known)."""
        _check_esci_dir(self.esci_dir)
        if self.data_dir and not Path(self.data_dir).is_dir():
            raise UserInputError(
                f"--data_dir {self.data_dir}: no such folder; write it first with "
                f"`python prepare.py --esci_dir ESCI --output_dir {self.data_dir}`, or pass --esci_dir"
            )

    @property
    def data_source(self) -> str:
        """The folder or file to load; a missing source is a one-line error."""
        if not (self.esci_dir or self.data_dir):
            raise UserInputError(
                "no data: pass --esci_dir (ESCI files) or --data_dir (from `python prepare.py`; default data/)"
            )
        return self.esci_dir or self.data_dir


def _check_esci_dir(path: str | None) -> None:
    if path and not Path(path).exists() and not _hub_id_to_try(path):
        raise UserInputError(
            f"--esci_dir {path}: no such file or folder; pass the official ESCI folder (its "
            "shopping_queries_dataset_*.parquet files), a CSV/Parquet/JSONL table or a saved datasets folder"
        )


def _hub_id_to_try(path: str) -> bool:
    """A missing local path that may be a Hub dataset id (``owner/name``), while the Hub may be reached."""
    from .data.esci import TABLE_SUFFIXES, hub_offline

    looks_like_id = re.fullmatch(r"[\w.-]+(/[\w.-]+)?", path) is not None and not path.startswith(".")
    return looks_like_id and not path.lower().endswith(TABLE_SUFFIXES) and not hub_offline()


# ---------------------------------------------------------------------------------------------- train.py


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
        metadata={
            "help": "best_model/: the trained epoch with the best value of this validation metric, one of "
            + ", ".join(SELECTABLE_METRICS)
            + " (the eval_ prefix may be left out)."
        },
    )

    train_sampling_strategy: str = field(
        default="group_by_length", metadata={"help": "group_by_length batches products of similar length."}
    )
    infonce_mini_batch_size: int = field(
        default=0,
        metadata={
            "help": "GradCache: embed the batch this many query groups at a time (memory of one chunk, the "
            "gradients of the whole batch, every product an in-batch negative); 0: off."
        },
    )
    gradient_accumulation_steps: int = field(
        default=1,
        metadata={
            "help": "Steps whose gradients add up to one update. With InfoNCE each step's queries see only its own "
            "products as negatives: for a larger batch in the same memory, use --infonce_mini_batch_size."
        },
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Train over the epochs an earlier run left in --output_dir."}
    )
    random_bits_dropout: bool = field(
        default=True,
        metadata={"help": "CPU dropout masks from 16-bit random integers (~3x cheaper than torch's; p to 2^-16)."},
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "Resume an interrupted run: 'true' picks the newest complete checkpoint of the stage it stopped "
            "in; a path (OUTPUT/stageN/checkpoint-M) resumes that stage, and the stages after it start fresh."
        },
    )

    # TrainingArguments options the stage schedule sets itself or has no use for: refused when changed
    refused: ClassVar[dict[str, str]] = {
        "learning_rate": "the schedule sets each stage's rate: use --stage_learning_rates (default 2e-5,2e-5,2e-6)",
        "num_train_epochs": "the schedule sets each stage's epochs: use --stage_epochs (default 2,1,2)",
        **dict.fromkeys(
            ("do_train", "do_eval", "do_predict"), "train.py always trains and validates; eval.py evaluates a model"
        ),
        **dict.fromkeys(
            ("eval_strategy", "eval_steps", "eval_delay", "eval_on_start"),
            "train.py validates at the end of every epoch (epoch_N/, best_model/ and the base model's epoch 0 "
            "come from those validations)",
        ),
        "load_best_model_at_end": "train.py picks best_model/ across the stages by --metric_for_best_model",
        **dict.fromkeys(
            (
                "prediction_loss_only",
                "label_names",
                "include_for_metrics",
                "batch_eval_metrics",
                "eval_do_concat_batches",
                "eval_use_gather_object",
                "eval_accumulation_steps",
            ),
            "validation computes the loss and retrieval metrics, never predictions to collect",
        ),  # fmt: skip
        "label_smoothing_factor": "the losses are contrastive and InfoNCE (see --margin, --temperature)",
        "average_tokens_across_devices": "the losses are means over query groups, not tokens",
        "include_num_input_tokens_seen": "batches are query groups of two towers, not one input_ids tensor",
        "remove_unused_columns": "the collator needs every column of the query groups",
        "length_column_name": "length grouping reads the 'length' column train.py writes",
        **dict.fromkeys(
            ("hub_strategy", "hub_always_push"), "train.py pushes best_model/ once, after the schedule (--push_to_hub)"
        ),
        "use_cache": "a key/value cache is for generative models; this encoder has none",
        **dict.fromkeys(("use_liger_kernel", "liger_kernel_config"), "Liger kernels do not cover this encoder"),
    }

    def __post_init__(self):
        self._as_given = {name: getattr(self, name) for name in self.refused}  # TrainingArguments derives some
        self.metric_for_best_model = checked_selection_metric(self.metric_for_best_model)
        if self.infonce_mini_batch_size < 0:
            raise UserInputError(
                f"--infonce_mini_batch_size must be 0 (off) or more; got {self.infonce_mini_batch_size}"
            )
        check_output_path(self.output_dir, "--output_dir")
        if not torch.cuda.is_available():
            self.use_cpu = True  # bf16 autocast on the CPU; gloo when several CPU processes are launched
        super().__post_init__()
        if "tensorboard" in self.report_to:
            require("tensorboard", "--report_to tensorboard")

    def refuse_changed_options(self) -> None:
        """A one-line error for an option of :attr:`refused` changed from its default (the stage schedule calls
        this before anything else; each stage's Trainer then gets its own copy with the stage's epochs and rate)."""
        defaults = {spec.name: spec for spec in fields(self)}
        for name, reason in self.refused.items():
            spec = defaults[name]
            default = spec.default_factory() if spec.default is MISSING else spec.default
            value = self._as_given[name]
            if value != default and not (default == "no" and value is False):  # HfArgumentParser's str|bool
                raise UserInputError(f"--{name}: {reason}")


def checked_selection_metric(name: str | None) -> str:
    """``--metric_for_best_model`` as the ``eval_`` name selection records, or a one-line error."""
    name = name or "eval_loss"
    full = name if name.startswith("eval_") else f"eval_{name}"
    if full not in SELECTABLE_METRICS:
        close = difflib.get_close_matches(full, SELECTABLE_METRICS, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise UserInputError(
            f"--metric_for_best_model {name}: not a validation metric; {hint}choose one of "
            + ", ".join(SELECTABLE_METRICS)
        )
    return full


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Base encoder (local folder or hub id); default: packaged all-MiniLM-L6-v2."}
    )
    tie_towers: bool = field(default=True, metadata={"help": "One encoder for queries and products."})
    query_max_length: int = field(default=32, metadata={"help": "Query token limit."})
    product_max_length: int = field(default=128, metadata={"help": "Product token limit."})
    packed_sequences: bool = field(
        default=True,
        metadata={"help": "No pad tokens through the encoder, attention per sequence (false: padded batches)."},
    )


@dataclass
class DataArguments(DataSourceArguments):
    hard_negatives: str | None = field(
        default=None, metadata={"help": "Mined negatives (parquet); default: mined after stage 1."}
    )
    num_random_negatives: int = field(
        default=DEFAULT_NUM_RANDOM_NEGATIVES,
        metadata={"help": "Random catalogue negatives per query, drawn again each epoch (every stage)."},
    )
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
    validation_fraction: float | None = field(
        default=None,
        metadata={"help": "Share of train queries held out (default 0.1; with --data_dir, the prepared data's)."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Cap the training pairs (for quick runs)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Cap the validation pairs."})
    num_threads: int = field(default=0, metadata={"help": "Torch CPU threads per process; 0: cores / processes."})

    def __post_init__(self):
        super().__post_init__()
        if self.validation_fraction is not None and not 0 <= self.validation_fraction < 1:
            raise UserInputError(f"--validation_fraction must be in [0, 1); got {self.validation_fraction}")
        if self.num_random_negatives < 0:
            raise UserInputError(f"--num_random_negatives must be >= 0; got {self.num_random_negatives}")


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
    label_weights: str = field(default=DEFAULT_LABEL_WEIGHTS_TEXT, metadata={"help": "Pair weight per ESCI label."})
    label_weighted_infonce: bool = field(
        default=True, metadata={"help": "Weight each InfoNCE anchor by its positive's label weight."}
    )
    distillation_weight: float = field(default=0.0, metadata={"help": "Weight of the teacher distillation loss."})
    distillation_loss: str = field(
        default="margin_mse", metadata={"help": "margin_mse or kl.", "choices": ["margin_mse", "kl"]}
    )
    distillation_temperature: float = field(
        default=0.05,
        metadata={
            "help": "--distillation_loss kl: softmax temperature of both sides (the loss is scaled by its square)."
        },
    )
    merge_base_weight: float = field(
        default=0.0, metadata={"help": "WiSE-FT: best_model = (1-w) trained + w base; 0 = off."}
    )
    mining_num_negatives: int = field(default=10, metadata={"help": "Hard negatives mined per query."})
    mining_relative_margin: float = field(
        default=0.05, metadata={"help": "Mined negatives score below (1 - this) x the positives' score."}
    )
    keep_checkpoints: bool = field(
        default=False, metadata={"help": "Keep finished stages' checkpoint-N folders (resume points)."}
    )

    def __post_init__(self):
        self.epochs_per_stage = _three("--stage_epochs", self.stage_epochs, int)
        self.learning_rates = _three("--stage_learning_rates", self.stage_learning_rates, float)
        if any(count < 1 for count in self.epochs_per_stage):
            raise UserInputError(f"--stage_epochs: every stage needs at least 1 epoch; got {self.stage_epochs}")
        self.parsed_label_weights()  # a malformed --label_weights fails here, before any work

    def parsed_label_weights(self) -> dict[str, float]:
        return parse_label_weights(self.label_weights)


def _three(flag: str, text: str, kind: type) -> tuple:
    try:
        values = tuple(kind(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise UserInputError(
            f"{flag}: expected three comma-separated {kind.__name__} values (stages 1,2,3); got {text!r}"
        )
    return values


# ---------------------------------------------------------------------------------------------- prepare.py


@dataclass
class PrepareArguments(DataSourceArguments):
    output_dir: str = field(default=DEFAULT_DATA_DIR, metadata={"help": "Where catalogue/, judgements/, stageN/ go."})
    hard_negatives: str | None = field(
        default=None, metadata={"help": "Mined hard negatives (parquet/csv/jsonl: query_id, product_id[, rank])."}
    )
    stages: str | None = field(default=None, metadata={"help": "Comma-separated stages; default 1,3 or 1,2,3."})
    seed: int = field(default=42)
    locale: str = field(default="us", metadata={"help": "product_locale to keep; '' keeps all."})
    small_version: int = field(default=1, metadata={"help": "1: the small version only; 0: all rows."})
    split: str | None = field(default=None, metadata={"help": "Keep only this ESCI split (train/test)."})
    validation_fraction: float = field(default=0.1, metadata={"help": "Share of train queries held out."})
    hard_negatives_per_query: int | None = field(
        default=None, metadata={"help": "Cap on mined negatives per query (best first)."}
    )
    text_template: str = field(default=DEFAULT_TEMPLATE, metadata={"help": "Product text template."})
    max_text_chars: int = field(default=DEFAULT_MAX_TEXT_CHARS, metadata={"help": "Product text length cap."})
    allow_missing_titles: bool = field(
        default=False, metadata={"help": "Render products without a title from their other fields."}
    )
    num_proc: int | None = field(default=None, metadata={"help": "Processes for the product-text map."})
    show: str | None = field(
        default=None, metadata={"help": "Print a few query groups of a prepared folder, texts joined, and exit."}
    )

    def __post_init__(self):
        if self.show:
            if not Path(self.show).is_dir():
                raise UserInputError(f"--show {self.show}: no such folder; pass a folder prepare.py wrote")
            shown = {"show", "stages", "esci_dir", "data_dir"}  # the data source may be data/, found by default
            others = tuple(spec.name for spec in fields(self) if spec.name not in shown)
            refuse_changed(self, (*others, "esci_dir"), "prepares data; --show only prints a prepared folder")
            self.stage_list = _stage_list(self.stages)
            return
        if self.data_dir:
            raise UserInputError("prepare.py reads raw ESCI data: pass --esci_dir, not --data_dir")
        if not self.esci_dir:
            raise UserInputError("prepare.py needs --esci_dir (the official ESCI folder, or a table or dataset)")
        check_output_path(self.output_dir, "--output_dir")
        self.stage_list = _stage_list(self.stages)


def _stage_list(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise UserInputError(f"--stages must be comma-separated stage numbers like 1,2,3; got {text!r}") from None


# ---------------------------------------------------------------------------------------------- mine.py


@dataclass
class MineArguments(DataSourceArguments):
    model_name_or_path: str = field(
        default=None,
        metadata={"aliases": ["--checkpoint"], "help": "Checkpoint (two-tower folder) or base encoder to mine with."},
    )
    output: str = field(default="data/hard_negatives_stage2.parquet", metadata={"help": "Parquet file to write."})
    num_negatives: int = field(default=10, metadata={"help": "Negatives per query."})
    margin: float | None = field(default=None, metadata={"help": "Absolute margin: score <= positive - margin."})
    relative_margin: float = field(
        default=0.05, metadata={"help": "Relative margin: score <= positive - |positive| * r; negative disables."}
    )
    range_min: int = field(default=0, metadata={"help": "Skip this many best valid candidates."})
    range_max: int | None = field(default=None, metadata={"help": "Search depth (default as sentence-transformers)."})
    sampling_strategy: str = field(default="top", metadata={"help": "top or random", "choices": ["top", "random"]})
    batch_size: int = field(default=256, metadata={"help": "Encoding batch size."})
    bf16: bool = field(default=False, metadata={"help": "Encode under bfloat16 autocast."})
    cache_dir: str | None = field(
        default=None, metadata={"help": "Catalogue embedding cache (default: embedding_cache/ beside --output)."}
    )
    chunk_size: int = field(default=50_000, metadata={"help": "Products per encoding / search chunk."})
    seed: int = field(default=42, metadata={"help": "Seed of random sampling."})

    def __post_init__(self):
        super().__post_init__()
        if not self.model_name_or_path:
            raise UserInputError("mine.py needs --model_name_or_path (or --checkpoint): the model to mine with")
        if self.sampling_strategy != "random":
            refuse_changed(self, ("seed",), "seeds the random sampling: it needs --sampling_strategy random")
        check_output_path(self.output, "--output", folder=False)


# ---------------------------------------------------------------------------------------------- index.py


@dataclass
class IndexArguments(DataSourceArguments):
    model_name_or_path: str | None = field(default=None, metadata={"help": "Model to encode with."})
    output_dir: str = field(default="index", metadata={"help": "Index folder to write."})
    index_factory: str = field(
        default="auto",
        metadata={
            "help": "faiss index_factory: auto (exact Flat up to 500k products, IVF above, its recall@10 against "
            "exact search in manifest.json), Flat, HNSW32, IVF1024,PQ32np ('np' skips polysemous training: "
            "3x faster builds, bench/RESULTS.md)."
        },
    )
    batch_size: int = field(default=256, metadata={"help": "Encoding batch size."})
    bf16: bool = field(default=False, metadata={"help": "Encode under bfloat16 autocast."})
    chunk_size: int = field(default=50_000, metadata={"help": "Products per encoding chunk (resume unit)."})
    cache_dir: str | None = field(
        default=None, metadata={"help": "Catalogue embedding cache (default: embedding_cache/ beside --output_dir)."}
    )
    query: list[str] = field(
        default_factory=list, metadata={"help": "Search mode: query strings (repeatable).", "action": "extend"}
    )
    index_dir: str | None = field(default=None, metadata={"help": "Index folder to search (default --output_dir)."})
    top_k: int = field(default=10, metadata={"help": "Products returned per query."})

    def __post_init__(self):
        super().__post_init__()
        if self.query:
            building = ("esci_dir", "index_factory", "bf16", "chunk_size", "cache_dir")
            refuse_changed(self, building, "builds an index; a search (--query) uses the index as it was built")
            return
        refuse_changed(self, ("index_dir", "top_k"), "applies to a search: pass --query")
        if self.model_name_or_path is None:
            raise UserInputError("building an index needs --model_name_or_path (or pass --query to search one)")
        check_output_path(self.output_dir, "--output_dir")


# ---------------------------------------------------------------------------------------------- eval.py


@dataclass
class EvalArguments(DataSourceArguments):
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Two-tower model folder (or base encoder) to evaluate; default: the index's model."},
    )
    split: str = field(default="test", metadata={"help": "Which judgements' split to evaluate."})
    output_dir: str = field(default="eval", metadata={"help": "Where the report is written."})
    baseline: str = field(
        default="base",
        metadata={"help": "Baseline encoder: 'base' (the untrained base encoder), a model path, or 'none'."},
    )
    compare_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A second model (folder or base encoder) to compare with, query by query, in report.html."},
    )
    bm25: bool = field(default=True, metadata={"help": "Also evaluate BM25 (bm25s) over the product texts."})
    hybrid: bool = field(
        default=False, metadata={"help": "Also evaluate reciprocal-rank fusion (k=60) of the model and BM25."}
    )
    index_dir: str | None = field(
        default=None, metadata={"help": "A saved index from index.py: its product embeddings serve the model."}
    )
    batch_size: int = field(default=256, metadata={"help": "Encoding batch size."})
    bf16: bool = field(default=False, metadata={"help": "Encode under bfloat16 autocast."})
    top_k: int = field(default=100, metadata={"help": "Retrieval depth (MRR is computed within it)."})
    bootstrap_samples: int = field(
        default=10000, metadata={"help": "Resamples of the paired bootstrap (CIs) and of the randomisation test (p)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the bootstrap and the randomisation test."})
    cache_dir: str | None = field(
        default=None, metadata={"help": "Cache folder for catalogue embeddings (reused while model and data match)."}
    )
    update_model_card: bool = field(
        default=False, metadata={"help": "Also write the metrics into the evaluated model folder's card (README.md)."}
    )

    def __post_init__(self):
        super().__post_init__()
        self.data_source  # noqa: B018 (a missing data source fails here, before any model is loaded)
        check_output_path(self.output_dir, "--output_dir")
        from .modeling.model import is_two_tower_folder

        if self.update_model_card and self.model_name_or_path and not is_two_tower_folder(self.model_name_or_path):
            raise UserInputError(
                f"--update_model_card: {self.model_name_or_path} is no two-tower model folder (no card of ours to "
                "update); pass a folder train.py wrote"
            )
