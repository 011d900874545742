import hashlib
import threading

import numpy as np
import pytest

from ttsn_hf.data.tables import Products
from ttsn_hf.errors import UserInputError
from ttsn_hf.retrieval.encoding import (
    EMBEDDINGS_FILE,
    cache_key,
    catalogue_fingerprint,
    encode_catalogue,
    model_fingerprint,
)


class HashingEncoder:
    """A deterministic bag-of-words encoder that counts what it encodes."""

    embedding_dim = 16
    name_or_path = "hashing-bow"
    fingerprint = "hashing-bow-16"

    def __init__(self, fail_after_calls: int | None = None):
        self.calls = 0
        self.encoded = 0
        self.fail_after_calls = fail_after_calls

    def encode_products(self, texts, batch_size=256, bf16=False, show_progress_bar=None):
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise KeyboardInterrupt("interrupted")
        self.calls += 1
        self.encoded += len(texts)
        return embed(texts, self.embedding_dim)

    encode_queries = encode_products


def embed(texts, dim):
    vectors = np.zeros((len(texts), dim), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in text.lower().split():
            digest = int(hashlib.md5(word.encode()).hexdigest(), 16)
            vectors[row, digest % dim] += 1.0 if digest & 256 else -1.0
    vectors[:, 0] += 0.01
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


class ThreadAccelerator:
    """Two 'processes' as two threads: enough for the sharding and barrier logic of encode_catalogue."""

    def __init__(self, rank: int, barrier: threading.Barrier):
        self.process_index = rank
        self.num_processes = barrier.parties
        self.is_main_process = rank == 0
        self.barrier = barrier

    def wait_for_everyone(self):
        self.barrier.wait(timeout=30)


@pytest.fixture
def catalogue():
    ids = [f"P{i:03d}" for i in range(23)]
    texts = [f"product {i} colour {'red' if i % 2 else 'blue'} size {i % 5} brand b{i % 3}" for i in range(23)]
    return ids, texts


def test_chunked_encoding_equals_one_shot(catalogue):
    ids, texts = catalogue
    one_shot = embed(texts, HashingEncoder.embedding_dim)
    encoder = HashingEncoder()
    chunked = encode_catalogue(encoder, ids, texts, chunk_size=5)
    assert chunked.dtype == np.float32 and chunked.shape == (23, 16)
    np.testing.assert_array_equal(chunked, one_shot)
    assert encoder.calls == 5 and encoder.encoded == 23


def test_cached_encoding_is_a_memmap_and_a_cache_hit_encodes_nothing(catalogue, tmp_path):
    ids, texts = catalogue
    first = HashingEncoder()
    cached = encode_catalogue(first, ids, texts, cache_dir=tmp_path, chunk_size=7)
    assert isinstance(cached, np.memmap)
    np.testing.assert_array_equal(cached, embed(texts, 16))
    again = HashingEncoder()
    np.testing.assert_array_equal(encode_catalogue(again, ids, texts, cache_dir=tmp_path, chunk_size=7), cached)
    assert again.calls == 0
    # a different catalogue is a different cache entry
    changed = HashingEncoder()
    encode_catalogue(changed, ids, texts[:-1] + ["another text"], cache_dir=tmp_path, chunk_size=7)
    assert changed.calls == 4


def test_interrupted_encoding_resumes_from_the_chunks_written(catalogue, tmp_path):
    ids, texts = catalogue
    with pytest.raises(KeyboardInterrupt):
        encode_catalogue(HashingEncoder(fail_after_calls=3), ids, texts, cache_dir=tmp_path, chunk_size=5)
    folder = tmp_path / cache_key(HashingEncoder(), Products.from_lists(ids, texts), bf16=False)
    assert sorted(path.name for path in (folder / "chunks-5").glob("*.npy")) == [
        "000000.npy",
        "000001.npy",
        "000002.npy",
    ]
    assert not (folder / EMBEDDINGS_FILE).exists()
    resumed = HashingEncoder()
    result = encode_catalogue(resumed, ids, texts, cache_dir=tmp_path, chunk_size=5)
    assert resumed.calls == 2 and resumed.encoded == 23 - 15
    np.testing.assert_array_equal(result, embed(texts, 16))
    assert not (folder / "chunks-5").exists()  # assembled into embeddings.npy, chunks removed


def test_two_sharded_processes_split_the_chunks_and_return_the_one_process_result(catalogue, tmp_path):
    ids, texts = catalogue
    barrier = threading.Barrier(2)
    encoders = [HashingEncoder(), HashingEncoder()]
    results = [None, None]

    def run(rank):
        accelerator = ThreadAccelerator(rank, barrier)
        results[rank] = encode_catalogue(encoders[rank], ids, texts, tmp_path, chunk_size=4, accelerator=accelerator)

    threads = [threading.Thread(target=run, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [encoder.encoded for encoder in encoders] == [4 + 4 + 4, 4 + 4 + 3]  # chunks 0, 2, 4 and 1, 3, 5
    np.testing.assert_array_equal(results[0], embed(texts, 16))
    np.testing.assert_array_equal(results[1], results[0])


def test_empty_catalogue_and_bad_input(catalogue):
    assert encode_catalogue(HashingEncoder(), [], []).shape == (0, 16)
    ids, texts = catalogue
    with pytest.raises(UserInputError, match="23 product ids but 22 product texts"):
        encode_catalogue(HashingEncoder(), ids, texts[:-1])


def test_catalogue_fingerprint_depends_on_ids_texts_and_order():
    base = catalogue_fingerprint(["a", "b"], ["x", "y"])
    assert base == catalogue_fingerprint(["a", "b"], ["x", "y"])
    assert base != catalogue_fingerprint(["b", "a"], ["y", "x"])
    assert base != catalogue_fingerprint(["a", "b"], ["x", "z"])
    assert catalogue_fingerprint(["ab"], ["c"]) != catalogue_fingerprint(["a"], ["bc"])


def test_model_fingerprint_follows_the_weights_not_the_path(tiny_encoder_dir, tmp_path):
    import torch

    from ttsn_hf.modeling.model import TwoTowerModel, load_model

    model = load_model(str(tiny_encoder_dir))
    model.save_pretrained(tmp_path / "copy")
    copy = TwoTowerModel.from_pretrained(tmp_path / "copy")
    assert model_fingerprint(copy) == model_fingerprint(model)
    with torch.no_grad():
        copy.encoder.embeddings.word_embeddings.weight[0, 0] += 1.0
    assert model_fingerprint(copy) != model_fingerprint(model)
    ids, texts = ["a"], ["x"]
    catalogue = Products.from_lists(ids, texts)
    assert cache_key(model, catalogue, bf16=True) != cache_key(model, catalogue, bf16=False)


def test_encoding_with_the_two_tower_model_in_chunks_matches_one_call(tiny_encoder_dir, tmp_path):
    from ttsn_hf.modeling.model import load_model

    model = load_model(str(tiny_encoder_dir))
    texts = [f"usb c cable {i} " + "long " * (i % 7) for i in range(30)]
    ids = [str(i) for i in range(30)]
    chunked = encode_catalogue(model, ids, texts, cache_dir=tmp_path, chunk_size=8, batch_size=4)
    np.testing.assert_allclose(chunked, model.encode_products(texts, batch_size=4), atol=1e-5)
