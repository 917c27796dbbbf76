"""A leanrobust weights file: the metadata that describes its network, checked key by key, and reading it back
(`load`, `model_info`, `load_state`), so a run or an exported file rebuilds its model without the config."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .io import WeightsError, load_weights, read_metadata
from .models.registry import MODELS, model_options
from .runs import WEIGHTS, build_from_spec

# metadata keys of a leanrobust weights file; `leanrobust_model` is what `load` needs, the others
# describe an exported run (`export`) and are read by `model_info`
MODEL_KEY = "leanrobust_model"
EXPORT_KEYS = {"dataset": "leanrobust_dataset", "threat_model": "leanrobust_threat_model",
               "eval": "leanrobust_eval", "training": "leanrobust_training", "config": "leanrobust_config"}
SPEC_KEYS = {"name", "num_classes", "in_channels", "mean", "std", "kwargs"}
# bounds on a model description read from a file (the network's size is further bounded by the file's, _build)
_SPEC_LIMITS = {"num_classes": 100_000, "in_channels": 64, "input_size": 1024}


def read_spec(meta: dict[str, str], file: Path) -> dict:
    """The model description in a weights file's metadata, checked key by key (an unexpected or missing
    key, or a value out of range, is a WeightsError naming the file and the key)."""
    if MODEL_KEY not in meta:
        raise WeightsError(f"{file}: safetensors file has no leanrobust model description (metadata key "
                           f"{MODEL_KEY}); for your own network pass its factory: "
                           f"`leanrobust eval {file} --model pkg.module:fn --dataset NAME`")
    try:
        spec = json.loads(meta[MODEL_KEY])
    except json.JSONDecodeError as e:
        raise WeightsError(f"{file}: metadata {MODEL_KEY} is not valid JSON ({e})") from None
    if not isinstance(spec, dict):
        raise WeightsError(f"{file}: metadata {MODEL_KEY} must be a JSON object, got {type(spec).__name__}")
    spec.setdefault("kwargs", {})
    unknown, missing = sorted(set(spec) - SPEC_KEYS), sorted(SPEC_KEYS - set(spec))
    if unknown or missing:
        problems = [f"unexpected key(s) {unknown}"] * bool(unknown) + [f"missing key(s) {missing}"] * bool(missing)
        raise WeightsError(f"{file}: metadata {MODEL_KEY} has {'; '.join(problems)} (expected {sorted(SPEC_KEYS)}); "
                           "the file was not written by this leanrobust version or is damaged")

    def bad(key: str, why: str) -> WeightsError:
        return WeightsError(f"{file}: metadata {MODEL_KEY}.{key} {why}")

    if spec["name"] not in MODELS:
        raise bad("name", f"is {spec['name']!r}, not a leanrobust model ({', '.join(sorted(MODELS))})")
    for key in ("num_classes", "in_channels"):
        v = spec[key]
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= _SPEC_LIMITS[key]:
            raise bad(key, f"must be an integer in [1, {_SPEC_LIMITS[key]}], got {v!r}")
    for key in ("mean", "std"):
        v = spec[key] if isinstance(spec[key], list) else [spec[key]]
        if (not v or len(v) not in (1, spec["in_channels"])
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
                or key == "std" and min(v) <= 0):
            raise bad(key, f"must be {'positive ' if key == 'std' else ''}finite numbers, one or one per channel, "
                           f"got {spec[key]!r}")
    kw = spec["kwargs"]
    if not isinstance(kw, dict):
        raise bad("kwargs", f"must be a JSON object, got {kw!r}")
    extra = sorted(set(kw) - model_options(spec["name"]))
    if extra:
        raise bad("kwargs", f"has unexpected key(s) {extra} for model {spec['name']!r} "
                            f"(it takes: {', '.join(sorted(model_options(spec['name']))) or 'no options'})")
    for k, v in kw.items():
        if isinstance(v, bool) or isinstance(v, (int, float)) and (
                not math.isfinite(v) or v < 0 or v > _SPEC_LIMITS.get(k, math.inf)):
            raise bad(f"kwargs.{k}", f"is out of range: {v!r}")
    return spec


def _build(spec: dict, file: Path) -> nn.Module:
    """The network a checked spec describes. It is first built without memory (meta device): one whose
    weights could not fit in the file is refused before anything is allocated."""
    try:
        with torch.device("meta"):  # the network without its Normalize layer (which checks values)
            shape_only = MODELS[spec["name"]](spec["num_classes"], spec["in_channels"], **spec["kwargs"])
        need = sum(t.numel() * t.element_size() for t in shape_only.state_dict().values())
        if need > Path(file).stat().st_size:
            raise WeightsError(f"{file}: metadata {MODEL_KEY} describes a network of {need:,} bytes of weights, "
                               f"more than the file holds ({Path(file).stat().st_size:,} bytes); the file is damaged")
        return build_from_spec(spec)
    except (ValueError, TypeError, OverflowError, RuntimeError, KeyError, AssertionError, ZeroDivisionError) as e:
        if isinstance(e, WeightsError):
            raise
        raise WeightsError(f"{file}: cannot build the model its metadata describes ({type(e).__name__}: {e})") from None


def load_state(model: nn.Module, file: str | Path) -> nn.Module:
    """Load safetensors weights into `model`, strictly; a mismatch names the file and the first keys."""
    state = load_weights(file)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()
        raise WeightsError(f"{file}: weights do not fit the model ({'; '.join(ln.strip() for ln in first[:3])[:400]}); "
                           "the file was saved from another architecture") from None
    return model


def load(path: str | Path, device: str = "cpu") -> nn.Module:
    """A trained network in eval mode, from a run directory, its model.safetensors or an exported file.
    It takes inputs in [0,1]: normalisation is inside the model."""
    path = Path(path)
    file = path / WEIGHTS if path.is_dir() else path
    model = _build(read_spec(read_metadata(file), file), file)
    return load_state(model, file).to(device).eval()


def model_info(path: str | Path) -> dict:
    """What a leanrobust weights file says about itself: model (architecture), normalization (mean, std),
    and for an exported run dataset, threat_model, eval (accuracies), training and config; version."""
    path = Path(path)
    file = path / WEIGHTS if path.is_dir() else path
    meta = read_metadata(file)
    spec = read_spec(meta, file)
    info: dict[str, Any] = {"model": spec, "normalization": {"mean": spec["mean"], "std": spec["std"]},
                            "version": meta.get("leanrobust_version")}
    for name, key in EXPORT_KEYS.items():
        if key in meta:
            try:
                info[name] = json.loads(meta[key])
            except json.JSONDecodeError as e:
                raise WeightsError(f"{file}: metadata {key} is not valid JSON ({e})") from None
    return info
