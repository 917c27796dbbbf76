"""The threat model of an evaluation: norm names (RobustBench's Linf/L2 and ours), the conventional radius
per dataset and the checks on eps, shared by `leanrobust eval` and `leanrobust.benchmark`."""
from __future__ import annotations

import math

# RobustBench's default radii where a convention exists (inputs in [0,1]); Fashion-MNIST: this package's configs
DEFAULT_EPS = {("cifar10", "linf"): 8 / 255, ("cifar100", "linf"): 8 / 255, ("cifar10", "l2"): 0.5,
               ("cifar100", "l2"): 0.5, ("mnist", "linf"): 0.3, ("fashion_mnist", "linf"): 0.1}


def norm_name(threat_model: str) -> str:
    """RobustBench's threat model names (Linf, L2) and ours (linf, l2) -> ours."""
    t = str(threat_model).strip().lower()
    if t not in ("linf", "l2"):
        raise ValueError(f"threat model {threat_model!r}: use 'Linf' or 'L2' (corruptions are not supported)")
    return t


def default_eps(dataset: str, norm: str) -> float:
    """The conventional radius of a dataset and norm (RobustBench's for CIFAR), else an error asking for eps."""
    from .data.sources import dataset_info  # data pulls in platformdirs: imported when used, not with the package

    key = (dataset_info(dataset).name, norm)
    if key not in DEFAULT_EPS:
        raise ValueError(f"no conventional eps for {key[0]} under {norm}: pass eps (--eps)")
    return DEFAULT_EPS[key]


def check_eps(eps: float, norm: str) -> float:
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    if norm == "linf" and eps > 1:
        raise ValueError(f"eps {eps:g} under linf exceeds 1, the whole [0,1] input range (8/255 is 0.0314)")
    return float(eps)
