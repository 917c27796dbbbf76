"""npz files (`image` uint8 NxHxWxC or NxHxW, `label`): read without pickles, large uncompressed ones
memory-mapped member by member, so pools larger than memory load in chunks."""
from __future__ import annotations

import math
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from .validate import DataError, DataNotFoundError, validate_arrays

MMAP_BYTES = 256 << 20  # memory-map uncompressed members of npz files larger than this


def seek_zip_member(f, path: Path, info: zipfile.ZipInfo) -> None:
    """Move the open file `f` to the first byte of a stored zip member's data (past its local header)."""
    f.seek(info.header_offset)
    local = f.read(30)
    if local[:4] != b"PK\x03\x04":
        raise DataError(f"{path}: corrupt zip local header for {info.filename}")
    n_name, n_extra = struct.unpack("<HH", local[26:30])
    f.seek(info.header_offset + 30 + n_name + n_extra)


def _memmap_member(path: Path, info: zipfile.ZipInfo):
    """Memory-map an uncompressed .npy member of a zip; None when that is not possible."""
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        seek_zip_member(f, path, info)
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read is None:
            return None
        shape, fortran, dtype = read(f)
        offset = f.tell()
    if dtype.hasobject:
        raise DataError(f"{path}: {info.filename} holds Python objects; not allowed")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def _read_npz(path: Path):
    if path.stat().st_size > MMAP_BYTES and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            infos = {i.filename[:-4]: i for i in zf.infolist() if i.filename.endswith(".npy")}
        if {"image", "label"} <= infos.keys():
            arrays = {k: _memmap_member(path, infos[k]) for k in ("image", "label")}
            if all(a is not None for a in arrays.values()):
                return arrays
    with open(path, "rb") as f:  # our own handle: np.load leaks its own when the zip is corrupt
        z = np.load(f, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: not an .npz archive (expected keys 'image' and 'label')")
        if not {"image", "label"} <= set(z.files):
            raise DataError(f"{path}: expected keys 'image' and 'label', found {sorted(z.files)}")
        return {"image": z["image"], "label": z["label"]}


def load_npz(path, num_classes: int | None = None, *, limit: int | None = None):
    """Load an npz with `image` (uint8 NxHxWxC or NxHxW) and `label` as (uint8 (N,C,H,W), int64 (N,)) tensors.

    No pickles; large uncompressed files are memory-mapped and converted in chunks. `limit` keeps the first
    `limit` samples. Labels are checked against `num_classes` when given."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"{path}: no such file")
    try:
        arrays = _read_npz(path)
    except DataError:
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError, struct.error, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated npz ({type(e).__name__}: {e})") from e
    images, labels = arrays["image"], arrays["label"]
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    if np.issubdtype(images.dtype, np.floating):
        if not np.isfinite(images).all():
            raise DataError(f"{path}: 'image' has non-finite values (NaN or inf)")
        hint = "(x * 255).round()" if images.size == 0 or images.max() <= 1 else "x.round()"
        raise DataError(f"{path}: 'image' is {images.dtype}; expected uint8: convert with {hint}.astype(np.uint8)")
    if images.dtype != np.uint8:
        raise DataError(f"{path}: 'image' must be uint8, got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(f"{path}: 'image' must be NxHxWxC (C = 1 or 3) or NxHxW, got shape {images.shape}")
    validate_arrays(images.transpose(0, 3, 1, 2), labels, num_classes, path)
    out = torch.empty((images.shape[0], images.shape[3], *images.shape[1:3]), dtype=torch.uint8)
    step = max(1, (64 << 20) // max(1, math.prod(images.shape[1:])))
    for s in range(0, len(images), step):
        out[s:s + step] = torch.from_numpy(np.array(images[s:s + step])).permute(0, 3, 1, 2)
    return out, torch.from_numpy(np.asarray(labels, dtype=np.int64).copy())
