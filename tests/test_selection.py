"""Model selection by validation retrieval, and WiSE-FT merging with the base encoder."""

import json
from types import SimpleNamespace

import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

from ttsn_hf import TwoTowerModel
from ttsn_hf.arguments import TwoTowerTrainingArguments
from ttsn_hf.data.esci import load_esci
from ttsn_hf.evaluation.selection import RetrievalEvaluator
from ttsn_hf.training.merge import merge_saved_model, merge_with_base
from ttsn_hf.training.schedule import build_schedule
from ttsn_hf.training.state import EpochCheckpointCallback, fresh_state, write_state


@pytest.fixture(scope="module")
def tables(esci_sample):
    esci = load_esci(esci_sample)
    return esci.judgements.to_pandas(), esci.catalogue.to_pandas()


def test_selection_matches_sentence_transformers_ir_evaluator(tables, esci_sample, tiny_encoder_dir, tmp_path):
    judgements, catalogue = tables
    query_ids = sorted(judgements["query_id"].unique())[:12]
    evaluator = RetrievalEvaluator(judgements, catalogue, query_ids, corpus_size=400, seed=3)
    assert len(evaluator.product_ids) == 400
    judged = set(judgements.loc[judgements["query_id"].isin(query_ids), "product_id"])
    assert judged <= set(evaluator.product_ids)  # judged products always searched, the rest a fixed sample
    again = RetrievalEvaluator(judgements, catalogue, query_ids, corpus_size=400, seed=3)
    assert again.product_ids == evaluator.product_ids
    esci = load_esci(esci_sample)  # the datasets themselves (memory-mapped in training): the same corpus and labels
    from_datasets = RetrievalEvaluator(esci.judgements, esci.catalogue, query_ids, corpus_size=400, seed=3)
    assert from_datasets.product_ids == evaluator.product_ids and from_datasets.qrels == evaluator.qrels
    assert from_datasets.product_texts == evaluator.product_texts

    model = TwoTowerModel.from_encoder(str(tiny_encoder_dir))
    ours = evaluator(model)
    model.save_pretrained(tmp_path / "model")
    relevant = {
        qid: {pid for pid, label in labels.items() if label in ("E", "S")} for qid, labels in evaluator.qrels.items()
    }
    reference = InformationRetrievalEvaluator(
        queries={qid: evaluator.queries[qid] for qid in relevant if relevant[qid]},
        corpus=dict(zip(evaluator.product_ids, evaluator.product_texts, strict=True)),
        relevant_docs={qid: docs for qid, docs in relevant.items() if docs},
        precision_recall_at_k=[10],
        mrr_at_k=[100],
        accuracy_at_k=[10],
        ndcg_at_k=[10],
        map_at_k=[10],
        score_functions={"cosine": lambda a, b: a @ b.T},
        show_progress_bar=False,
    )(SentenceTransformer(str(tmp_path / "model"), device="cpu"))
    assert ours["recall@10"] == pytest.approx(reference["cosine_recall@10"], abs=1e-6)
    assert ours["mrr"] == pytest.approx(reference["cosine_mrr@100"], abs=1e-6)


def test_best_model_follows_the_selection_metric_not_the_loss(tiny_encoder_dir, tmp_path):
    model = TwoTowerModel.from_encoder(str(tiny_encoder_dir))
    write_state(tmp_path, fresh_state())
    stage = build_schedule((2, 1, 1))[0]
    callback = EpochCheckpointCallback(tmp_path, stage)
    args = TwoTowerTrainingArguments(output_dir=str(tmp_path), use_cpu=True)
    assert args.metric_for_best_model == "eval_ndcg@10" and args.greater_is_better
    for epoch, (loss, ndcg) in enumerate([(1.0, 0.5), (0.5, 0.4)], start=1):
        state = SimpleNamespace(is_world_process_zero=True, epoch=float(epoch), global_step=10 * epoch)
        metrics = {"eval_loss": loss, "eval_ndcg@10": ndcg}
        callback.on_evaluate(args, state, None, metrics=metrics, model=model)
    record = json.loads((tmp_path / "schedule_state.json").read_text())
    assert record["best"] == {
        "epoch": 1, "metric": "eval_ndcg@10", "greater_is_better": True, "eval_loss": 1.0, "eval_ndcg@10": 0.5
    }  # fmt: skip
    by_loss = TwoTowerTrainingArguments(output_dir=str(tmp_path), use_cpu=True, metric_for_best_model="eval_loss")
    write_state(tmp_path, fresh_state())
    for epoch, (loss, ndcg) in enumerate([(1.0, 0.5), (0.5, 0.4)], start=1):
        state = SimpleNamespace(is_world_process_zero=True, epoch=float(epoch), global_step=10 * epoch)
        callback.on_evaluate(by_loss, state, None, metrics={"eval_loss": loss, "eval_ndcg@10": ndcg}, model=model)
    assert json.loads((tmp_path / "schedule_state.json").read_text())["best"]["epoch"] == 2


def test_merge_with_base_interpolates_every_weight(tiny_encoder_dir):
    base = TwoTowerModel.from_encoder(str(tiny_encoder_dir))
    trained = TwoTowerModel.from_encoder(str(tiny_encoder_dir))
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(torch.randn_like(parameter))
    before = {name: tensor.clone() for name, tensor in trained.state_dict().items()}
    merged = merge_with_base(trained, base, 0.3)
    for name, tensor in merged.state_dict().items():
        if tensor.is_floating_point():
            torch.testing.assert_close(tensor, 0.7 * before[name] + 0.3 * base.state_dict()[name])
    with pytest.raises(ValueError, match="merge_base_weight"):
        merge_with_base(trained, base, 1.5)


def test_merge_saved_model_records_the_weight_and_merges_once(tiny_encoder_dir, tmp_path):
    base = TwoTowerModel.from_encoder(str(tiny_encoder_dir))
    trained = TwoTowerModel.from_encoder(str(tiny_encoder_dir))
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(1.0)
    trained.save_pretrained(tmp_path / "best_model")
    merge_saved_model(tmp_path / "best_model", base, 0.5)
    merged = TwoTowerModel.from_pretrained(tmp_path / "best_model")
    assert merged.config.training["merge_base_weight"] == 0.5
    name, tensor = next((n, t) for n, t in merged.state_dict().items() if t.is_floating_point())
    torch.testing.assert_close(tensor, base.state_dict()[name] + 0.5)
    merge_saved_model(tmp_path / "best_model", base, 0.5)  # a second call (a later --stage run) changes nothing
    torch.testing.assert_close(TwoTowerModel.from_pretrained(tmp_path / "best_model").state_dict()[name], tensor)
