"""What `leanrobust eval` evaluates: the model (a run, an exported file or a user's factory and weights),
the test set in leanrobust's fixed order and the threat model, resolved from flags, config and metadata."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .model_file import load, load_state, model_info
from .runs import CONFIG
from .threat_model import check_eps, default_eps, norm_name
from .user_model import model_from_factory, probe


def load_test_set(dataset: str = "fashion_mnist", n: Optional[int] = None, *, root: Optional[str | Path] = None,
                  download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Test images as floats in [0,1] (N, C, H, W) and int64 labels, in the fixed shuffled order every
    leanrobust evaluation uses (the first n points are the same for every run and method)."""
    # config and data pull in pydantic and platformdirs: imported when loading, not with the package
    from .config_schema import DataConfig
    from .data.augment import to_float
    from .data.build import load_test_set as _load
    from .data.sources import dataset_info

    name = dataset_info(dataset).name
    images, labels = _load(DataConfig(dataset=name, root=None if root is None else str(root), download=download))
    if n is not None:
        images, labels = images[:n], labels[:n]
    return to_float(images), labels


@dataclass
class EvalTarget:
    """What an evaluation runs on: the model, the test set, the threat model, and where AutoAttack may
    keep its resumable state (a run directory only)."""

    model: nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    eps: float
    norm: str
    dataset: str
    state_dir: Optional[Path] = None


def eval_target(path: Optional[Path], *, model: Optional[str] = None, dataset: Optional[str] = None,
                data_root: Optional[str] = None, config: Optional[Path] = None, eps: Optional[float] = None,
                norm: Optional[str] = None, device: torch.device | str = "cpu") -> EvalTarget:
    """Resolve what `leanrobust eval` evaluates. path: a run directory (its config.yaml gives data and threat
    model), an exported or model.safetensors file (its metadata, else --config/--dataset), or weights for
    `model` (a factory pkg.module:fn, see model_from_factory). Flags given explicitly always win."""
    # config and data pull in pydantic and platformdirs: imported when resolving, not with the package
    from .config import load_config
    from .config_schema import DataConfig
    from .data.build import load_test_set as _load_test
    from .data.sources import dataset_info

    cfg = None
    if path is not None and not path.exists():
        raise ValueError(f"{path} does not exist")
    if path is None and model is None:
        raise ValueError("give a run directory or weights file, or --model pkg.module:fn with --dataset")
    if config is not None:
        cfg = load_config(config)
    elif path is not None and path.is_dir():
        if model is not None:
            raise ValueError(f"{path} is a directory: with --model give a safetensors weights file (or none)")
        if not (path / CONFIG).is_file():
            raise ValueError(f"cannot find the run's config.yaml in {path}: pass --config for the data")
        cfg = load_config(path / CONFIG, lenient=True)  # a run's own config.yaml: as it trained
    info: dict = {}
    if model is not None:
        net = model_from_factory(model)
        if path is not None:
            load_state(net, path)
    else:
        net = load(path)
        if path.is_file():
            info = model_info(path)
    meta_data, meta_threat = info.get("dataset", {}), info.get("threat_model", {})
    if dataset is not None:
        data = DataConfig(dataset=dataset_info(dataset).name, root=data_root)  # an unknown name lists the known
    elif cfg is not None:
        data = cfg.data if data_root is None else cfg.data.model_copy(update={"root": data_root})
    elif meta_data.get("name") and meta_data["name"] != "npz":
        data = DataConfig(dataset=meta_data["name"], root=data_root)
    else:
        raise ValueError("which test set? pass --dataset (fashion_mnist, mnist, cifar10, cifar100) or --config")
    norm = norm_name(norm or (cfg.objective.norm if cfg is not None else meta_threat.get("norm", "linf")))
    if eps is None:
        if cfg is not None and cfg.objective.norm == norm:
            eps = cfg.objective.eps
        elif meta_threat.get("norm") == norm and meta_threat.get("eps") is not None:
            eps = float(meta_threat["eps"])
        else:
            eps = default_eps(data.dataset, norm)
    eps = check_eps(float(eps), norm)
    images, labels = _load_test(data)
    net = net.to(device).eval()
    probe(net, images, data.dataset, device)
    own_data = cfg is None or data.dataset == cfg.data.dataset  # another test set's results stay out of the run
    return EvalTarget(model=net, images=images, labels=labels, eps=eps, norm=norm, dataset=data.dataset,
                      state_dir=path if path is not None and path.is_dir() and own_data else None)
