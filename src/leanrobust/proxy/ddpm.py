"""The class-conditional DDPM generator: the diffusers UNet2DModel and DDPMScheduler, its training (EMA,
resumable atomic checkpoints in a run directory) and loading a trained one back from its weights file."""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn
from tqdm.auto import tqdm

from .. import __version__
from ..data.sources import load_images
from ..ema import EMA
from ..io import load_checkpoint, load_weights, read_metadata, save_checkpoint, save_weights, truncate_jsonl, write_text
from ..runs import CONFIG, METRICS, WEIGHTS, resolve_device
from .generator_config import SynthConfig

LATEST = "latest"            # text file naming the newest complete checkpoint directory
CKPT_DIR = "checkpoints"


# ----------------------------------------------------------------------------- network
def build_unet(cfg: SynthConfig, in_channels: int, num_classes: int) -> nn.Module:
    """UNet2DModel: len(channels) ResNet blocks each way (attention-free unless cfg.attention); class
    embedding nn.Embedding(num_classes + 1) when conditional, index num_classes = "no label" (for CFG)."""
    from diffusers import UNet2DModel  # heavy: diffusers loads only when a generator is built

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
    from diffusers import DDPMScheduler  # heavy: diffusers

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
        self.device = resolve_device(cfg.device)
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
        save_weights(d / WEIGHTS, self.unet, meta)
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
        self.unet.load_state_dict(load_weights(d / WEIGHTS))
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


# ----------------------------------------------------------------------------- loading
@dataclass
class Generator:
    """A trained generator: its UNet (eval mode), the DDPM scheduler config, the description stored with the
    weights, the weights file and its training step."""
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
    return d / ("ema.safetensors" if ema else WEIGHTS)


def load_generator(run: str | Path, step: int | None = None, *, ema: bool = True, device="cpu") -> Generator:
    """Rebuild the UNet from the metadata of its safetensors file (no config file needed)."""
    from diffusers import UNet2DModel  # heavy: diffusers

    path = checkpoint_file(run, step, ema)
    meta = read_metadata(path)
    if "leanrobust_generator" not in meta:
        raise ValueError(f"{path}: safetensors file has no leanrobust generator description")
    info = json.loads(meta["leanrobust_generator"])
    cfg = {k: v for k, v in info.pop("unet").items() if not k.startswith("_")}
    unet = UNet2DModel.from_config(cfg)
    unet.load_state_dict(load_weights(path))
    return Generator(unet.to(device).eval(), info.pop("scheduler"), info, path, int(meta.get("step", -1)))
