"""Every option takes effect or is refused in one line.

For each option a script's parser accepts, a non-default value must change the resolved run (what the run records
and then uses; train.py's is ``run_plan.json``, :class:`~ttsn_hf.training.plan.RunPlan`) or be refused with a
one-line error (``UserInputError``) before anything is written. An option that is accepted and then ignored fails
here, and so does a new option this test has no value for: give it one in ``VALUES`` (or refuse it in the code
and list it in ``REFUSED``).
"""

import argparse
import json

import pytest
from conftest import ESCI_SAMPLE

from ttsn_hf.arguments import (
    DataArguments,
    ModelArguments,
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
