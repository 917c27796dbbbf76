"""What a run is outside its training loop: the names of the files in a run directory, the model spec that
rebuilds the network from a weights file alone, the device of this process and the seeding. Everything that
reads or writes run directories (the trainer, `load`, report, certify, speedup, the command line and the
benchmarks) takes the names from here."""
from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn

from . import distributed
from .models import build_model

CHECKPOINT = "checkpoint.pt"
WEIGHTS = "model.safetensors"
BEST = "best.safetensors"
BEST_NEXT = "best.next.safetensors"
SUMMARY = "summary.json"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
RUN_FILES = (CHECKPOINT, WEIGHTS, BEST, BEST_NEXT, SUMMARY, METRICS, METRICS_CSV, CONFIG)  # the trainer's alone


def resolve_device(name: str) -> torch.device:
    """The device of this process: auto -> cuda when available; under torchrun, cuda:LOCAL_RANK."""
    if name == "auto":
        return distributed.local_device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    return distributed.local_device(dev)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def model_spec(cfg, info) -> dict:
    """What `leanrobust.load` needs to rebuild the network from a weights file alone (cfg: a RunConfig,
    info: its dataset's DatasetInfo)."""
    m = cfg.model
    kw = {"width": m.width, "input_size": info.size} if m.name == "smallcnn" else {}
    if m.name == "wideresnet":
        kw = {"depth": m.depth, "widen_factor": m.widen_factor, "activation": m.activation}
    if m.dropout is not None:
        kw["dropout"] = m.dropout
    return {"name": m.name, "num_classes": info.num_classes, "in_channels": info.channels,
            "mean": list(info.mean), "std": list(info.std), "kwargs": kw}


def build_from_spec(spec: dict) -> nn.Module:
    return build_model(spec["name"], spec["num_classes"], spec["in_channels"], spec["mean"], spec["std"], **spec["kwargs"])
