"""A user's own network for evaluation: import its factory (`--model pkg.module:fn`) and check that it
takes the test images, so a model that cannot be evaluated fails with one clear message."""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn


def model_from_factory(target: str) -> nn.Module:
    """Call a user's model factory named `pkg.module:fn` (importable, or from the current directory) or
    `path/to/file.py:fn`, with no arguments; it must return an nn.Module taking [0,1] inputs."""
    module_name, sep, fn_name = target.rpartition(":")
    if not sep or not module_name or not fn_name.isidentifier():
        raise ValueError(f"--model {target!r}: expected pkg.module:function or path/to/file.py:function")
    try:
        if module_name.endswith(".py") or "/" in module_name:
            path = Path(module_name)
            if not path.is_file():
                raise ValueError(f"--model {target!r}: {path} does not exist")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))  # as `python -m` would: modules next to the user
            module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"--model {target!r}: cannot import {module_name} ({e})") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ValueError(f"--model {target!r}: {module_name} has no function {fn_name!r}")
    try:
        model = fn()
    except Exception as e:  # the user's own code: say where it failed
        raise ValueError(f"--model {target!r}: calling {fn_name}() failed ({type(e).__name__}: {e})") from e
    if not isinstance(model, nn.Module):
        raise ValueError(f"--model {target!r}: {fn_name}() returned {type(model).__name__}, not a torch nn.Module")
    return model


def probe(model: nn.Module, images: torch.Tensor, dataset: str, device) -> None:
    """One forward pass on one test image, so a model that does not fit the data fails with a clear message."""
    # attacks and data pull in pyautoattack and platformdirs: imported when probing, not with the package
    from .attacks.common import eval_mode
    from .data.augment import to_float

    x = to_float(images[:1])
    try:
        with torch.no_grad(), eval_mode(model):
            out = model(x.to(device))
    except Exception as e:  # the user's model: any error means it cannot take these images
        raise ValueError(f"the model cannot take {dataset} images of shape {tuple(x.shape[1:])} in [0,1] "
                         f"({type(e).__name__}: {str(e)[:300]})") from None
    if not torch.is_tensor(out) or out.ndim != 2:
        raise ValueError(f"the model must return logits of shape (batch, classes); on {dataset} it returned "
                         f"{tuple(out.shape) if torch.is_tensor(out) else type(out).__name__}")
