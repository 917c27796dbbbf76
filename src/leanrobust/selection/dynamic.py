"""Static and dynamic data selection during training (Li et al. 2023): a Trainer on_epoch_start
hook that scores the pool with the model being trained and returns a new Selection on schedule.
Under torchrun each rank scores its share of the pool; the scores are gathered, so the selection sees
the whole pool, and rank 0's Selection is the one every rank trains on."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from .. import distributed
from ..models import last_linear
from .gradmatch import gradmatch_select, gradmatch_selection, last_layer_factors
from .pruning import PRUNE_MODES, select_by_score
from .puma import puma_selection
from .scores import SCORERS, ForgettingTracker, compute_scores, correctness
from .selection import Selection

# Which end of each score is pruned when the config leaves it to the method (prune None or "auto"):
# margin / kappa are high for easy (far from the boundary, robust) samples -> prune highest (PUMA's
# prune-easy); loss / el2n / grand / pm / forgetting are high for hard samples -> prune lowest, i.e.
# keep the hardest, the choice of loss-based dynamic pruning for speed (the easy samples teach the
# least per pass). random: irrelevant. puma always prunes the highest margins; gradmatch has no score.
DEFAULT_PRUNE = {"random": "highest", "margin": "highest", "kappa": "highest", "loss": "lowest", "el2n": "lowest",
                 "grand": "lowest", "pm": "lowest", "forgetting": "lowest", "puma": "highest", "gradmatch": None}
METHODS = tuple(DEFAULT_PRUNE)

_SCORE_PARAMS = {m: set(SCORERS[m].params) - {"tracker"} for m in SCORERS}
_SELECTOR_PARAMS = {"puma": {"q", "floor", "scale", "deepfool_steps", "overshoot", "signed", "deepfool_candidates",
                             "deepfool_clip"},
                    "gradmatch": {"match_batch", "lam", "atoms_per_step", "adversarial"}}
_COMMON = {"batch_size", "steps"}


def allowed_params(method: str) -> set[str]:
    """selection.params keys a method accepts: its scorer's or selector's, plus batch_size (scoring
    batch) and steps (PGD steps for scoring, default the objective's)."""
    return _COMMON | _SCORE_PARAMS.get(method, set()) | _SELECTOR_PARAMS.get(method, set())


def resolve_prune(method: str, prune: Optional[str]) -> str:
    """The config's prune when it is 'highest'/'lowest'; None or 'auto' -> DEFAULT_PRUNE[method]."""
    if prune in PRUNE_MODES:
        return prune
    if prune in (None, "auto"):
        return DEFAULT_PRUNE[method] or "highest"
    raise ValueError(f"selection.prune must be 'highest', 'lowest' or 'auto', got {prune!r}")


def selection_epochs(start_epoch: int, every: Optional[int], epochs: int) -> list[int]:
    """Epochs (0-based, counted before training them) at which a new selection is made."""
    if start_epoch >= epochs:
        return []
    return [start_epoch] if every is None else list(range(start_epoch, epochs, every))


def _is_full(sel: Selection, n: int, eps: float) -> bool:
    return (len(sel) == n and bool((sel.indices == torch.arange(n)).all()) and bool((sel.weight == 1).all())
            and bool((sel.eps == torch.tensor(float(eps), dtype=torch.float32)).all()))


def _sharded(pool, batch_size: int, fn: Callable, empty: torch.Tensor):
    """fn(pool) in one process; under torchrun fn on this rank's batch-aligned rows of the pool, joined
    over the ranks in pool order (`empty`: this rank's result when its share is empty)."""
    if distributed.world_size() == 1:
        return fn(pool)
    lo, hi = distributed.shard_range(len(pool), batch_size)
    return distributed.gather(torch.as_tensor(fn(pool.rows(lo, hi))) if hi > lo else empty)


def _shared(sel: Selection) -> Selection:
    """Rank 0's Selection on every rank (its indices, eps and weights), so all ranks train the same one."""
    if distributed.world_size() == 1:
        return sel
    s = distributed.share({"indices": sel.indices, "weight": sel.weight, "eps": sel.eps})
    return Selection(s["indices"], s["weight"], s["eps"])


def make_selection_hook(cfg) -> Callable:  # cfg: a config.RunConfig (not imported: config imports this module)
    """Trainer on_epoch_start hook for cfg.selection (method, fraction, prune, class_balanced,
    every, start_epoch, params). Pass it as Trainer(cfg, run_dir, on_epoch_start=hook).

    Schedule: epochs before start_epoch train on the full pool (a full Selection is returned when
    the trainer holds anything else); a new selection at start_epoch, and with `every` = R every R
    epochs after it (dynamic); otherwise None (keep the current one, so a resumed run keeps its
    checkpointed selection). Scoring uses trainer.model, so its passes are counted by the
    trainer's PassCounter, and the trainer times the hook inside the epoch (train_seconds).
    Scores use the objective's eps, norm, steps and step_size (params.steps overrides the steps).

    Methods: random, margin, kappa, loss, el2n, grand, pm (scores.py, then select_by_score with
    cfg.selection.prune, or DEFAULT_PRUNE when prune is None/'auto'), puma (margins -> puma_selection,
    params q, floor, scale), gradmatch (adversarial GRAD-MATCH, params match_batch, lam,
    atoms_per_step, adversarial), forgetting. A hook cannot see the training batches, so forgetting
    is observed here: at the start of every epoch while a selection is still to come, one no-grad
    clean forward over the pool (counted as forward_evals) updates a ForgettingTracker; it needs
    start_epoch >= 2 (two observations). Only the passes a method needs are made. The Selection's
    eps is trainer.cfg.objective.eps (PUMA lowers some), weights 1 except gradmatch's.
    The returned hook has .calls (epochs where it returned a new Selection), .last_scores, and
    state_dict / load_state_dict, which the trainer's checkpoint carries (forgetting counts survive
    a resume)."""
    sc = cfg.selection
    method = sc.method
    if method == "none":
        def inactive(trainer, epoch):
            return None
        inactive.calls, inactive.last_scores = [], None
        return inactive
    if method not in METHODS:
        raise ValueError(f"unknown selection.method {method!r}; expected 'none' or one of: {', '.join(METHODS)}")
    params = dict(sc.params)
    bad = set(params) - allowed_params(method)
    if bad:
        raise ValueError(f"selection.params {sorted(bad)} not accepted by method {method!r}; "
                         f"accepted: {sorted(allowed_params(method))}")
    if method == "forgetting" and sc.start_epoch < 2:
        raise ValueError("selection.method 'forgetting' needs selection.start_epoch >= 2: forgetting events "
                         "are counted from the epochs trained before the selection")
    if method == "puma" and sc.prune == "lowest":
        raise ValueError("selection.method 'puma' always prunes the highest margins; drop selection.prune: lowest")
    if method == "gradmatch" and sc.prune in PRUNE_MODES:
        raise ValueError(f"selection.prune {sc.prune!r} has no meaning for 'gradmatch' (it matches gradients, "
                         "it does not rank scores); leave selection.prune at 'auto'")
    prune = resolve_prune(method, sc.prune)
    epochs = selection_epochs(sc.start_epoch, sc.every, cfg.optim.epochs)
    tracker: dict = {}

    def hook(trainer, epoch: int) -> Optional[Selection]:
        pool = trainer.pool
        n = len(pool)
        obj = trainer.cfg.objective
        if method == "forgetting" and epochs and epoch <= epochs[-1]:
            tr = tracker.setdefault("t", ForgettingTracker(n))
            bs = int(params.get("batch_size", 512))
            ok = _sharded(pool, bs, lambda p: correctness(trainer.model, p.images, p.labels, batch_size=bs),
                          torch.zeros(0, dtype=torch.bool))
            tr.update(np.arange(n), ok.numpy())
        if epoch not in epochs:
            if epoch < sc.start_epoch and not _is_full(trainer.selection, n, obj.eps):
                return Selection.full(n, obj.eps)
            return None
        sel = _shared(_select(trainer, epoch, tracker.get("t")))
        hook.calls.append(epoch)
        return sel

    def _select(trainer, epoch: int, tr: Optional[ForgettingTracker]) -> Selection:
        pool, obj = trainer.pool, trainer.cfg.objective
        seed = int(trainer.cfg.seed) * 1_000_003 + int(epoch)
        bs = int(params.get("batch_size", 256))
        common = dict(eps=obj.eps, norm=obj.norm, steps=int(params.get("steps", obj.steps)), batch_size=bs, seed=seed)
        if method == "gradmatch":
            kw = {k: params[k] for k in _SELECTOR_PARAMS["gradmatch"] if k in params}
            if distributed.world_size() == 1:
                return gradmatch_selection(trainer.model, pool.images, pool.labels, fraction=sc.fraction,
                                           step_size=obj.step_size, class_balanced=sc.class_balanced, **common, **kw)
            return _gradmatch_sharded(trainer, pool, common, kw, obj.step_size)
        score_name = "margin" if method == "puma" else method
        sp = {k: params[k] for k in _SCORE_PARAMS[score_name] if k in params}
        if score_name in ("kappa", "loss", "el2n", "grand", "pm"):
            sp.setdefault("step_size", obj.step_size)
        if method == "forgetting":
            sp["tracker"] = tr
        model = trainer.model if SCORERS[score_name].model else None
        if model is None:  # random, forgetting: no passes to share out
            scores = compute_scores(None, pool.images, pool.labels, score_name, **common, **sp)
        else:  # under torchrun: this rank's rows, its own random stream, gathered
            rank_common = {**common, "seed": distributed.rank_seed(seed)}
            scores = np.asarray(_sharded(pool, bs, lambda p: compute_scores(model, p.images, p.labels, score_name,
                                                                            **rank_common, **sp),
                                         torch.zeros(0, dtype=torch.float32)))
        hook.last_scores = scores
        if method == "puma":
            kw = {k: params[k] for k in ("q", "floor", "scale") if k in params}
            return puma_selection(scores, pool.labels, fraction=sc.fraction, eps=obj.eps,
                                  class_balanced=sc.class_balanced, **kw)
        return select_by_score(scores, pool.labels, fraction=sc.fraction, prune=prune,
                               class_balanced=sc.class_balanced, eps=obj.eps)

    def _gradmatch_sharded(trainer, pool, common: dict, kw: dict, step_size) -> Selection:
        """GRAD-MATCH under torchrun: each rank's gradient factors of its rows, gathered, then one match."""
        fkw = {k: kw[k] for k in ("adversarial",) if k in kw}
        rank_common = {**common, "seed": distributed.rank_seed(common["seed"])}
        lin = last_linear(trainer.model)
        width = lin.out_features

        def factors(p):
            r, h, _ = last_layer_factors(trainer.model, p.images, p.labels, step_size=step_size, **rank_common, **fkw)
            return torch.cat([r, h], 1)

        rh = _sharded(pool, common["batch_size"], factors, torch.zeros(0, width + lin.in_features))
        bias = lin.bias is not None
        skw = {k: kw[k] for k in ("match_batch", "lam", "atoms_per_step") if k in kw}
        return gradmatch_select(rh[:, :width], rh[:, width:], pool.labels, fraction=sc.fraction, eps=common["eps"],
                                bias=bias, class_balanced=sc.class_balanced, seed=common["seed"], **skw)

    def state_dict() -> dict:
        """What a resumed run needs to continue the schedule: the forgetting counts observed so far."""
        return {"forgetting": tracker["t"].state_dict()} if "t" in tracker else {}

    def load_state_dict(state: dict) -> None:
        if "forgetting" in state:
            tr = ForgettingTracker(len(state["forgetting"]["events"]))
            tr.load_state_dict(state["forgetting"])
            tracker["t"] = tr

    hook.calls = []
    hook.last_scores = None
    hook.epochs = epochs
    hook.state_dict, hook.load_state_dict = state_dict, load_state_dict
    return hook
