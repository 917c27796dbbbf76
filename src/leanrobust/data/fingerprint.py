"""The identity of a training pool, recorded in every file that holds pool indices (Selections, score files,
compress outputs) and checked where they are used: indices made on one pool are refused on another instead of
training on unrelated images (issue 19: a selection made with data.train_subset=2000 trained on the full set)."""
from __future__ import annotations

import hashlib
import json
import shlex
import warnings
import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

KEY = "pool_fingerprint"  # npz key of a Selection's / score file's fingerprint (a 0-d unicode array of JSON)
SOURCE_KEY = "source_fingerprint"  # npz key of a compressed pool (dm): the pool it was condensed from
VERSION = 1
FULL_HASH_BYTES = 256 << 20  # files up to this size are hashed whole; larger ones by samples (below)
_BLOCK = 1 << 16
_hash_cache: dict = {}

# compared fields, in the order they are reported: field -> the setting that reproduces it (None: derived)
FIELDS = {"dataset": "data.dataset", "dataset_sha256": "data.path", "split": None,
          "train_subset": "data.train_subset", "subset_seed": "seed", "val_size": "data.val_size",
          "val_seed": "data.val_seed", "pool_sha256": "data.pool", "generated_sha256": "data.generated",
          "n": None, "labels_sha256": None}
_PATHS = {"dataset_sha256": "dataset_path", "pool_sha256": "pool", "generated_sha256": "generated"}
_DEFAULTS = {"data.train_subset": None, "seed": 0, "data.val_size": 2000, "data.val_seed": 0}


class PoolMismatchError(ValueError):
    """A file of pool indices (or a compressed pool) made on another training pool than this run's."""


def _file_digest(path: Path, full_limit: int) -> str:
    """sha256 of a file: whole when small, else of its size, head, tail and 64 evenly spaced blocks (cheap on
    files of many GB; the labels, hashed whole, and the sampled image bytes catch a replaced file). Cached per
    (path, size, mtime, inode) within the process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, full_limit)
    if key in _hash_cache:
        return _hash_cache[key]
    h, size = hashlib.sha256(), st.st_size
    with open(path, "rb") as f:
        if size <= full_limit:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        else:
            h.update(f"sampled {size}".encode())
            for k in range(66):
                f.seek(0 if k == 0 else size - _BLOCK if k == 65 else (size - _BLOCK) * k // 65)
                h.update(f.read(_BLOCK))
    _hash_cache[key] = h.hexdigest()
    return _hash_cache[key]


def content_hash(path: Optional[str | Path]) -> Optional[str]:
    """sha256 of a file's bytes (sampled above FULL_HASH_BYTES), or of a shard folder's sorted file names, sizes
    and (sampled above 1 MiB) contents; None for no path."""
    if not path:
        return None
    p = Path(path)
    try:
        if not p.is_dir():
            return _file_digest(p, FULL_HASH_BYTES)
        h = hashlib.sha256()
        for f in sorted(q for q in p.iterdir() if q.is_file() and q.suffix in (".npz", ".npy")):
            h.update(f"{f.name}\0{f.stat().st_size}\0{_file_digest(f, 1 << 20)}\0".encode())
        return h.hexdigest()
    except OSError as e:
        raise ValueError(f"{path}: cannot read it to fingerprint the pool ({e})") from None


def _abs(path: Optional[str]) -> Optional[str]:
    return str(Path(path).resolve()) if path else None


def pool_fingerprint(data_cfg, seed: int, pool) -> dict[str, Any]:
    """What decides which image each pool index is: the data settings that build the pool (build.py) and a hash
    of its labels. With data.pool the real set is that file, so train_subset, the seed and the split are None."""
    own = not data_cfg.pool
    labels = pool.labels.detach().cpu().numpy().astype("<i8", copy=False)
    return {"version": VERSION, "dataset": data_cfg.dataset,
            "dataset_sha256": content_hash(data_cfg.path) if data_cfg.dataset == "npz" else None,
            "split": "train",
            "train_subset": data_cfg.train_subset if own else None,
            # build.py: the run's seed draws the subset, and the held-out split too when val_seed is null
            "subset_seed": int(seed) if own and (data_cfg.train_subset is not None or data_cfg.val_seed is None)
            else None,
            "val_size": data_cfg.val_size if own else None, "val_seed": data_cfg.val_seed if own else None,
            "pool_sha256": content_hash(data_cfg.pool), "generated_sha256": content_hash(data_cfg.generated),
            "n": int(labels.shape[0]), "labels_sha256": hashlib.sha256(labels.tobytes()).hexdigest(),
            # not compared: where the files were, and the run's seed (for the advice)
            "seed": int(seed), "dataset_path": _abs(data_cfg.path), "pool": _abs(data_cfg.pool),
            "generated": _abs(data_cfg.generated)}


def fingerprint_array(fp: dict) -> np.ndarray:
    """A fingerprint as an npz value: a 0-d unicode array holding JSON (np.load reads it without pickles)."""
    return np.array(json.dumps(fp, sort_keys=True))


def read_fingerprint(npz, path, key: str = KEY) -> Optional[dict]:
    """The fingerprint stored under `key` of an open npz, None when it has none; ValueError naming the file."""
    if key not in npz.files:
        return None
    try:
        fp = json.loads(str(npz[key][()]))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: unreadable {key} ({e})") from None
    if not isinstance(fp, dict):
        raise ValueError(f"{path}: {key} must be a JSON object, got {type(fp).__name__}")
    return fp


def _raw(v: Any) -> str:
    """A setting's value as a config override writes it (null for None)."""
    return "null" if v is None else str(v)


def _set(setting: str, v: Any) -> str:
    """`--set setting=value`, quoted for a POSIX shell where needed."""
    return f"--set {shlex.quote(f'{setting}={_raw(v)}')}"


def _difference(key: str, made: Any, ours: Any, found: dict, expected: dict) -> tuple[Optional[str], Optional[str]]:
    """One line of the mismatch message (None: implied by another line) and the --set that restores the value it
    was made with (or None)."""
    setting = FIELDS[key]
    if key == "subset_seed" and (made is None or ours is None):  # a subset on one side only: its own line says so
        return None, _set(setting, made) if made is not None and expected.get("seed") != made else None
    if key == "n":
        return f"pool size: made on {made} samples, this run's pool has {ours}", None
    if key == "labels_sha256":
        return f"labels: differ (sha256 {str(made)[:12]}... vs {str(ours)[:12]}...)", None
    if key == "split":
        return f"split: made on {made}, this run uses {ours}", None
    if key in _PATHS:
        p_made, p_ours = found.get(_PATHS[key]), expected.get(_PATHS[key])
        if made is None:
            return f"{setting}: made without {setting}, this run has {setting}={p_ours}", _set(setting, None)
        fix = _set(setting, p_made) if p_made else None
        if ours is None:
            return f"{setting}: made with {setting}={p_made}, this run has none", fix
        return (f"{setting}: made with {setting}={p_made} (sha256 {made[:12]}...), this run's {setting}={p_ours} "
                f"holds other data (sha256 {ours[:12]}...)", fix)

    def desc(v: Any) -> str:
        if v is None:
            return "none (no seeded draw)" if key == "subset_seed" else "none"
        return f"{setting}={v}"

    return f"{setting}: made with {desc(made)}, this run has {desc(ours)}", _set(setting, made)


def check_fingerprint(expected: dict, found: Optional[dict], source: str) -> None:
    """Refuse (PoolMismatchError) a file whose pool fingerprint `found` differs from this run's `expected`,
    naming every differing field with both values and the settings that fix it. No fingerprint (a file written
    before they existed, or by hand): a warning that the pool cannot be checked."""
    if found is None:
        warnings.warn(f"{source} records no pool fingerprint (written by hand or by an older leanrobust): cannot "
                      "check that it was made on this run's training pool; make it again to have it checked",
                      stacklevel=2)
        return
    keys = [k for k in FIELDS if k in found and k in expected and found[k] != expected[k]]
    if not keys:
        return
    lines, fixes = zip(*(_difference(k, found[k], expected[k], found, expected) for k in keys))
    lines, fixes = [ln for ln in lines if ln], [f for f in fixes if f]
    if fixes:
        how = f"add {' '.join(fixes)} (the settings it was made with), or make it again on this run's pool"
    else:
        how = "the data settings agree but the data differ (files changed since?): make it again on this run's pool"
    raise PoolMismatchError(f"{source} was made on another training pool than this run's, so its indices would "
                            "pick other images:\n  - " + "\n  - ".join(lines) + f"\n{how}")


def held_out_fingerprint(data_cfg, seed: int) -> dict[str, Any]:
    """The settings that decide the held-out split (and, with val_seed null, the seed and subset that draw it)."""
    fp = {"dataset": data_cfg.dataset,
          "dataset_sha256": content_hash(data_cfg.path) if data_cfg.dataset == "npz" else None,
          "val_size": data_cfg.val_size, "val_seed": data_cfg.val_seed, "dataset_path": _abs(data_cfg.path)}
    if data_cfg.val_seed is None:
        fp.update(train_subset=data_cfg.train_subset, subset_seed=int(seed))
    return fp


def check_pool_source(data_cfg, seed: int) -> None:
    """A compressed pool (data.pool written by `compress --method dm`) records the pool it was condensed from:
    refuse it when that pool's dataset or held-out split differ from this run's (its images would come from
    another dataset, or from this run's validation images)."""
    path = Path(data_cfg.pool) if data_cfg.pool else None
    if path is None or not path.is_file():
        return
    try:
        with open(path, "rb") as f:  # our own handle: np.load leaks its own when the zip is corrupt
            z = np.load(f, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                return
            with z:
                source = read_fingerprint(z, path, SOURCE_KEY)
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: cannot read the pool npz ({type(e).__name__}: {e})") from None
    if source is None or source.get("pool_sha256"):  # a pool condensed from another pool file: nothing to compare
        return
    ours = held_out_fingerprint(data_cfg, seed)
    check_fingerprint(ours, {k: source.get(k) for k in ours}, f"data.pool {path}")


def run_fingerprint(cfg, pool) -> dict[str, Any]:
    """Check a compressed data.pool against this run's data (check_pool_source) and return the pool's
    fingerprint: the one call a command that builds a config's pool makes before it uses or writes indices."""
    check_pool_source(cfg.data, cfg.seed)
    return pool_fingerprint(cfg.data, cfg.seed, pool)


def train_hint(config: Optional[str | Path], out: str | Path, *, overrides=(), fingerprint: Optional[dict] = None,
               kind: str = "selection", sample_weighting: bool = False) -> str:
    """The complete `leanrobust train` command for a Selection (kind 'selection') or compressed pool ('pool')
    written to `out`: the config and --set overrides it was made with, the pool settings that were not default
    (data.train_subset, seed, data.val_size, data.val_seed), and data.weighting=sample for weighted coverings."""
    overrides = [overrides] if isinstance(overrides, str) else [str(o) for o in overrides or ()]
    key = "data.selection" if kind == "selection" else "data.pool"
    ours = {key, "data.weighting"} if kind == "selection" else {key}
    sets = [o for o in overrides if o.split("=", 1)[0].strip() not in ours]
    given = {o.split("=", 1)[0].strip() for o in sets}
    fp = fingerprint or {}
    fields = {"data.train_subset": "train_subset", "seed": "subset_seed", "data.val_size": "val_size",
              "data.val_seed": "val_seed"}
    if kind == "pool" and fp.get("val_seed", 0) is not None:  # a replacing pool ignores the subset and its seed
        fields = {"data.val_size": "val_size", "data.val_seed": "val_seed"}
    if fp.get("pool_sha256"):  # made on a replaced pool: these settings did not shape it
        fields = {}
    for setting, field in fields.items():
        if field in fp and setting not in given and fp[field] != _DEFAULTS[setting] and \
                (fp[field] is not None or setting == "data.val_seed"):
            sets.append(f"{setting}={_raw(fp[field])}")
    sets.append(f"{key}={out}")
    if sample_weighting and kind == "selection":
        sets.append("data.weighting=sample")
    return " ".join(["leanrobust train", shlex.quote(str(config)) if config else "CONFIG"]
                    + [f"--set {shlex.quote(s)}" for s in sets])
