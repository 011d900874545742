"""Every option takes effect or is refused in one line.

For each option a script's parser accepts, a non-default value must change the resolved run or be refused with a
one-line error before anything is written. train.py's resolved run is ``run_plan.json``
(:class:`~ttsn_hf.training.plan.RunPlan`); prepare.py, mine.py, index.py and eval.py run for real with the library
calls that do their heavy work recorded instead: their resolved run is what they hand the library. An option that
is accepted and then ignored fails here, and so does a new option this test has no value for: give it one (or
refuse it in the code, and for train.py list it in ``REFUSED``).
"""

import argparse
import dataclasses
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import ESCI_SAMPLE

from ttsn_hf.arguments import (
    DataArguments,
    EvalArguments,
    IndexArguments,
    MineArguments,
    ModelArguments,
    PrepareArguments,
    ScheduleArguments,
    TwoTowerTrainingArguments,
    build_parser,
    parse_args,
)
from ttsn_hf.errors import UserInputError
from ttsn_hf.training.plan import RunPlan

TRAIN_TYPES = (ModelArguments, DataArguments, ScheduleArguments, TwoTowerTrainingArguments)
TEACHER = ["--teacher_model_name_or_path", "some/teacher", "--distillation_weight", "1"]
PUSH = ["--push_to_hub"]

# option -> (flags the comparison is made with, on both sides; the option's value)
VALUES = {
    "model_name_or_path": ([], "some/encoder"),
    "esci_dir": ([], str(ESCI_SAMPLE)),
    "data_dir": ([], str(ESCI_SAMPLE)),  # any folder: only what the run would load is compared
    "hard_negatives": ([], "negatives.parquet"),
    "teacher_model_name_or_path": (["--distillation_weight", "1"], "some/teacher"),
    "teacher_cross_encoder": (TEACHER, "true"),
    "teacher_cache_dir": (TEACHER, "some/cache"),
    "distillation_weight": (["--teacher_model_name_or_path", "some/teacher"], "2.0"),
    "distillation_loss": (TEACHER, "kl"),
    "distillation_temperature": ([*TEACHER, "--distillation_loss", "kl"], "0.1"),
    "label_weights": ([], "E=1.0,S=0.1,C=0.0,I=1.0"),
    "stage_epochs": ([], "1,1,1"),
    "stage_learning_rates": ([], "1e-5,1e-5,1e-6"),
    "stage": ([], "2"),
    "merge_base_weight": ([], "0.5"),
    "hub_model_id": (PUSH, "me/model"),
    "hub_private_repo": (PUSH, "true"),
    "hub_revision": (PUSH, "v1"),
    "hub_token": (PUSH, "hf_secret"),
    "metric_for_best_model": ([], "eval_recall@10"),
    "greater_is_better": ([], "false"),
    "resume_from_checkpoint": ([], "true"),
    "lr_scheduler_type": ([], "cosine"),
    "lr_scheduler_kwargs": ([], '{"num_cycles": 2}'),
    "optim": ([], "adamw_torch"),
    "optim_args": ([], "foo=1"),
    "optim_target_modules": ([], "attn"),
    "report_to": ([], "tensorboard"),
    "logging_strategy": ([], "epoch"),
    "save_strategy": ([], "steps"),
    "log_level": ([], "info"),
    "log_level_replica": ([], "info"),
    "debug": ([], "underflow_overflow"),
    "train_sampling_strategy": ([], "random"),
    "accelerator_config": ([], '{"split_batches": true}'),
    "parallelism_config": ([], '{"dp_shard_size": 2}'),
    "dataloader_multiprocessing_context": ([], "spawn"),
    "dataloader_prefetch_factor": (["--dataloader_num_workers", "1"], "3"),
    "dataloader_persistent_workers": (["--dataloader_num_workers", "1"], "true"),
    "ddp_backend": ([], "gloo"),
    "torch_compile_backend": ([], "eager"),
    "torch_compile_mode": ([], "default"),
    "activation_checkpointing_kwargs": ([], '{"use_reentrant": true}'),
    "gradient_checkpointing_kwargs": ([], '{"use_reentrant": true}'),
    "fsdp": ([], "full_shard"),
    "fsdp_config": ([], '{"min_num_params": 1000}'),
    "deepspeed": ([], "ds_config.json"),
    "project": ([], "another"),
    "trackio_space_id": ([], "me/space"),
    "trackio_bucket_id": ([], "me/bucket"),
    "trackio_static_space_id": ([], "me/static"),
    "tf32": ([], "true"),
    "fp16": ([], "true"),
    "bf16_full_eval": ([], "true"),
    "fp16_full_eval": ([], "true"),
    "use_cpu": ([], "true"),
    "local_rank": ([], "0"),
    "neftune_noise_alpha": ([], "5.0"),
    "output_dir": ([], "runs/y"),
    "gradient_checkpointing": ([], "true"),
    "activation_checkpointing": ([], "true"),
    "liger_kernel_config": ([], '{"rope": true}'),
    "include_num_input_tokens_seen": ([], "all"),
    "disable_tqdm": ([], "true"),
    "run_name": ([], "my-run"),
    "eval_strategy": ([], "steps"),
    "include_for_metrics": ([], "inputs"),
    "label_names": ([], "labels"),
    "length_column_name": ([], "len"),
    "ddp_find_unused_parameters": ([], "true"),
    "ddp_broadcast_buffers": ([], "true"),
    "ddp_static_graph": ([], "true"),
    "dataloader_pin_memory": ([], "true"),
}
# options whose effect needs hardware, packages or a launcher this machine or a plain `python train.py` lacks:
# transformers refuses them here (one line), or they change the run
ELSEWHERE = {
    "parallelism_config", "fsdp_config", "deepspeed", "tf32", "fp16", "bf16_full_eval", "fp16_full_eval", "ddp_backend"
}  # fmt: skip
# GPU settings a machine without one runs with whatever the flag says: transformers sets them so on the CPU
ON_THE_CPU = {"use_cpu": True, "dataloader_pin_memory": False}
REFUSED = set(TwoTowerTrainingArguments.refused)
BASE = ["--output_dir", "runs/x"]


def resolve_train(argv: list[str]) -> dict:
    plan = RunPlan(*parse_args(TRAIN_TYPES, argv=argv))
    plan.training_args.refuse_changed_options()
    return json.loads(json.dumps(plan.resolved(), default=str))


def options(types) -> list[argparse.Action]:
    parser = build_parser(types)
    return [action for action in parser._actions if action.option_strings and action.help != argparse.SUPPRESS
            and action.dest != "help"]  # fmt: skip


def other_value(action: argparse.Action) -> str:
    default = action.default
    if action.choices:
        return next(str(choice) for choice in action.choices if str(choice) != str(default))
    if action.nargs == "?" and action.const is True:  # a boolean
        return "false" if default else "true"
    if action.type is int:
        return str((default or 0) + 3)
    if action.type is float:
        return str(default * 0.5 if default else 0.25)
    raise KeyError(f"--{action.dest}: give this test a value for it in VALUES")


@pytest.mark.parametrize("action", options(TRAIN_TYPES), ids=lambda action: action.dest)
def test_every_train_option_takes_effect_or_is_refused(action):
    name = action.dest
    companions, value = VALUES.get(name) or ([], other_value(action))
    if name in ON_THE_CPU:
        for given in ([], [f"--{name}", value]):
            assert resolve_train([*BASE, *given])["trainer"]["1"][name] is ON_THE_CPU[name]
        return
    if name in ELSEWHERE:
        try:
            changed = resolve_train([*BASE, f"--{name}", value]) != resolve_train(BASE)
        except UserInputError as refusal:
            assert "\n" not in str(refusal)
        else:
            assert changed
        return
    if name in REFUSED:
        with pytest.raises(UserInputError, match=f"--{name}") as refusal:
            resolve_train([*BASE, *companions, f"--{name}", value])
        assert "\n" not in str(refusal.value)
        return
    try:
        without = resolve_train([*BASE, *companions])
    except UserInputError:  # the companions need this option (a teacher and a distillation weight)
        without = resolve_train(BASE)
    assert resolve_train([*BASE, *companions, f"--{name}", value]) != without


def test_refused_options_name_the_flag_that_does_it():
    with pytest.raises(UserInputError, match="--stage_learning_rates"):
        resolve_train([*BASE, "--learning_rate", "1e-3"])
    with pytest.raises(UserInputError, match="--stage_epochs"):
        resolve_train([*BASE, "--num_train_epochs", "7"])
    with pytest.raises(UserInputError, match="needs --push_to_hub"):
        resolve_train([*BASE, "--hub_model_id", "me/x"])


# ---------------------------------------------------------------------------------------------- the other scripts
# Each script runs for real (its main: parsing, checks, the calls it makes), with the library functions that do the
# heavy work replaced by recorders: its resolved run is what it hands the library.


class Recorder:
    def __init__(self):
        self.calls: dict[str, list] = {}

    def __call__(self, name: str, result=None):
        def record(*args, **kwargs):
            self.calls.setdefault(name, []).append(json.loads(json.dumps([args, kwargs], default=_plain)))
            return result(*args, **kwargs) if callable(result) else result

        return record


def _plain(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return f"<{type(value).__name__}>" if not isinstance(value, str | Path) else str(value)


class FakeModel:
    def __init__(self, name):
        self.name_or_path = str(name)

    def to(self, device):
        return self

    def encode_queries(self, texts, **kwargs):
        return unit_vectors(len(texts), self.name_or_path)


class FakeAccelerator:
    device, is_main_process = "cpu", True

    def end_training(self):
        pass


def unit_vectors(count: int, seed: str) -> np.ndarray:
    vectors = np.random.default_rng(zlib.crc32(seed.encode())).normal(size=(count, 8)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def patch_mine(module, record, monkeypatch):
    monkeypatch.setattr("ttsn_hf.modeling.model.load_model", record("load_model", FakeModel))
    monkeypatch.setattr(module, "make_accelerator", FakeAccelerator)
    monkeypatch.setattr(module, "mine_to_file", record("mine_to_file", lambda *a, **k: Path(a[2])))


def patch_index(module, record, monkeypatch):
    monkeypatch.setattr("ttsn_hf.modeling.model.load_model", record("load_model", FakeModel))
    monkeypatch.setattr(module, "make_accelerator", FakeAccelerator)
    monkeypatch.setattr("ttsn_hf.retrieval.catalogue.load_catalogue", record("load_catalogue", [None] * 3))
    monkeypatch.setattr("ttsn_hf.retrieval.indexing.build_catalogue_index", record("build_catalogue_index", "idx"))
    searcher = type("Searcher", (), {"search": record("search", lambda _, queries, k: [[] for _ in queries])})
    monkeypatch.setattr(
        "ttsn_hf.retrieval.indexing.ProductSearcher.from_folder", record("from_folder", lambda *a, **k: searcher())
    )


def patch_prepare(module, record, monkeypatch):
    monkeypatch.setattr(module, "prepare", record("prepare", {}))
    monkeypatch.setattr(module, "show", record("show", ""))


def patch_eval(module, record, monkeypatch):
    from ttsn_hf.evaluation import evaluate

    monkeypatch.setattr(evaluate, "_load_encoder", record("load_encoder", FakeModel))
    encode = record("encode_catalogue", lambda model, ids, *a, **k: unit_vectors(len(ids), model.name_or_path))
    monkeypatch.setattr(evaluate, "encode_catalogue", encode)
    index_run = record("index_run", lambda args, queries, ids: ({q: ids[:5] for q in queries}, "index model"))
    monkeypatch.setattr(evaluate, "_index_run", index_run)
    monkeypatch.setattr(
        evaluate, "bm25_run", record("bm25_run", lambda queries, ids, *a: {q: ids[:5] for q in queries})
    )
    monkeypatch.setattr(evaluate, "write_report", record("write_report"))
    monkeypatch.setattr(module, "record_eval_results", record("record_eval_results"))


SCRIPTS = {  # script -> (how its library calls are recorded, its base arguments, values of its options)
    "mine": (
        patch_mine,
        ["--model_name_or_path", "some/model", "--esci_dir", str(ESCI_SAMPLE), "--output", "out/negatives.parquet"],
        {"output": "other.parquet", "cache_dir": "cache", "esci_dir": str(ESCI_SAMPLE / "README.md"),
         "data_dir": ".", "model_name_or_path": "other/model", "margin": "0.1", "range_max": "50"},
    ),
    "index": (
        patch_index,
        ["--model_name_or_path", "some/model", "--esci_dir", str(ESCI_SAMPLE), "--output_dir", "index"],
        {"output_dir": "other", "index_factory": "HNSW32", "cache_dir": "cache", "model_name_or_path": "other/model",
         "esci_dir": str(ESCI_SAMPLE / "README.md"), "data_dir": ".", "query": "usb c cable",
         "index_dir": "other", "top_k": "3"},
    ),
    "prepare": (
        patch_prepare,
        ["--esci_dir", str(ESCI_SAMPLE), "--output_dir", "data"],
        {"output_dir": "other", "hard_negatives": "negatives.parquet", "stages": "1,2,3", "locale": "es",
         "split": "train", "text_template": "{product_title}", "esci_dir": str(ESCI_SAMPLE / "README.md"),
         "show": ".", "data_dir": "."},
    ),
    "eval": (
        patch_eval,
        ["--model_name_or_path", "some/model", "--esci_dir", str(ESCI_SAMPLE), "--output_dir", "eval",
         "--bootstrap_samples", "20"],
        {"model_name_or_path": "other/model", "split": "train", "output_dir": "other", "baseline": "other/base",
         "compare_model_name_or_path": "third/model", "index_dir": "index", "cache_dir": "cache",
         "esci_dir": str(ESCI_SAMPLE / "README.md"), "data_dir": "."},
    ),
}  # fmt: skip
# options that apply to one mode of a script are compared in that mode: its base arguments
SEARCH = ["--query", "usb c cable"]
MODES = {
    ("index", "index_dir"): SEARCH, ("index", "top_k"): SEARCH,
    ("eval", "update_model_card"): ["--model_name_or_path", "run/two_tower", "--esci_dir", str(ESCI_SAMPLE),
                                    "--bootstrap_samples", "20"],
}  # fmt: skip
SCRIPT_TYPES = {"mine": (MineArguments,), "index": (IndexArguments,), "prepare": (PrepareArguments,),
                "eval": (EvalArguments,)}  # fmt: skip


def resolve_script(script, argv, load_cli, monkeypatch) -> dict:
    record = Recorder()
    module = load_cli(script)
    SCRIPTS[script][0](module, record, monkeypatch)
    module.main(argv)
    return record.calls


@pytest.mark.parametrize(
    "script, action",
    [(script, action) for script, types in SCRIPT_TYPES.items() for action in options(types)],
    ids=lambda value: value if isinstance(value, str) else value.dest,
)
def test_every_option_of_the_other_scripts_takes_effect_or_is_refused(
    script, action, load_cli, monkeypatch, tmp_path, capsys
):
    monkeypatch.chdir(tmp_path)
    patch, base, values = SCRIPTS[script]
    name = action.dest
    base = MODES.get((script, name), base)
    (tmp_path / "run" / "two_tower").mkdir(parents=True)
    (tmp_path / "run" / "two_tower" / "config.json").write_text('{"model_type": "two_tower"}')
    value = values.get(name) or other_value(action)
    without = resolve_script(script, base, load_cli, monkeypatch)
    try:
        with_option = resolve_script(script, [*base, f"--{name}", value], load_cli, monkeypatch)
    except SystemExit as refusal:  # cli_entry: a one-line error, exit 2
        assert refusal.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
        return
    assert with_option != without, f"{script}.py --{name} {value} changed nothing"


@pytest.mark.parametrize(
    "script, argv, refused",
    [
        ("index", ["--index_dir", "index", "--query", "q", "--bf16"], "--bf16 builds an index"),
        ("index", ["--index_dir", "index", "--query", "q", "--esci_dir", str(ESCI_SAMPLE)], "--esci_dir builds"),
        ("index", ["--model_name_or_path", "m", "--esci_dir", str(ESCI_SAMPLE), "--top_k", "3"], "--top_k applies"),
        ("prepare", ["--show", ".", "--seed", "3"], "--seed prepares data; --show only prints"),
        ("mine", ["--model_name_or_path", "m", "--esci_dir", str(ESCI_SAMPLE), "--seed", "3"], "--seed seeds"),
        ("eval", ["--model_name_or_path", "base/encoder", "--esci_dir", str(ESCI_SAMPLE), "--update_model_card"],
         "--update_model_card: base/encoder is no two-tower model folder"),
    ],
)  # fmt: skip
def test_options_of_another_mode_are_refused_in_one_line(script, argv, refused, load_cli, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserInputError, match=refused):
        parse_args(SCRIPT_TYPES[script], argv)
