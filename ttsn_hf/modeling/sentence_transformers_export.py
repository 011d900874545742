"""The sentence-transformers side of a saved two-tower folder, written by sentence-transformers' own save.

The root's ``config.json`` is the two-tower model's; each encoder (weights, config, tokenizer) lives in the folder of
its sentence-transformers ``Transformer`` module, which ``modules.json`` names, so plain ``SentenceTransformer(folder)``
loads the same weights as ``TwoTowerModel.from_pretrained(folder)``, stored once:

- tied towers: one ``Transformer`` in ``0_Transformer/``, carrying both towers' token limits as its per-task lengths
  (``query_length``, ``document_length``): ``encode_query`` cuts at ``query_max_length``, ``encode_document`` and
  plain ``encode`` at ``product_max_length``.
- untied towers: a ``Router`` in ``0_Router/`` with a ``query`` route (the query encoder) and a ``document`` route
  (the product encoder, also plain ``encode``'s default route), each route a ``Transformer`` with the same lengths.

Pooling (mean) and normalisation follow in ``1_Pooling/`` and ``2_Normalize/``. Folders saved before the towers'
lengths were carried (the untied product encoder then in ``product_encoder/``, with no sentence-transformers files)
still load in ``TwoTowerModel``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Router, Transformer

from .configuration import TwoTowerConfig

ENCODER_DIR = "0_Transformer"
# Router.save names each route's module folder "{route}_{index}_{class}"; the encoders are saved there first, so
# the router re-saves them in place and their weights stay single.
QUERY_ENCODER_DIR = "0_Router/query_0_Transformer"
PRODUCT_ENCODER_DIR = "0_Router/document_0_Transformer"
LEGACY_PRODUCT_ENCODER_DIR = "product_encoder"


def encoder_folders(tie_towers: bool) -> dict[str, str]:
    """Where :meth:`TwoTowerModel.save_pretrained` writes each encoder: the model's attribute -> its subfolder."""
    if tie_towers:
        return {"encoder": ENCODER_DIR}
    return {"encoder": QUERY_ENCODER_DIR, "product_encoder": PRODUCT_ENCODER_DIR}


def saved_encoder_folders(folder: Path) -> dict[str, str]:
    """Where a saved folder keeps its encoders (this layout or the earlier one); empty when it keeps none apart."""
    if (folder / QUERY_ENCODER_DIR / "config.json").is_file():
        return encoder_folders(tie_towers=False)
    if not (folder / ENCODER_DIR / "config.json").is_file():
        return {}
    if (folder / LEGACY_PRODUCT_ENCODER_DIR / "config.json").is_file():
        return {"encoder": ENCODER_DIR, "product_encoder": LEGACY_PRODUCT_ENCODER_DIR}
    return {"encoder": ENCODER_DIR}


def remove_other_layouts(folder: Path, tie_towers: bool) -> None:
    """Drop the encoder folders another layout left in ``folder`` (a model saved over one with the other towers),
    which would otherwise be found by :func:`saved_encoder_folders`."""
    kept = {Path(subfolder).parts[0] for subfolder in encoder_folders(tie_towers).values()}
    for name in {ENCODER_DIR, Path(QUERY_ENCODER_DIR).parts[0], LEGACY_PRODUCT_ENCODER_DIR} - kept:
        if (folder / name).is_dir():
            shutil.rmtree(folder / name)


def write_sentence_transformers_files(folder: Path, config: TwoTowerConfig) -> None:
    """Write ``modules.json``, the router, pooling and normalize modules and the module configs around the encoder
    folders (already holding each encoder and its tokenizer); the encoders are re-saved in place."""
    if config.tie_towers:
        first = _transformer(folder / ENCODER_DIR, config, config.product_max_length)
    else:
        # The query route's own limit is the query length too: sentence-transformers 6.0's Router does not pass the
        # task on to the route's Transformer (6.1 does), and only task="query" reaches this route.
        first = Router.for_query_document(
            query_modules=[_transformer(folder / QUERY_ENCODER_DIR, config, config.query_max_length)],
            document_modules=[_transformer(folder / PRODUCT_ENCODER_DIR, config, config.product_max_length)],
        )
    first.save_in_root = False  # the root belongs to the two-tower model: keep the module in its own folder
    model = SentenceTransformer(
        modules=[first, Pooling(config.embedding_dim, pooling_mode="mean"), Normalize()], device="cpu"
    )
    model.similarity_fn_name = "cosine"
    model.save(str(folder), create_model_card=False)


def _transformer(path: Path, config: TwoTowerConfig, max_seq_length: int) -> Transformer:
    """A tower's module: ``task="query"`` cut as ``TwoTowerModel`` cuts queries, ``task="document"`` as products,
    no task at ``max_seq_length``."""
    return Transformer(
        str(path),
        max_seq_length=max_seq_length,
        query_length=config.query_max_length,
        document_length=config.product_max_length,
    )
