"""Safe persistence: weights in safetensors, checkpoints loaded with weights_only, resumable sharded npz
writing, every file written atomically (temp file + rename) so an interruption loses nothing."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm


_UMASK = os.umask(0)
os.umask(_UMASK)


class WeightsError(ValueError):
    """A weights or checkpoint file that is missing, corrupt, unsafe or does not fit the model."""


def atomic_write(path: str | Path, write) -> Path:
    """Call write(tmp_path), fsync it, rename onto path and fsync the directory: readers never see a
    partial file, and a checkpoint survives a power loss, not only a killed process."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


# the temp file atomic_write makes next to `name`: tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp")
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp$")


def clean_orphans(directory: str | Path, names) -> list[Path]:
    """Remove the temp files atomic_write leaves next to any of `names` in `directory` when its process is
    killed mid-write (`.checkpoint.pt.ab12cd_9.tmp`). Call it only while holding the directory's RunLock:
    a live writer's temp file looks the same. Returns the files removed."""
    directory, names, removed = Path(directory), set(names), []
    if not directory.is_dir():
        return removed
    for p in directory.iterdir():
        m = _TEMP_RE.match(p.name)
        if m and m.group("name") in names and p.is_file() and not p.is_symlink():
            try:
                p.unlink()
                removed.append(p)
            except FileNotFoundError:
                pass
    return removed


class RunLockedError(RuntimeError):
    """Another process holds the lock of a run directory."""


class RunLock:
    """An advisory lock (fcntl.flock) on `directory/.lock`, so that two processes never write one run
    directory. The OS releases it when the process ends, however it ends (a crash, SIGKILL): a stale lock
    file is harmless, only a live holder blocks. The file records the holder's pid and host for the error
    message. Where flock is unavailable (Windows, some network file systems) the lock is skipped."""

    NAME = ".lock"

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.path = self.directory / self.NAME
        self._fd: int | None = None

    def _holder(self) -> str:
        for _ in range(20):  # the holder writes its pid just after taking the lock
            try:
                info = json.loads(self.path.read_text())
                return f"pid {int(info['pid'])} on host {info['host']}, since {info.get('since', '?')}"
            except (OSError, ValueError, KeyError, TypeError):
                time.sleep(0.01)
        return "a process that did not record its pid"

    def acquire(self) -> "RunLock":
        try:
            import fcntl  # optional: POSIX only
        except ImportError:  # Windows: no advisory locks here
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(f"{self.directory} is in use: another leanrobust process ({self._holder()}) is "
                                 f"training into it. Wait for that process to end (or stop it), or choose another "
                                 f"--out; two processes in one run directory would mix their checkpoints and "
                                 f"metrics") from None
        except OSError:  # a file system without flock support: run unlocked, as before
            os.close(fd)
            return self
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Close the file, which drops the lock (the file stays: removing it could race a new holder)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def truncate_jsonl(path: str | Path, key: str, last: int) -> None:
    """Drop the rows of a metrics log whose `key` exceeds `last`: rows written after the checkpoint a
    run resumes from (it retrains those epochs or steps and writes them again)."""
    path = Path(path)
    if not path.exists():
        return
    lines = path.read_text(errors="replace").splitlines()

    def kept(line: str) -> bool:
        try:
            return json.loads(line).get(key, 0) <= last
        except (ValueError, AttributeError):  # a torn line from the write a crash interrupted
            return False

    keep = [ln for ln in lines if ln.strip() and kept(ln)]
    if len(keep) != len(lines):
        write_text(path, "".join(ln + "\n" for ln in keep))


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _cpu_state(model_or_state: nn.Module | dict) -> dict[str, torch.Tensor]:
    sd = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def _canonical_header(path: Path) -> None:
    """Rewrite a safetensors header with its metadata keys sorted: safetensors writes them from a hash
    map, in an order that changes between processes, so two identical runs gave different file hashes."""
    with open(path, "rb+") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        if "__metadata__" in header:
            header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        new = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        new += b" " * (-len(new) % 8)
        if len(new) <= n:  # the same keys in another order: same length, rewritten in place
            f.seek(8)
            f.write(new + b" " * (n - len(new)))
            return
        f.seek(8 + n)
        data = f.read()
        f.seek(0)
        f.write(len(new).to_bytes(8, "little") + new + data)
        f.truncate()


def save_weights(path: str | Path, model_or_state: nn.Module | dict, metadata: dict[str, str] | None = None) -> Path:
    """Write weights (and string metadata) as safetensors, atomically and byte-for-byte reproducibly."""
    state = _cpu_state(model_or_state)

    def write(p: Path) -> None:
        try:
            save_file(state, str(p), metadata=metadata)
        except SafetensorError as e:  # e.g. a full disk: safetensors reports it as its own error type
            raise OSError(f"{path}: cannot write the weights file ({e}); is the disk full?") from None
        _canonical_header(p)

    return atomic_write(path, write)


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; anything else (a pickle, a truncated file) is refused."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: not a valid safetensors weights file ({e}); "
                           "leanrobust never unpickles weights") from None


def read_metadata(path: str | Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: not a valid safetensors weights file ({e})") from None


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Tensors, numbers, strings, lists and dicts only, so weights_only loading reads it back."""
    return atomic_write(path, lambda p: torch.save(state, p))


def _torch_detail(message: str) -> str:
    """What went wrong in a torch.load error, without torch's advice to retry with weights_only=False
    (which would execute whatever the file holds)."""
    skip = ("weights_only", "pytorch 2.6", "file an issue", "check the documentation", "trusted source")
    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
    kept = [ln for ln in lines if not any(k in ln.lower() for k in skip)]
    return "; ".join(kept)[:300] or "not a checkpoint torch can read safely"


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by save_checkpoint: read with weights_only=True, so it never runs code."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"{path}: checkpoint does not exist") from None
    except Exception as e:  # torch raises UnpicklingError/RuntimeError for unsafe or corrupt files
        raise WeightsError(f"{path}: unreadable or unsafe checkpoint, refused ({type(e).__name__}: "
                           f"{_torch_detail(e)}); leanrobust reads only tensors, numbers, strings, lists and "
                           "dicts from a checkpoint. If it was written by leanrobust it is damaged: start the run "
                           "again in a new directory") from None
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: not a leanrobust checkpoint (holds a {type(state).__name__}, expected a dict)")
    return state


# ----------------------------------------------------------------------------- sharded npz files
def write_npz(path: str | Path, /, **arrays) -> Path:
    """np.savez of `arrays` (uncompressed) to exactly `path` (no .npz appended), atomically (atomic_write:
    parent folders created, temp file renamed). Returns the path."""
    def write(tmp: Path):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return atomic_write(path, write)


def _merge_shards(parts: list[Path], out: Path) -> int:
    """Stream shards into one uncompressed npz (image uint8 NxHxWxC, label int64) without holding all
    images in memory; written to a temp file and renamed."""
    shapes, labels = [], []
    for p in parts:
        with np.load(p, allow_pickle=False) as z:
            shapes.append(z["image"].shape)
            labels.append(z["label"].astype(np.int64))
    n = sum(s[0] for s in shapes)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
              "shape": (n, *shapes[0][1:])}

    def write(tmp: Path):
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open("image.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, header)
                for p in parts:
                    with np.load(p, allow_pickle=False) as z:
                        f.write(np.ascontiguousarray(z["image"]).tobytes())
            with zf.open("label.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.concatenate(labels))

    atomic_write(out, write)
    return n


def _shard_ok(path: Path, size: int) -> bool:
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["image"].shape[0] == size and z["label"].shape == (size,)
    except Exception:  # a foreign or damaged file: regenerate it
        return False


def write_shards(out: str | Path, plan: dict, make_batch, n: int, batch_size: int, *, progress: bool = True,
                 stop_after: int | None = None, overwrite: bool = False) -> dict:
    """Shared sharded writer: batch i (images [i*B, (i+1)*B)) is make_batch(i, size) -> (uint8 NCHW,
    int64 labels), saved atomically as OUT.parts/part_iiiii.npz; existing valid shards are reused, so an
    interrupted run loses nothing written. `plan` (JSON) must match the one stored with the shards.
    At the end the shards are merged into OUT and removed. stop_after: stop after that many new batches."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise ValueError(f"{out} already exists; pass overwrite (--overwrite) to replace it")
    parts_dir = out.with_name(out.name + ".parts")
    parts_dir.mkdir(parents=True, exist_ok=True)
    plan = json.loads(json.dumps({**plan, "n": n, "batch_size": batch_size}))
    plan_file = parts_dir / "plan.json"
    if plan_file.exists():
        old = json.loads(plan_file.read_text())
        if old != plan:
            diff = {k: (old.get(k), plan.get(k)) for k in set(old) | set(plan) if old.get(k) != plan.get(k)}
            raise ValueError(f"{parts_dir} holds shards made with other options {diff} (old, new); rerun with "
                             f"the same options or delete {parts_dir}")
    else:
        write_text(plan_file, json.dumps(plan, indent=2) + "\n")
    nb = math.ceil(n / batch_size)
    parts = [parts_dir / f"part_{i:05d}.npz" for i in range(nb)]
    sizes = [min(batch_size, n - i * batch_size) for i in range(nb)]
    todo = [i for i in range(nb) if not _shard_ok(parts[i], sizes[i])]
    made = 0
    bar = tqdm(total=n, initial=n - sum(sizes[i] for i in todo), desc=f"sampling {out.name}", unit="img",
               disable=not progress, dynamic_ncols=True)
    for i in todo:
        if stop_after is not None and made >= stop_after:
            bar.close()
            return {"out": None, "parts": str(parts_dir), "new_batches": made, "reused_batches": nb - len(todo),
                    "complete": False}
        images, labels = make_batch(i, sizes[i])
        write_npz(parts[i], image=images.permute(0, 2, 3, 1).numpy(), label=labels.numpy().astype(np.int64))
        made += 1
        bar.update(sizes[i])
    bar.close()
    total = _merge_shards(parts, out)
    shutil.rmtree(parts_dir)
    return {"out": str(out), "n": total, "new_batches": made, "reused_batches": nb - len(todo), "complete": True}
