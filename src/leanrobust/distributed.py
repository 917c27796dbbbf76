"""Multi-process runs under torchrun (DDP): the process group, rank helpers, the collectives the trainer,
the selection hook and the evaluation need, and batch-aligned shards of a pool or a test set.

In one process (no torchrun) every helper is the identity, so single-process runs are unchanged."""
from __future__ import annotations

import atexit
import datetime
import inspect
import io
import os
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn


def launched() -> int:
    """World size torchrun announced (WORLD_SIZE), 1 without torchrun."""
    return int(os.environ.get("WORLD_SIZE", 1))


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, the only process that writes run files (always true in one process)."""
    return rank() == 0


def local_device(dev: torch.device) -> torch.device:
    """Under torchrun a CUDA run without a device index uses the GPU of its local rank."""
    if dev.type == "cuda" and dev.index is None and launched() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return dev


def init(device: torch.device | str) -> None:
    """Join the process group torchrun describes (nccl on CUDA, gloo on the CPU), once per process;
    a no-op without torchrun. LEANROBUST_DIST_TIMEOUT: seconds a collective may wait (default 1800)."""
    if launched() <= 1 or (dist.is_available() and dist.is_initialized()):
        return
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=float(os.environ.get("LEANROBUST_DIST_TIMEOUT", 1800)))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    atexit.register(teardown)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier() -> None:
    if active():
        dist.barrier()


def rank_seed(seed: int) -> int:
    """A seed per rank: rank 0 keeps `seed` (one process draws what it always drew), the others get
    their own streams, so random starts, dropout and augmentation differ between ranks."""
    r = rank()
    return int(seed) if r == 0 else (int(seed) + r * 0x9E3779B97F4A7C15) % (1 << 63)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `model` (the model itself in one process). Buffers are not
    broadcast in every forward (an attack's forwards would each be a collective, and the ranks may
    attack for different numbers of steps); sync_running_stats averages them after each step instead."""
    if not active():
        return model
    kw = {"device_ids": [device.index]} if device.type == "cuda" else {}
    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    kw["forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"] = False
    return nn.parallel.DistributedDataParallel(model, **kw)


def sync_running_stats(model: nn.Module) -> None:
    """Average BatchNorm running statistics over the ranks, so every rank attacks and evaluates the same
    model (batch statistics in training stay per rank, as in DDP without SyncBatchNorm)."""
    if not active():
        return
    bufs = [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            for b in (m.running_mean, m.running_var) if b is not None]
    if not bufs:
        return
    flat = torch.cat([b.detach().float().flatten() for b in bufs]).to(_comm_device())
    dist.all_reduce(flat)
    flat /= world_size()
    for b, v in zip(bufs, flat.split([b.numel() for b in bufs])):
        b.copy_(v.view_as(b))


def sum_all(values: Sequence[float], dtype=torch.float64) -> list:
    """Element-wise sums over the ranks (counters: int64, seconds and losses: float64)."""
    if not active():
        return list(values)
    t = torch.tensor(list(values), dtype=dtype, device=_comm_device())
    dist.all_reduce(t)
    return t.tolist()


def gather(t: torch.Tensor) -> torch.Tensor:
    """Every rank's tensor joined along dim 0 in rank order, on every rank (on the CPU). Lengths may
    differ, even be 0; dtype and trailing shape must agree. Tensors only: nothing is pickled."""
    if not active():
        return t.cpu()
    wire = torch.uint8 if t.dtype == torch.bool else t.dtype  # gloo has no bool
    counts = torch.zeros(world_size(), dtype=torch.int64, device=_comm_device())
    counts[rank()] = t.shape[0]
    dist.all_reduce(counts)
    counts = counts.tolist()
    buf = torch.zeros((max(counts), *t.shape[1:]), dtype=wire, device=_comm_device())
    buf[:t.shape[0]] = t.to(buf.device, wire)
    out = [torch.empty_like(buf) for _ in counts]
    dist.all_gather(out, buf)
    return torch.cat([o[:c].cpu() for o, c in zip(out, counts)]).to(t.dtype)


def _broadcast_bytes(data: Optional[bytes]) -> bytes:
    n = torch.tensor([len(data) if data is not None else 0], dtype=torch.int64, device=_comm_device())
    dist.broadcast(n, 0)
    buf = torch.empty(int(n), dtype=torch.uint8, device=_comm_device())
    if rank() == 0:
        buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buf, 0)
    return buf.cpu().numpy().tobytes()


def on_main(fn: Callable[[], object]):
    """fn() run by rank 0 alone; its value (tensors, numbers, strings, lists, dicts, None) reaches every rank,
    read back with weights_only=True (never unpickled), or its error is raised on every rank (no rank is
    left waiting). In one process: fn()."""
    if not active():
        return fn()
    value, error = None, None
    if rank() == 0:
        try:
            value = fn()
        except Exception as e:  # re-raised below, after the other ranks have heard of it
            error = e
    if rank() == 0:
        buf = io.BytesIO()
        torch.save({"ok": error is None, "value": value if error is None else f"{type(error).__name__}: {error}"}, buf)
        _broadcast_bytes(buf.getvalue())
        if error is not None:
            raise error
        return value
    msg = torch.load(io.BytesIO(_broadcast_bytes(None)), map_location="cpu", weights_only=True)
    if not msg["ok"]:
        raise RuntimeError(f"rank 0 failed: {msg['value']}")
    return msg["value"]


def share(value):
    """Rank 0's value on every rank (e.g. a Selection's tensors): one source of truth for all."""
    return on_main(lambda: value)


def shard_range(n: int, batch_size: int, r: Optional[int] = None, w: Optional[int] = None) -> tuple[int, int]:
    """Rank r's (default: this rank's) contiguous share of n items in whole batches of batch_size, so each of
    its batches is exactly a batch one process would form; (0, n) in one process. A rank may get none."""
    r, w = rank() if r is None else r, world_size() if w is None else w
    nb = -(-n // batch_size)
    return min(nb * r // w * batch_size, n), min(nb * (r + 1) // w * batch_size, n)


def even_range(n: int, r: Optional[int] = None, w: Optional[int] = None) -> tuple[int, int]:
    """Rank r's (default: this rank's) contiguous, near-equal share of n items; (0, n) in one process."""
    r, w = rank() if r is None else r, world_size() if w is None else w
    return n * r // w, n * (r + 1) // w


def skip_random_starts(x_before: torch.Tensor, batch_size: int, eps, norm: str, device) -> None:
    """Draw and drop the PGD random starts of the batches before this rank's shard (one random_init per
    batch, as `pgd` draws it), so each of its batches starts from the numbers one process would use."""
    from .attacks.common import as_eps, random_init

    for i in range(0, x_before.shape[0], batch_size):
        z = torch.zeros((min(batch_size, x_before.shape[0] - i), *x_before.shape[1:]), dtype=x_before.dtype,
                        device=device)
        random_init(z, as_eps(eps, z), norm)


def state_path(path):
    """A per-rank name for a resumable state file (AutoAttack's): NAME.rankRofW.json under torchrun."""
    if path is None or not active():
        return path
    return path.with_name(f"{path.stem}.rank{rank()}of{world_size()}{path.suffix}")
