"""The one contract every data-selection method produces: which pool samples are used, how much each
counts, and how hard each is attacked (docs/architecture.md, "selection/"). It sits in core, below the
trainer, so the trainer imports no selection method."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from .data.fingerprint import KEY, fingerprint_array, read_fingerprint
from .io import write_npz


@dataclass
class Selection:
    """indices into the pool (int64), and per-selected-sample weight and eps (float32); pool_fingerprint: the pool
    the indices refer to (data/fingerprint.py), None when unknown (made in memory, or a file without one)."""

    indices: torch.Tensor
    weight: torch.Tensor
    eps: torch.Tensor
    pool_fingerprint: Optional[dict] = field(default=None, repr=False, compare=False)

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

    def save(self, path: str | Path, fingerprint: Optional[dict] = None, **extra: np.ndarray) -> None:
        """Write as .npz (no pickles): keys indices, weight, eps, the pool fingerprint (`fingerprint`, else the
        selection's own; a JSON string under `pool_fingerprint`) when known, plus any extra arrays. Atomic
        (io.write_npz)."""
        fp = fingerprint if fingerprint is not None else self.pool_fingerprint
        if fp is not None:
            extra[KEY] = fingerprint_array(fp)
        write_npz(path, indices=self.indices.numpy(), weight=self.weight.numpy(), eps=self.eps.numpy(),
                  **{k: np.asarray(v) for k, v in extra.items()})

    @classmethod
    def load(cls, path: str | Path) -> "Selection":
        """Read a Selection npz (no pickles). Refused, naming the file: anything but one 1-D integer index
        array with one finite, non-negative weight and eps each (or one for all), an empty selection, and
        weights that are all zero (nothing would train). The pool fingerprint, when the file has one, becomes
        `pool_fingerprint` (checked against the pool by whoever uses the indices: the Trainer)."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: selection file does not exist")
        try:
            with open(path, "rb") as f:  # our own handle: np.load leaks its own when the zip is corrupt
                z = np.load(f, allow_pickle=False)
                if not isinstance(z, np.lib.npyio.NpzFile):
                    raise ValueError(f"{path}: not a Selection file (an .npz archive with indices, weight, eps)")
                with z:
                    if not z.files:
                        raise ValueError(f"{path}: empty npz (no arrays); expected indices, weight and eps")
                    missing = {"indices", "weight", "eps"} - set(z.files)
                    if missing:
                        raise ValueError(f"{path}: not a Selection file, missing keys {sorted(missing)}")
                    arrays = {k: z[k] for k in ("indices", "weight", "eps")}
                    fp = read_fingerprint(z, path)
        except ValueError as e:
            if str(e).startswith(str(path)):
                raise
            raise ValueError(f"{path}: cannot read Selection npz ({e})") from None
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as e:
            raise ValueError(f"{path}: cannot read Selection npz ({type(e).__name__}: {e})") from None
        idx = arrays["indices"]
        if idx.ndim != 1:
            raise ValueError(f"{path}: indices must be a 1-D array, got shape {idx.shape}")
        if not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"{path}: indices must be integers, got {idx.dtype} (positions in the pool: "
                             "convert with .astype(np.int64) only if every value is a whole number)")
        if idx.size == 0:
            raise ValueError(f"{path}: the selection is empty (no indices)")
        if idx.dtype == np.uint64 and idx.max() > np.iinfo(np.int64).max:
            raise ValueError(f"{path}: index {int(idx.max())} is out of range")
        for k in ("weight", "eps"):
            a = arrays[k]
            if a.ndim > 1 or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
                raise ValueError(f"{path}: {k} must be a 1-D array of numbers, got {a.dtype} {a.shape}")
        try:
            sel = cls(torch.from_numpy(idx.astype(np.int64)), torch.from_numpy(arrays["weight"].astype(np.float32)),
                      torch.from_numpy(arrays["eps"].astype(np.float32)))
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        if not bool((sel.weight > 0).any()):
            raise ValueError(f"{path}: every weight is 0, so nothing would train")
        sel.pool_fingerprint = fp
        return sel
