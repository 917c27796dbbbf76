"""`leanrobust train --dry-run`: check a training config end to end (data, model, test set) and estimate
its cost from two timed batches, without training or writing anything."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch


def dry_run(cfg, run_dir: str | Path = "runs/dry-run") -> dict:
    """Validate a config end to end without training: build the data and the model, check the test set,
    then time two training batches to estimate the cost of one epoch. Writes nothing."""
    # the trainer, config and data pull in most of the package (pydantic, scipy, ...): imported for a dry run only
    from .config_schema import RunConfig
    from .data.build import load_test_set as _load_test
    from .objectives import call_objective
    from .schedule import lr_factor
    from .experiment import build_trainer

    assert isinstance(cfg, RunConfig)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="leanrobust-dry-run-") as tmp:  # nothing reaches the real --out
        tr = build_trainer(cfg, Path(tmp) / Path(run_dir).name)
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
