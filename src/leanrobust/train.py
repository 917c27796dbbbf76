"""The training loop: data as uint8 tensors on the device selected by index tensors, one
objective call per batch of (x, y, eps, weight), per-epoch validation choosing the best
checkpoint, and a run directory that can be resumed after any interruption. Under torchrun the model
is wrapped in DistributedDataParallel, each rank trains its share of every global batch, and rank 0
alone writes the run directory (distributed.py)."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from . import __version__, distributed
from .accounting import PassCounter
from .config import dump_config
from .config_schema import RunConfig
from .data.augment import augment_batch, to_float
from .data.build import TrainingData, build_training_data, load_test_set
from .data.fingerprint import check_fingerprint, run_fingerprint
from .data.sampler import MixingSampler
from .ema import EMA
from .evaluate import evaluate_model, robust_correct
from .io import (RunLock, clean_orphans, load_checkpoint, save_checkpoint, save_weights, truncate_jsonl, write_json,
                 write_text)
from .metrics_log import MetricsLog, require_tensorboard
from .objectives import call_objective
from .runs import (BEST, BEST_NEXT, CHECKPOINT, CONFIG, METRICS, RUN_FILES, SUMMARY, WEIGHTS, build_from_spec,
                   model_spec, resolve_device, seed_everything)
from .schedule import lr_factor
from .selection_contract import Selection


class NonFiniteLossError(RuntimeError):
    """Training diverged (a NaN or infinite loss or weights): the run stops, its last good checkpoint kept."""


def _all_finite(tensors) -> torch.Tensor:
    """One device bool: every floating tensor finite (a single sync when read)."""
    flags = [torch.isfinite(t).all() for t in tensors if t.is_floating_point()]
    return torch.stack(flags).all() if flags else torch.ones((), dtype=torch.bool)


class SelectionHook(Protocol):
    """What the trainer calls of an injected selection schedule (selection/schedule.py's SelectionSchedule)."""

    def __call__(self, model: nn.Module, pool, selection: Selection, epoch: int) -> Optional[Selection]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class EpochStats:
    loss: float
    adv_acc: float
    samples: int
    seconds: float


class Trainer:
    """One run: config + run directory. `fit()` trains (resuming if a checkpoint exists),
    then evaluates and writes summary.json; the run directory is complete only then. The selection schedule
    that cfg.selection names is injected (experiment.build_trainer builds it): the trainer imports no method."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path, *,
                 selection_schedule: Optional[SelectionHook] = None):
        if selection_schedule is None and cfg.selection.method != "none":
            raise ValueError(f"selection.method {cfg.selection.method!r} needs its selection schedule: build the "
                             "trainer with leanrobust.experiment.build_trainer(cfg, run_dir), or pass "
                             "selection_schedule=SelectionSchedule(cfg) (leanrobust.selection.schedule)")
        self.cfg = cfg
        self.dir = Path(run_dir)
        self.selection_schedule = selection_schedule  # static or dynamic selection, called before each epoch
        if cfg.logging.tensorboard:
            require_tensorboard()  # a missing package fails now, not after the first epoch
        self.metrics = MetricsLog(self.dir, tensorboard=cfg.logging.tensorboard)
        self.device = resolve_device(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        distributed.init(self.device)  # torchrun: join the process group (a no-op in one process)
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.cuda = self.device.type == "cuda"
        seed_everything(cfg.seed)
        self.data: TrainingData = build_training_data(cfg.data, cfg.seed)
        # the pool's identity: a Selection (or a compressed data.pool) made on another pool is refused
        self.pool_fingerprint = run_fingerprint(cfg, self.data.pool) if cfg.data.selection or cfg.data.pool else None
        info = self.data.info
        self.spec = model_spec(cfg, info)
        self.model = build_from_spec(self.spec).to(self.device)
        if cfg.channels_last:  # NHWC: faster cuDNN kernels on CUDA; on the CPU 1.03x for SmallCNN PGD-AT (noise-level)
            self.model = self.model.to(memory_format=torch.channels_last)
        self.counter = PassCounter()  # the method's cost: training, scoring and selection passes
        self.counter.attach(self.model)
        self._synced = (0, 0)  # counter values every rank agrees on (sums over the ranks)
        self.val_counter = PassCounter(active=False)  # the curve's cost, kept apart so it can be left out
        self.val_counter.attach(self.model)
        self.pool = self.data.pool.to(self.device)
        self.val = self.data.val.to(self.device)
        self.crop_pad = cfg.data.crop_pad if cfg.data.crop_pad is not None else info.crop_pad
        self.flip = cfg.data.flip if cfg.data.flip is not None else info.flip
        if not cfg.data.augment:
            self.crop_pad, self.flip = 0, False
        if cfg.data.selection:
            sel = Selection.load(cfg.data.selection)
            check_fingerprint(self.pool_fingerprint, sel.pool_fingerprint, f"data.selection {cfg.data.selection}")
        else:
            sel = Selection.full(len(self.pool), cfg.objective.eps)
        self.set_selection(sel)
        self.train_model = distributed.wrap(self.model, self.device)  # DDP under torchrun: averages gradients
        o = cfg.optim
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=o.lr, momentum=o.momentum,
                                         nesterov=o.nesterov and o.momentum > 0, weight_decay=o.weight_decay)
        self.ema = EMA(self.model, o.ema_tau) if o.ema_tau else None
        if self.ema:
            self.val_counter.attach(self.ema.model)
        self.epoch = 0  # completed epochs
        self.iteration = 0
        self.train_seconds = 0.0
        self.val_seconds = 0.0  # wall time of the curve points (not in train_seconds)
        self._epoch_t0 = self._epoch_val_seconds = 0.0
        self.samples_seen = 0
        self.best_metric = -1.0
        self.best_epoch = -1
        self._test_set: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # loaded and checked before training

    # ----- selection and batches -------------------------------------------------------
    def set_selection(self, sel: Selection) -> None:
        """Train on pool[sel.indices] with the selection's per-sample eps and weight."""
        sel.validate_for_pool(len(self.pool), self.cfg.data.selection or "selection")
        self.selection = sel
        self.sel_indices = sel.indices.to(self.device)
        self.sel_eps = sel.eps.to(self.device)
        is_gen = self.pool.is_generated[self.sel_indices]
        frac = self.cfg.data.gen_fraction if bool(is_gen.any()) and bool((~is_gen).any()) else None
        draw = self.cfg.data.weighting == "sample" and bool((sel.weight != sel.weight[0]).any())
        if draw and frac is not None:
            raise ValueError("data.weighting='sample' cannot be combined with generated-data mixing "
                             "(data.gen_fraction); use data.weighting='loss'")
        # weighting 'sample': the weights become draw probabilities, so every drawn sample counts once
        self.sel_weight = torch.ones_like(sel.weight, device=self.device) if draw else sel.weight.to(self.device)
        self.sampler = MixingSampler(is_gen.cpu(), self.cfg.optim.batch_size, gen_fraction=frac,
                                     rank=self.rank, world_size=self.world_size, weights=sel.weight if draw else None)

    def batch(self, positions: torch.Tensor, generator: torch.Generator):
        positions = positions.to(self.device)
        idx = self.sel_indices[positions]
        x = augment_batch(self.pool.images[idx], crop_pad=self.crop_pad, flip=self.flip, generator=generator)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.pool.labels[idx], self.sel_eps[positions], self.sel_weight[positions]

    # ----- one epoch ---------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> EpochStats:
        cfg, o = self.cfg, self.cfg.optim
        # attack starts, dropout, augmentation: a function of (seed, epoch), and of the rank under torchrun
        torch.manual_seed(distributed.rank_seed(cfg.seed * 1_000_003 + epoch))
        gen = torch.Generator(device=self.device).manual_seed(distributed.rank_seed(cfg.seed * 7919 + epoch))
        batches = self.sampler.epoch(epoch, cfg.seed)
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        seen = 0
        t0 = time.perf_counter()
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{o.epochs}", disable=not cfg.progress or self.rank != 0,
                   unit="batch", leave=False, dynamic_ncols=True)
        obj = cfg.objective
        obj_kw = obj.call_kwargs(epoch=epoch, num_epochs=o.epochs)
        every = cfg.validation.every_grad_evals
        bucket = self.counter.grad_evals // every if every else 0
        bad = torch.full((), -1, dtype=torch.int64, device=self.device)  # first step with a non-finite loss
        for i, positions in enumerate(bar):
            x, y, eps, w = self.batch(positions, gen)
            lr = o.lr * lr_factor(o, epoch, i, len(self.sampler))
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda and cfg.amp):
                out = call_objective(obj.name, self.train_model, x, y, eps, w, **obj_kw)
            bad = torch.where((bad < 0) & ~torch.isfinite(out.loss.detach()), i, bad)  # on the device: no sync
            if self.world_size == 1 and (i + 1) % 10 == 0 and int(bad) >= 0:  # one process: stop soon
                self._diverged(epoch, int(bad))
            self.optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            if o.grad_clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), o.grad_clip)
            self.optimizer.step()
            distributed.sync_running_stats(self.model)
            if self.ema:
                self.ema.update(self.model)
            self.iteration += 1
            b = y.numel()
            seen += b
            loss_sum += out.loss.detach() * b
            correct += (out.logits.argmax(1) == y).sum()
            if bar.n % 10 == 0:
                dt = time.perf_counter() - t0
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", img_s=f"{seen / max(dt, 1e-9):.0f}", refresh=False)
            if every:
                self.sync_counters()
            if every and self.counter.grad_evals // every > bucket and i + 1 < len(self.sampler):
                bucket = self.counter.grad_evals // every
                if self.world_size == 1 and int(bad) >= 0:  # no curve point of a diverged model
                    self._diverged(epoch, int(bad))
                self.mid_point(epoch + (i + 1) / len(self.sampler))
        if self.cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0 - self._epoch_val_seconds
        weights_ok = bool(_all_finite(list(self.model.parameters()) + list(self.model.buffers())))
        loss, right, seen, n_bad, n_nonfinite = distributed.sum_all(  # over the ranks
            [loss_sum.item(), correct.item(), seen, float(int(bad) >= 0), float(not weights_ok)])
        if n_bad or n_nonfinite:  # every rank stops here together: no rank is left waiting in a collective
            self._diverged(epoch, int(bad) if int(bad) >= 0 else None, weights=not n_bad)
        return EpochStats(loss / max(seen, 1), right / max(seen, 1), int(seen), dt)

    def _diverged(self, epoch: int, step: Optional[int], weights: bool = False) -> None:
        """Stop the run: nothing of the diverged epoch is saved, the last good checkpoint stays as it is."""
        n = len(self.sampler)
        where = (f"epoch {epoch + 1} of {self.cfg.optim.epochs}, " +
                 (f"step {step + 1} of {n}" if step is not None else "on another rank" if not weights
                  else "after its last step (the weights became non-finite; the loss stayed finite)"))
        what = "non-finite weights" if weights else "non-finite training loss (NaN or inf)"
        kept = (f"the last good checkpoint (epoch {self.epoch}) in {self.dir} is kept" if self.epoch
                else f"no checkpoint was written to {self.dir}")
        raise NonFiniteLossError(f"training diverged: {what} in {where}; the run is stopped and not marked complete, "
                                 f"{kept}. Resuming would diverge again: start a new run with a lower optim.lr "
                                 "(or optim.grad_clip), and check optim.weight_decay, objective.step_size/beta and "
                                 "the data for NaN or huge values")

    def sync_counters(self) -> None:
        """Add every rank's passes since the last sync to the counter, so all ranks hold the job's totals."""
        if self.world_size == 1:
            return
        c, (g, f) = self.counter, self._synced
        dg, df = distributed.sum_all([c.grad_evals - g, c.forward_evals - f], dtype=torch.int64)
        c.grad_evals, c.forward_evals = g + dg, f + df
        self._synced = (c.grad_evals, c.forward_evals)

    def mid_point(self, epoch: float) -> None:
        """A mid-epoch curve point, written by rank 0; the others wait, and their wait is not training time."""
        local = time.perf_counter() - self._epoch_t0 - self._epoch_val_seconds
        partial = distributed.sum_all([local])[0]  # training seconds of this epoch so far, all ranks
        t0 = time.perf_counter()
        if self.rank == 0:
            self.log_metrics({"epoch": epoch, "point": "mid", **self.curve_point(partial)})
        distributed.barrier()
        if self.rank != 0:
            self._epoch_val_seconds += time.perf_counter() - t0

    # ----- validation and checkpoints ------------------------------------------------------
    def eval_model(self) -> nn.Module:
        return self.ema.model if self.ema else self.model

    def validate(self) -> dict:
        """Clean and PGD robust accuracy on the first validation.n held-out points. Neither the global RNG
        nor the training pass count is touched: a mid-epoch point leaves the training run as it was."""
        n = min(self.cfg.validation.n, len(self.val))
        if n == 0:
            return {}
        with torch.random.fork_rng(devices=[self.device] if self.cuda else []), self.counter.paused(), \
                self.val_counter.counting():
            torch.manual_seed(self.cfg.seed + 17)  # same random starts every epoch
            return self._validate(n)

    def _validate(self, n: int) -> dict:
        model = self.eval_model()
        x, y = to_float(self.val.images[:n]), self.val.labels[:n]
        clean = rob = 0
        bs = self.cfg.eval.batch_size
        for i in range(0, n, bs):
            ok, robust = robust_correct(model, x[i:i + bs], y[i:i + bs], self.cfg.objective.eps,
                                        steps=self.cfg.validation.steps, norm=self.cfg.objective.norm)
            clean, rob = clean + ok.sum().item(), rob + robust.sum().item()
        return {"val_clean": clean / n, "val_robust": rob / n, "val_n": n, "val_steps": self.cfg.validation.steps}

    def curve_point(self, partial_seconds: float = 0.0) -> dict:
        """A point of the learning curve: held-out accuracies and the cumulative compute spent to reach them.
        grad_evals/forward_evals/train_seconds: the method's cost (training, scoring, selection); val_*: the
        curve's own cost, apart. partial_seconds: training seconds of the unfinished epoch (mid-epoch points)."""
        t0 = time.perf_counter()
        val = self.validate()
        dt = time.perf_counter() - t0
        self.val_seconds += dt
        self._epoch_val_seconds += dt
        return {**val, **self.cost_point(partial_seconds)}

    def cost_point(self, partial_seconds: float = 0.0) -> dict:
        """The cumulative compute alone (an epoch between two validation.every_epochs points)."""
        return {"grad_evals": self.counter.grad_evals, "forward_evals": self.counter.forward_evals,
                "grad_evals_version": self.counter.version, "train_seconds": self.train_seconds + max(partial_seconds, 0.0),
                "val_grad_evals": self.val_counter.grad_evals, "val_forward_evals": self.val_counter.forward_evals,
                "val_seconds": self.val_seconds}

    def log_metrics(self, row: dict) -> None:
        """metrics.jsonl, metrics.csv and TensorBoard (logging.tensorboard) get the row (rank 0)."""
        self.metrics.append(row)

    def checkpoint_state(self) -> dict:
        return {"version": __version__, "epoch": self.epoch, "iteration": self.iteration,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "ema": self.ema.state_dict() if self.ema else None, "counter": self.counter.state_dict(),
                "val_counter": self.val_counter.state_dict(), "val_seconds": self.val_seconds,
                "train_seconds": self.train_seconds, "samples_seen": self.samples_seen,
                "best_metric": self.best_metric, "best_epoch": self.best_epoch,
                "selection": {"indices": self.selection.indices, "weight": self.selection.weight,
                              "eps": self.selection.eps},
                "hook": self.selection_schedule.state_dict() if self.selection_schedule is not None else None}

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        self.counter.load_state_dict(state["counter"])
        self._synced = (self.counter.grad_evals, self.counter.forward_evals)
        self.val_counter.load_state_dict(state.get("val_counter", {}))  # checkpoints before the curve: from 0
        self.val_seconds = float(state.get("val_seconds", 0.0))
        for k in ("epoch", "iteration", "samples_seen", "best_epoch"):
            setattr(self, k, int(state[k]))
        self.train_seconds = float(state["train_seconds"])
        self.best_metric = float(state["best_metric"])
        s = state["selection"]
        self.set_selection(Selection(s["indices"], s["weight"], s["eps"]))
        if self.rank == 0:
            self._settle_best()
            truncate_jsonl(self.dir / METRICS, "epoch", self.epoch)
        if state.get("hook") is not None and self.selection_schedule is not None:
            self.selection_schedule.load_state_dict(state["hook"])  # e.g. forgetting counts observed so far

    def _settle_best(self) -> None:
        """Promote the staged best weights if the checkpoint on disk chose their epoch, else drop them
        (a run killed between the two writes): best.safetensors always matches best_epoch."""
        from .io import WeightsError, read_metadata

        staged = self.dir / BEST_NEXT
        if not staged.exists():
            return
        try:
            epoch = int(read_metadata(staged).get("epoch", -1))
        except (WeightsError, ValueError):  # a torn staged file: never promoted
            epoch = -1
        if epoch == self.best_epoch:
            os.replace(staged, self.dir / BEST)
        else:
            staged.unlink()

    def _metadata(self) -> dict[str, str]:
        return {"leanrobust_model": json.dumps(self.spec), "leanrobust_version": __version__}

    # ----- the whole run ---------------------------------------------------------------------
    def fit(self, stop_after_epoch: Optional[int] = None) -> Optional[dict]:
        """Train to cfg.optim.epochs (or stop after `stop_after_epoch` completed epochs, for
        tests and budgeted runs), then evaluate. Returns the summary, or None if stopped early."""
        self.check_evaluation_inputs(stop_after_epoch)
        self.dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(self.dir)
        distributed.on_main(lambda: lock.acquire() and None)  # rank 0 alone; its error reaches every rank
        try:
            return self._fit(stop_after_epoch)
        finally:
            self.metrics.close()
            lock.release()

    def check_evaluation_inputs(self, stop_after_epoch: Optional[int] = None) -> None:
        """Everything the final evaluation reads (the attack names, the test set: its files, shape and labels),
        checked before the first step, so that a bad test set fails in seconds, not after all of training
        (and `resume` does not train again into the same error). The test set is kept for finish()."""
        from .evaluate import parse_attacks

        cfg = self.cfg
        parse_attacks(cfg.eval.attacks)
        if cfg.data.dataset == "npz" and not cfg.data.test_path:
            if stop_after_epoch is None:
                raise ValueError("data.test_path is needed: a finished run is evaluated on the test set, so an npz "
                                 "dataset needs its npz test file (found out before training, not after)")
            return
        if self._test_set is None:
            self._test_set = load_test_set(cfg.data, self.data.info)

    def _fit(self, stop_after_epoch: Optional[int]) -> Optional[dict]:
        cfg = self.cfg
        if self.rank == 0:
            clean_orphans(self.dir, RUN_FILES)  # temp files of a write a kill interrupted (we hold the lock)
        ckpt = self.dir / CHECKPOINT
        state = distributed.on_main(lambda: load_checkpoint(ckpt) if ckpt.exists() else None)  # rank 0's file
        if state is not None:
            self.restore(state)
        elif self.rank == 0:
            self.metrics.reset()
        if self.rank == 0:
            self.metrics.open(self.epoch)  # the CSV rebuilt from the jsonl; TensorBoard from this epoch on
            write_text(self.dir / CONFIG, dump_config(cfg))
        while self.epoch < cfg.optim.epochs:
            if stop_after_epoch is not None and self.epoch >= stop_after_epoch:
                return None
            e = self.epoch
            self._epoch_t0, self._epoch_val_seconds = time.perf_counter(), 0.0
            if self.selection_schedule is not None:
                new = self.selection_schedule(self.model, self.pool, self.selection, e)
                if new is not None:
                    self.set_selection(new)
            stats = self.train_epoch(e)
            self.epoch += 1
            self.samples_seen += stats.samples
            self.sync_counters()
            # selection/scoring time included, mid-epoch curve points not; summed over the ranks
            local = time.perf_counter() - self._epoch_t0 - self._epoch_val_seconds
            self.train_seconds += distributed.sum_all([local])[0]
            self._epoch_t0 = time.perf_counter()
            self._epoch_val_seconds = 0.0
            if self.rank == 0:
                self.end_epoch(stats)
            distributed.barrier()
        return self.finish()

    def end_epoch(self, stats: EpochStats) -> None:
        """Rank 0: validation, the metrics row, staged best weights, the checkpoint."""
        cfg, ckpt = self.cfg, self.dir / CHECKPOINT
        due = self.epoch % cfg.validation.every_epochs == 0 or self.epoch >= cfg.optim.epochs
        point = self.curve_point() if due else self.cost_point()
        val = {k: point[k] for k in ("val_clean", "val_robust") if k in point}
        row = {"epoch": self.epoch, "lr": self.optimizer.param_groups[0]["lr"], "train_loss": stats.loss,
               "train_acc": stats.adv_acc, "images_per_s": stats.samples / max(stats.seconds, 1e-9),
               "epoch_seconds": stats.seconds, "samples_seen": self.samples_seen, **point}
        metric = {"robust": val.get("val_robust"), "clean": val.get("val_clean")}.get(cfg.validation.select)
        if cfg.validation.select == "last" or (due and (metric is None or metric > self.best_metric)):
            self.best_metric = -1.0 if metric is None else metric
            self.best_epoch = self.epoch
            # staged: promoted to BEST only once the checkpoint naming this epoch is on disk
            save_weights(self.dir / BEST_NEXT, self.eval_model(), {**self._metadata(), "epoch": str(self.epoch)})
        row["best_epoch"] = self.best_epoch
        self.log_metrics(row)
        save_checkpoint(ckpt, self.checkpoint_state())
        self._settle_best()
        if cfg.progress:
            vs = " ".join(f"{k}={v:.4f}" for k, v in val.items())
            tqdm.write(f"epoch {self.epoch}/{cfg.optim.epochs} loss={stats.loss:.4f} "
                       f"{row['images_per_s']:.0f} img/s {vs}")

    def finish(self) -> dict:
        """Final weights = the selected checkpoint; test-set evaluation; summary.json."""
        from .io import load_weights

        cfg = self.cfg
        model = build_from_spec(self.spec).to(self.device)
        model.load_state_dict(distributed.on_main(lambda: load_weights(self.dir / BEST)))  # rank 0's file
        model.eval()
        if self.rank == 0:
            save_weights(self.dir / WEIGHTS, model, self._metadata())
        images, labels = self._test_set if self._test_set is not None else load_test_set(cfg.data, self.data.info)
        ev = evaluate_model(model, images, labels, eps=cfg.objective.eps, norm=cfg.objective.norm,
                            attacks=cfg.eval.attacks, n=cfg.eval.n, autoattack_n=cfg.eval.autoattack_n,
                            autoattack_version=cfg.eval.autoattack_version, batch_size=cfg.eval.batch_size,
                            device=self.device, seed=cfg.seed, state_dir=self.dir,
                            progress=cfg.progress and self.rank == 0)  # test points split over the ranks
        summary = {"status": "complete", "clean_acc": ev["clean_acc"], "robust_acc": ev["robust_acc"],
                   "eval": {k: v for k, v in ev.items() if k not in ("clean_acc", "robust_acc")},
                   "train_seconds": self.train_seconds, "samples_seen": self.samples_seen,
                   "grad_evals": self.counter.grad_evals, "forward_evals": self.counter.forward_evals,
                   "grad_evals_version": self.counter.version,  # 1 if part of the run counted the old way
                   "val_grad_evals": self.val_counter.grad_evals, "val_forward_evals": self.val_counter.forward_evals,
                   "val_seconds": self.val_seconds,
                   "n_train": len(self.selection), "n_pool": len(self.pool), "n_real": self.data.n_real,
                   "best_epoch": self.best_epoch, "epochs": self.epoch, "device": str(self.device),
                   "torch": torch.__version__, "leanrobust": __version__, "config": cfg.model_dump(mode="json")}
        if self.world_size > 1:
            summary["world_size"] = self.world_size  # grad_evals, samples and train_seconds: sums over the ranks
        if self.rank == 0:
            write_json(self.dir / SUMMARY, summary)
        distributed.barrier()
        return summary
