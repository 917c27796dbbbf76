"""Minimum set cover of the rows of a 0/1 sparse matrix by its columns: greedy (ln n approximation), exact
MILP and LP-pruned MILP (HiGHS via scipy), with the best lower bound available; the MFC covering's solvers."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, milp

SOLVERS = ("auto", "greedy", "milp", "lp_milp")


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
