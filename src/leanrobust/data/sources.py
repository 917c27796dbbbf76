"""Named datasets: what each is (DatasetInfo), where its files are searched for, their checked download, and
`load_dataset`, which hands a found split to its format's reader (idx.py, cifar.py; npz files: npz.py).

Every reader validates what it reads and raises `DataError` naming the file and the problem."""
from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from .cifar import CIFAR, load_cifar, locate_cifar
from .idx import IDX_STEMS, idx_file, load_idx, locate_idx, read_idx
from .npz import load_npz
from .validate import DataError, DataNotFoundError, validate_arrays, validate_labels

# also importable from here, as before the formats moved out: read_idx, load_npz, the errors and checks
__all__ = ["DataError", "DataNotFoundError", "DatasetInfo", "cache_dir", "dataset_info", "load_dataset", "load_images",
           "load_npz", "read_idx", "search_dirs", "validate_arrays", "validate_labels"]
_CIFAR = CIFAR  # the table's name before it moved to cifar.py


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
    if key in CIFAR:
        names = [CIFAR[key][0]]
    else:
        names = [s + ".gz" for s in IDX_STEMS[split]]
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
    if key in CIFAR:
        return f"download {CIFAR[key][0]} from {_MIRRORS[key][0]} and put it (or its extracted folder) in {env}"
    files = ", ".join(s + ".gz" for pair in IDX_STEMS.values() for s in pair)
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
    locate, read = (locate_cifar, load_cifar) if key in CIFAR else (locate_idx, load_idx)

    def load(key, split, found):
        return read(key, split, found, _INFO[key].num_classes)

    dirs = search_dirs(key, root)
    for d in dirs:
        found = locate(key, split, d)
        if found is not None:
            return load(key, split, found)
        if root is not None and key not in CIFAR:
            partial = [s for s in IDX_STEMS[split] if idx_file(d, s) is not None]
            if partial:  # one of the split's two files: never complete it from another folder
                missing = [s + ".gz" for s in IDX_STEMS[split] if s not in partial]
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


def load_images(source: str | Path, split: str = "train", *, num_classes: int | None = None, root=None,
                download: bool = True):
    """(uint8 (N,C,H,W), int64 labels, num_classes) from a dataset name or an .npz file (its labels give
    num_classes when it is not given: max label + 1)."""
    if str(source).endswith(".npz"):
        x, y = load_npz(source, num_classes)
        return x, y, num_classes or (int(y.max()) + 1 if len(y) else 0)
    x, y = load_dataset(str(source), split, root=root, download=download)
    return x, y, dataset_info(str(source)).num_classes
