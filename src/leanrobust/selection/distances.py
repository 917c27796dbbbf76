"""Distances between flattened images in [0,1] (L2, L1, Linf): the exact within-radius graph of a class and
Gonzalez's farthest-point k-centres, shared by the MFC covering and the k-centre selector."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

METRICS = ("l2", "l1", "linf")
P_NORM = {"l2": 2.0, "l1": 1.0, "linf": float("inf")}  # the p of torch.cdist for each metric


def to_unit_flat(images, device=None) -> torch.Tensor:
    """(N, ...) uint8 (scaled by 1/255) or float already in [0,1] -> float32 (N, D) on ``device``."""
    x = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    if x.ndim < 2:
        raise ValueError(f"images must be (N, ...) with one row per sample, got shape {tuple(x.shape)}")
    dev = torch.device(device) if device is not None else x.device
    if x.dtype == torch.uint8:
        x = x.to(dev).reshape(x.shape[0], -1).to(torch.float32) / 255.0
    elif x.is_floating_point():
        x = x.to(dev).reshape(x.shape[0], -1).to(torch.float32)
        if x.numel() and (not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1):
            raise ValueError("images: float images must be finite and in [0, 1]")
    else:
        raise ValueError(f"images must be uint8 or float in [0,1], got dtype {x.dtype}")
    return x.contiguous()


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return metric


def _unit_roundoff(x: torch.Tensor) -> float:
    """Unit roundoff of float32 matmul on this device (TF32 on CUDA if the user allowed it)."""
    if x.device.type == "cuda" and torch.get_float32_matmul_precision() != "highest":
        return 2.0 ** -11
    return 2.0 ** -24


def _row_norm(d: torch.Tensor, metric: str) -> torch.Tensor:
    """The metric's norm of each row of d (a batch of differences)."""
    if metric == "l2":
        return d.square().sum(1).sqrt()
    return d.abs().sum(1) if metric == "l1" else d.abs().amax(1)


def exact_distance(a: torch.Tensor, b: torch.Tensor, metric: str, batch: int = 4096) -> np.ndarray:
    """Row-wise float64 distance between paired rows of a and b (same shape (P, D))."""
    out = []
    dev = a.device if a.device.type != "mps" else torch.device("cpu")
    for s in range(0, a.shape[0], batch):
        d = a[s:s + batch].to(dev, torch.float64) - b[s:s + batch].to(dev, torch.float64)
        out.append(_row_norm(d, metric).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def _f32_down(d: np.ndarray) -> np.ndarray:
    """float64 -> float32 rounded towards zero, so a stored distance never exceeds the true one."""
    f = d.astype(np.float32)
    up = f.astype(np.float64) > d
    f[up] = np.nextafter(f[up], np.float32(0))
    return f


@dataclass
class Coverage:
    """Symmetric sparse graph {(i, j): d(x_i, x_j) <= radius} of one class: CSR arrays (int32
    column indices) with float32 distances. Membership is decided exactly (float64 recomputation
    near the radius); stored distances are float32-accurate and never exceed ``radius``, so
    ``pattern()`` at the build radius is exact and smaller radii are filtered to float32
    accuracy (the final eta is always recomputed exactly). Diagonal included."""

    n: int
    radius: float
    indptr: np.ndarray
    indices: np.ndarray
    dist: np.ndarray

    @property
    def nnz(self) -> int:
        return int(self.indices.size)

    def _rows(self) -> np.ndarray:
        if getattr(self, "_row_cache", None) is None:
            self._row_cache = np.repeat(np.arange(self.n, dtype=np.int32), np.diff(self.indptr))
        return self._row_cache

    def pattern(self, radius: float | None = None) -> sp.csr_matrix:
        """0/1 CSR (n x n): entry (i, j) when centre j covers point i at ``radius`` (<= self.radius)."""
        if radius is None or radius >= self.radius:
            keep_indptr, keep_idx = self.indptr, self.indices
        else:
            mask = self.dist <= radius
            counts = np.bincount(self._rows()[mask], minlength=self.n)
            keep_indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            keep_idx = self.indices[mask]
        data = np.ones(keep_idx.size, dtype=np.float64)
        return sp.csr_matrix((data, keep_idx, keep_indptr), shape=(self.n, self.n))


def coverage(x: torch.Tensor, radius: float, metric: str = "l2", *, chunk: int = 1024) -> Coverage:
    """Chunked construction of the within-``radius`` graph of the rows of x (float32, (n, D)).
    Only upper-triangle row blocks are computed (half the work), then mirrored. Few, large tensor
    ops per block: on a shared CPU every extra parallel region costs a thread barrier."""
    metric = check_metric(metric)
    n, D = x.shape
    u = _unit_roundoff(x)
    rows_blk = max(16, min(int(chunk), (1 << 23) // max(n, 1)))
    lower = torch.ones(rows_blk, rows_blk, dtype=torch.bool, device=x.device).tril_()  # j <= i in a diagonal block
    r_down = _f32_down(np.array([radius]))[0]
    if metric == "l2":  # squared domain; |error of the float32 d^2| <= (2D+8) u (|x_i|^2 + |x_j|^2)
        sq = x.double().square().sum(1).float()
        e_row = (2 * D + 8) * u * (sq + sq.max()) + 1e-12
        lo_row, hi_row = radius * radius - e_row, radius * radius + e_row
    else:  # near the radius, |error| <= (D+4) u d (L1) or 4 u d (Linf)
        e = ((D + 4) if metric == "l1" else 4) * u * radius * 1.01 + 1e-12
        lo_row = torch.full((n,), radius - e, device=x.device)
        hi_row = torch.full((n,), radius + e, device=x.device)
    R, C, Dd = [], [], []
    for a in range(0, n, rows_blk):
        b = min(a + rows_blk, n)
        bs = b - a
        if metric == "l2":
            d = torch.addmm(sq[None, a:], x[a:b], x[a:].T, alpha=-2.0).add_(sq[a:b, None])
        else:
            d = torch.cdist(x[a:b].unsqueeze(0), x[a:].unsqueeze(0), p=1.0 if metric == "l1" else float("inf")).squeeze(0)
        d[:, :bs].masked_fill_(lower[:bs, :bs], float("inf"))  # strict upper triangle only
        ii, jj = (d <= hi_row[a:b, None]).nonzero(as_tuple=True)
        v = d[ii, jj]
        del d
        gi, gj = ii + a, jj + a
        if metric == "l2":  # tighten the band per pair: (|x_i|^2 + |x_j|^2) instead of the row's worst case
            e = (2 * D + 8) * u * (sq[gi] + sq[gj]) + 1e-12
            keep = v <= radius * radius + e
            gi, gj, v, e = gi[keep], gj[keep], v[keep], e[keep]
            sure = v <= radius * radius - e
        else:
            sure = v <= lo_row[a:b][ii]
        si, sj, sv = gi[sure], gj[sure], v[sure]
        if metric == "l2":
            sv = sv.clamp_min(0.0).sqrt()
        R.append(si.to(torch.int32).cpu().numpy()); C.append(sj.to(torch.int32).cpu().numpy())
        Dd.append(np.minimum(sv.cpu().numpy(), r_down))
        mi, mj = gi[~sure], gj[~sure]
        if mi.numel():  # within the rounding band of the radius: decide in float64
            ex = exact_distance(x[mi], x[mj], metric)
            ok = ex <= radius
            R.append(mi.to(torch.int32).cpu().numpy()[ok]); C.append(mj.to(torch.int32).cpu().numpy()[ok])
            Dd.append(_f32_down(ex[ok]))
    r = np.concatenate(R) if R else np.zeros(0, np.int32)
    c = np.concatenate(C) if C else np.zeros(0, np.int32)
    d = np.concatenate(Dd) if Dd else np.zeros(0, np.float32)
    del R, C, Dd
    diag = np.arange(n, dtype=np.int32)
    rows = np.concatenate([r, c, diag])
    cols = np.concatenate([c, r, diag])
    dist = np.concatenate([d, d, np.zeros(n, np.float32)])
    del r, c, d
    order = np.argsort(rows, kind="stable")
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]).astype(np.int64)
    del rows
    return Coverage(n, float(radius), indptr, cols[order], dist[order])


def k_centre_lower_bound(x: torch.Tensor, points: np.ndarray, metric: str) -> float:
    """Half the smallest float64 distance among k+1 points (Gonzalez's k centres and the farthest
    point): any k centres leave two of them in one cluster, so the optimal radius is at least that,
    with no float32 rounding in the bound."""
    p = P_NORM[metric]
    pts = x[torch.from_numpy(np.asarray(points, dtype=np.int64)).to(x.device)].to(torch.float64)
    if pts.shape[0] < 2:
        return 0.0
    d = torch.cdist(pts, pts, p=p, compute_mode="donot_use_mm_for_euclid_dist")
    d.fill_diagonal_(float("inf"))
    return 0.5 * float(d.min())


def farthest_point(x: torch.Tensor, k: int, metric: str = "l2", *, start: int = 0, chunk: int = 65536,
                   on_centre=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gonzalez's farthest-point greedy: k centres (positions in x), each point's nearest centre
    (an index into the centre list) and its float32-accurate distance. The covering radius
    r = max distance is within a factor 2 of the optimal k-centre radius. The loop is sequential
    and latency-bound, so it keeps to few tensor ops per step (squared distances for L2). on_centre(1)
    is called for every centre chosen (a progress bar's update)."""
    metric = check_metric(metric)
    n = x.shape[0]
    k = min(int(k), n)
    sq = x.square().sum(1) if metric == "l2" else None

    def dist_to(j: int) -> torch.Tensor:  # squared for L2
        out = []
        for s in range(0, n, chunk):
            xs = x[s:s + chunk]
            if metric == "l2":
                v = torch.addmv(sq[s:s + chunk], xs, x[j], alpha=-2.0).add_(sq[j]).clamp_min_(0.0)
            else:
                v = _row_norm(xs - x[j], metric)
            out.append(v)
        d = out[0] if len(out) == 1 else torch.cat(out)
        d[j] = 0.0
        return d

    centres = [int(start)]
    mind = dist_to(int(start))
    tick = on_centre or (lambda _n: None)
    tick(1)
    for _ in range(1, k):
        v, j = torch.max(mind, 0)
        if float(v) <= 0.0:
            break  # everything already at distance 0 (duplicates)
        centres.append(int(j))
        mind = torch.minimum(mind, dist_to(int(j)))
        tick(1)
    cidx = torch.as_tensor(centres, device=x.device)
    owner = torch.empty(n, dtype=torch.long, device=x.device)
    dist = torch.empty(n, dtype=torch.float32, device=x.device)
    xc = x[cidx]
    p = P_NORM[metric]
    rows = max(1, (1 << 23) // max(len(centres), 1))
    for s in range(0, n, rows):
        d = torch.cdist(x[s:s + rows], xc, p=p)
        dist[s:s + rows], owner[s:s + rows] = d.min(1)
    return np.asarray(centres, dtype=np.int64), owner.cpu().numpy(), dist.double().cpu().numpy()
