"""The small public Python API."""
from __future__ import annotations

import json
from pathlib import Path

from torch import nn


def load(path: str | Path, device: str = "cpu") -> nn.Module:
    """A trained network in eval mode, from a run directory or a model.safetensors file.
    It takes inputs in [0,1]: normalisation is inside the model."""
    from .io import WeightsError, load_weights, read_metadata
    from .train import WEIGHTS, build_from_spec

    path = Path(path)
    file = path / WEIGHTS if path.is_dir() else path
    meta = read_metadata(file)
    if "leanrobust_model" not in meta:
        raise WeightsError(f"{file}: safetensors file has no leanrobust model description")
    model = build_from_spec(json.loads(meta["leanrobust_model"]))
    model.load_state_dict(load_weights(file))
    return model.to(device).eval()
