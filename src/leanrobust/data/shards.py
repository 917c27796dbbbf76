"""Image sets larger than memory: npz / npy shards whose rows are read batch by batch, never loaded whole.

A generated pool (Wang et al. 2023 train on 1M-20M images) can be one large uncompressed npz (what
`synth sample` writes), a folder of npz shards (its `OUT.parts/`) or a folder of raw `.npy` pairs
(`NAME.image.npy` uint8 NxHxWxC or NxHxW, `NAME.label.npy`). Only labels are loaded. Image rows are read
at their file offsets (the uint8 payload is raw in an uncompressed npz or npy) with positional reads, not
through a memory map: on Linux 6.x a page fault maps a whole large page-cache folio, so random batches from
a mapped file put all of it in the process's RSS within an epoch. Reads go through the page cache, which
ranks on one machine share."""
from __future__ import annotations

import os
import resource
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from .npz import MMAP_BYTES, load_npz, seek_zip_member
from .validate import DataError, DataNotFoundError, validate_labels

class _Shard:
    """One image array in a file: path, payload offset, shape (N, H, W, C)."""

    def __init__(self, path: Path, offset: int, shape: tuple):
        self.path, self.offset, self.shape = path, offset, shape
        self.row = int(np.prod(shape[1:]))

    def read(self, f, local: np.ndarray, out: np.ndarray) -> None:
        """Rows `local` (sorted) into out[(k, H, W, C)]: one positional read per run of consecutive rows."""
        breaks = np.flatnonzero(np.diff(local) != 1) + 1
        flat = out.reshape(len(local), self.row)
        for a, b in zip(np.concatenate([[0], breaks]), np.concatenate([breaks, [len(local)]])):
            view, pos = memoryview(flat[a:b]).cast("B"), self.offset + int(local[a]) * self.row
            while len(view):
                got = os.preadv(f, [view], pos) if hasattr(os, "preadv") else _pread(f, view, pos)
                if not got:
                    raise DataError(f"{self.path}: truncated while reading images")
                view, pos = view[got:], pos + got


def _pread(fd: int, view: memoryview, pos: int) -> int:
    data = os.pread(fd, len(view), pos)
    view[:len(data)] = data
    return len(data)


def _npy_payload(f, path: Path, what: str) -> tuple[int, tuple]:
    """Offset and shape of a uint8 C-order .npy payload starting at f's position."""
    try:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}[version]
        shape, fortran, dtype = read(f)
    except (ValueError, KeyError, EOFError) as e:
        raise DataError(f"{path}: {what} is not a readable .npy array ({e})") from None
    if dtype != np.uint8:
        raise DataError(f"{path}: {what} must be uint8, got {dtype}")
    if fortran:
        raise DataError(f"{path}: {what} is Fortran-ordered; save it C-ordered (np.ascontiguousarray)")
    return f.tell(), tuple(shape)


def _npz_image(path: Path) -> tuple[int, tuple]:
    """Payload offset and shape of the stored (uncompressed) 'image' member of an npz."""
    with zipfile.ZipFile(path) as zf:
        infos = {i.filename: i for i in zf.infolist()}
    if "image.npy" not in infos or "label.npy" not in infos:
        raise DataError(f"{path}: expected keys 'image' and 'label', found {sorted(k[:-4] for k in infos)}")
    info = infos["image.npy"]
    if info.compress_type != zipfile.ZIP_STORED:
        raise DataError(f"{path}: 'image' is compressed and cannot be read per batch; write shards with np.savez "
                        "(not savez_compressed) or as NAME.image.npy / NAME.label.npy")
    with open(path, "rb") as f:
        seek_zip_member(f, path, info)
        return _npy_payload(f, path, "'image'")


def _open_shard(path: Path, num_classes: int | None) -> tuple[_Shard, torch.Tensor]:
    """A shard's images (N, H, W, C), left in the file, and its labels (int64, loaded)."""
    try:
        if path.suffix == ".npz":
            offset, shape = _npz_image(path)
            with np.load(path, allow_pickle=False) as z:
                labels = z["label"]
        else:
            with open(path, "rb") as f:
                offset, shape = _npy_payload(f, path, "the image array")
            labels = np.load(path.with_name(path.name[:-len(".image.npy")] + ".label.npy"), allow_pickle=False)
    except DataError:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, struct.error, EOFError) as e:
        raise DataError(f"{path}: unreadable shard ({type(e).__name__}: {e})") from None
    if len(shape) == 3:
        shape = (*shape, 1)
    if len(shape) != 4 or shape[-1] not in (1, 3):
        raise DataError(f"{path}: images must be NxHxWxC (C = 1 or 3) or NxHxW, got shape {shape}")
    if path.stat().st_size < offset + int(np.prod(shape)):
        raise DataError(f"{path}: truncated: the image array needs {offset + int(np.prod(shape)):,} bytes")
    validate_labels(labels, num_classes, path)
    if len(labels) != shape[0]:
        raise DataError(f"{path}: {shape[0]} images but {len(labels)} labels")
    return _Shard(path, offset, shape), torch.from_numpy(np.asarray(labels, dtype=np.int64).copy())


def shard_files(folder: Path) -> list[Path]:
    """The shards of a folder in name order: *.npz, or *.image.npy (each with its *.label.npy)."""
    npz = sorted(folder.glob("*.npz"))
    npy = sorted(folder.glob("*.image.npy"))
    if npz and npy:
        raise DataError(f"{folder}: holds both .npz and .image.npy shards; keep one kind")
    if not (npz or npy):
        raise DataError(f"{folder}: no shards (*.npz with 'image' and 'label', or NAME.image.npy + NAME.label.npy)")
    return npz or npy


class ShardImages:
    """uint8 images (N, C, H, W) held as in-memory tensors and/or shard files, read on indexing.

    Indexing (int, slice, index or bool tensor/array) returns a uint8 tensor on `device`, reading only
    those rows; `to(device)` only changes where batches land (shards stay in their files); `window(a, b)`
    is a lazy view. Resident memory holds the batch read, not the pool."""

    dtype = torch.uint8
    ndim = 4

    def __init__(self, parts: list, device="cpu", start: int = 0, stop: int | None = None):
        self.parts = parts  # torch.Tensor (N, C, H, W) or _Shard (N, H, W, C)
        sizes = [p.shape[0] for p in parts]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        hw = {(p.shape[1:] if isinstance(p, torch.Tensor) else (p.shape[3], *p.shape[1:3])) for p in parts}
        if len(hw) != 1:
            raise DataError(f"image shards differ in shape (C, H, W): {sorted(tuple(s) for s in hw)}")
        self._chw = tuple(hw.pop())
        self.device = torch.device(device)
        self.start, self.stop = start, int(self.offsets[-1]) if stop is None else stop
        self._open: OrderedDict = OrderedDict()  # shard index -> file descriptor, least recently used first
        self._cap = max(16, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 4)

    def __del__(self):
        for fd in getattr(self, "_open", {}).values():
            os.close(fd)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.stop - self.start, *self._chw))

    def __len__(self) -> int:
        return self.stop - self.start

    def to(self, device) -> "ShardImages":
        parts = [p.to(device) if isinstance(p, torch.Tensor) else p for p in self.parts]
        return ShardImages(parts, device, self.start, self.stop)

    def window(self, a: int, b: int) -> "ShardImages":
        """Samples [a, b) as a lazy view (nothing is read)."""
        a, b = max(0, min(a, len(self))), max(0, min(b, len(self)))
        return ShardImages(self.parts, self.device, self.start + a, self.start + max(a, b))

    @staticmethod
    def concat(a, b) -> "ShardImages":
        """a followed by b (each a tensor or ShardImages); batches land on a's device."""
        def parts(x):
            if isinstance(x, torch.Tensor):
                return [x]
            return x.parts if (x.start, x.stop) == (0, int(x.offsets[-1])) else [x[0:len(x)]]
        return ShardImages(parts(a) + parts(b), a.device)

    def __getitem__(self, key) -> torch.Tensor:
        n = len(self)
        if isinstance(key, (int, np.integer)):
            k = int(key) + (n if key < 0 else 0)
            if not 0 <= k < n:
                raise IndexError(f"index {key} out of range for {n} images")
            return self._rows(np.array([k]))[0]
        if isinstance(key, slice):
            a, b, step = key.indices(n)
            return self._rows(np.arange(a, b, step) if step != 1 else None, a, b)
        idx = key.detach().cpu().numpy() if isinstance(key, torch.Tensor) else np.asarray(key)
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise IndexError(f"boolean mask of shape {idx.shape} for {n} images")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for {n} images")
        return self._rows(np.where(idx < 0, idx + n, idx))

    def _rows(self, idx: np.ndarray | None, a: int = 0, b: int = 0) -> torch.Tensor:
        """Rows idx (or the range [a, b)) of this view, in that order, as one tensor on self.device."""
        g = np.arange(a, b, dtype=np.int64) if idx is None else idx
        g = g + self.start
        out = torch.empty((len(g), *self._chw), dtype=torch.uint8, device=self.device)
        seg = np.searchsorted(self.offsets, g, side="right") - 1
        for s in np.unique(seg):
            pos = np.flatnonzero(seg == s)
            local = g[pos] - self.offsets[s]
            part = self.parts[s]
            where = torch.from_numpy(pos).to(self.device)
            if isinstance(part, torch.Tensor):
                out[where] = part[torch.from_numpy(local).to(part.device)].to(self.device)
            else:
                out[where] = self._read(s, local).to(self.device)
        return out

    def _read(self, s: int, local: np.ndarray) -> torch.Tensor:
        """Rows `local` of shard s (read in file order), as uint8 (k, C, H, W) on the CPU."""
        if s in self._open:
            self._open.move_to_end(s)
        else:
            self._open[s] = os.open(self.parts[s].path, os.O_RDONLY)
            if len(self._open) > self._cap:
                os.close(self._open.popitem(last=False)[1])
        shard = self.parts[s]
        order = np.argsort(local, kind="stable")
        rows = np.empty((len(local), *shard.shape[1:]), np.uint8)
        shard.read(self._open[s], local[order], rows)
        out = np.empty_like(rows)
        out[order] = rows
        return torch.from_numpy(out).permute(0, 3, 1, 2)


def open_images(path, num_classes: int | None = None):
    """Images and labels of an npz file or a shard folder: (uint8 (N,C,H,W) tensor or ShardImages, int64 labels).

    A folder, or an uncompressed npz larger than MMAP_BYTES, is read per batch; a smaller file is loaded (load_npz)."""
    path = Path(path)
    if path.is_dir():
        shards, labels = zip(*(_open_shard(p, num_classes) for p in shard_files(path)))
        return ShardImages(list(shards)), torch.cat(labels)
    if not path.is_file():
        raise DataNotFoundError(f"{path}: no such file or folder")
    if path.stat().st_size > MMAP_BYTES and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            stored = all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist() if i.filename == "image.npy")
        if stored:
            shard, labels = _open_shard(path, num_classes)
            return ShardImages([shard]), labels
    return load_npz(path, num_classes)
