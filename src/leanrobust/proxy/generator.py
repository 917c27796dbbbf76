"""Proxy-data generators: a class-conditional DDPM (diffusers UNet2DModel + DDPMScheduler) trained with
EMA and resumable atomic checkpoints, sampled with DDIM / DPM-Solver into resumable sharded npz files,
and a crude per-class Gaussian generator, the bottom rung of the proxy-quality ladder."""
from __future__ import annotations

import json
import math
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn
from tqdm.auto import tqdm

from .. import __version__
from ..ema import EMA
from ..io import (atomic_write, load_checkpoint, load_weights, read_metadata, save_checkpoint, save_weights,
                  truncate_jsonl, write_text)

LATEST = "latest"            # text file naming the newest complete checkpoint directory
CKPT_DIR = "checkpoints"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"


# ----------------------------------------------------------------------------- config
class SynthConfig(BaseModel):
    """Generator training config (flat; unknown keys are rejected)."""
    model_config = ConfigDict(extra="forbid")

    name: str = "synth"
    seed: int = 0
    out: str = Field("runs/synth", description="run directory")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    amp: bool = Field(True, description="bf16 autocast on CUDA (CPU stays fp32)")
    threads: Optional[int] = Field(None, ge=1, description="torch CPU threads")
    progress: bool = True
    # data
    dataset: str = Field("fashion_mnist", description="dataset name (fashion_mnist, mnist, cifar10, cifar100) or an .npz")
    num_classes: Optional[int] = Field(None, ge=1, description="for an npz (default: max label + 1)")
    data_root: Optional[str] = None
    train_subset: Optional[int] = Field(None, ge=1, description="first n images of a seeded shuffle")
    flip: bool = Field(False, description="random horizontal flips (CIFAR yes, clothes and digits no)")
    # network
    image_size: int = Field(32, ge=4, description="images are zero-padded to this size (28 -> 32)")
    channels: list[int] = Field(default_factory=lambda: [32, 64, 64], description="UNet block widths")
    layers_per_block: int = Field(1, ge=1)
    attention: bool = Field(False, description="self-attention in the lowest block and the mid block")
    norm_groups: int = Field(8, ge=1)
    conditional: bool = True
    cond_drop: float = Field(0.1, ge=0.0, lt=1.0, description="label dropout for classifier-free guidance (0: off)")
    # diffusion
    timesteps: int = Field(1000, ge=2)
    beta_schedule: Literal["linear", "squaredcos_cap_v2"] = "linear"
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    # optimisation
    steps: int = Field(1500, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    warmup: int = Field(100, ge=0, description="linear learning-rate warm-up steps")
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: Optional[float] = Field(1.0, gt=0)
    ema: float = Field(0.999, ge=0.0, lt=1.0, description="EMA tau (decay min(tau, (1+t)/(10+t))); 0: off")
    checkpoint_every: int = Field(250, ge=1)
    keep_every: Optional[int] = Field(500, ge=1, description="checkpoints at multiples of this are kept (the quality ladder)")

    @model_validator(mode="after")
    def _check(self) -> "SynthConfig":
        if any(c < 1 or c % self.norm_groups for c in self.channels):
            raise ValueError(f"channels {self.channels} must be multiples of norm_groups {self.norm_groups}")
        if self.image_size % 2 ** (len(self.channels) - 1):
            raise ValueError(f"image_size {self.image_size} must be divisible by 2^{len(self.channels) - 1} "
                             f"({len(self.channels)} UNet blocks)")
        return self


def load_synth_config(path: str | Path | None, overrides: Sequence[str] = ()) -> SynthConfig:
    """YAML file -> SynthConfig; `overrides` are `key=value` strings (values read as YAML)."""
    raw = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file {path} does not exist")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: the top level must be a mapping")
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        k, v = item.split("=", 1)
        raw[k.strip()] = yaml.safe_load(v)
    try:
        return SynthConfig.model_validate(raw)
    except ValidationError as e:
        lines = [f"  {'.'.join(map(str, x['loc'])) or '(root)'}: "
                 + ("unknown key" if x["type"] == "extra_forbidden" else f"{x['msg']} (got {x.get('input')!r})")
                 for x in e.errors()]
        raise ValueError(f"invalid generator config {path or '<defaults>'}:\n" + "\n".join(lines)) from None


# ----------------------------------------------------------------------------- data
def load_images(source: str | Path, split: str = "train", *, num_classes: int | None = None, root=None,
                download: bool = True):
    """(uint8 (N,C,H,W), int64 labels, num_classes) from a dataset name or an .npz file."""
    from ..data import dataset_info, load_dataset, load_npz

    if str(source).endswith(".npz"):
        x, y = load_npz(source, num_classes)
        return x, y, num_classes or (int(y.max()) + 1 if len(y) else 0)
    x, y = load_dataset(str(source), split, root=root, download=download)
    return x, y, dataset_info(str(source)).num_classes


def _resolve_device(name: str) -> torch.device:
    from ..train import resolve_device

    return resolve_device(name)


# ----------------------------------------------------------------------------- network
def build_unet(cfg: SynthConfig, in_channels: int, num_classes: int) -> nn.Module:
    """UNet2DModel: len(channels) ResNet blocks each way (attention-free unless cfg.attention); class
    embedding nn.Embedding(num_classes + 1) when conditional, index num_classes = "no label" (for CFG)."""
    from diffusers import UNet2DModel

    n = len(cfg.channels)
    down, up = ["DownBlock2D"] * n, ["UpBlock2D"] * n
    if cfg.attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(sample_size=cfg.image_size, in_channels=in_channels, out_channels=in_channels,
                       block_out_channels=tuple(cfg.channels), layers_per_block=cfg.layers_per_block,
                       down_block_types=tuple(down), up_block_types=tuple(up), norm_num_groups=cfg.norm_groups,
                       add_attention=cfg.attention, attention_head_dim=8,
                       num_class_embeds=num_classes + 1 if cfg.conditional else None)


def ddpm_scheduler(cfg: SynthConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=cfg.timesteps, beta_schedule=cfg.beta_schedule,
                         prediction_type=cfg.prediction_type, clip_sample=True)


# ----------------------------------------------------------------------------- training
class GeneratorTrainer:
    """Trains the DDPM of a SynthConfig in run_dir, resuming from its latest checkpoint.

    Run directory: config.yaml, metrics.jsonl, `latest` (names the newest complete checkpoint) and
    checkpoints/step_NNNNNNN/{model,ema}.safetensors + state.pt (optimizer, step, EMA step count;
    weights_only). A checkpoint directory is complete before `latest` points to it; older ones are
    deleted unless their step is a multiple of keep_every (kept for the quality ladder) or final.
    Batch indices, timesteps and noise of step s come from a generator seeded with (seed, s), so an
    interrupted and resumed run follows the same trajectory as an uninterrupted one."""

    def __init__(self, cfg: SynthConfig, run_dir: str | Path | None = None):
        self.cfg = cfg
        self.dir = Path(run_dir or cfg.out)
        self.device = _resolve_device(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.cuda = self.device.type == "cuda"
        x, y, self.num_classes = load_images(cfg.dataset, "train", num_classes=cfg.num_classes, root=cfg.data_root)
        if cfg.train_subset and cfg.train_subset < len(y):
            keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.train_subset]
            x, y = x[keep], y[keep]
        self.channels, self.data_size = x.shape[1], x.shape[-1]
        self.pad = (cfg.image_size - self.data_size) // 2
        if x.shape[-2] != x.shape[-1] or self.pad < 0 or 2 * self.pad + self.data_size != cfg.image_size:
            raise ValueError(f"{cfg.dataset}: images of {tuple(x.shape[-2:])} cannot be zero-padded evenly to "
                             f"image_size {cfg.image_size}")
        self.images, self.labels = x.to(self.device), y.to(self.device)
        torch.manual_seed(cfg.seed)
        self.unet = build_unet(cfg, self.channels, self.num_classes).to(self.device)
        self.scheduler = ddpm_scheduler(cfg)
        self.alphas_cumprod = self.scheduler.alphas_cumprod.to(self.device)
        self.opt = torch.optim.AdamW(self.unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.ema = EMA(self.unet, cfg.ema) if cfg.ema else None
        self.step, self.seconds = 0, 0.0

    # ----- one step
    def batch(self, g: torch.Generator):
        cfg = self.cfg
        idx = torch.randint(0, len(self.labels), (cfg.batch_size,), generator=g, device=self.device)
        x = self.images[idx].float().mul_(2 / 255).sub_(1)
        if self.pad:
            x = F.pad(x, (self.pad,) * 4, value=-1.0)
        if cfg.flip:
            flip = torch.rand(len(x), generator=g, device=self.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        y = self.labels[idx]
        if cfg.conditional and cfg.cond_drop:
            drop = torch.rand(len(y), generator=g, device=self.device) < cfg.cond_drop
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        return x, (y if cfg.conditional else None)

    def train_step(self) -> torch.Tensor:
        cfg = self.cfg
        g = torch.Generator(device=self.device).manual_seed(cfg.seed * 1_000_003 + self.step)
        x0, y = self.batch(g)
        t = torch.randint(0, cfg.timesteps, (len(x0),), generator=g, device=self.device)
        noise = torch.randn(x0.shape, generator=g, device=self.device)
        a = self.alphas_cumprod[t].sqrt()[:, None, None, None]
        s = (1 - self.alphas_cumprod[t]).sqrt()[:, None, None, None]
        xt = a * x0 + s * noise
        target = noise if cfg.prediction_type == "epsilon" else a * noise - s * x0
        lr = cfg.lr * min(1.0, (self.step + 1) / cfg.warmup) if cfg.warmup else cfg.lr
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.unet.train()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda and cfg.amp):
            pred = self.unet(xt, t, class_labels=y).sample
        loss = F.mse_loss(pred.float(), target)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(self.unet.parameters(), cfg.grad_clip)
        self.opt.step()
        if self.ema:
            self.ema.update(self.unet)
        self.step += 1
        return loss.detach()

    # ----- checkpoints
    def metadata(self) -> dict[str, str]:
        gen = {"unet": dict(self.unet.config), "scheduler": dict(self.scheduler.config), "num_classes": self.num_classes,
               "channels": self.channels, "data_size": self.data_size, "pad": self.pad,
               "conditional": self.cfg.conditional, "cond_drop": self.cfg.cond_drop, "dataset": str(self.cfg.dataset)}
        return {"leanrobust_generator": json.dumps(gen, default=list), "step": str(self.step),
                "leanrobust_version": __version__}

    def save(self) -> Path:
        d = self.dir / CKPT_DIR / f"step_{self.step:07d}"
        meta = self.metadata()
        save_weights(d / "model.safetensors", self.unet, meta)
        save_weights(d / "ema.safetensors", self.ema.model if self.ema else self.unet, meta)
        save_checkpoint(d / "state.pt", {"step": self.step, "optimizer": self.opt.state_dict(),
                                         "ema_steps": self.ema.steps if self.ema else 0, "seconds": self.seconds})
        previous = self.dir / CKPT_DIR / read_latest(self.dir) if (self.dir / LATEST).exists() else None
        write_text(self.dir / LATEST, d.name + "\n")
        keep = self.cfg.keep_every
        if previous and previous != d and previous.is_dir():
            prev_step = int(previous.name.split("_")[1])
            if not (keep and prev_step % keep == 0):
                shutil.rmtree(previous)
        return d

    def restore(self) -> bool:
        if not (self.dir / LATEST).exists():
            return False
        d = self.dir / CKPT_DIR / read_latest(self.dir)
        state = load_checkpoint(d / "state.pt")
        self.unet.load_state_dict(load_weights(d / "model.safetensors"))
        if self.ema:
            self.ema.model.load_state_dict(load_weights(d / "ema.safetensors"))
            self.ema.steps = int(state["ema_steps"])
        self.opt.load_state_dict(state["optimizer"])
        self.step, self.seconds = int(state["step"]), float(state["seconds"])
        return True

    def check_same_config(self) -> None:
        """A resumed run may change only steps, checkpointing and runtime settings."""
        if not (self.dir / CONFIG).exists():
            return
        old = yaml.safe_load((self.dir / CONFIG).read_text())
        free = {"steps", "checkpoint_every", "keep_every", "progress", "threads", "device", "out"}
        diff = sorted(k for k, v in self.cfg.model_dump(mode="json").items() if k not in free and old.get(k) != v)
        if diff:
            raise ValueError(f"{self.dir} was trained with another config (differs in {', '.join(diff)}); "
                             "use another out directory")

    def fit(self, stop_after: int | None = None) -> dict:
        """Train to cfg.steps (or stop once `stop_after` steps are done in total); returns a summary."""
        cfg = self.cfg
        self.dir.mkdir(parents=True, exist_ok=True)
        if (self.dir / LATEST).exists():
            self.check_same_config()  # first: another architecture would fail in load_state_dict, unclearly
        if self.restore():
            truncate_jsonl(self.dir / METRICS, "step", self.step)
        else:
            truncate_jsonl(self.dir / METRICS, "step", 0)  # rows of a start killed before its first checkpoint
            write_text(self.dir / CONFIG, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
        bar = tqdm(total=cfg.steps, initial=self.step, desc="synth train", disable=not cfg.progress,
                   unit="step", dynamic_ncols=True)
        losses = []
        t0, s0 = time.perf_counter(), self.step
        while self.step < end:
            losses.append(self.train_step())
            bar.update(1)
            if self.step % cfg.checkpoint_every == 0 or self.step == end:
                if self.cuda:
                    torch.cuda.synchronize()
                now = time.perf_counter()
                self.seconds += now - t0
                loss = torch.stack(losses).mean().item()
                row = {"step": self.step, "loss": loss, "seconds": self.seconds,
                       "step_seconds": (now - t0) / max(self.step - s0, 1)}
                with open(self.dir / METRICS, "a") as f:
                    f.write(json.dumps(row) + "\n")
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                self.save()
                losses, t0, s0 = [], time.perf_counter(), self.step
        bar.close()
        return {"run_dir": str(self.dir), "step": self.step, "seconds": self.seconds,
                "checkpoints": sorted(p.name for p in (self.dir / CKPT_DIR).glob("step_*"))}


def read_latest(run_dir: Path) -> str:
    name = (Path(run_dir) / LATEST).read_text().strip()
    if not name.startswith("step_"):
        raise ValueError(f"{run_dir}/{LATEST}: does not name a checkpoint ({name!r})")
    return name


# ----------------------------------------------------------------------------- loading and sampling
@dataclass
class Generator:
    unet: nn.Module
    scheduler_config: dict
    info: dict      # num_classes, channels, data_size, pad, conditional, cond_drop, dataset
    path: Path
    step: int


def checkpoint_file(run: str | Path, step: int | None = None, ema: bool = True) -> Path:
    """The weights file of a generator run (latest checkpoint, or the one of `step`), or `run` itself."""
    run = Path(run)
    if run.is_file():
        return run
    if not (run / LATEST).exists():
        raise ValueError(f"{run}: not a generator run directory (no '{LATEST}' file)")
    d = run / CKPT_DIR / (read_latest(run) if step is None else f"step_{step:07d}")
    if not d.is_dir():
        have = ", ".join(sorted(p.name for p in (run / CKPT_DIR).glob("step_*")))
        raise ValueError(f"{run}: no checkpoint for step {step}; kept: {have}")
    return d / ("ema.safetensors" if ema else "model.safetensors")


def load_generator(run: str | Path, step: int | None = None, *, ema: bool = True, device="cpu") -> Generator:
    """Rebuild the UNet from the metadata of its safetensors file (no config file needed)."""
    from diffusers import UNet2DModel

    path = checkpoint_file(run, step, ema)
    meta = read_metadata(path)
    if "leanrobust_generator" not in meta:
        raise ValueError(f"{path}: safetensors file has no leanrobust generator description")
    info = json.loads(meta["leanrobust_generator"])
    cfg = {k: v for k, v in info.pop("unet").items() if not k.startswith("_")}
    unet = UNet2DModel.from_config(cfg)
    unet.load_state_dict(load_weights(path))
    return Generator(unet.to(device).eval(), info.pop("scheduler"), info, path, int(meta.get("step", -1)))


def fast_scheduler(kind: str, ddpm_config: dict):
    """DDIM (eta 0, trailing timesteps) or DPM-Solver++ (2nd order) built from the DDPM config."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, DDPMScheduler

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


def _write_npz(path: Path, **arrays) -> None:
    def write(tmp: Path):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)


def _merge_shards(parts: list[Path], out: Path) -> int:
    """Stream shards into one uncompressed npz (image uint8 NxHxWxC, label int64) without holding all
    images in memory; written to a temp file and renamed."""
    shapes, labels = [], []
    for p in parts:
        with np.load(p, allow_pickle=False) as z:
            shapes.append(z["image"].shape)
            labels.append(z["label"].astype(np.int64))
    n = sum(s[0] for s in shapes)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
              "shape": (n, *shapes[0][1:])}

    def write(tmp: Path):
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open("image.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, header)
                for p in parts:
                    with np.load(p, allow_pickle=False) as z:
                        f.write(np.ascontiguousarray(z["image"]).tobytes())
            with zf.open("label.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.concatenate(labels))

    atomic_write(out, write)
    return n


def _shard_ok(path: Path, size: int) -> bool:
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["image"].shape[0] == size and z["label"].shape == (size,)
    except Exception:  # a foreign or damaged file: regenerate it
        return False


def write_shards(out: str | Path, plan: dict, make_batch, n: int, batch_size: int, *, progress: bool = True,
                 stop_after: int | None = None, overwrite: bool = False) -> dict:
    """Shared sharded writer: batch i (images [i*B, (i+1)*B)) is make_batch(i, size) -> (uint8 NCHW,
    int64 labels), saved atomically as OUT.parts/part_iiiii.npz; existing valid shards are reused, so an
    interrupted run loses nothing written. `plan` (JSON) must match the one stored with the shards.
    At the end the shards are merged into OUT and removed. stop_after: stop after that many new batches."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise ValueError(f"{out} already exists; pass overwrite (--overwrite) to replace it")
    parts_dir = out.with_name(out.name + ".parts")
    parts_dir.mkdir(parents=True, exist_ok=True)
    plan = json.loads(json.dumps({**plan, "n": n, "batch_size": batch_size}))
    plan_file = parts_dir / "plan.json"
    if plan_file.exists():
        old = json.loads(plan_file.read_text())
        if old != plan:
            diff = {k: (old.get(k), plan.get(k)) for k in set(old) | set(plan) if old.get(k) != plan.get(k)}
            raise ValueError(f"{parts_dir} holds shards made with other options {diff} (old, new); rerun with "
                             f"the same options or delete {parts_dir}")
    else:
        write_text(plan_file, json.dumps(plan, indent=2) + "\n")
    nb = math.ceil(n / batch_size)
    parts = [parts_dir / f"part_{i:05d}.npz" for i in range(nb)]
    sizes = [min(batch_size, n - i * batch_size) for i in range(nb)]
    todo = [i for i in range(nb) if not _shard_ok(parts[i], sizes[i])]
    made = 0
    bar = tqdm(total=n, initial=n - sum(sizes[i] for i in todo), desc=f"sampling {out.name}", unit="img",
               disable=not progress, dynamic_ncols=True)
    for i in todo:
        if stop_after is not None and made >= stop_after:
            bar.close()
            return {"out": None, "parts": str(parts_dir), "new_batches": made, "reused_batches": nb - len(todo),
                    "complete": False}
        images, labels = make_batch(i, sizes[i])
        _write_npz(parts[i], image=images.permute(0, 2, 3, 1).numpy(), label=labels.numpy().astype(np.int64))
        made += 1
        bar.update(sizes[i])
    bar.close()
    total = _merge_shards(parts, out)
    shutil.rmtree(parts_dir)
    return {"out": str(out), "n": total, "new_batches": made, "reused_batches": nb - len(todo), "complete": True}


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
    from .. import load

    dev = _resolve_device(device)
    gen = load_generator(run, step, ema=ema, device=dev)
    info = gen.info
    if not info["conditional"] and label_with is None:
        raise ValueError(f"{run}: unconditional generator; give label_with (a classifier run) for pseudo-labels")
    plan = {"generator": str(gen.path.resolve()), "step": gen.step, "steps": steps, "scheduler": scheduler,
            "guidance": guidance, "seed": seed, "label_with": str(label_with) if label_with else None}
    labels = None
    if info["conditional"]:
        counts = class_counts(n, info["num_classes"], per_class)
        labels = torch.repeat_interleave(torch.arange(info["num_classes"]), torch.tensor(counts))
        labels = labels[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]
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
                y = clf(images.to(dev).float() / 255).argmax(1).cpu()
        return images, y

    return write_shards(out, plan, make_batch, n, batch_size, progress=progress, stop_after=stop_after,
                        overwrite=overwrite)


# ----------------------------------------------------------------------------- Gaussian proxy
class GaussianProxy:
    """Per-class Gaussian in pixel space (0..255): mean plus either a diagonal covariance (rank 0) or a
    probabilistic-PCA one (top-`rank` principal directions + isotropic residual variance). Samples are
    clipped to [0, 255] and rounded: a deliberately crude generator for the proxy-quality ladder."""

    def __init__(self, mean: torch.Tensor, basis: torch.Tensor, scale: torch.Tensor, resid: torch.Tensor, shape):
        self.mean, self.basis, self.scale, self.resid, self.shape = mean, basis, scale, resid, tuple(shape)

    @classmethod
    def fit(cls, images: torch.Tensor, labels: torch.Tensor, num_classes: int, rank: int = 0) -> "GaussianProxy":
        x = images.flatten(1).double()
        d = x.shape[1]
        mean, basis, scale, resid = [], [], [], []
        for c in range(num_classes):
            xc = x[labels == c]
            if len(xc) < 2:
                raise ValueError(f"class {c} has {len(xc)} images; the Gaussian proxy needs at least 2")
            mu = xc.mean(0)
            if rank == 0:
                basis.append(torch.zeros(0, d, dtype=x.dtype))
                scale.append(torch.zeros(0, dtype=x.dtype))
                resid.append(xc.std(0))
            else:
                _, s, vh = torch.linalg.svd(xc - mu, full_matrices=False)
                var = s ** 2 / (len(xc) - 1)
                r = min(rank, len(var))
                basis.append(vh[:r])
                scale.append(var[:r].sqrt())
                rest = var[r:].sum() / max(d - r, 1)
                resid.append(rest.sqrt().expand(d))
            mean.append(mu)
        return cls(torch.stack(mean), torch.stack(basis), torch.stack(scale), torch.stack(resid), images.shape[1:])

    def sample(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(len(labels), self.basis.shape[1], generator=generator, dtype=torch.float64)
        e = torch.randn(len(labels), self.mean.shape[1], generator=generator, dtype=torch.float64)
        x = self.mean[labels] + torch.einsum("br,brd->bd", z * self.scale[labels], self.basis[labels])
        x = x + e * self.resid[labels]
        return x.clamp(0, 255).round().to(torch.uint8).reshape(len(labels), *self.shape)


def gaussian_to_npz(real: str | Path, out: str | Path, n: int, *, rank: int = 0,
                    per_class: str | Sequence[int] | None = "balanced", seed: int = 0, batch_size: int = 10000,
                    num_classes: int | None = None, progress: bool = True, overwrite: bool = False) -> dict:
    """Fit a GaussianProxy to a real training set (dataset name or npz) and write n samples to OUT."""
    x, y, k = load_images(real, "train", num_classes=num_classes)
    proxy = GaussianProxy.fit(x, y, k, rank)
    counts = class_counts(n, k, per_class)
    labels = torch.repeat_interleave(torch.arange(k), torch.tensor(counts))
    labels = labels[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]

    def make_batch(i, size):
        yb = labels[i * batch_size:i * batch_size + size]
        return proxy.sample(yb, torch.Generator().manual_seed(seed * 1_000_003 + i)), yb

    plan = {"gaussian": str(real), "rank": rank, "seed": seed, "counts": counts}
    return write_shards(out, plan, make_batch, n, batch_size, progress=progress, overwrite=overwrite)
