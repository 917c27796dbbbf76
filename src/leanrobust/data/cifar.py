"""CIFAR-10/100 in the python format (the tarball or its extracted folder), read through an unpickler that
rebuilds numpy arrays and plain containers only, so a hostile pickle cannot run code."""
from __future__ import annotations

import builtins
import importlib
import io
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from .validate import DataError, to_torch, validate_labels

CIFAR = {  # tarball, folder inside it, train members, test members, label key
    "cifar10": ("cifar-10-python.tar.gz", "cifar-10-batches-py",
                [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
    "cifar100": ("cifar-100-python.tar.gz", "cifar-100-python", ["train"], ["test"], b"fine_labels"),
}
_PICKLE_GLOBALS = {  # what numpy arrays and dtypes need to be rebuilt; nothing else
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes bytes at protocol 2
}
_PICKLE_BUILTINS = {"bytearray", "set", "frozenset", "complex"}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays, dtypes and plain containers."""

    def find_class(self, module, name):
        if (module, name) in _PICKLE_GLOBALS:
            for mod in dict.fromkeys((module.replace("numpy.core.", "numpy._core."), module)):
                try:
                    return getattr(importlib.import_module(mod), name)
                except (ImportError, AttributeError):
                    continue
        if module in ("builtins", "__builtin__") and name in _PICKLE_BUILTINS:
            return getattr(builtins, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


def _unpickle(blob: bytes, source: str):
    try:
        return _RestrictedUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as e:  # anything a hostile or corrupt pickle can raise
        raise DataError(f"{source}: refused or corrupt pickle ({type(e).__name__}: {e})") from e


def locate_cifar(key, split, d: Path):
    """The extracted batch folder in (or at) d, else the tarball in d, else None."""
    tar_name, folder, train, test, _ = CIFAR[key]
    for cand in (d / folder, d):
        if (cand / (train if split == "train" else test)[0]).is_file():
            return cand
    return d / tar_name if (d / tar_name).is_file() else None


def load_cifar(key, split, src: Path, num_classes: int):
    """(images uint8 (N,3,32,32), labels int64) of a split from what `locate_cifar` found."""
    tar_name, folder, train, test, label_key = CIFAR[key]
    members, blobs = (train if split == "train" else test), []
    if src.is_dir():
        for m in members:
            if not (src / m).is_file():
                raise DataError(f"{src / m}: missing CIFAR batch file")
            blobs.append((str(src / m), (src / m).read_bytes()))
    else:
        try:
            with tarfile.open(src, "r:*") as tar:
                names = set(tar.getnames())
                for m in members:
                    f = tar.extractfile(f"{folder}/{m}") if f"{folder}/{m}" in names else None
                    if f is None:
                        raise DataError(f"{src}: tarball has no member {folder}/{m}")
                    blobs.append((f"{src}:{folder}/{m}", f.read()))
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise DataError(f"{src}: corrupt or truncated tarball ({type(e).__name__}: {e})") from e
    images, labels = [], []
    for where, blob in blobs:
        d = _unpickle(blob, where)
        if not isinstance(d, dict) or b"data" not in d or label_key not in d:
            found = list(d) if isinstance(d, dict) else type(d).__name__
            raise DataError(f"{where}: expected a dict with keys b'data' and {label_key!r}, found {found}")
        data = np.asarray(d[b"data"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DataError(f"{where}: b'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}")
        batch_labels = np.asarray(d[label_key])
        if batch_labels.ndim == 0 or len(batch_labels) != len(data):  # pair images and labels per batch file
            raise DataError(f"{where}: {len(data)} images but {batch_labels.size} labels")
        validate_labels(batch_labels, num_classes, where)
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(batch_labels)
    return to_torch(np.concatenate(images), np.concatenate(labels), num_classes, src)
