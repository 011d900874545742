"""The two-tower model: one transformer encoder (or two, untied) for queries and products."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import HfApi
from safetensors.torch import load_file
from torch import nn
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import ModelOutput

from ..errors import UserInputError
from .configuration import TwoTowerConfig
from .hub import ensure_hub_reachable
from .model_card import write_model_card
from .packing import (
    can_pack,
    joint_packed_mean_embeddings,
    packed_mean_embeddings,
    recompute_with_the_same_attention,
)
from .pretrained import default_base_model, recorded_name, resolve_pretrained
from .sentence_transformers_export import (
    encoder_folders,
    remove_other_layouts,
    saved_encoder_folders,
    write_sentence_transformers_files,
)

ENCODER_KWARGS = ("dtype", "torch_dtype", "device_map", "attn_implementation", "low_cpu_mem_usage")


@dataclass
class TwoTowerOutput(ModelOutput):
    query_embeddings: torch.Tensor | None = None
    product_embeddings: torch.Tensor | None = None


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(torch.float32)
    summed = (hidden.to(torch.float32) * mask).sum(dim=1)
    return summed / mask.sum(dim=1).clamp(min=1e-9)


class TwoTowerModel(PreTrainedModel):
    """Embeds queries and products into one space: mean pooling, L2 normalisation, cosine similarity."""

    config_class = TwoTowerConfig
    base_model_prefix = "two_tower"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(
        self,
        config: TwoTowerConfig,
        encoder: PreTrainedModel | None = None,
        product_encoder: PreTrainedModel | None = None,
    ):
        super().__init__(config)
        self.encoder = encoder or AutoModel.from_config(_encoder_config(config))
        if not config.tie_towers:
            self.product_encoder = product_encoder or AutoModel.from_config(self.encoder.config)
            if product_encoder is None:
                self.product_encoder.load_state_dict(self.encoder.state_dict())
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self.post_init()

    @classmethod
    def from_encoder(
        cls,
        name_or_path: str | None = None,
        tie_towers: bool = True,
        query_max_length: int = 32,
        product_max_length: int = 128,
    ) -> TwoTowerModel:
        """A new two-tower model around a pretrained encoder (a local folder or a Hub id); its weights are kept."""
        name_or_path = str(name_or_path or default_base_model())
        return cls._around_encoder(
            resolve_pretrained(name_or_path),
            name_or_path,
            tie_towers=tie_towers,
            query_max_length=query_max_length,
            product_max_length=product_max_length,
        )

    @classmethod
    def _around_encoder(cls, folder: Path, name_or_path: str, **settings) -> TwoTowerModel:
        """Wrap the encoder in local ``folder``, resolved from the user's ``name_or_path``; the config records the
        Hub id or the user's name as the base model, never the packaged copy's install path."""
        encoder = AutoModel.from_pretrained(folder)
        base_name = recorded_name(name_or_path)
        encoder.config._name_or_path = base_name  # kept in encoder_config below
        config = TwoTowerConfig(encoder_config=encoder.config.to_dict(), base_model_name_or_path=base_name, **settings)
        config._name_or_path = name_or_path  # as given (in memory only: transformers does not save it)
        model = cls(config, encoder=encoder)
        model._tokenizer = AutoTokenizer.from_pretrained(folder)
        return model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *model_args, config=None, **kwargs):
        """Load a saved model: a local folder or a Hub id. The encoder weights live in the sentence-transformers
        module folders (see :mod:`.sentence_transformers_export`; earlier layouts load too)."""
        folder = resolve_pretrained(pretrained_model_name_or_path)
        if not has_split_weights(folder):
            # saved before the weights were kept once, in the encoder's folder
            return super().from_pretrained(folder, *model_args, config=config, **kwargs)
        config = config if isinstance(config, TwoTowerConfig) else TwoTowerConfig.from_pretrained(folder)
        encoder_kwargs = {key: kwargs[key] for key in ENCODER_KWARGS if key in kwargs}
        subfolders = saved_encoder_folders(folder)
        towers = ["encoder"] if config.tie_towers else ["encoder", "product_encoder"]
        if missing := [tower for tower in towers if tower not in subfolders]:
            raise UserInputError(f"{folder}: config.json says untied towers, but the folder holds no {missing[0]}")
        encoders = {tower: AutoModel.from_pretrained(folder / subfolders[tower], **encoder_kwargs) for tower in towers}
        model = cls(config, **encoders)
        model._tokenizer = AutoTokenizer.from_pretrained(folder)
        model.name_or_path = model.config._name_or_path = str(pretrained_model_name_or_path)  # as given
        model._loaded_from = str(folder)
        model.eval()
        return model

    def load_saved_weights(self, folder: str | Path) -> bool:
        """Copy the encoder weights of a folder written by :meth:`save_pretrained` into this model (resuming a
        Trainer checkpoint); False when ``folder`` is not in that layout."""
        folder = Path(folder)
        if not has_split_weights(folder):
            return False
        subfolders = saved_encoder_folders(folder)
        for tower in encoder_folders(self.config.tie_towers):
            getattr(self, tower).load_state_dict(load_file(folder / subfolders[tower] / "model.safetensors"))
        return True

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        if self._tokenizer is None:
            self._tokenizer = AutoTokenizer.from_pretrained(self.name_or_path)
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tokenizer

    @property
    def embedding_dim(self) -> int:
        return self.encoder.config.hidden_size

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.get_input_embeddings()

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=checkpoint, **kwargs):
        super()._set_gradient_checkpointing(enable, gradient_checkpointing_func, **kwargs)
        for tower in {id(self._tower(name)): self._tower(name) for name in ("query", "product")}.values():
            recompute = recompute_with_the_same_attention(gradient_checkpointing_func, tower.config)
            for module in tower.modules():
                if hasattr(module, "gradient_checkpointing"):
                    module._gradient_checkpointing_func = recompute

    def _tower(self, tower: str) -> PreTrainedModel:
        return self.encoder if tower == "query" or self.config.tie_towers else self.product_encoder

    def embed(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, tower: str = "query", packed: bool | None = None
    ) -> torch.Tensor:
        """L2-normalised mean-pooled embeddings of a padded batch; ``packed`` (default: the config's
        ``packed_sequences``) runs only the real tokens through the encoder (:mod:`.packing`)."""
        packed = getattr(self.config, "packed_sequences", True) if packed is None else packed
        if packed and can_pack(self._tower(tower)):
            pooled = packed_mean_embeddings(self._tower(tower), input_ids, attention_mask)
        else:
            hidden = self._tower(tower)(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            pooled = mean_pool(hidden, attention_mask)
        return nn.functional.normalize(pooled, dim=-1)

    def forward(
        self,
        query_input_ids: torch.Tensor | None = None,
        query_attention_mask: torch.Tensor | None = None,
        product_input_ids: torch.Tensor | None = None,
        product_attention_mask: torch.Tensor | None = None,
        **unused,
    ) -> TwoTowerOutput:
        output = TwoTowerOutput()
        both = query_input_ids is not None and product_input_ids is not None
        packed = getattr(self.config, "packed_sequences", True) and can_pack(self.encoder)
        if both and packed and self.config.tie_towers:
            pooled = joint_packed_mean_embeddings(
                self.encoder, [(query_input_ids, query_attention_mask), (product_input_ids, product_attention_mask)]
            )  # one pass of the shared encoder for both towers
            output.query_embeddings, output.product_embeddings = (nn.functional.normalize(p, dim=-1) for p in pooled)
            return output
        if query_input_ids is not None:
            output.query_embeddings = self.embed(query_input_ids, query_attention_mask, "query")
        if product_input_ids is not None:
            output.product_embeddings = self.embed(product_input_ids, product_attention_mask, "product")
        return output

    def encode_queries(self, texts: list[str], **kwargs) -> np.ndarray:
        return self.encode(texts, tower="query", **kwargs)

    def encode_products(self, texts: list[str], **kwargs) -> np.ndarray:
        return self.encode(texts, tower="product", **kwargs)

    @torch.inference_mode()
    def encode(
        self,
        texts: list[str],
        tower: str = "query",
        batch_size: int = 256,
        bf16: bool = False,
        show_progress_bar: bool | None = None,
        packed: bool | None = None,
    ) -> np.ndarray:
        """L2-normalised float32 embeddings. Padded: batches sorted by token length (little padding); packed
        (default: the config's ``packed_sequences``): batches in the given order, whose mixed lengths pack densely."""
        packed = getattr(self.config, "packed_sequences", True) if packed is None else packed
        max_length = self.config.query_max_length if tower == "query" else self.config.product_max_length
        input_ids = self.tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
        order = np.arange(len(texts)) if packed else np.argsort([-len(ids) for ids in input_ids], kind="stable")
        embeddings = np.empty((len(texts), self.embedding_dim), dtype=np.float32)
        was_training = self.training
        self.eval()
        if show_progress_bar is None:
            show_progress_bar = len(texts) > 10 * batch_size
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc=f"encode {tower}s", disable=not show_progress_bar):
            rows = order[start : start + batch_size]
            batch = self.tokenizer.pad({"input_ids": [input_ids[i] for i in rows]}, return_tensors="pt")
            batch = batch.to(self.device)
            with _autocast(self.device, bf16):
                embedded = self.embed(batch["input_ids"], batch["attention_mask"], tower, packed=packed)
            embeddings[rows] = embedded.float().cpu().numpy()
        self.train(was_training)
        return embeddings

    def save_pretrained(
        self,
        save_directory: str | Path,
        is_main_process: bool = True,
        state_dict: dict[str, torch.Tensor] | None = None,
        model_card_name: str | None = None,
        **kwargs,
    ) -> None:
        """Save the model so that both ``TwoTowerModel.from_pretrained`` and plain ``SentenceTransformer`` load it
        and embed a text alike (``encode_query`` as :meth:`encode_queries`, ``encode_document`` and ``encode`` as
        :meth:`encode_products`), with the encoder weights stored once (safetensors), and write its model card
        (its usage naming ``model_card_name``, by default the folder's name).

        The root holds the two-tower config, the tokenizer and the card; the encoders live in the
        sentence-transformers module folders (``0_Transformer/``; untied: ``0_Router/{query,document}_0_Transformer/``).
        """
        if not is_main_process:
            return
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.architectures = [type(self).__name__]
        self.config.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        remove_other_layouts(folder, self.config.tie_towers)
        subfolders = encoder_folders(self.config.tie_towers)
        for tower, subfolder in subfolders.items():
            getattr(self, tower).save_pretrained(
                folder / subfolder,
                state_dict=_sub_state(state_dict, tower),
                max_shard_size=kwargs.get("max_shard_size", "5GB"),
            )
            self.tokenizer.save_pretrained(folder / subfolder)
        write_sentence_transformers_files(folder, self.config)
        write_model_card(folder, self.config, name=model_card_name)
        for subfolder in subfolders.values():
            _give_default_permissions(folder / subfolder)
        self._saved_at = str(folder)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str = "Upload two-tower model",
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size: str | int = "5GB",
    ):
        """Upload the folder :meth:`save_pretrained` writes, model card included (``PreTrainedModel.push_to_hub``
        would replace the card with a generic one), failing at once while the Hub is unreachable."""
        ensure_hub_reachable(getattr(self, "_saved_at", None) or getattr(self, "_loaded_from", None))
        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, max_shard_size=max_shard_size, model_card_name=repo_id)
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                commit_message=commit_message,
                revision=revision,
                create_pr=create_pr,
            )


def _sub_state(state_dict: dict[str, torch.Tensor] | None, prefix: str) -> dict[str, torch.Tensor] | None:
    if state_dict is None:
        return None
    return {key[len(prefix) + 1 :]: value for key, value in state_dict.items() if key.startswith(prefix + ".")}


def _give_default_permissions(folder: Path) -> None:
    """safetensors writes through a private temporary file (mode 0600): give the weights the user's usual mode."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.glob("*.safetensors*"):
        os.chmod(path, 0o666 & ~umask)


def _encoder_config(config: TwoTowerConfig):
    encoder_config = dict(config.encoder_config)
    return AutoConfig.for_model(encoder_config.pop("model_type"), **encoder_config)


def _autocast(device: torch.device, bf16: bool):
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def has_split_weights(folder: Path) -> bool:
    """Saved with the encoder weights in the sentence-transformers module folders, none at the root."""
    return bool(saved_encoder_folders(folder)) and not (folder / "model.safetensors").is_file()


def is_two_tower_folder(path: str | Path) -> bool:
    config_file = Path(path) / "config.json"
    return config_file.is_file() and json.loads(config_file.read_text()).get("model_type") == "two_tower"


def load_model(name_or_path: str | None = None, **from_encoder_kwargs) -> TwoTowerModel:
    """A saved two-tower model, or a fresh one around a base encoder (a local folder or a Hub id)."""
    name_or_path = str(name_or_path or default_base_model())
    folder = resolve_pretrained(name_or_path)
    if is_two_tower_folder(folder):
        return TwoTowerModel.from_pretrained(name_or_path)
    check_text_encoder(folder)
    return TwoTowerModel._around_encoder(folder, name_or_path, **from_encoder_kwargs)


def check_text_encoder(name_or_path: str | Path) -> None:
    """A base encoder must be an encoder-only transformer (BERT-like), not a decoder or seq2seq model."""
    if Path(name_or_path).is_dir() and not (Path(name_or_path) / "config.json").is_file():
        raise UserInputError(f"{name_or_path}: no config.json, so not a model folder")
    config = AutoConfig.from_pretrained(name_or_path)
    generative = ("CausalLM", "Seq2SeqLM", "ForConditionalGeneration", "LMHeadModel")
    architectures = config.architectures or []
    if config.is_encoder_decoder or any(kind in arch for arch in architectures for kind in generative):
        raise UserInputError(
            f"{name_or_path}: a {config.model_type} model ({', '.join(architectures) or 'encoder-decoder'}), "
            "neither a two-tower checkpoint nor an encoder-only base model"
        )
