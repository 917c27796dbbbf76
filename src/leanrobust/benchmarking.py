"""`leanrobust.benchmark`: evaluate any model on a test set as `leanrobust eval` does, with RobustBench's
argument names and order and the attacks it runs by default."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from .threat_model import check_eps, default_eps, norm_name
from .user_model import probe

DEFAULT_ATTACKS = ("pgd20", "cw20", "pgd20x10", "autoattack")


def benchmark(model: nn.Module, n_examples: Optional[int] = None, dataset: str = "cifar10",
              threat_model: str = "Linf", *, eps: Optional[float] = None, n: Optional[int] = None,
              data_dir: Optional[str | Path] = None, device: Optional[str | torch.device] = None,
              batch_size: int = 500, attacks: Sequence[str] = DEFAULT_ATTACKS, autoattack_version: str = "standard",
              seed: int = 0, state_dir: Optional[str | Path] = None, progress: bool = False) -> dict:
    """Evaluate any model on a test set, as `leanrobust eval` does, and return the same report (clean_acc,
    robust_acc per attack, n, eps, norm, masking, ...). Named and ordered after RobustBench's `benchmark`
    (model, n_examples, dataset, threat_model, eps, data_dir, device, batch_size); `n` is n_examples by its
    leanrobust name. The model takes inputs in [0,1] (normalisation inside it). eps defaults to the
    dataset's convention (8/255 Linf and 0.5 L2 on CIFAR, 0.3 on MNIST, 0.1 on Fashion-MNIST)."""
    # evaluation, config and data pull in pyautoattack, pydantic and platformdirs: imported when benchmarking
    from .config_schema import DataConfig
    from .data.build import load_test_set as _load_test
    from .data.sources import dataset_info
    from .evaluate import evaluate_model, parse_attacks

    if n is not None and n_examples is not None and n != n_examples:
        raise ValueError(f"n={n} and n_examples={n_examples}: give one")
    n = n if n is not None else n_examples
    if n is not None and n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}")
    norm = norm_name(threat_model)
    name = dataset_info(dataset).name
    eps = check_eps(float(default_eps(name, norm) if eps is None else eps), norm)
    dev = torch.device(device) if device is not None else next(
        (p.device for p in model.parameters()), torch.device("cpu"))
    images, labels = _load_test(DataConfig(dataset=name, root=None if data_dir is None else str(data_dir)))
    was_training = model.training
    model = model.to(dev)
    probe(model, images, name, dev)
    try:
        res = evaluate_model(model, images, labels, eps=eps, norm=norm, attacks=parse_attacks(list(attacks)), n=n,
                             autoattack_version=autoattack_version, batch_size=batch_size, device=dev, seed=seed,
                             state_dir=state_dir, progress=progress)
    finally:
        model.train(was_training)
    return {"dataset": name, "threat_model": {"linf": "Linf", "l2": "L2"}[norm], **res}
