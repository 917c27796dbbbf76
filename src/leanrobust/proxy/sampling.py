"""Sampling a trained generator (DDIM / DPM-Solver, optional classifier-free guidance) into a labelled npz,
written as resumable shards (`io.write_shards`), with balanced or given per-class counts."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..data.augment import to_float
from ..io import write_shards
from .ddpm import Generator, load_generator


def fast_scheduler(kind: str, ddpm_config: dict):
    """DDIM (eta 0, trailing timesteps) or DPM-Solver++ (2nd order) built from the DDPM config."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler  # heavy: diffusers

    cfg = {k: v for k, v in ddpm_config.items() if not k.startswith("_")}
    if kind == "ddim":
        return DDIMScheduler.from_config(cfg, timestep_spacing="trailing")
    if kind == "dpm":
        return DPMSolverMultistepScheduler.from_config(cfg, algorithm_type="dpmsolver++", solver_order=2)
    if kind == "ddpm":
        return DDPMScheduler.from_config(cfg)
    raise ValueError(f"unknown scheduler {kind!r}; expected ddim, dpm or ddpm")


@torch.no_grad()
def generate(gen: Generator, labels: torch.Tensor | None, *, n: int | None = None, steps: int = 50,
             scheduler: str = "ddim", guidance: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 (B, C, H, W) images (padding cropped off). labels: (B,) class ids for a conditional
    generator (None: unconditional, then give n). guidance w != 1 uses classifier-free guidance,
    eps = eps_null + w (eps_y - eps_null), which needs a generator trained with cond_drop > 0."""
    info, dev = gen.info, next(gen.unet.parameters()).device
    if info["conditional"] and labels is None:
        raise ValueError("this generator is class-conditional: give labels")
    if not info["conditional"] and guidance != 1.0:
        raise ValueError("guidance needs a class-conditional generator")
    if guidance != 1.0 and not info["cond_drop"]:
        raise ValueError("classifier-free guidance needs a generator trained with cond_drop > 0")
    b = len(labels) if labels is not None else n
    size = gen.unet.config.sample_size
    sched = fast_scheduler(scheduler, gen.scheduler_config)
    sched.set_timesteps(steps, device=dev)
    x = torch.randn((b, info["channels"], size, size), generator=generator, device=dev) * sched.init_noise_sigma
    y = None if labels is None else labels.to(dev)
    if guidance != 1.0:
        y = torch.cat([y, torch.full_like(y, info["num_classes"])])
    amp = dev.type == "cuda"
    for t in sched.timesteps:
        xin = sched.scale_model_input(x, t)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            out = gen.unet(xin.repeat(2, 1, 1, 1) if guidance != 1.0 else xin, t, class_labels=y).sample.float()
        if guidance != 1.0:
            cond, null = out.chunk(2)
            out = null + guidance * (cond - null)
        x = sched.step(out, t, x, generator=generator).prev_sample
    p = info["pad"]
    x = x[..., p:size - p, p:size - p] if p else x
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def class_counts(n: int, num_classes: int, per_class: str | Sequence[int] | None = "balanced") -> list[int]:
    """Per-class sample counts: 'balanced' (n // K each, the first n % K classes one more) or explicit."""
    if per_class in (None, "balanced"):
        return [n // num_classes + (c < n % num_classes) for c in range(num_classes)]
    counts = [int(c) for c in (per_class.split(",") if isinstance(per_class, str) else per_class)]
    if len(counts) != num_classes or min(counts) < 0 or sum(counts) != n:
        raise ValueError(f"per-class counts {counts} must be {num_classes} non-negative numbers summing to n={n}")
    return counts


def shuffled_labels(counts: Sequence[int], seed: int) -> torch.Tensor:
    """Class ids, counts[c] of class c, in a seeded random order."""
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]


def sample_to_npz(run: str | Path, out: str | Path, n: int, *, steps: int = 50, scheduler: str = "ddim",
                  per_class: str | Sequence[int] | None = "balanced", guidance: float = 1.0, batch_size: int = 256,
                  seed: int = 0, step: int | None = None, ema: bool = True, label_with: str | Path | None = None,
                  device: str = "auto", progress: bool = True, stop_after: int | None = None,
                  overwrite: bool = False) -> dict:
    """Sample n images from a generator run into OUT (npz: image uint8 NxHxWxC, label int64).

    Conditional generators get the requested class counts (balanced by default), in a seeded shuffled
    order. label_with (a leanrobust run dir / weights file): labels become the classifier's argmax
    (pseudo-labels, as Sehwag et al. do for unconditional generators). Batch i uses noise seeded by
    (seed, i), so resumed output is identical to an uninterrupted run."""
    from ..api import load  # api sits above the methods (it reaches the trainer and the report): import when used
    from ..runs import resolve_device

    dev = resolve_device(device)
    gen = load_generator(run, step, ema=ema, device=dev)
    info = gen.info
    if not info["conditional"] and label_with is None:
        raise ValueError(f"{run}: unconditional generator; give label_with (a classifier run) for pseudo-labels")
    plan = {"generator": str(gen.path.resolve()), "step": gen.step, "steps": steps, "scheduler": scheduler,
            "guidance": guidance, "seed": seed, "label_with": str(label_with) if label_with else None}
    labels = None
    if info["conditional"]:
        counts = class_counts(n, info["num_classes"], per_class)
        labels = shuffled_labels(counts, seed)
        plan["counts"] = counts
    elif per_class not in (None, "balanced"):
        raise ValueError("class counts cannot be requested from an unconditional generator")
    clf = load(label_with, device=str(dev)) if label_with else None

    def make_batch(i: int, size: int):
        g = torch.Generator(device=dev).manual_seed(seed * 1_000_003 + i)
        y = labels[i * batch_size:i * batch_size + size] if labels is not None else None
        images = generate(gen, y, n=size, steps=steps, scheduler=scheduler, guidance=guidance, generator=g)
        if clf is not None:
            with torch.no_grad():
                y = clf(to_float(images.to(dev))).argmax(1).cpu()
        return images, y

    return write_shards(out, plan, make_batch, n, batch_size, progress=progress, stop_after=stop_after,
                        overwrite=overwrite)
