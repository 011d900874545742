"""WiSE-FT (Wortsman et al. 2022): interpolate the trained weights with the base encoder's."""

from __future__ import annotations

from pathlib import Path

import torch

from ..atomic import atomic_path
from ..modeling.model import TwoTowerModel


def merge_with_base(model: TwoTowerModel, base: TwoTowerModel, base_weight: float) -> TwoTowerModel:
    """``(1 - base_weight) * trained + base_weight * base`` for every floating-point weight, in place."""
    if not 0 <= base_weight <= 1:
        raise ValueError(f"merge_base_weight must be in [0, 1]; got {base_weight}")
    base_state = base.state_dict()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and name in base_state:
                tensor.lerp_(base_state[name].to(tensor.dtype), base_weight)
    return model


def merge_saved_model(folder: Path, base: TwoTowerModel, base_weight: float) -> None:
    """Merge the model saved in ``folder`` with ``base`` and save it back (atomically), recording the weight; a
    model already merged (a later ``--stage`` run that kept the same best_model) is left as it is."""
    model = TwoTowerModel.from_pretrained(folder)
    training = getattr(model.config, "training", None) or {}
    if "merge_base_weight" in training:
        return
    model = merge_with_base(model, base, base_weight)
    model.config.training = {**training, "merge_base_weight": base_weight}
    with atomic_path(folder) as temporary:
        model.save_pretrained(temporary)
