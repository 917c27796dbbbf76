"""Static and dynamic data selection during training (Li et al. 2023): the SelectionSchedule a run's
`selection` section describes. The trainer calls it at the start of every epoch with the model being trained,
the pool and the current Selection; on schedule it scores the pool and returns a new Selection (registry.py
says how each method scores and selects). Under torchrun each rank scores its share of the pool; the scores
are gathered, so the selection sees the whole pool, and rank 0's Selection is the one every rank trains on."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from .. import distributed
from ..models import last_linear
from .gradmatch import gradmatch_select, last_layer_factors
from .registry import check_selection, select_from_scores
from .scores import SCORERS, ForgettingTracker, compute_scores, correctness
from ..selection_contract import Selection


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


class SelectionSchedule:
    """cfg.selection (method, fraction, prune, class_balanced, every, start_epoch, params) of a RunConfig, as
    `schedule(model, pool, selection, epoch) -> Selection | None`, called before training each epoch. Its
    settings are checked when it is built (registry.check_selection), so a bad one fails before training.

    Schedule: epochs before start_epoch train on the full pool (a full Selection is returned when `selection`
    is anything else); a new selection at start_epoch, and with `every` = R every R epochs after it (dynamic);
    otherwise None (keep the current one, so a resumed run keeps its checkpointed selection). Scoring runs the
    model it is given, so the trainer's PassCounter counts its passes and the trainer times it inside the epoch.
    Scores use the objective's eps, norm, steps and step_size (params.steps overrides the steps), seeded by
    (seed, epoch). The Selection's eps is the objective's (PUMA lowers some), weights 1 except gradmatch's.

    A method whose scorer counts events during training (forgetting) cannot see the training batches, so it
    observes here: at the start of every epoch while a selection is still to come, one no-grad clean forward
    over the pool (counted as forward_evals) updates a ForgettingTracker. state_dict / load_state_dict carry
    its counts through the trainer's checkpoint. `.calls`: the epochs where it returned a new Selection;
    `.last_scores`: the scores of the last one."""

    def __init__(self, cfg):  # cfg: a config_schema.RunConfig
        sc = cfg.selection
        self.spec = check_selection(sc) if sc.method != "none" else None
        self.fraction, self.prune, self.class_balanced = sc.fraction, sc.prune, sc.class_balanced
        self.start_epoch = sc.start_epoch
        self.params = dict(sc.params)
        self.objective = cfg.objective
        self.seed = int(cfg.seed)
        self.epochs = selection_epochs(sc.start_epoch, sc.every, cfg.optim.epochs) if self.spec else []
        self.observes = bool(self.spec and self.spec.scorer and "tracker" in SCORERS[self.spec.scorer].params)
        self.tracker: Optional[ForgettingTracker] = None
        self.calls: list[int] = []
        self.last_scores: Optional[np.ndarray] = None

    def __call__(self, model: nn.Module, pool, selection: Selection, epoch: int) -> Optional[Selection]:
        n = len(pool)
        if self.observes and self.epochs and epoch <= self.epochs[-1]:
            self._observe(model, pool)
        if epoch not in self.epochs:
            eps = self.objective.eps
            if epoch < self.start_epoch and not _is_full(selection, n, eps):
                return Selection.full(n, eps)
            return None
        sel = _shared(self._select(model, pool, epoch))
        self.calls.append(epoch)
        return sel

    def _observe(self, model: nn.Module, pool) -> None:
        n = len(pool)
        if self.tracker is None:
            self.tracker = ForgettingTracker(n)
        bs = int(self.params.get("batch_size", 512))
        ok = _sharded(pool, bs, lambda p: correctness(model, p.images, p.labels, batch_size=bs),
                      torch.zeros(0, dtype=torch.bool))
        self.tracker.update(np.arange(n), ok.numpy())

    def _select(self, model: nn.Module, pool, epoch: int) -> Selection:
        spec, obj, params = self.spec, self.objective, self.params
        seed = self.seed * 1_000_003 + int(epoch)
        bs = int(params.get("batch_size", 256))
        common = dict(eps=obj.eps, norm=obj.norm, steps=int(params.get("steps", obj.steps)), batch_size=bs, seed=seed)
        if spec.scorer is None:  # gradmatch: selects from the model's gradients, not from scores
            kw = {k: params[k] for k in spec.selector_params if k in params}
            if distributed.world_size() == 1:
                return spec.selector(model, pool.images, pool.labels, fraction=self.fraction, step_size=obj.step_size,
                                     class_balanced=self.class_balanced, **common, **kw)
            return self._gradmatch_sharded(model, pool, common, kw)
        scorer = SCORERS[spec.scorer]
        sp = {k: params[k] for k in scorer.params if k in params}
        if "step_size" in scorer.params:
            sp.setdefault("step_size", obj.step_size)
        if self.observes:
            sp["tracker"] = self.tracker
        if not scorer.model:  # random, forgetting: no passes to share out
            scores = compute_scores(None, pool.images, pool.labels, scorer.name, **common, **sp)
        else:  # under torchrun: this rank's rows, its own random stream, gathered
            rank_common = {**common, "seed": distributed.rank_seed(seed)}
            scores = np.asarray(_sharded(pool, bs, lambda p: compute_scores(model, p.images, p.labels, scorer.name,
                                                                            **rank_common, **sp),
                                         torch.zeros(0, dtype=torch.float32)))
        self.last_scores = scores
        return select_from_scores(spec.name, scores, pool.labels, fraction=self.fraction, prune=self.prune,
                                  class_balanced=self.class_balanced, eps=obj.eps, params=params)

    def _gradmatch_sharded(self, model: nn.Module, pool, common: dict, kw: dict) -> Selection:
        """GRAD-MATCH under torchrun: each rank's gradient factors of its rows, gathered, then one match."""
        fkw = {k: kw[k] for k in ("adversarial",) if k in kw}
        rank_common = {**common, "seed": distributed.rank_seed(common["seed"])}
        lin = last_linear(model)
        width = lin.out_features

        def factors(p):
            r, h, _ = last_layer_factors(model, p.images, p.labels, step_size=self.objective.step_size,
                                         **rank_common, **fkw)
            return torch.cat([r, h], 1)

        rh = _sharded(pool, common["batch_size"], factors, torch.zeros(0, width + lin.in_features))
        skw = {k: kw[k] for k in ("match_batch", "lam", "atoms_per_step") if k in kw}
        return gradmatch_select(rh[:, :width], rh[:, width:], pool.labels, fraction=self.fraction, eps=common["eps"],
                                bias=lin.bias is not None, class_balanced=self.class_balanced, seed=common["seed"],
                                **skw)

    def state_dict(self) -> dict:
        """What a resumed run needs to continue the schedule: the forgetting counts observed so far."""
        return {"forgetting": self.tracker.state_dict()} if self.tracker is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if "forgetting" in state:
            tr = ForgettingTracker(len(state["forgetting"]["events"]))
            tr.load_state_dict(state["forgetting"])
            self.tracker = tr
