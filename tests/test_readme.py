"""The README's commands chain: each step of "The pipeline, step by step" runs as written after the one before it."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE_ARG = "../shared/data/esci-us-sample"


def pipeline_commands() -> list[list[str]]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## The pipeline, step by step", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    lines = [line.split("  #", 1)[0].strip() for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line.startswith("python ")]


def quick(command: list[str], tiny_encoder_dir: Path) -> list[str]:
    """The same command, made fast for a test: the tiny encoder and few rows (flags added, none changed)."""
    script = command[1]
    if script == "train.py":
        return [*command, "--model_name_or_path", str(tiny_encoder_dir), "--max_train_samples", "64",
                "--max_eval_samples", "32", "--stage_epochs", "1,1,1", "--selection_corpus_size", "500"]  # fmt: skip
    if script == "eval.py":
        return [*command, "--baseline", "none", "--bootstrap_samples", "200"]
    return command


def test_readme_pipeline_runs_in_order_with_the_folders_it_names(tmp_path, esci_sample, tiny_encoder_dir):
    commands = pipeline_commands()
    assert [command[1] for command in commands] == [
        "prepare.py",
        "train.py",
        "mine.py",
        "index.py",
        "index.py",
        "eval.py",
    ]
    for command in commands:
        script, args = command[1], [str(esci_sample) if arg == SAMPLE_ARG else arg for arg in command[2:]]
        command = quick([sys.executable, script, *args], tiny_encoder_dir)
        command[1] = str(REPO / script)
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 0, f"{shlex.join(command)}\n{result.stderr[-3000:]}"
        if script == "train.py":
            next_line = [line for line in result.stdout.splitlines() if line.startswith("next: ")][0]
            assert "eval.py --model_name_or_path runs/sample/best_model" in next_line
    for written in ("data/summary.json", "runs/sample/best_model/config.json", "runs/sample/index/manifest.json",
                    "runs/sample/eval/metrics.json", "runs/sample/mined/hard_negatives.parquet",
                    "runs/sample/training_curves.png", "runs/sample/eval/report.html"):  # fmt: skip
        assert (tmp_path / written).is_file(), written
    curves = json.loads((tmp_path / "runs/sample/run_summary.json").read_text())["curves"]  # the picture's numbers
    assert [stage["stage"] for stage in curves["stages"]] == [1, 2, 3] and {"1", "2", "3"} <= set(curves["validation"])
