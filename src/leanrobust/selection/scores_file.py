"""The scores file (`leanrobust score` writes it, `leanrobust select` reads it): per-sample scores of a pool
in an npz without pickles, with what was scored (meta) and the scored pool's fingerprint (data/fingerprint.py)."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np

from ..data.fingerprint import KEY, fingerprint_array, read_fingerprint
from ..io import write_npz

SCORE_KEYS = ("scores", "labels", "indices")


def write_scores(path: Path, scores, labels, indices, is_generated, meta: dict,
                 fingerprint: Optional[dict] = None) -> None:
    """npz without pickles: scores float32, labels int64, indices int64 (pool indices),
    is_generated bool, meta (a JSON string: method, eps, norm, ...), method (string), and the scored pool's
    fingerprint (a JSON string under pool_fingerprint) when given."""
    extra = {KEY: fingerprint_array(fingerprint)} if fingerprint is not None else {}
    write_npz(path, scores=np.asarray(scores, np.float32), labels=np.asarray(labels, np.int64),
              indices=np.asarray(indices, np.int64), is_generated=np.asarray(is_generated, bool),
              meta=np.array(json.dumps(meta)), method=np.array(str(meta.get("method", ""))), **extra)


def read_scores(path: Path) -> tuple[dict, dict]:
    """(arrays, meta) of a scores npz, meta["pool_fingerprint"] the scored pool's fingerprint (None when the file
    has none); ValueError naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such scores file")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in SCORE_KEYS if k not in z.files]
            if missing:
                raise ValueError(f"{path}: not a scores file, missing keys {missing}")
            arrays = {k: z[k] for k in z.files if k not in ("meta", "method", KEY)}
            meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
            if not isinstance(meta, dict):
                raise ValueError(f"{path}: meta must be a JSON object")
            meta[KEY] = read_fingerprint(z, path)
    except (OSError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read scores npz ({e})") from e
    n = arrays["scores"].shape[0]
    for k in ("labels", "indices"):
        if arrays[k].shape != (n,):
            raise ValueError(f"{path}: {k} has shape {arrays[k].shape}, expected ({n},)")
    return arrays, meta
