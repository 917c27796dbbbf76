"""Minimal Finite Covering (Chen & Selvan 2024): per class, real samples as centres so that every
sample lies within eta of a same-class centre; adversarial training on the centres at eps + eta,
weighted by the share of points each covers, upper-bounds the full-data adversarial loss at eps.

How it is computed (per class, one class in memory at a time):
- ``coverage`` (distances.py): the symmetric "within radius" graph as CSR with the distances, built from row
  blocks of the upper triangle (torch matmul on the device for L2, ``torch.cdist`` for L1/Linf).
  Memory is O(n * chunk) dense plus O(nnz) sparse; never a dense n x n float matrix. Pairs whose
  float32 distance is within the rounding-error bound of the radius are recomputed exactly in
  float64, so "covered" is exact (float64) and every point really is within eta of its centre.
- solvers (cover.py): ``greedy`` set cover (ln n approximation, followed by removal of redundant centres),
  ``milp`` (exact, HiGHS through ``scipy.optimize.milp``, with a time limit), ``lp_milp`` (the
  authors' method: LP relaxation, then the MILP only over the centres the LP uses; fast, not
  guaranteed optimal), ``auto`` (``milp`` up to ``milp_max_n`` points per class, else greedy).
- lower bounds (cover.py): the LP relaxation optimum (``lp_bound``), the MILP dual bound when a MILP ran, and
  otherwise a free dual-feasible bound sum_i 1 / max_{j covers i} |cover(j)| (weak but valid).
- fixed budget (``ipc`` / ``fraction``): bisection on eta between r/2 and r, where r is the
  radius of Gonzalez's farthest-point k-centres (distances.py, r/2 is a rigorous lower bound on the optimal
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
import torch
from tqdm.auto import tqdm

from .cover import SOLVERS, CoverResult, greedy_cover, lp_relaxation, milp_cover, solve_cover
from .distances import (METRICS, Coverage, check_metric, coverage, exact_distance, farthest_point, k_centre_lower_bound,
                        to_unit_flat)
from .random_subset import _labels_numpy, check_nonneg, class_budgets
from ..selection_contract import Selection

# the distance and solver names are also importable from here, as before they moved to distances.py and cover.py
__all__ = ["METRICS", "SOLVERS", "ClassReport", "Coverage", "CoverResult", "MFCReport", "VacuousCoverError", "coverage",
           "exact_distance", "farthest_point", "greedy_cover", "lp_relaxation", "mfc_selection", "milp_cover",
           "solve_cover", "to_unit_flat", "vacuous_reason"]


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
    eps = check_nonneg("eps", eps)
    metric = check_metric(metric)
    norm = metric if norm is None else check_metric(norm)
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
        radius = check_nonneg("radius", radius)
        budgets = {int(c): None for c in np.unique(y)}
    else:
        budgets = class_budgets(y, ipc=ipc, fraction=fraction)
    if tol is not None:
        tol = check_nonneg("tol", tol)

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
            eta_lb = k_centre_lower_bound(xc, np.append(fp_centres, int(fp_d.argmax())), metric)
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
