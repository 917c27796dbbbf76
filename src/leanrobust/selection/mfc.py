"""Minimal Finite Covering (Chen & Selvan 2024): per class, real samples as centres so that every
sample lies within eta of a same-class centre; adversarial training on the centres at eps + eta,
weighted by the share of points each covers, upper-bounds the full-data adversarial loss at eps.

How it is computed (per class, one class in memory at a time):
- ``coverage``: the symmetric "within radius" graph as CSR with the distances, built from row
  blocks of the upper triangle (torch matmul on the device for L2, ``torch.cdist`` for L1/Linf).
  Memory is O(n * chunk) dense plus O(nnz) sparse; never a dense n x n float matrix. Pairs whose
  float32 distance is within the rounding-error bound of the radius are recomputed exactly in
  float64, so "covered" is exact (float64) and every point really is within eta of its centre.
- solvers: ``greedy`` set cover (ln n approximation, followed by removal of redundant centres),
  ``milp`` (exact, HiGHS through ``scipy.optimize.milp``, with a time limit), ``lp_milp`` (the
  authors' method: LP relaxation, then the MILP only over the centres the LP uses; fast, not
  guaranteed optimal), ``auto`` (``milp`` up to ``milp_max_n`` points per class, else greedy).
- lower bounds: the LP relaxation optimum (``lp_bound``), the MILP dual bound when a MILP ran, and
  otherwise a free dual-feasible bound sum_i 1 / max_{j covers i} |cover(j)| (weak but valid).
- fixed budget (``ipc`` / ``fraction``): bisection on eta between r/2 and r, where r is the
  radius of Gonzalez's farthest-point k-centres (r/2 is a rigorous lower bound on the optimal
  k-centre radius); the distances up to r are computed once and filtered at each step.
- reported eta per class is the achieved covering radius: the exact float64 distance from each
  point to the centre it is assigned to (its nearest chosen centre), maximised over the class.
- the generalized radius eps + eta is measured in the training ``norm`` (eta_norm: the same
  assignment's exact distances in that norm), so any covering metric gives a valid bound; L2, the
  authors' metric, is the default.
- vacuous coverings are refused (``VacuousCoverError``, unless ``force=True``): when the balls
  B_norm(c, eps + eta) of all centres (of two or more classes) share one image of [0,1]^D, no
  classifier is right on all of them, so the bound says nothing (Linf: from eps + eta >= 0.5 every
  ball contains the grey image 0.5). Linf is checked exactly (per pixel); L1/L2 by a minimax
  search for such an image (it may miss one just at the threshold).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import Bounds, LinearConstraint, milp
from tqdm.auto import tqdm

from .random_subset import _labels_numpy, class_budgets
from .selection import Selection

METRICS = ("l2", "l1", "linf")
SOLVERS = ("auto", "greedy", "milp", "lp_milp")


# ----------------------------------------------------------------------------------------------
# inputs and distances

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


def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return metric


def _unit_roundoff(x: torch.Tensor) -> float:
    """Unit roundoff of float32 matmul on this device (TF32 on CUDA if the user allowed it)."""
    if x.device.type == "cuda" and torch.get_float32_matmul_precision() != "highest":
        return 2.0 ** -11
    return 2.0 ** -24


def exact_distance(a: torch.Tensor, b: torch.Tensor, metric: str, batch: int = 4096) -> np.ndarray:
    """Row-wise float64 distance between paired rows of a and b (same shape (P, D))."""
    out = []
    dev = a.device if a.device.type != "mps" else torch.device("cpu")
    for s in range(0, a.shape[0], batch):
        d = a[s:s + batch].to(dev, torch.float64) - b[s:s + batch].to(dev, torch.float64)
        if metric == "l2":
            v = d.square().sum(1).sqrt()
        elif metric == "l1":
            v = d.abs().sum(1)
        else:
            v = d.abs().amax(1)
        out.append(v.cpu().numpy())
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
    metric = _check_metric(metric)
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


def _k_centre_lower_bound(x: torch.Tensor, points: np.ndarray, metric: str) -> float:
    """Half the smallest float64 distance among k+1 points (Gonzalez's k centres and the farthest
    point): any k centres leave two of them in one cluster, so the optimal radius is at least that,
    with no float32 rounding in the bound."""
    p = {"l2": 2.0, "l1": 1.0}.get(metric, float("inf"))
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
    metric = _check_metric(metric)
    n = x.shape[0]
    k = min(int(k), n)
    sq = x.square().sum(1) if metric == "l2" else None

    def dist_to(j: int) -> torch.Tensor:  # squared for L2
        out = []
        for s in range(0, n, chunk):
            xs = x[s:s + chunk]
            if metric == "l2":
                v = torch.addmv(sq[s:s + chunk], xs, x[j], alpha=-2.0).add_(sq[j]).clamp_min_(0.0)
            elif metric == "l1":
                v = (xs - x[j]).abs().sum(1)
            else:
                v = (xs - x[j]).abs().amax(1)
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
    p = {"l2": 2.0, "l1": 1.0, "linf": float("inf")}[metric]
    rows = max(1, (1 << 23) // max(len(centres), 1))
    for s in range(0, n, rows):
        d = torch.cdist(x[s:s + rows], xc, p=p)
        dist[s:s + rows], owner[s:s + rows] = d.min(1)
    return np.asarray(centres, dtype=np.int64), owner.cpu().numpy(), dist.double().cpu().numpy()


# ----------------------------------------------------------------------------------------------
# set-cover solvers on a 0/1 CSR matrix A (points x candidate centres)

def _gather(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Concatenation of indices[indptr[r]:indptr[r+1]] over r in rows (vectorised)."""
    starts = indptr[rows]
    lens = indptr[rows + 1] - starts
    total = int(lens.sum())
    if total == 0:
        return indices[:0]
    offs = np.repeat(starts - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
    return indices[offs + np.arange(total)]


def _csr_csc(A, symmetric: bool):
    A = sp.csr_matrix(A)
    return A, (A if symmetric else A.tocsc())


def greedy_cover(A: sp.csr_matrix, symmetric: bool = False) -> np.ndarray:
    """Greedy set cover (pick the candidate covering most uncovered points; lowest index on ties),
    then drop centres made redundant by later picks. Returns candidate column indices, sorted.
    ``symmetric=True`` (A == A.T, as for a coverage graph) skips the CSC conversion."""
    A, Ac = _csr_csc(A, symmetric)
    n, m = A.shape
    gain = np.diff(Ac.indptr).astype(np.int64)
    covered = np.zeros(n, dtype=bool)
    chosen: list[int] = []
    n_cov = 0
    while n_cov < n:
        j = int(np.argmax(gain))
        if gain[j] <= 0:
            raise ValueError("greedy_cover: some point is covered by no candidate centre")
        rows = Ac.indices[Ac.indptr[j]:Ac.indptr[j + 1]]
        new = rows[~covered[rows]]
        covered[new] = True
        n_cov += new.size
        chosen.append(j)
        # every candidate covering a newly covered point loses one unit of gain
        gain -= np.bincount(_gather(A.indptr, A.indices, new), minlength=m)
    return _drop_redundant(Ac, np.asarray(chosen, dtype=np.int64))


def _drop_redundant(Ac, chosen: np.ndarray) -> np.ndarray:
    """Remove centres whose points are all covered by other chosen centres (latest first)."""
    n = Ac.shape[0]
    count = np.bincount(_gather(Ac.indptr, Ac.indices, chosen), minlength=n)
    keep = np.ones(chosen.size, dtype=bool)
    for t in range(chosen.size - 1, -1, -1):
        rows = Ac.indices[Ac.indptr[chosen[t]]:Ac.indptr[chosen[t] + 1]]
        if np.all(count[rows] >= 2):
            keep[t] = False
            count[rows] -= 1
    return np.sort(chosen[keep])


def lp_relaxation(A: sp.csr_matrix, time_limit: float | None = None) -> tuple[float | None, np.ndarray | None]:
    """min sum s, A s >= 1, 0 <= s <= 1 (HiGHS). Returns (optimum, s) or (None, None) on failure."""
    m = A.shape[1]
    opts = {"disp": False}
    if time_limit is not None:
        opts["time_limit"] = float(time_limit)
    res = milp(np.ones(m), integrality=np.zeros(m), bounds=Bounds(0, 1),
               constraints=LinearConstraint(A, lb=np.ones(A.shape[0]), ub=np.inf), options=opts)
    if res.status != 0 or res.x is None:
        return None, None
    return float(res.fun), res.x


def milp_cover(A: sp.csr_matrix, time_limit: float | None = None) -> tuple[np.ndarray | None, bool, float | None]:
    """Exact minimum set cover by HiGHS branch and cut. Returns (columns or None, proven optimal,
    dual bound)."""
    m = A.shape[1]
    opts = {"disp": False, "mip_rel_gap": 0.0}
    if time_limit is not None:
        opts["time_limit"] = float(time_limit)
    res = milp(np.ones(m), integrality=np.ones(m), bounds=Bounds(0, 1),
               constraints=LinearConstraint(A, lb=np.ones(A.shape[0]), ub=np.inf), options=opts)
    bound = getattr(res, "mip_dual_bound", None)
    bound = float(bound) if bound is not None and np.isfinite(bound) else None
    if res.x is None:
        return None, False, bound
    cols = np.flatnonzero(res.x > 0.5)
    if not _is_cover(A, cols):
        return None, False, bound
    return cols, res.status == 0, bound


def _is_cover(A: sp.csr_matrix, cols: np.ndarray) -> bool:
    return bool((np.asarray(A[:, cols].sum(axis=1)).ravel() >= 1).all())


def dual_feasible_bound(A: sp.csr_matrix, symmetric: bool = False) -> float:
    """Free lower bound on the cover size: y_i = 1 / max_{j covers i} |cover(j)| is feasible for
    the LP dual (sum_{i in cover(j)} y_i <= 1 for every j), so sum_i y_i <= optimum."""
    A, Ac = _csr_csc(A, symmetric)
    size = np.diff(Ac.indptr).astype(np.float64)
    rowmax = np.zeros(A.shape[0])
    per_entry = size[A.indices]
    nz = np.diff(A.indptr) > 0
    rowmax[nz] = np.maximum.reduceat(per_entry, A.indptr[:-1][nz])
    return float(np.sum(1.0 / rowmax[nz]))


@dataclass
class CoverResult:
    centres: np.ndarray
    solver: str
    lp_bound: float | None = None
    lower_bound: int = 1
    lower_bound_kind: str = "trivial"


def solve_cover(A: sp.csr_matrix, solver: str = "auto", *, time_limit: float = 30.0, milp_max_n: int = 1500,
                lp_bound: bool | str = "auto", lp_max_n: int = 2500, symmetric: bool = False) -> CoverResult:
    """Minimum set cover of the rows of A by its columns with the chosen solver, plus the best
    lower bound available (LP relaxation, MILP dual bound, or the free dual-feasible bound)."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    A = sp.csr_matrix(A)
    n = A.shape[0]
    greedy = greedy_cover(A, symmetric)
    use = solver if solver != "auto" else ("milp" if n <= milp_max_n else "greedy")
    want_lp = (lp_bound is True) or (lp_bound == "auto" and (n <= lp_max_n or use != "greedy"))
    lb, kind, lpv, lp_x = dual_feasible_bound(A, symmetric), "dual_feasible", None, None
    if want_lp or use == "lp_milp":
        lpv, lp_x = lp_relaxation(A, time_limit)
        if lpv is not None:
            lb, kind = lpv, "lp"
    best, name = greedy, "greedy"
    if use == "milp":
        cols, optimal, bound = milp_cover(A, time_limit)
        if bound is not None and bound > lb:
            lb, kind = bound, "milp_dual"
        if cols is not None and cols.size <= best.size:
            best, name = cols, "milp" if optimal else "milp_time_limit"
            if optimal:
                lb, kind = cols.size, "milp"
        else:
            name = "greedy(milp_time_limit)"
    elif use == "lp_milp":
        name = "greedy(lp_time_limit)"
        if lp_x is not None:
            support = np.flatnonzero(lp_x > 1e-9)
            cols, optimal, _ = milp_cover(A[:, support], time_limit)
            if cols is not None and cols.size <= best.size:
                best, name = support[cols], "lp_milp"
            else:
                name = "greedy(milp_time_limit)"
    lower = int(math.ceil(lb - 1e-6))
    return CoverResult(np.sort(best), name, lpv, max(1, min(lower, best.size)), kind)


# ----------------------------------------------------------------------------------------------
# the selector

@dataclass
class ClassReport:
    """One class's covering. eta: achieved covering radius (exact, max over the class's points of
    the distance to the assigned centre). radius: the radius the cover was solved at."""

    label: int
    n: int
    k: int
    eta: float
    radius: float
    solver: str
    lp_bound: float | None
    lower_bound: int
    lower_bound_kind: str
    gap: int
    lp_gap: int | None
    seconds: float
    budget: int | None = None
    eta_lower_bound: float | None = None
    nnz: int = 0
    eta_norm: float | None = None  # the achieved radius in the training norm (eps + eta_norm is attacked)
    nn_median: float | None = None  # median distance to the nearest other point of the class (metric)


@dataclass
class MFCReport:
    """Per-class reports, plus for every input point its assigned centre (a position in the
    Selection) and the exact distance to it."""

    metric: str
    mode: str
    classes: list[ClassReport]
    seconds: float
    assigned: np.ndarray = field(repr=False)
    distance: np.ndarray = field(repr=False)
    eps: float = 0.0
    norm: str = ""
    generalized_radius: float = 0.0  # max over classes of eps + eta_norm
    common_radius: float | None = None  # uniform radius (norm) from which all centres' balls share an image
    vacuous: bool = False  # the balls B(c, eps + eta_norm) of all centres do share an image
    nn_median: float | None = None  # over all points (metric); None: above nn_below
    nn_below: float | None = None  # the NN distances are known up to this radius

    @property
    def k(self) -> int:
        return sum(c.k for c in self.classes)

    @property
    def n(self) -> int:
        return sum(c.n for c in self.classes)

    def to_dict(self) -> dict:
        return {"metric": self.metric, "mode": self.mode, "n": self.n, "k": self.k, "seconds": self.seconds,
                "eps": self.eps, "norm": self.norm, "generalized_radius": self.generalized_radius,
                "common_radius": self.common_radius, "vacuous": self.vacuous, "nn_median": self.nn_median,
                "nn_below": self.nn_below, "classes": [asdict(c) for c in self.classes]}

    def diagnosis(self, common: bool = True) -> str:
        """One line: eta next to eps and to the data's nearest-neighbour scale."""
        def span(v):
            lo, hi = f"{min(v):.3g}", f"{max(v):.3g}"
            return lo if lo == hi else f"{lo}-{hi}"

        line = f"eta {span([c.eta for c in self.classes])} ({self.metric})"
        if self.norm != self.metric:
            line += f", {span([c.eta_norm for c in self.classes])} in {self.norm}"
        nn = (f"{self.nn_median:.3g}" if self.nn_median is not None
              else f"above {self.nn_below:.3g}" if self.nn_below is not None else "unknown")
        line += (f"; eps {self.eps:g} + eta = generalized radius up to {self.generalized_radius:.3g} ({self.norm}); "
                 f"median same-class nearest-neighbour distance {nn} ({self.metric})")
        if common and self.common_radius is not None:
            line += f"; all centres' balls share an image from radius {self.common_radius:.3g} ({self.norm})"
        return line


class VacuousCoverError(ValueError):
    """The generalized balls of all centres share an image: the bound is vacuous. Carries the computed
    ``selection`` and ``report`` (pass force=True to get them without the error)."""

    def __init__(self, reason: str, selection: Selection, report: MFCReport, hint: str):
        super().__init__(f"{reason}; {hint}")
        self.reason, self.selection, self.report = reason, selection, report


def _nn_distance(cov: Coverage) -> np.ndarray:
    """Distance of each point to its nearest other point of the class (float32-accurate); inf where
    none lies within the graph's radius."""
    if cov.n == 0:
        return np.zeros(0)
    d = np.where(cov.indices == cov._rows(), np.inf, cov.dist.astype(np.float64))
    return np.minimum.reduceat(d, cov.indptr[:-1].astype(np.int64))  # every row holds its diagonal


def _common_image(c: torch.Tensor, r: torch.Tensor, norm: str, iters: int | None = None) -> tuple[bool, float]:
    """Whether the balls B_norm(c_j, r_j) share an image of [0,1]^D, and the uniform radius from which
    they all do (Linf: exact, half the widest pixel range; L1/L2: the minimax-search estimate, an
    upper bound). Linf decides exactly per pixel; L1/L2 search z in the box (Badoiu-Clarkson steps
    towards the most violated ball; numpy, single-threaded: ~0.3 s for 1000 centres of 784 pixels, ~1.7 s
    for 6000), so a shared image just at the threshold may be missed."""
    c = c.detach().double().cpu().numpy()
    r = r.detach().double().cpu().numpy()
    if norm == "linf":
        lo = np.maximum((c - r[:, None]).max(0), 0.0)
        hi = np.minimum((c + r[:, None]).min(0), 1.0)
        return bool((lo <= hi).all()), float(((c.max(0) - c.min(0)) / 2).max())
    p = 2 if norm == "l2" else 1
    c, r = c.astype(np.float32), r.astype(np.float32)  # a search: float32 halves its memory traffic
    iters = iters or int(min(300, max(20, 3e8 // max(c.size, 1))))

    def search(rad: np.ndarray) -> float:
        z = c.mean(0)
        best = math.inf
        for t in range(1, iters + 1):
            excess = np.linalg.norm(c - z, ord=p, axis=1) - rad
            j = int(excess.argmax())
            best = min(best, float(excess[j]))
            if best <= 0:
                break
            z = np.clip(z + (c[j] - z) / (t + 1), 0.0, 1.0)
        return best

    excess = search(r)
    radius = search(np.zeros_like(r))
    return excess <= 0, radius


def _assign(cov: Coverage, radius: float, centres: np.ndarray) -> np.ndarray:
    """Each point's nearest chosen centre among those covering it at ``radius`` (positions in x)."""
    is_c = np.zeros(cov.n, dtype=bool)
    is_c[centres] = True
    mask = is_c[cov.indices] & (cov.dist <= radius)
    rows = cov._rows()[mask]
    cols = cov.indices[mask]
    d = cov.dist[mask]
    order = np.lexsort((d, rows))
    rows, cols = rows[order], cols[order]
    first = np.ones(rows.size, dtype=bool)
    first[1:] = rows[1:] != rows[:-1]
    out = np.full(cov.n, -1, dtype=np.int64)
    out[rows[first]] = cols[first]
    if (out < 0).any():
        raise RuntimeError("mfc: internal error, a point has no covering centre")
    return out


def _check_nonneg(name: str, v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {v!r}") from None
    if not math.isfinite(f) or f < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {v!r}")
    return f


def mfc_selection(images, labels, *, eps: float, radius: float | None = None, ipc: int | None = None,
                  fraction: float | None = None, metric: str = "l2", solver: str = "auto", device=None,
                  time_limit: float = 30.0, milp_max_n: int = 1500, lp_bound: bool | str = "auto",
                  lp_max_n: int = 2500, tol: float | None = None, chunk: int = 1024, norm: str | None = None,
                  force: bool = False, progress: bool = False) -> tuple[Selection, MFCReport]:
    """Per-class minimal finite covering of ``images`` (uint8, or float in [0,1]; flattened) at a
    fixed ``radius`` (minimal number of centres) or a fixed budget ``ipc`` / ``fraction`` (the
    smallest eta whose cover fits, by bisection to ``tol``, default 1e-3 of the bracket's top).

    Returns ``Selection(indices=centres, weight, eps=eps + eta_class)`` where each point is
    assigned to its nearest covering centre and weight_j = count_j / mean_j(count_j), so the
    weights average 1 over the selection and sum_j weight_j L_j / K = sum_j count_j L_j / N:
    the weighted mean loss on the centres at eps + eta bounds the mean loss on all N points at eps.
    ``solver``: auto | greedy | milp | lp_milp (see the module docstring); ``time_limit`` seconds
    per HiGHS call; ``lp_bound``: True, False or "auto" (LP bound when a class has <= lp_max_n
    points or an exact solver runs). ``norm``: the training norm in which eps + eta is measured (default:
    the metric). A vacuous covering (module docstring) raises VacuousCoverError, which carries the
    selection and report, unless ``force``; the report always holds the diagnostics. ``progress``: a
    tqdm bar over the classes on stderr."""
    t_all = time.perf_counter()
    eps = _check_nonneg("eps", eps)
    metric = _check_metric(metric)
    norm = metric if norm is None else _check_metric(norm)
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    given = [name for name, v in (("radius", radius), ("ipc", ipc), ("fraction", fraction)) if v is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of radius (fixed eta), ipc or fraction (fixed budget); got "
                         + (", ".join(given) if given else "none"))
    y = _labels_numpy(labels)
    x = to_unit_flat(images, device)
    if x.shape[0] != y.size:
        raise ValueError(f"images has {x.shape[0]} samples but labels has {y.size}")
    if radius is not None:
        radius = _check_nonneg("radius", radius)
        budgets = {int(c): None for c in np.unique(y)}
    else:
        budgets = class_budgets(y, ipc=ipc, fraction=fraction)
    if tol is not None:
        tol = _check_nonneg("tol", tol)

    reports, sel_idx, sel_eta, nn_all, nn_below = [], [], [], [], math.inf
    assigned = np.empty(y.size, dtype=np.int64)
    distance = np.empty(y.size, dtype=np.float64)
    bar = tqdm(total=y.size, desc=f"mfc ({metric})", unit="img", disable=not progress, dynamic_ncols=True)
    for label, k_budget in budgets.items():
        t0 = time.perf_counter()
        pos = np.flatnonzero(y == label)
        xc = x[torch.from_numpy(pos).to(x.device)]
        n = pos.size
        eta_lb = None
        if radius is not None:
            cov = coverage(xc, radius, metric, chunk=chunk)
            res = solve_cover(cov.pattern(), solver, time_limit=time_limit, milp_max_n=milp_max_n,
                              lp_bound=lp_bound, lp_max_n=lp_max_n, symmetric=True)
            centres, at = res.centres, radius
            owner = _assign(cov, at, centres)
        elif k_budget >= n:
            cov, at = None, 0.0
            res = CoverResult(np.arange(n), "trivial", float(n), n, "trivial")
            centres, owner = res.centres, np.arange(n)
        else:
            fp_centres, fp_owner, fp_d = farthest_point(xc, k_budget, metric)
            r_fp = float(fp_d.max())
            hi = r_fp * (1.0 + 1e-3) + 1e-9
            lo = 0.5 * r_fp
            eta_lb = _k_centre_lower_bound(xc, np.append(fp_centres, int(fp_d.argmax())), metric)
            step_tol = tol if tol is not None else 1e-3 * hi
            cov = coverage(xc, hi, metric, chunk=chunk)
            quick = dict(time_limit=time_limit, milp_max_n=milp_max_n, lp_bound=False, symmetric=True)
            best = solve_cover(cov.pattern(hi), solver, **quick)
            if best.centres.size > k_budget:  # the solver cannot fit k at r: keep Gonzalez's centres
                res, at = CoverResult(np.sort(fp_centres), "farthest_point"), hi
                centres = res.centres
                owner = fp_centres[fp_owner]
            else:
                at = hi
                while hi - lo > step_tol:
                    mid = 0.5 * (lo + hi)
                    trial = solve_cover(cov.pattern(mid), solver, **quick)
                    if trial.centres.size <= k_budget:
                        hi, best, at = mid, trial, mid
                    else:
                        lo = mid
                # bounds at the final radius (the LP there is the expensive part; once)
                res = solve_cover(cov.pattern(at), solver, time_limit=time_limit, milp_max_n=milp_max_n,
                                  lp_bound=lp_bound, lp_max_n=lp_max_n, symmetric=True)
                if res.centres.size > best.centres.size:
                    res.centres = best.centres
                centres = res.centres
                owner = _assign(cov, at, centres)
        d_exact = exact_distance(xc, xc[torch.from_numpy(owner).to(x.device)], metric)
        used = np.unique(owner)  # centres nobody is assigned to are redundant: drop them
        eta = float(d_exact.max()) if n else 0.0
        eta_norm = eta if norm == metric else float(
            exact_distance(xc, xc[torch.from_numpy(owner).to(x.device)], norm).max()) if n else 0.0
        nn = _nn_distance(cov) if cov is not None else None
        if nn is not None:
            nn_all.append(nn)
            nn_below = min(nn_below, cov.radius)
        nn_med = float(np.median(nn)) if nn is not None and nn.size and np.isfinite(np.median(nn)) else None
        base = sum(len(s) for s in sel_idx)
        where = np.searchsorted(used, owner)
        assigned[pos] = base + where
        distance[pos] = d_exact
        sel_idx.append(pos[used])
        sel_eta.append(np.full(used.size, eta_norm))
        k = int(used.size)
        lower = min(res.lower_bound, k)
        lp_gap = None if res.lp_bound is None else k - int(math.ceil(res.lp_bound - 1e-6))
        reports.append(ClassReport(label=int(label), n=int(n), k=k, eta=eta, radius=float(at), solver=res.solver,
                                   lp_bound=res.lp_bound, lower_bound=int(lower),
                                   lower_bound_kind=res.lower_bound_kind, gap=k - int(lower), lp_gap=lp_gap,
                                   seconds=time.perf_counter() - t0, budget=k_budget,
                                   eta_lower_bound=eta_lb, nnz=0 if cov is None else cov.nnz,
                                   eta_norm=eta_norm, nn_median=nn_med))
        bar.set_postfix(label=int(label), k=k, eta=f"{eta:.3g}")
        bar.update(n)
        del cov, xc
    bar.close()

    idx = np.concatenate(sel_idx)
    counts = np.bincount(assigned, minlength=idx.size).astype(np.float64)
    weight = counts / counts.mean()
    radii = eps + np.concatenate(sel_eta)
    sel = Selection(torch.from_numpy(idx), torch.from_numpy(weight), torch.from_numpy(radii))
    vacuous, common = _common_image(x[torch.from_numpy(idx).to(x.device)], torch.from_numpy(radii).to(x.device), norm)
    vacuous &= len(budgets) > 1  # one label: nothing to conflict with
    nn = np.concatenate(nn_all) if nn_all else np.zeros(0)
    nn_median = float(np.median(nn)) if nn.size and np.isfinite(np.median(nn)) else None
    report = MFCReport(metric, "radius" if radius is not None else "budget", reports,
                       time.perf_counter() - t_all, assigned, distance, eps=eps, norm=norm,
                       generalized_radius=float(radii.max()), common_radius=common, vacuous=vacuous,
                       nn_median=nn_median, nn_below=None if nn_median is not None or not nn.size else float(nn_below))
    if vacuous and not force:
        raise VacuousCoverError(vacuous_reason(report), sel, report,
                                "lower eta (a larger ipc or fraction, a smaller radius), attack the centres at the "
                                "plain eps, or pass force=True to keep it")
    return sel, report


def vacuous_reason(report: MFCReport) -> str:
    """Why a covering is vacuous, with the numbers."""
    r_min = min(report.eps + c.eta_norm for c in report.classes)
    return (f"vacuous MFC covering: every centre is attacked at a radius eps + eta >= {r_min:.3g} ({report.norm}), "
            f"and the balls of all centres share one image (from radius {report.common_radius:.3g}), so no "
            f"classifier is right on all of them and the bound on the full-data loss says nothing "
            f"({report.diagnosis(common=False)})")
