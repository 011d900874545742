"""The ESCI label rules, in one place: labels, which count as positives in each stage, weights and gains.

E (Exact), S (Substitute), C (Complement), I (Irrelevant); "" marks an unjudged product (a random or mined negative).
"""

from __future__ import annotations

from .errors import UserInputError

LABELS = ("E", "S", "C", "I")
LABEL_NAMES = {"exact": "E", "substitute": "S", "complement": "C", "irrelevant": "I"}
UNJUDGED = ""

POSITIVE_LABELS_BY_STAGE = {1: ("E", "S"), 2: ("E", "S"), 3: ("E", "S", "C")}
NEGATIVE_LABELS = ("I",)
# Judged E, S or C for a query: never pushed away as one of its in-batch negatives, in any stage.
KNOWN_POSITIVE_LABELS = ("E", "S", "C")
# Retrieval metrics: relevant means E or S; "_exact" metrics count E alone.
RELEVANT_LABELS = frozenset(POSITIVE_LABELS_BY_STAGE[1])
EXACT_LABELS = frozenset(("E",))
# Graded gains of nDCG (the KDD Cup 2022 task 1 gains); unjudged products count as I.
ESCI_GAINS: dict[str, float] = {"E": 1.0, "S": 0.1, "C": 0.01, "I": 0.0}
EXACT_GAINS: dict[str, float] = {"E": 1.0, "S": 0.0, "C": 0.0, "I": 0.0}

DEFAULT_LABEL_WEIGHTS: dict[str, float] = {"E": 1.0, "S": 0.5, "C": 0.25, "I": 1.0, UNJUDGED: 1.0}


def format_label_weights(weights: dict[str, float]) -> str:
    """``E=1.0,S=0.5,...``: the form ``--label_weights`` takes."""
    return ",".join(f"{label}={weights[label]}" for label in LABELS if label in weights)


DEFAULT_LABEL_WEIGHTS_TEXT = format_label_weights(DEFAULT_LABEL_WEIGHTS)


def parse_label_weights(text: str) -> dict[str, float]:
    """``"E=1,S=0.5"`` -> ``{"E": 1.0, "S": 0.5, <defaults for the rest>}``; bad input is a one-line error."""
    weights = dict(DEFAULT_LABEL_WEIGHTS)
    for item in filter(None, (part.strip() for part in text.split(","))):
        label, sep, value = item.partition("=")
        label = label.strip().upper()
        if not sep or label not in LABELS:
            raise UserInputError(
                f"--label_weights: {item!r} is not LABEL=WEIGHT with LABEL one of {', '.join(LABELS)} "
                f"(e.g. {DEFAULT_LABEL_WEIGHTS_TEXT})"
            )
        try:
            weights[label] = float(value)
        except ValueError:
            raise UserInputError(f"--label_weights: weight {value!r} of {label} is not a number") from None
        if weights[label] < 0:
            raise UserInputError(f"--label_weights: weight of {label} must be >= 0; got {value}")
    return weights
