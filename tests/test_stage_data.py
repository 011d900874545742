"""Where each stage's data comes from: data options apply to every stage alike, prepared or built; mined negatives
are mined again when any selection setting differs; the query split is recorded."""

import hashlib
import json

import datasets
import pandas as pd
import pytest

from ttsn_hf import TwoTowerModel
from ttsn_hf.arguments import DataArguments, ModelArguments, ScheduleArguments, TwoTowerTrainingArguments, parse_args
from ttsn_hf.data.stages import prepare
from ttsn_hf.errors import UserInputError
from ttsn_hf.training.run import TrainingRun

ARGUMENT_TYPES = (ModelArguments, DataArguments, ScheduleArguments, TwoTowerTrainingArguments)


@pytest.fixture(scope="module")
def prepared(esci_sample, tmp_path_factory):
    folder = tmp_path_factory.mktemp("prepared") / "data"
    prepare(esci_sample, folder, seed=42)
    return folder


@pytest.fixture(scope="module")
def model(tiny_encoder_dir):
    return TwoTowerModel.from_encoder(str(tiny_encoder_dir))


def run_for(*argv) -> TrainingRun:
    return TrainingRun(*parse_args(ARGUMENT_TYPES, argv=list(map(str, argv))))


def random_count(run: TrainingRun, splits: datasets.DatasetDict) -> int:
    source = run.data.group_source([splits["train"]])
    row = source.parts[0][0]
    _, _, sources = source.pool(row, source.judged.position(row["query_id"]), epoch=1)
    return sources.count("random")


def test_data_options_reach_a_prepared_stage_1_as_every_other_stage(prepared, model, tmp_path):
    """With --data_dir, --pseudo_queries and --num_random_negatives used to leave the prepared stage 1 as it was
    (built with prepare's 4 random negatives and no pseudo-query) while stages built later took them."""
    negatives = tmp_path / "negatives.parquet"  # any unjudged catalogue products: stages 2-3 are built from them
    stage1 = datasets.load_from_disk(str(prepared / "stage1"))
    query_ids = stage1["train"]["query_id"][:20]
    products = datasets.load_from_disk(str(prepared / "catalogue"))["product_id"][-20:]
    pd.DataFrame({"query_id": query_ids, "product_id": products}).to_parquet(negatives)
    run = run_for("--data_dir", prepared, "--output_dir", tmp_path / "out", "--pseudo_queries", 40,
                  "--num_random_negatives", 7, "--hard_negatives", negatives)  # fmt: skip
    for stage in (1, 2, 3):
        splits = run.data.for_stage(stage, model, model)
        pseudo = [query_id for query_id in splits["train"]["query_id"] if query_id.startswith("pseudo:")]
        assert 30 <= len(pseudo) <= 40, stage
        assert not any(query_id.startswith("pseudo:") for query_id in splits["validation"]["query_id"])
        assert random_count(run, splits) == 7, stage
    plain = run_for("--data_dir", prepared, "--output_dir", tmp_path / "plain")
    splits = plain.data.for_stage(1, model, model)
    assert not any(query_id.startswith("pseudo:") for query_id in splits["train"]["query_id"])
    assert random_count(plain, splits) == 4


def test_another_validation_fraction_than_the_prepared_one_is_refused(prepared, tmp_path):
    with pytest.raises(UserInputError, match=r"--validation_fraction 0.2: .* was split with validation fraction 0.1"):
        run_for("--data_dir", prepared, "--output_dir", tmp_path / "out", "--validation_fraction", 0.2)
    assert not (tmp_path / "out").exists()
    assert run_for("--data_dir", prepared, "--output_dir", tmp_path / "out", "--validation_fraction", 0.1)


def test_split_record_names_the_validation_queries(prepared, esci_sample, tmp_path):
    record = run_for("--data_dir", prepared, "--output_dir", tmp_path / "a", "--seed", 7).data.split_record()
    validation = sorted(datasets.load_from_disk(str(prepared / "stage1"))["validation"]["query_id"])
    digest = hashlib.sha256("\n".join(validation).encode()).hexdigest()
    assert record == {"seed": 42, "validation_fraction": 0.1, "validation_query_ids_sha256": digest}
    other = run_for("--esci_dir", esci_sample, "--output_dir", tmp_path / "b", "--seed", 7).data.split_record()
    assert other["seed"] == 7 and other["validation_query_ids_sha256"] != digest


def test_mined_negatives_are_mined_again_when_a_selection_setting_changes(esci_sample, model, tmp_path):
    """The stale check used to compare the miner's fingerprint only: another --mining_num_negatives reused the old
    file."""
    output = tmp_path / "out"
    common = ("--esci_dir", esci_sample, "--output_dir", output, "--mining_relative_margin", -1)

    def mined_with(*flags):
        path = run_for(*common, *flags).data.hard_negatives(model)
        summary = json.loads((output / "hard_negatives_stage2.json").read_text())
        return path, summary, (output / "hard_negatives_stage2.parquet").stat().st_mtime_ns

    path, summary, written = mined_with()
    assert summary["selection"]["num_negatives"] == 10 and summary["selection"]["relative_margin"] is None
    assert mined_with()[2] == written  # same model, settings and catalogue: reused
    _, summary, rewritten = mined_with("--mining_num_negatives", 3)
    assert rewritten != written and summary["selection"]["num_negatives"] == 3
    assert pd.read_parquet(path).groupby("query_id").size().max() == 3
    _, summary, again = mined_with("--mining_num_negatives", 3, "--mining_relative_margin", 0.5)
    assert again != rewritten and summary["selection"]["relative_margin"] == 0.5
