"""Dataset sources: IDX (Fashion-MNIST, MNIST), CIFAR python pickles and npz files -> uint8 (N,C,H,W) tensors.

Every reader validates what it reads and raises `DataError` naming the file and the problem."""
from __future__ import annotations

import builtins
import gzip
import hashlib
import http.client
import importlib
import io
import math
import os
import pickle
import struct
import tarfile
import tempfile
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import platformdirs
import torch


class DataError(ValueError):
    """A data file is malformed or holds values other than expected; the message names the file."""


class DataNotFoundError(DataError):
    """The dataset is in none of the searched places and could not be downloaded."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    channels: int
    size: int
    mean: tuple
    std: tuple
    flip: bool
    crop_pad: int


_INFO = {
    "fashion_mnist": DatasetInfo("fashion_mnist", 10, 1, 28, (0.2860,), (0.3530,), False, 2),
    "mnist": DatasetInfo("mnist", 10, 1, 28, (0.1307,), (0.3081,), False, 2),
    "cifar10": DatasetInfo("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True, 4),
    "cifar100": DatasetInfo("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True, 4),
}
_ALIASES = {"fashionmnist": "fashion_mnist", "cifar_10": "cifar10", "cifar_100": "cifar100"}


def _canonical(name: str) -> str:
    key = str(name).lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in _INFO:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(_INFO)}")
    return key


def dataset_info(name: str) -> DatasetInfo:
    """Classes, shape, normalisation and default augmentation of a named dataset."""
    return _INFO[_canonical(name)]


# ----------------------------------------------------------------------------- validation
def _is_integer(a) -> bool:
    if isinstance(a, torch.Tensor):
        return not (a.is_floating_point() or a.is_complex() or a.dtype == torch.bool)
    return np.issubdtype(a.dtype, np.integer)


def validate_arrays(images, labels, num_classes: int | None, source) -> None:
    """Check uint8 images (N,C,H,W) and integer labels (N,) in [0, num_classes) (numpy or torch);
    raise `DataError` whose message starts with `source` (a file name, or a description)."""
    if str(images.dtype) not in ("uint8", "torch.uint8"):
        raise DataError(f"{source}: images must be uint8, got {images.dtype}")
    if images.ndim != 4 or min(images.shape[1:]) < 1:
        raise DataError(f"{source}: images must be (N, C, H, W), got shape {tuple(images.shape)}")
    validate_labels(labels, num_classes, source)
    if len(images) != len(labels):
        raise DataError(f"{source}: {len(images)} images but {len(labels)} labels")


def validate_labels(labels, num_classes: int | None, source) -> None:
    """Check integer labels (N,) in [0, num_classes); raise `DataError` naming `source`."""
    if labels.ndim != 1:
        raise DataError(f"{source}: labels must be 1-D, got shape {tuple(labels.shape)}")
    if len(labels) and not _is_integer(labels):
        raise DataError(f"{source}: labels must be integers, got {labels.dtype}")
    if len(labels):
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0:
            raise DataError(f"{source}: negative label {lo}")
        if num_classes is not None and hi >= num_classes:
            raise DataError(f"{source}: label {hi} out of range for {num_classes} classes (expected 0..{num_classes - 1})")


def _to_torch(images: np.ndarray, labels, num_classes, source):
    validate_arrays(images, np.asarray(labels), num_classes, source)
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(np.asarray(labels, dtype=np.int64).copy())


# ----------------------------------------------------------------------------- IDX
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


_IDX_STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _idx_file(d: Path, stem: str) -> Path | None:
    for cand in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (d / cand).is_file():
            return d / cand
    return None


def _locate_idx(key, split, d: Path):
    files = [_idx_file(d, s) for s in _IDX_STEMS[split]]
    return files if all(files) else None


def _load_idx(key, split, files):
    img_path, lbl_path = files
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3:
        raise DataError(f"{img_path}: expected (N, H, W) images, got shape {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{lbl_path}: expected (N,) labels, got shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{img_path}: {len(images)} images but {lbl_path} holds {len(labels)} labels")
    validate_labels(labels, _INFO[key].num_classes, lbl_path)  # a bad label names the label file
    return _to_torch(images[:, None], labels, _INFO[key].num_classes, img_path)


# ----------------------------------------------------------------------------- CIFAR
_CIFAR = {  # tarball, folder inside it, train members, test members, label key
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


def _locate_cifar(key, split, d: Path):
    tar_name, folder, train, test, _ = _CIFAR[key]
    for cand in (d / folder, d):
        if (cand / (train if split == "train" else test)[0]).is_file():
            return cand
    return d / tar_name if (d / tar_name).is_file() else None


def _load_cifar(key, split, src: Path):
    tar_name, folder, train, test, label_key = _CIFAR[key]
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
        validate_labels(batch_labels, _INFO[key].num_classes, where)
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(batch_labels)
    return _to_torch(np.concatenate(images), np.concatenate(labels), _INFO[key].num_classes, src)


# ----------------------------------------------------------------------------- search and download
SYSTEM_DATA_DIR = Path("/usr/share/datasets")  # Debian's dataset-* packages install here
DOWNLOAD_TIMEOUT = 30.0
_MIRRORS = {
    "fashion_mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/",),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/",),
}
_MD5 = {
    "fashion_mnist": {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                      "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                      "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                      "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
    "mnist": {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
              "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
              "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
              "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"},
    "cifar10": {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
    "cifar100": {"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"},
}


def cache_dir(name: str) -> Path:
    """Per-user download cache for a dataset (platformdirs; honours XDG_CACHE_HOME)."""
    return Path(platformdirs.user_cache_dir("leanrobust")) / _canonical(name)


def search_dirs(name: str, root=None) -> list[Path]:
    """Directories searched, in order: $LEANROBUST_DATA/<name>, cache, system; with `root` only root and
    root/<name> (a folder the user names is where the data must be, never silently somewhere else)."""
    key = _canonical(name)
    if root is not None:
        return [Path(root), Path(root) / key]
    dirs = []
    if os.environ.get("LEANROBUST_DATA"):
        dirs.append(Path(os.environ["LEANROBUST_DATA"]) / key)
    return dirs + [cache_dir(key), SYSTEM_DATA_DIR / key.replace("_", "-")]


def _fetch(url: str, dest: Path, md5: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.md5(usedforsecurity=False)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as r:
            while chunk := r.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != md5:
            raise DataError(f"checksum mismatch (md5 {digest.hexdigest()}, expected {md5})")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _download(key: str, dest_dir: Path, split: str) -> None:
    if key in _CIFAR:
        names = [_CIFAR[key][0]]
    else:
        names = [s + ".gz" for s in _IDX_STEMS[split]]
    for fname in names:
        errors = []
        for base in _MIRRORS[key]:
            try:
                _fetch(base + fname, dest_dir / fname, _MD5[key][fname])
                break
            except (OSError, DataError, http.client.HTTPException, ValueError) as e:
                errors.append(f"{base}{fname}: {type(e).__name__}: {e}")
        else:
            raise DataNotFoundError("; ".join(errors))


def _how_to_get(key: str) -> str:
    env = f"$LEANROBUST_DATA/{key}"
    if key in _CIFAR:
        return f"download {_CIFAR[key][0]} from {_MIRRORS[key][0]} and put it (or its extracted folder) in {env}"
    files = ", ".join(s + ".gz" for pair in _IDX_STEMS.values() for s in pair)
    apt = "run `apt-get install dataset-fashion-mnist`, or " if key == "fashion_mnist" else ""
    return f"{apt}put the 4 files ({files}) from {_MIRRORS[key][0]} in {env}"


def load_dataset(name: str, split: str = "train", root=None, download: bool = True):
    """Load a named dataset split as (images uint8 (N,C,H,W), labels int64 (N,)) torch tensors.

    Searches `search_dirs(name, root)` (with a root, only root); if absent and `download`, fetches it with an
    md5 check into root, or else `cache_dir(name)`; otherwise raises `DataNotFoundError` saying where it looked
    and how to get the data. A root holding one of a split's two IDX files is an error naming the missing one."""
    key = _canonical(name)
    if split not in ("train", "test"):
        raise DataError(f"{name}: split must be 'train' or 'test', got {split!r}")
    locate, load = (_locate_cifar, _load_cifar) if key in _CIFAR else (_locate_idx, _load_idx)
    dirs = search_dirs(key, root)
    for d in dirs:
        found = locate(key, split, d)
        if found is not None:
            return load(key, split, found)
        if root is not None and key not in _CIFAR:
            partial = [s for s in _IDX_STEMS[split] if _idx_file(d, s) is not None]
            if partial:  # one of the split's two files: never complete it from another folder
                missing = [s + ".gz" for s in _IDX_STEMS[split] if s not in partial]
                raise DataNotFoundError(f"{d} holds {partial[0]} but not {', '.join(missing)} ({key} {split}); "
                                        f"data.root names the one folder read: put the missing file there")
    searched = ", ".join(map(str, dirs))
    dest = Path(root) if root is not None else cache_dir(key)
    if not download:
        reason = "download=False"
    else:
        try:
            _download(key, dest, split)
            return load(key, split, locate(key, split, dest))
        except DataNotFoundError as e:
            reason = f"download failed: {e}"
    where = f"{root} (data.root: only that folder is read)" if root is not None else searched
    raise DataNotFoundError(f"{key} ({split}) not found; searched {where}; {reason}. To get it: {_how_to_get(key)}"
                            + (f", or put the files in {root}" if root is not None else "") + ".")


# ----------------------------------------------------------------------------- npz
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
