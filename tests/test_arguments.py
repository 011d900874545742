"""Command-line arguments: one parser, exact flags, and every user mistake as one line with exit 2."""

import subprocess
import sys
from pathlib import Path

import pytest

from ttsn_hf.arguments import (
    DataArguments,
    EvalArguments,
    ModelArguments,
    ScheduleArguments,
    TwoTowerTrainingArguments,
    parse_args,
)
from ttsn_hf.errors import UserInputError
from ttsn_hf.labels import DEFAULT_LABEL_WEIGHTS, parse_label_weights

REPO = Path(__file__).resolve().parents[1]
X = str(REPO.parent / "shared" / "data" / "esci-us-sample")  # an --esci_dir that exists: the parsing is tested
TRAIN_TYPES = (ModelArguments, DataArguments, ScheduleArguments, TwoTowerTrainingArguments)


def files_under(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*"))


def run_main(load_cli, script: str, argv: list[str], capsys) -> str:
    """Run a script's main in-process; it must exit 2 with exactly one line on stderr. Returns that line."""
    with pytest.raises(SystemExit) as exit_info:
        load_cli(script).main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize(
    "script, argv, expected",
    [
        ("eval", ["--esci_dir", X, "--spilt", "test"], "unknown argument '--spilt'; did you mean --split?"),
        ("mine", ["--checkpoint", "m", "--esci_dir", X, "--ouput", "o"], "did you mean --output?"),
        ("index", ["--model_name_or_path", "m", "--esci_dir", X, "--top", "3"], "unknown argument '--top'"),
        ("prepare", ["--esci_dir", X, "--ouput_dir", "o"], "did you mean --output_dir?"),
        ("eval", ["--esci_dir", X, "--data_dir", "y"], "not both"),
        ("eval", ["--split", "test"], "no data: pass --esci_dir"),
        ("mine", ["--esci_dir", X], "needs --model_name_or_path (or --checkpoint)"),
        ("prepare", ["--data_dir", "x"], "pass --esci_dir, not --data_dir"),
        ("eval", ["--esci_dir", X, "--top_k", "ten"], "--top_k/--top-k: invalid int value: 'ten'"),
        ("eval", ["--esci_dir", "no/such/dir/x"], "--esci_dir no/such/dir/x: no such file or folder; pass the"),
        ("mine", ["--checkpoint", "m", "--data_dir", "nodata"], "--data_dir nodata: no such folder; write it first"),
    ],
)
def test_bad_flags_are_one_line_and_write_nothing(script, argv, expected, load_cli, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert expected in run_main(load_cli, script, argv, capsys)
    assert files_under(tmp_path) == []


@pytest.mark.parametrize(
    "script, argv",
    [
        ("eval", ["--esci_dir", X, "--output_dir", "taken"]),
        ("index", ["--model_name_or_path", "m", "--esci_dir", X, "--output_dir", "taken"]),
        ("mine", ["--checkpoint", "m", "--esci_dir", X, "--output", "taken/negatives.parquet"]),
        ("prepare", ["--esci_dir", X, "--output_dir", "taken/data"]),
    ],
)
def test_output_path_that_is_a_file_is_refused_before_any_work(script, argv, load_cli, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("taken").write_text("a file")
    assert "taken" in run_main(load_cli, script, argv, capsys)
    assert files_under(tmp_path) == [tmp_path / "taken"]


def test_train_py_typo_and_abbreviation_exit_2_one_line_no_traceback(tmp_path):
    for flag in ("--ouput_dir", "--max_step"):
        result = subprocess.run(
            [sys.executable, str(REPO / "train.py"), "--esci_dir", X, flag, "1"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert lines == [
            f"error: unknown argument '{flag}'; did you mean --{'output_dir' if 'ou' in flag else 'max_steps'}?"
        ]
    assert files_under(tmp_path) == []


def test_train_output_dir_that_is_a_file(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(UserInputError, match="--output_dir .*out: exists and is a file"):
        parse_args(TRAIN_TYPES, ["--esci_dir", X, "--output_dir", str(tmp_path / "out")])


@pytest.mark.parametrize(
    "text, message",
    [
        ("E=1,S", "'S' is not LABEL=WEIGHT"),
        ("X=1", "'X=1' is not LABEL=WEIGHT"),
        ("E=high", "weight 'high' of E is not a number"),
        ("C=-1", "weight of C must be >= 0"),
    ],
)
def test_malformed_label_weights(text, message):
    with pytest.raises(UserInputError, match=message):
        parse_args(TRAIN_TYPES, ["--esci_dir", X, "--label_weights", text])


def test_label_weights_parse_and_keep_defaults():
    assert parse_label_weights("S=1, c=0") == {**DEFAULT_LABEL_WEIGHTS, "S": 1.0, "C": 0.0}
    (_, _, schedule, _) = parse_args(TRAIN_TYPES, ["--esci_dir", X])
    assert schedule.parsed_label_weights() == DEFAULT_LABEL_WEIGHTS


@pytest.mark.parametrize("flag, value", [("--stage_epochs", "2,1"), ("--stage_learning_rates", "a,b,c")])
def test_malformed_schedule(flag, value):
    with pytest.raises(UserInputError, match=flag):
        parse_args(TRAIN_TYPES, ["--esci_dir", X, flag, value])


def test_seed_aliases_and_prepared_data_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (_, data, _, training) = parse_args(
        TRAIN_TYPES, ["--esci_dir", X, "--checkpoint_dir", "runs/a"], aliases={"--checkpoint_dir": "--output_dir"}
    )
    assert training.output_dir == "runs/a" and data.data_source == X
    Path("data").mkdir()
    Path("data/summary.json").write_text("{}")
    assert EvalArguments().data_source == "data"


def test_help_lists_own_options_first_and_help_all_everything():
    def help_text(flag):
        result = subprocess.run([sys.executable, str(REPO / "train.py"), flag], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    brief, full = help_text("--help"), help_text("--help-all")
    assert len(brief.splitlines()) < 250 < len(full.splitlines())
    assert brief.index("--stage_epochs") < brief.index("--per_device_train_batch_size")
    assert "--help-all" in brief and "--adam_beta1" in full and "--adam_beta1" not in brief
    assert "Not directly used by Trainer" not in brief


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--metric_for_best_model", "eval_ndcg10", "not a validation metric; did you mean eval_ndcg@10?"),
        ("--learning_rate", "1e-3", "use --stage_learning_rates"),
    ],
)
def test_train_py_refuses_a_wrong_metric_or_a_schedule_flag_before_anything(tmp_path, flag, value, expected):
    """One line, exit 2, nothing written: before the data, the model or the output folder is touched."""
    output = tmp_path / "run"
    command = [sys.executable, str(REPO / "train.py"), "--esci_dir", "../shared/data/esci-us-sample",
               "--output_dir", str(output), flag, value]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0] and not output.exists()
    if flag == "--metric_for_best_model":  # the selectable names, as --help lists them
        assert "eval_esci_rank_ndcg" in errors[0] and "eval_esci_rank_ndcg" in subprocess.run(
            [sys.executable, str(REPO / "train.py"), "--help"], capture_output=True, text=True
        ).stdout.replace("\n", " ").replace("  ", "")
