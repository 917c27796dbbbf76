"""The generator's training config (`leanrobust synth train`): one flat, validated pydantic model read from
YAML with `key=value` overrides, parsed by the same `apply_overrides` as the experiment config."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..config import apply_overrides


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
    raw = apply_overrides(raw, list(overrides))
    try:
        return SynthConfig.model_validate(raw)
    except ValidationError as e:
        lines = [f"  {'.'.join(map(str, x['loc'])) or '(root)'}: "
                 + ("unknown key" if x["type"] == "extra_forbidden" else f"{x['msg']} (got {x.get('input')!r})")
                 for x in e.errors()]
        raise ValueError(f"invalid generator config {path or '<defaults>'}:\n" + "\n".join(lines)) from None
