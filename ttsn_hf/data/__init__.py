"""Data: ESCI loading (official layout, plain tables, saved datasets) and the per-stage training datasets."""
