"""Per-sample scores of a whole pool (real and generated) from one model, batched and sharing passes:
DeepFool margin, GAIR kappa, adversarial loss, EL2N, GraNd, probabilistic margin, forgetting, random."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..attacks import deepfool, pgd
from ..attacks.common import eval_mode
from ..data.augment import to_float
from ..models import last_linear
from ..objectives import probabilistic_margin


@dataclass(frozen=True)
class Scorer:
    """name; doc: what is computed; params: the keyword parameters it reads; model: whether it needs a model.
    Which end of a score is pruned is the selection method's (registry.py)."""
    name: str
    doc: str
    params: tuple = ()
    model: bool = True


SCORERS: dict[str, Scorer] = {s.name: s for s in [
    Scorer("margin", "DeepFool distance to the nearest decision boundary in input space (attack norm = `norm`, or "
           "margin_norm; 50 steps, overshoot 0.02, the top deepfool_candidates=10 classes, unclipped iterates unless "
           "deepfool_clip=True); signed=True "
           "(default) makes it negative for samples the model misclassifies",
           ("deepfool_steps", "overshoot", "signed", "margin_norm", "deepfool_candidates", "deepfool_clip")),
    Scorer("kappa", "GAIRAT kappa: PGD iterates (random start, `steps` steps, eval mode) still classified correctly",
           ("step_size", "random_start")),
    Scorer("loss", "cross-entropy at the end point of `steps`-step PGD (random start)",
           ("step_size", "random_start")),
    Scorer("el2n", "EL2N ||softmax(f(x)) - onehot(y)||_2 on clean inputs, or on PGD inputs "
           "with adversarial=True", ("adversarial", "step_size", "random_start")),
    Scorer("grand", "GraNd: per-sample norm of the LAST-LAYER cross-entropy gradient, closed form "
           "||p - onehot|| * sqrt(||h||^2 + 1) (h: input of the last nn.Linear, +1 for its bias); "
           "clean inputs, or PGD inputs with adversarial=True. Not the full-network gradient",
           ("adversarial", "step_size", "random_start")),
    Scorer("pm", "MAIL probabilistic margin max_{k!=y} p_k - p_y on the PGD example",
           ("step_size", "random_start")),
    Scorer("forgetting", "forgetting events (correct -> incorrect transitions) counted by a ForgettingTracker passed "
           "as tracker=; never-learned samples score above any possible count", ("tracker",), model=False),
    Scorer("random", "uniform [0, 1) from numpy's default_rng(seed)", (), model=False),
]}


def _check_method(method: str) -> Scorer:
    try:
        return SCORERS[method]
    except KeyError:
        raise ValueError(f"unknown score method {method!r}; expected one of: {', '.join(SCORERS)}") from None


class ForgettingTracker:
    """Forgetting events (Toneva et al. 2019) per pool sample: update() with the correctness of
    some samples at one moment of training; a transition correct -> incorrect between two
    observations of a sample is one event. scores(): events, and for samples never observed
    correct (never learned), 1 + the largest number of observations (above any possible count)."""

    def __init__(self, n: int):
        if n <= 0:
            raise ValueError(f"ForgettingTracker needs n >= 1 samples, got {n}")
        self.n = int(n)
        self.prev = np.zeros(self.n, dtype=bool)
        self.learned = np.zeros(self.n, dtype=bool)
        self.events = np.zeros(self.n, dtype=np.int64)
        self.observed = np.zeros(self.n, dtype=np.int64)

    def update(self, indices, correct) -> None:
        idx = (indices.detach().cpu().numpy() if isinstance(indices, torch.Tensor) else np.asarray(indices))
        ok = (correct.detach().cpu().numpy() if isinstance(correct, torch.Tensor) else np.asarray(correct))
        idx, ok = idx.reshape(-1).astype(np.int64), ok.reshape(-1).astype(bool)
        if idx.size != ok.size:
            raise ValueError(f"indices ({idx.size}) and correct ({ok.size}) differ in length")
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            raise ValueError(f"indices must lie in [0, {self.n})")
        seen = self.observed[idx] > 0
        self.events[idx] += (seen & self.prev[idx] & ~ok).astype(np.int64)
        self.prev[idx] = ok
        self.learned[idx] |= ok
        self.observed[idx] += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only, so the trainer's weights_only checkpoint can carry it across a resume."""
        return {k: torch.from_numpy(getattr(self, k).copy()) for k in ("prev", "learned", "events", "observed")}

    def load_state_dict(self, state: dict) -> None:
        for k in ("prev", "learned", "events", "observed"):
            v = state[k].cpu().numpy()
            if v.shape != (self.n,):
                raise ValueError(f"forgetting tracker state {k!r} has shape {v.shape}, expected ({self.n},)")
            setattr(self, k, v.astype(getattr(self, k).dtype))

    def scores(self) -> np.ndarray:
        s = self.events.astype(np.float32)
        s[~self.learned] = float(self.observed.max() + 1)
        return s


class _Batch:
    """Lazily computed, cached passes over one batch, so scores share them."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, opt: dict, feats: Optional[list],
                 margin: Optional[torch.Tensor] = None):
        self.model, self.x, self.y, self.opt, self._feats = model, x, y, opt, feats
        self._cache: dict = {} if margin is None else {"margin": margin}

    def _forward(self, x: torch.Tensor):
        with torch.no_grad():
            logits = self.model(x)
        h = self._feats[-1] if self._feats else None
        return logits.float(), h

    def clean(self):
        if "clean" not in self._cache:
            self._cache["clean"] = self._forward(self.x)
        return self._cache["clean"]

    def adv(self):
        """(x_adv, kappa, logits at x_adv, features at x_adv): one PGD run shared by kappa, loss,
        pm and the adversarial variants of el2n and grand."""
        if "adv" not in self._cache:
            o = self.opt
            x_adv, kappa = pgd(self.model, self.x, self.y, o["eps"], steps=o["steps"], rel_step=o["step_size"],
                               norm=o["norm"], random_start=o["random_start"], return_kappa=True)
            logits, h = self._forward(x_adv)
            self._cache["adv"] = (x_adv, kappa, logits, h)
        return self._cache["adv"]

    def margin(self):
        """DeepFool margins, computed for the whole pool beforehand by `_pool_margins`."""
        return self._cache["margin"]

    def logits_feats(self):
        if self.opt["adversarial"]:
            _, _, logits, h = self.adv()
            return logits, h
        return self.clean()


def _pool_margins(model, images, opt, batch_size, device, chunk_batches: int = 32, progress: bool = False) -> torch.Tensor:
    """DeepFool margins of a whole pool, chunk by chunk (bounded memory), each chunk one DeepFool
    work queue of batch_size images in flight: the converged images' slots are refilled, so there
    is one short tail per chunk instead of one per batch."""
    n = int(images.shape[0])
    out = torch.empty(n, dtype=torch.float32)
    step = batch_size * chunk_batches
    bar = tqdm(total=n, desc="deepfool margins", unit="img", disable=not progress, dynamic_ncols=True)
    for i in range(0, n, step):
        x = to_float(images[i:i + step].to(device))
        out[i:i + step] = deepfool(model, x, norm=opt["margin_norm"] or opt["norm"], steps=opt["deepfool_steps"],
                                   overshoot=opt["overshoot"], candidates=opt["deepfool_candidates"],
                                   clip=bool(opt["deepfool_clip"]), batch_size=batch_size,
                                   on_finished=bar.update).margin.float().cpu()
    bar.close()
    return out


def _residual(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.softmax(logits, dim=1) - F.one_hot(y, logits.shape[1]).to(logits.dtype)


def _score_batch(name: str, b: _Batch, bias: bool) -> torch.Tensor:
    if name == "margin":
        m = b.margin().float()
        if b.opt["signed"]:
            wrong = b.clean()[0].argmax(1) != b.y
            m = torch.where(wrong, -m, m)
        return m
    if name == "kappa":
        return b.adv()[1].float()
    if name == "loss":
        return F.cross_entropy(b.adv()[2], b.y, reduction="none")
    if name == "pm":
        return probabilistic_margin(b.adv()[2], b.y)
    if name == "el2n":
        return _residual(b.logits_feats()[0], b.y).norm(dim=1)
    if name == "grand":
        logits, h = b.logits_feats()
        hn2 = h.float().flatten(1).pow(2).sum(1) + (1.0 if bias else 0.0)
        return _residual(logits, b.y).norm(dim=1) * hn2.sqrt()
    raise AssertionError(name)


def _options(eps, norm, steps, params: dict, methods: Sequence[str]) -> dict:
    allowed = {p for m in methods for p in SCORERS[m].params}
    unknown = set(params) - allowed
    if unknown:
        raise ValueError(f"unknown parameter(s) {sorted(unknown)} for score method(s) {list(methods)}; "
                         f"accepted: {sorted(allowed) or 'none'}")
    opt = {"eps": eps, "norm": norm, "steps": int(steps), "step_size": None, "random_start": True,
           "adversarial": False, "deepfool_steps": 50, "overshoot": 0.02, "signed": True, "margin_norm": None,
           "deepfool_candidates": 10, "deepfool_clip": False,
           "tracker": None}
    opt.update(params)
    if norm not in ("linf", "l2") or (opt["margin_norm"] not in (None, "linf", "l2")):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}"
                         + (f" (margin_norm {opt['margin_norm']!r})" if opt["margin_norm"] else ""))
    if isinstance(eps, (int, float)) and (not math.isfinite(float(eps)) or float(eps) < 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if opt["steps"] < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return opt


def _device_of(model: Optional[nn.Module], device) -> torch.device:
    if device is not None:
        return torch.device(device)
    if model is not None:
        for p in model.parameters():
            return p.device
    return torch.device("cpu")


def compute_score_table(model: Optional[nn.Module], images: torch.Tensor, labels: torch.Tensor,
                        methods: Iterable[str], *, eps: float = 0.1, norm: str = "linf", steps: int = 10,
                        batch_size: int = 256, device=None, seed: int = 0, progress: bool = False,
                        **params) -> dict[str, np.ndarray]:
    """Several scores at once, sharing passes: kappa, loss, pm and the adversarial el2n/grand
    come from ONE PGD run per batch; margin needs DeepFool (plus a no-grad clean forward when
    signed); clean el2n/grand one no-grad forward. Model in eval mode while scoring (each
    submodule's mode restored), torch RNG forked and seeded with `seed`, so results are
    reproducible for a given batch_size. step_size (a param) is relative to eps, the attacks' rel_step.
    progress: tqdm bars (DeepFool margins, then the batches) on stderr. Returns {method: float32 (N,)}."""
    methods = list(dict.fromkeys(methods))
    for m in methods:
        _check_method(m)
    n = int(labels.shape[0])
    if int(images.shape[0]) != n:
        raise ValueError(f"images has {images.shape[0]} samples, labels {n}")
    if n == 0:
        raise ValueError("cannot score an empty pool")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    opt = _options(eps, norm, steps, params, methods)
    out: dict[str, np.ndarray] = {}
    if "random" in methods:
        out["random"] = np.random.default_rng(seed).random(n).astype(np.float32)
    if "forgetting" in methods:
        tr = opt["tracker"]
        if not isinstance(tr, ForgettingTracker):
            raise ValueError("the forgetting score needs tracker=ForgettingTracker(...) updated during training")
        if tr.n != n:
            raise ValueError(f"the forgetting tracker covers {tr.n} samples, the pool has {n}")
        out["forgetting"] = tr.scores()
    batched = [m for m in methods if SCORERS[m].model]
    if batched:
        if model is None:
            raise ValueError(f"score method(s) {batched} need a model")
        out.update(_batched_scores(model, images, labels, batched, opt, int(batch_size),
                                   _device_of(model, device), seed, progress))
    return {m: out[m] for m in methods}


def _batched_scores(model, images, labels, methods, opt, batch_size, device, seed, progress=False) -> dict[str, np.ndarray]:
    n = int(labels.shape[0])
    feats: Optional[list] = None
    handle = None
    bias = True
    if "grand" in methods:
        lin = last_linear(model)
        bias = lin.bias is not None
        feats = []

        def grab(_m, inputs):
            feats[:] = [inputs[0].detach()]

        handle = lin.register_forward_pre_hook(grab)
    res = {m: torch.empty(n, dtype=torch.float32) for m in methods}
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), eval_mode(model):
            torch.manual_seed(seed)
            margins = _pool_margins(model, images, opt, batch_size, device, progress=progress) \
                if "margin" in methods else None
            bar = tqdm(total=n, desc=f"scores {','.join(methods)}", unit="img", disable=not progress, dynamic_ncols=True)
            for i in range(0, n, batch_size):
                x = to_float(images[i:i + batch_size].to(device))
                y = labels[i:i + batch_size].to(device).long()
                b = _Batch(model, x, y, opt, feats, None if margins is None else margins[i:i + batch_size].to(device))
                for m in methods:
                    res[m][i:i + x.shape[0]] = _score_batch(m, b, bias).detach().float().cpu()
                bar.update(x.shape[0])
            bar.close()
    finally:
        if handle is not None:
            handle.remove()
    return {m: v.numpy() for m, v in res.items()}


def compute_scores(model: Optional[nn.Module], images_uint8: torch.Tensor, labels: torch.Tensor, method: str, *,
                   eps: float = 0.1, norm: str = "linf", steps: int = 10, batch_size: int = 256, device=None,
                   seed: int = 0, progress: bool = False, **params) -> np.ndarray:
    """One score per pool sample, float32 (N,). method: a key of SCORERS (margin, kappa, loss,
    el2n, grand, pm, forgetting, random); params: that scorer's keyword parameters (SCORERS[m].params),
    anything else is a ValueError. eps/norm/steps: the PGD used by kappa, loss, pm and adversarial
    el2n/grand; norm is also DeepFool's norm for margin. Which end is pruned: selection/registry.py."""
    _check_method(method)
    return compute_score_table(model, images_uint8, labels, [method], eps=eps, norm=norm, steps=steps,
                               batch_size=batch_size, device=device, seed=seed, progress=progress, **params)[method]


def correctness(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 512,
                device=None) -> torch.Tensor:
    """Clean correctness (bool, CPU) of every sample: one no-grad eval-mode forward each."""
    dev = _device_of(model, device)
    out = torch.empty(int(labels.shape[0]), dtype=torch.bool)
    with eval_mode(model), torch.no_grad():
        for i in range(0, out.numel(), batch_size):
            x = to_float(images[i:i + batch_size].to(dev))
            out[i:i + x.shape[0]] = (model(x).argmax(1) == labels[i:i + batch_size].to(dev)).cpu()
    return out
