"""The small public Python API: load a trained network, export a run as one self-describing
safetensors file, evaluate any model (`benchmark`, named and shaped after RobustBench's), and the
pieces the command line shares with it (a user's model factory, the test set, a training dry run)."""
from __future__ import annotations

import importlib
import importlib.util
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

# metadata keys of a leanrobust weights file; `leanrobust_model` is what `load` needs, the others
# describe an exported run (`export`) and are read by `model_info`
MODEL_KEY = "leanrobust_model"
EXPORT_KEYS = {"dataset": "leanrobust_dataset", "threat_model": "leanrobust_threat_model",
               "eval": "leanrobust_eval", "training": "leanrobust_training", "config": "leanrobust_config"}
SPEC_KEYS = {"name", "num_classes", "in_channels", "mean", "std", "kwargs"}
# bounds on a model description read from a file (the network's size is further bounded by the file's, _build)
_SPEC_LIMITS = {"num_classes": 100_000, "in_channels": 64, "input_size": 1024}

# RobustBench's default radii where a convention exists (inputs in [0,1]); Fashion-MNIST: this package's configs
DEFAULT_EPS = {("cifar10", "linf"): 8 / 255, ("cifar100", "linf"): 8 / 255, ("cifar10", "l2"): 0.5,
               ("cifar100", "l2"): 0.5, ("mnist", "linf"): 0.3, ("fashion_mnist", "linf"): 0.1}


# ----------------------------------------------------------------------------- load and model_info
def _spec(meta: dict[str, str], file: Path) -> dict:
    """The model description in a weights file's metadata, checked key by key (an unexpected or missing
    key, or a value out of range, is a WeightsError naming the file and the key)."""
    from .io import WeightsError
    from .models.registry import MODELS, model_options

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
    from .io import WeightsError
    from .runs import build_from_spec

    from .models.registry import MODELS

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
    from .io import WeightsError, load_weights

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
    from .io import read_metadata
    from .runs import WEIGHTS

    path = Path(path)
    file = path / WEIGHTS if path.is_dir() else path
    model = _build(_spec(read_metadata(file), file), file)
    return load_state(model, file).to(device).eval()


def model_info(path: str | Path) -> dict:
    """What a leanrobust weights file says about itself: model (architecture), normalization (mean, std),
    and for an exported run dataset, threat_model, eval (accuracies), training and config; version."""
    from .io import WeightsError, read_metadata
    from .runs import WEIGHTS

    path = Path(path)
    file = path / WEIGHTS if path.is_dir() else path
    meta = read_metadata(file)
    spec = _spec(meta, file)
    info: dict[str, Any] = {"model": spec, "normalization": {"mean": spec["mean"], "std": spec["std"]},
                            "version": meta.get("leanrobust_version")}
    for name, key in EXPORT_KEYS.items():
        if key in meta:
            try:
                info[name] = json.loads(meta[key])
            except json.JSONDecodeError as e:
                raise WeightsError(f"{file}: metadata {key} is not valid JSON ({e})") from None
    return info


# ----------------------------------------------------------------------------- export
def export(run_dir: str | Path, out: str | Path) -> Path:
    """Write a finished run as one safetensors file: the selected weights plus metadata (architecture and
    normalisation, dataset, threat model, the evaluations at it, training cost, the resolved config), so
    `leanrobust.load(out)` rebuilds the model and `leanrobust eval out` evaluates it without the run."""
    from .io import load_weights, read_metadata, save_weights
    from .report import read_run
    from .runs import SUMMARY, WEIGHTS

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir}: not a run directory")
    if not (run_dir / SUMMARY).is_file() or not (run_dir / WEIGHTS).is_file():
        raise ValueError(f"{run_dir}: not a finished run (no {SUMMARY} or {WEIGHTS}); finish it with "
                         f"`leanrobust resume {run_dir}` first")
    file = run_dir / WEIGHTS
    meta = read_metadata(file)
    _spec(meta, file)
    rec = read_run(run_dir)
    summary = json.loads((run_dir / SUMMARY).read_text())
    cfg = summary.get("config", {})
    data = cfg.get("data", {})
    dataset = {"name": data.get("dataset", "fashion_mnist")}
    if dataset["name"] == "npz":
        dataset.update(path=data.get("path"), test_path=data.get("test_path"), num_classes=data.get("num_classes"))
    evals = {"clean_acc": rec.clean_acc, "n": rec.n,
             "robust_acc": {k: {"acc": acc, "n": n} for k, (acc, n) in rec.robust.items()},
             "masking": rec.masking.get("flag") if isinstance(rec.masking, dict) else None}
    training = {k: summary.get(k) for k in ("train_seconds", "grad_evals", "samples_seen", "n_train", "epochs",
                                             "best_epoch", "device", "torch")}
    training["objective"] = rec.objective
    training["run"] = run_dir.name
    metadata = {MODEL_KEY: meta[MODEL_KEY], "leanrobust_version": meta.get("leanrobust_version", ""),
                EXPORT_KEYS["dataset"]: json.dumps(dataset, sort_keys=True),
                EXPORT_KEYS["threat_model"]: json.dumps({"norm": rec.norm, "eps": rec.eps}, sort_keys=True),
                EXPORT_KEYS["eval"]: json.dumps(evals, sort_keys=True),
                EXPORT_KEYS["training"]: json.dumps(training, sort_keys=True),
                EXPORT_KEYS["config"]: json.dumps(cfg, sort_keys=True)}
    return save_weights(out, load_weights(file), metadata)


# ----------------------------------------------------------------------------- a user's model
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


def _norm(threat_model: str) -> str:
    """RobustBench's threat model names (Linf, L2) and ours (linf, l2) -> ours."""
    t = str(threat_model).strip().lower()
    if t not in ("linf", "l2"):
        raise ValueError(f"threat model {threat_model!r}: use 'Linf' or 'L2' (corruptions are not supported)")
    return t


def default_eps(dataset: str, norm: str) -> float:
    """The conventional radius of a dataset and norm (RobustBench's for CIFAR), else an error asking for eps."""
    from .data.sources import dataset_info

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


def load_test_set(dataset: str = "fashion_mnist", n: Optional[int] = None, *, root: Optional[str | Path] = None,
                  download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Test images as floats in [0,1] (N, C, H, W) and int64 labels, in the fixed shuffled order every
    leanrobust evaluation uses (the first n points are the same for every run and method)."""
    from .config import DataConfig
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


def _probe(model: nn.Module, images: torch.Tensor, dataset: str, device) -> None:
    """One forward pass on one test image, so a model that does not fit the data fails with a clear message."""
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


def eval_target(path: Optional[Path], *, model: Optional[str] = None, dataset: Optional[str] = None,
                data_root: Optional[str] = None, config: Optional[Path] = None, eps: Optional[float] = None,
                norm: Optional[str] = None, device: torch.device | str = "cpu") -> EvalTarget:
    """Resolve what `leanrobust eval` evaluates. path: a run directory (its config.yaml gives data and threat
    model), an exported or model.safetensors file (its metadata, else --config/--dataset), or weights for
    `model` (a factory pkg.module:fn, see model_from_factory). Flags given explicitly always win."""
    from .config import DataConfig, load_config
    from .data.build import load_test_set as _load_test
    from .runs import CONFIG

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
        from .data.sources import dataset_info

        data = DataConfig(dataset=dataset_info(dataset).name, root=data_root)  # an unknown name lists the known
    elif cfg is not None:
        data = cfg.data if data_root is None else cfg.data.model_copy(update={"root": data_root})
    elif meta_data.get("name") and meta_data["name"] != "npz":
        data = DataConfig(dataset=meta_data["name"], root=data_root)
    else:
        raise ValueError("which test set? pass --dataset (fashion_mnist, mnist, cifar10, cifar100) or --config")
    norm = _norm(norm or (cfg.objective.norm if cfg is not None else meta_threat.get("norm", "linf")))
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
    _probe(net, images, data.dataset, device)
    own_data = cfg is None or data.dataset == cfg.data.dataset  # another test set's results stay out of the run
    return EvalTarget(model=net, images=images, labels=labels, eps=eps, norm=norm, dataset=data.dataset,
                      state_dir=path if path is not None and path.is_dir() and own_data else None)


# ----------------------------------------------------------------------------- benchmark
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
    from .evaluate import evaluate_model, parse_attacks

    if n is not None and n_examples is not None and n != n_examples:
        raise ValueError(f"n={n} and n_examples={n_examples}: give one")
    n = n if n is not None else n_examples
    if n is not None and n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}")
    norm = _norm(threat_model)
    from .data.sources import dataset_info

    name = dataset_info(dataset).name
    eps = check_eps(float(default_eps(name, norm) if eps is None else eps), norm)
    dev = torch.device(device) if device is not None else next(
        (p.device for p in model.parameters()), torch.device("cpu"))
    from .config import DataConfig
    from .data.build import load_test_set as _load_test

    images, labels = _load_test(DataConfig(dataset=name, root=None if data_dir is None else str(data_dir)))
    was_training = model.training
    model = model.to(dev)
    _probe(model, images, name, dev)
    try:
        res = evaluate_model(model, images, labels, eps=eps, norm=norm, attacks=parse_attacks(list(attacks)), n=n,
                             autoattack_version=autoattack_version, batch_size=batch_size, device=dev, seed=seed,
                             state_dir=state_dir, progress=progress)
    finally:
        model.train(was_training)
    return {"dataset": name, "threat_model": {"linf": "Linf", "l2": "L2"}[norm], **res}


# ----------------------------------------------------------------------------- train --dry-run
def dry_run(cfg, run_dir: str | Path = "runs/dry-run") -> dict:
    """Validate a config end to end without training: build the data and the model, check the test set,
    then time two training batches to estimate the cost of one epoch. Writes nothing."""
    from .config import RunConfig
    from .data.build import load_test_set as _load_test
    from .objectives import call_objective
    from .schedule import lr_factor
    from .train import Trainer

    import tempfile

    assert isinstance(cfg, RunConfig)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="leanrobust-dry-run-") as tmp:  # nothing reaches the real --out
        tr = Trainer(cfg, Path(tmp) / Path(run_dir).name)
    build_s = time.perf_counter() - t0
    test_images, _ = _load_test(cfg.data, tr.data.info)
    B = cfg.optim.batch_size
    batches = len(tr.sampler)
    gen = torch.Generator(device=tr.device).manual_seed(cfg.seed)
    positions = tr.sampler.epoch(0, cfg.seed)
    obj, o = cfg.objective, cfg.optim
    model = tr.model
    trained = getattr(tr, "train_model", model)  # what the training loop calls (DDP-wrapped under torchrun)
    model.train()
    seconds, evals = [], []
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for i, pos in enumerate(positions[:2]):
        x, y, e, w = tr.batch(pos, gen)
        before = tr.counter.grad_evals
        t = time.perf_counter()
        for g in tr.optimizer.param_groups:
            g["lr"] = o.lr * lr_factor(o, 0, i, batches)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=tr.cuda and cfg.amp):
            out = call_objective(obj.name, trained, x, y, e, w, norm=obj.norm, steps=obj.steps, step_size=obj.step_size,
                                 beta=obj.beta, label_smoothing=obj.label_smoothing, epoch=0, num_epochs=o.epochs,
                                 **obj.params)
        tr.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        tr.optimizer.step()
        if tr.cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t)
        evals.append((tr.counter.grad_evals - before) / max(len(y), 1))
    model.load_state_dict(state)
    per_batch = seconds[-1]
    info = tr.data.info
    n_params = sum(p.numel() for p in model.parameters())
    return {"dataset": info.name, "image_shape": [info.channels, info.size, info.size], "classes": info.num_classes,
            "n_pool": len(tr.pool), "n_real": tr.data.n_real, "n_generated": len(tr.pool) - tr.data.n_real,
            "n_train": len(tr.selection), "n_val": len(tr.val), "n_test": int(test_images.shape[0]),
            "model": cfg.model.name, "parameters": n_params, "device": str(tr.device), "batch_size": B,
            "batches_per_epoch": batches, "grad_evals_per_sample": evals[-1],
            "grad_evals_per_epoch": int(round(evals[-1] * batches * B)),
            "seconds_per_batch": per_batch, "epoch_seconds_estimate": per_batch * batches,
            "run_seconds_estimate": per_batch * batches * o.epochs, "epochs": o.epochs,
            "selection": cfg.selection.method, "build_seconds": build_s}
