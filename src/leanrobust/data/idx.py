"""IDX files (Fashion-MNIST, MNIST): the bounded reader and where a split's two files are found in a folder."""
from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from .validate import DataError, to_torch, validate_labels

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_MAX_BYTES = 1 << 30  # largest IDX payload read (Fashion-MNIST's training images: 47 MB)


def read_idx(path) -> np.ndarray:
    """Parse an IDX file (gzip-compressed when named *.gz): magic, dtype code, dims, then data.
    The header is read first and only the bytes it announces (at most IDX_MAX_BYTES) are decompressed,
    so a gzip bomb is refused without inflating it."""
    path = Path(path)
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[0] or magic[1] or magic[2] not in _IDX_DTYPES:
                raise DataError(f"{path}: not an IDX file (magic number {magic.hex() or 'missing'})")
            ndim, header = magic[3], 4 + 4 * magic[3]
            raw_dims = f.read(4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise DataError(f"{path}: truncated IDX header ({4 + len(raw_dims)} of {header} bytes)")
            dims = struct.unpack(f">{ndim}I", raw_dims)
            dtype = np.dtype(_IDX_DTYPES[magic[2]])
            size = math.prod(dims) * dtype.itemsize
            if size > IDX_MAX_BYTES:
                raise DataError(f"{path}: IDX header announces shape {dims} ({size:,} bytes), more than the "
                                f"{IDX_MAX_BYTES:,} bytes leanrobust reads from one IDX file; the file is damaged "
                                "or not a dataset file")
            data = f.read(size + 1)  # one more byte reveals trailing data without reading all of it
    except DataError:
        raise
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read IDX file ({type(e).__name__}: {e})") from e
    if len(data) != size:
        what = "truncated" if len(data) < size else "has trailing bytes"
        found = f"{header + len(data)}" if len(data) < size else "more"
        raise DataError(f"{path}: IDX file {what}: shape {dims} needs {header + size} bytes, found {found}")
    return np.frombuffer(data, dtype).reshape(dims).astype(dtype.newbyteorder("="))


IDX_STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def idx_file(d: Path, stem: str) -> Path | None:
    """The file of `stem` in folder d (gzipped, plain, or with '.idx' for '-idx'); None when absent."""
    for cand in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (d / cand).is_file():
            return d / cand
    return None


def locate_idx(key, split, d: Path):
    """The split's (images, labels) files in folder d, or None (same signature as cifar.locate_cifar)."""
    files = [idx_file(d, s) for s in IDX_STEMS[split]]
    return files if all(files) else None


def load_idx(key, split, files, num_classes: int):
    """(images uint8 (N,1,H,W), labels int64) from the two files `locate_idx` found."""
    img_path, lbl_path = files
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3:
        raise DataError(f"{img_path}: expected (N, H, W) images, got shape {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{lbl_path}: expected (N,) labels, got shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{img_path}: {len(images)} images but {lbl_path} holds {len(labels)} labels")
    validate_labels(labels, num_classes, lbl_path)  # a bad label names the label file
    return to_torch(images[:, None], labels, num_classes, img_path)
