"""The three-stage training schedule (epochs are numbered globally, 1 to 5)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    number: int
    epochs: tuple[int, ...]
    learning_rate: float
    data: str


def build_schedule(epochs_per_stage: tuple[int, int, int] = (2, 1, 2), learning_rates=(2e-5, 2e-5, 2e-6)):
    """Stage 1: E+S positives, random and I negatives; stage 2: + mined hard negatives; stage 3: E+S+C positives."""
    data = (
        "E+S positives; random and I-judged negatives",
        "stage 1 + hard negatives mined with the stage-1 model",
        "E+S+C positives; random, I-judged and mined negatives",
    )
    stages, first = [], 1
    for number, (count, lr, what) in enumerate(zip(epochs_per_stage, learning_rates, data, strict=True), start=1):
        stages.append(Stage(number, tuple(range(first, first + count)), lr, what))
        first += count
    return tuple(stages)
