"""Evaluation: retrieval metrics and the evaluation driver with its report."""
