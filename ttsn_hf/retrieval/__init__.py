"""Retrieval: chunked catalogue encoding, FAISS indexing, hard-negative mining and the BM25 baseline."""

import logging

# While importing, faiss logs at INFO every SIMD build it tries ("Could not load library with AVX512 support"):
# noise under the scripts' INFO logging, not a fault (faiss loads the best build this machine can run).
logging.getLogger("faiss.loader").setLevel(logging.WARNING)
