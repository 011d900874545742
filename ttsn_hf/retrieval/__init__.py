"""Retrieval: chunked catalogue encoding, FAISS indexing, hard-negative mining and the BM25 baseline."""
