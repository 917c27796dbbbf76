"""The one contract every data-selection method produces: which pool samples are used,
how much each counts, and how hard each is attacked (DESIGN.md)."""
from __future__ import annotations

from dataclasses import dataclass
import zipfile
from pathlib import Path

import numpy as np
import torch


@dataclass
class Selection:
    """indices into the pool (int64), and per-selected-sample weight and eps (float32)."""

    indices: torch.Tensor
    weight: torch.Tensor
    eps: torch.Tensor

    def __post_init__(self) -> None:
        self.indices = torch.as_tensor(self.indices, dtype=torch.long).reshape(-1)
        n = self.indices.numel()
        self.weight = torch.as_tensor(self.weight, dtype=torch.float32).reshape(-1)
        self.eps = torch.as_tensor(self.eps, dtype=torch.float32).reshape(-1)
        for name in ("weight", "eps"):
            t = getattr(self, name)
            if t.numel() == 1 and n != 1:
                setattr(self, name, t.expand(n).clone())
            elif t.numel() != n:
                raise ValueError(f"Selection.{name} has {t.numel()} entries, expected {n} (one per index)")
        if not torch.isfinite(self.weight).all() or (self.weight < 0).any():
            raise ValueError("Selection.weight must be finite and >= 0")
        if not torch.isfinite(self.eps).all() or (self.eps < 0).any():
            raise ValueError("Selection.eps must be finite and >= 0")

    def __len__(self) -> int:
        return int(self.indices.numel())

    @classmethod
    def full(cls, n: int, eps: float, weight: float = 1.0) -> "Selection":
        """Every pool sample, the config's eps, unit weight."""
        return cls(torch.arange(n), torch.full((n,), float(weight)), torch.full((n,), float(eps)))

    def validate_for_pool(self, pool_size: int, source: str = "selection") -> None:
        if len(self) == 0:
            raise ValueError(f"{source}: the selection is empty")
        if int(self.indices.min()) < 0 or int(self.indices.max()) >= pool_size:
            raise ValueError(f"{source}: indices must lie in [0, {pool_size}); got "
                             f"[{int(self.indices.min())}, {int(self.indices.max())}]")

    def save(self, path: str | Path, **extra: np.ndarray) -> None:
        """Write as .npz (no pickles): keys indices, weight, eps, plus any extra arrays."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, indices=self.indices.numpy(), weight=self.weight.numpy(), eps=self.eps.numpy(),
                 **{k: np.asarray(v) for k, v in extra.items()})
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "Selection":
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = {"indices", "weight", "eps"} - set(z.files)
                if missing:
                    raise ValueError(f"{path}: not a Selection file, missing keys {sorted(missing)}")
                return cls(torch.from_numpy(z["indices"].astype(np.int64)),
                           torch.from_numpy(z["weight"].astype(np.float32)),
                           torch.from_numpy(z["eps"].astype(np.float32)))
        except (OSError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path}: cannot read Selection npz ({e})") from e
