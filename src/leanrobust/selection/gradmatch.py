"""Adversarial GRAD-MATCH (Killamsetty et al. 2021, adversarial version of Li et al. 2023): a
weighted subset whose summed last-layer gradient of the adversarial loss matches the whole
pool's, found per class by non-negative orthogonal matching pursuit."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import nnls
from torch import nn

from ..attacks import pgd
from ..attacks.common import eval_mode
from ..data.augment import to_float
from ..models import last_linear
from .pruning import _as_numpy, _labels, class_quotas, resolve_count
from ..selection_contract import Selection


def last_layer_factors(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eps=0.1,
                       norm: str = "linf", steps: int = 10, step_size: Optional[float] = None,
                       adversarial: bool = True, batch_size: int = 256, device=None, seed: int = 0):
    """The two factors of each sample's last-layer cross-entropy gradient, at its PGD example
    (adversarial=True; eval mode, random start, seeded) or the clean input:
    r = softmax(f(x)) - onehot(y) (N, C) and h = input of the model's last nn.Linear (N, D),
    found with a forward pre-hook. The gradient is dW = r h^T, db = r (`gradient_matrix`).
    Returns (r, h, has_bias), float32 on the CPU."""
    lin = last_linear(model)
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    grabbed: list = []
    handle = lin.register_forward_pre_hook(lambda _m, inp: grabbed.__setitem__(slice(None), [inp[0].detach()]))
    n = int(labels.shape[0])
    rs, hs = [], []
    try:
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), eval_mode(model):
            torch.manual_seed(seed)
            for i in range(0, n, batch_size):
                x = to_float(images[i:i + batch_size].to(dev))
                y = labels[i:i + batch_size].to(dev).long()
                if adversarial:
                    x = pgd(model, x, y, eps, steps=steps, rel_step=step_size, norm=norm)
                with torch.no_grad():
                    logits = model(x).float()
                rs.append((F.softmax(logits, 1) - F.one_hot(y, logits.shape[1]).float()).cpu())
                hs.append(grabbed[0].float().flatten(1).cpu())
    finally:
        handle.remove()
    return torch.cat(rs), torch.cat(hs), lin.bias is not None


def gradient_matrix(r, h, bias: bool = True) -> np.ndarray:
    """Per-sample last-layer gradients as columns: (C*D [+ C], n) float32, column i =
    [vec(r_i h_i^T), r_i]."""
    r = (r.detach().cpu().numpy() if isinstance(r, torch.Tensor) else np.asarray(r)).astype(np.float64)
    h = (h.detach().cpu().numpy() if isinstance(h, torch.Tensor) else np.asarray(h)).astype(np.float64)
    r, h = r.reshape(r.shape[0], -1), h.reshape(h.shape[0], -1)
    g = (r[:, :, None] * h[:, None, :]).reshape(r.shape[0], -1)
    if bias:
        g = np.concatenate([g, r], axis=1)
    return np.ascontiguousarray(g.T, dtype=np.float32)


def _nnls_pg(G: np.ndarray, c: np.ndarray, w0: np.ndarray, *, iters: int, tol: float = 1e-10) -> np.ndarray:
    """min 0.5 w'Gw - c'w s.t. w >= 0 (G = A_S'A_S + lam I) by accelerated projected gradient
    (FISTA with restart), warm-started at w0; step 1/L, L the largest eigenvalue of G."""
    L = float(np.linalg.eigvalsh(G)[-1]) if G.shape[0] <= 64 else _top_eig(G)
    if L <= 0:
        return np.zeros_like(w0)
    w = np.maximum(w0, 0.0)
    z, t = w.copy(), 1.0
    for _ in range(iters):
        w_new = np.maximum(z - (G @ z - c) / L, 0.0)
        step = w_new - w
        if np.linalg.norm(step) <= tol * max(np.linalg.norm(w_new), 1e-300):
            return w_new
        if (z - w_new) @ step > 0:  # gradient restart (O'Donoghue & Candes 2015): drop the momentum
            t = 1.0
        t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
        z = w_new + ((t - 1) / t_new) * step
        w, t = w_new, t_new
    return w


def _top_eig(G: np.ndarray) -> float:
    """Largest eigenvalue of the symmetric PSD G by Lanczos (ARPACK, relative tol 1e-8), with a 1%
    margin so that 1/L stays a safe FISTA step (a power iteration approaches it from below)."""
    from scipy.sparse.linalg import ArpackError, eigsh  # heavy (about 0.5 s to import), needed only here

    G64 = G.astype(np.float64, copy=False)
    if not G64.any():
        return 0.0
    v0 = np.ones(G.shape[0]) / math.sqrt(G.shape[0])  # fixed start: deterministic
    try:
        lam = float(eigsh(G64, k=1, which="LA", tol=1e-8, v0=v0, return_eigenvectors=False)[0])
    except ArpackError:  # e.g. G @ v0 == 0 (a start orthogonal to G's range): the dense solver
        lam = float(np.linalg.eigvalsh(G64)[-1])
    return max(lam, 0.0) * 1.01


def omp_nonneg(A: np.ndarray, b: np.ndarray, k: int, *, lam: float = 0.0, tol: float = 1e-8,
               atoms_per_step: int = 1, solver: str = "auto", nnls_max_atoms: int = 256,
               pg_iters: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative orthogonal matching pursuit: at most k columns S of A (d, n) and w >= 0 with
    A[:, S] w ~ b. Each step adds the `atoms_per_step` unused columns of largest positive
    normalised correlation <a_j, r> / ||a_j|| with the residual r, then re-solves
    min ||A_S w - b||^2 + lam ||w||^2, w >= 0 on the selected atoms: exactly with
    scipy.optimize.nnls (solver "nnls"; "auto" while |S| <= nnls_max_atoms), else (solver "pg",
    or "auto" beyond that size, where Lawson-Hanson costs seconds per solve) by accelerated
    projected gradient on the Gram matrix, warm-started from the previous weights, at most
    pg_iters iterations. Stops at k atoms, when no column correlates positively, or when
    ||r|| <= tol ||b||. Returns (column indices in selection order, weights; some may be 0)."""
    if solver not in ("auto", "nnls", "pg"):
        raise ValueError(f"solver must be 'auto', 'nnls' or 'pg', got {solver!r}")
    A = np.asarray(A)
    if A.dtype not in (np.float32, np.float64):
        A = A.astype(np.float64)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    d, n = A.shape
    if b.size != d:
        raise ValueError(f"b has {b.size} entries, A has {d} rows")
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, {n}], got {k}")
    if atoms_per_step < 1:
        raise ValueError(f"atoms_per_step must be >= 1, got {atoms_per_step}")
    norms = np.linalg.norm(A, axis=0).astype(np.float64)
    inv = np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0)
    used = np.zeros(n, dtype=bool)
    support: list[int] = []
    w = np.zeros(0)
    As = np.zeros((d, 0))
    gram = np.zeros((0, 0))
    r = b.copy()
    bn = np.linalg.norm(b)
    while len(support) < k and np.linalg.norm(r) > tol * max(bn, 1e-300):
        corr = (A.T @ r.astype(A.dtype)).astype(np.float64) * inv
        corr[used] = -np.inf
        m = min(atoms_per_step, k - len(support))
        top = np.argpartition(-corr, m - 1)[:m] if m < n else np.arange(n)
        top = top[np.argsort(-corr[top], kind="stable")]
        top = top[corr[top] > 0]
        if top.size == 0:
            break
        support.extend(int(t) for t in top)
        used[top] = True
        new = A[:, top].astype(np.float64)
        cross = As.T @ new
        gram = np.block([[gram, cross], [cross.T, new.T @ new]])
        As = np.concatenate([As, new], axis=1)
        s = len(support)
        if solver == "nnls" or (solver == "auto" and s <= nnls_max_atoms):
            if lam > 0:
                w, _ = nnls(np.vstack([As, math.sqrt(lam) * np.eye(s)]), np.concatenate([b, np.zeros(s)]),
                            maxiter=max(50, 10 * s))
            else:
                w, _ = nnls(As, b, maxiter=max(50, 10 * s))
        else:
            w = _nnls_pg(gram + lam * np.eye(s), As.T @ b, np.concatenate([w, np.zeros(top.size)]), iters=pg_iters)
        r = b - As @ w
    return np.asarray(support, dtype=np.int64), w


def _match_group(G: np.ndarray, k: int, *, match_batch: int, lam: float, atoms_per_step: Optional[int],
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into the group's columns of G) and weights of exactly k samples."""
    n = G.shape[1]
    if k >= n:
        return np.arange(n), np.ones(n)
    b = G.sum(axis=1, dtype=np.float64)
    if match_batch > 1:
        perm = rng.permutation(n)
        chunks = [perm[i:i + match_batch] for i in range(0, n, match_batch)]
        atoms = np.stack([G[:, c].sum(axis=1, dtype=np.float64) for c in chunks], axis=1)
        k_atoms = min(len(chunks), math.ceil(k / match_batch))
    else:
        chunks, atoms, k_atoms = None, G, k
    step = atoms_per_step or max(1, math.ceil(k_atoms / 64))
    sup, w = omp_nonneg(atoms, b, k_atoms, lam=lam, atoms_per_step=step)
    pos_w = w > 0
    sup, w = sup[pos_w], w[pos_w]
    if chunks is not None:
        order = np.argsort(-w, kind="stable")  # keep the heaviest chunks whole, trim the lightest
        picked, wt = [], []
        for j in order:
            take = chunks[sup[j]][: k - sum(len(p) for p in picked)]
            if take.size:
                picked.append(take)
                wt.append(np.full(take.size, w[j]))
        pos = np.concatenate(picked) if picked else np.zeros(0, np.int64)
        wts = np.concatenate(wt) if wt else np.zeros(0)
    else:
        pos, wts = sup, w
    missing = k - pos.size
    if missing > 0:  # OMP stopped early (exact match or no positive correlation): random fill
        rest = np.setdiff1d(np.arange(n), pos)
        fill = np.sort(rng.choice(rest, size=missing, replace=False))
        pos = np.concatenate([pos, fill])
        wts = np.concatenate([wts, np.full(missing, wts.mean() if wts.size else 1.0)])
    return pos.astype(np.int64), wts


def gradmatch_select(r, h, labels, *, fraction: Optional[float] = None, count: Optional[int] = None, eps=0.0,
                     bias: bool = True, class_balanced: bool = True, match_batch: int = 1, lam: float = 0.0,
                     atoms_per_step: Optional[int] = None, seed: int = 0) -> Selection:
    """GRAD-MATCH from the gradient factors (last_layer_factors). Keeps exactly
    k = round(fraction * N) samples: per class (class_quotas, largest remainder) when
    class_balanced, matching that class's summed gradient; else one match of the pool's sum.

    match_batch = 1: per-sample atoms (GRAD-MATCH). match_batch = B > 1: atoms are the summed
    gradients of random groups of B samples of the class (the per-batch variant Li et al. use),
    ceil(k_c / B) groups chosen, the lightest chosen group trimmed to hit k_c exactly.
    atoms_per_step (default ceil(k_atoms / 64), so at most ~64 NNLS solves) trades accuracy for
    speed; NNLS is exact (scipy) up to 256 atoms, warm-started projected gradient beyond (omp_nonneg):
    a class of 6000 samples, k_c = 1800, per-sample atoms took ~17 s on 2 shared CPU cores.
    The gradient matrix of a group is held in memory (float32, (C*(D+1)) x n_group).
    Atoms OMP gives zero weight are dropped; when OMP stops short, random samples of the class
    (seeded) fill the budget at the class's mean weight. Weights are normalised to average 1 over
    the whole selection (matching sums, the raw weights are ~ n_c / k_c). eps: number or per-pool."""
    y = _labels(labels)
    n = y.size
    k = resolve_count(n, fraction=fraction, count=count)
    if int(match_batch) < 1:
        raise ValueError(f"match_batch must be >= 1, got {match_batch}")
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    r = (r.detach().cpu().numpy() if isinstance(r, torch.Tensor) else np.asarray(r)).astype(np.float64).reshape(n, -1)
    h = (h.detach().cpu().numpy() if isinstance(h, torch.Tensor) else np.asarray(h)).astype(np.float64).reshape(n, -1)
    rng = np.random.default_rng(seed)
    groups = ([(np.flatnonzero(y == c), q) for c, q in class_quotas(y, k).items()] if class_balanced
              else [(np.arange(n), k)])
    idx_parts, w_parts = [], []
    for members, q in groups:
        if q == 0:
            continue
        G = gradient_matrix(r[members], h[members], bias)
        pos, wts = _match_group(G, q, match_batch=int(match_batch), lam=lam, atoms_per_step=atoms_per_step, rng=rng)
        idx_parts.append(members[pos])
        w_parts.append(wts)
    idx = np.concatenate(idx_parts)
    w = np.concatenate(w_parts)
    order = np.argsort(idx)
    idx, w = idx[order], w[order]
    w = w / w.mean() if w.mean() > 0 else np.ones_like(w)
    e = np.asarray(eps, dtype=np.float64).reshape(-1)
    e = np.full(idx.size, float(e[0])) if e.size == 1 else _as_numpy(eps, "eps", np.float64)[idx]
    return Selection(torch.from_numpy(idx), torch.from_numpy(w.astype(np.float32)),
                     torch.from_numpy(e.astype(np.float32)))


def gradmatch_selection(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                        fraction: Optional[float] = None, count: Optional[int] = None, eps=0.1,
                        norm: str = "linf", steps: int = 10, step_size: Optional[float] = None,
                        adversarial: bool = True, class_balanced: bool = True, match_batch: int = 1,
                        lam: float = 0.0, atoms_per_step: Optional[int] = None, batch_size: int = 256,
                        device=None, seed: int = 0) -> Selection:
    """Adversarial GRAD-MATCH end to end: gradient factors at the PGD examples of `model`
    (eps, norm, steps as in training), then gradmatch_select. The Selection's eps is `eps`."""
    r, h, bias = last_layer_factors(model, images, labels, eps=eps, norm=norm, steps=steps, step_size=step_size,
                                    adversarial=adversarial, batch_size=batch_size, device=device, seed=seed)
    return gradmatch_select(r, h, labels, fraction=fraction, count=count, eps=eps, bias=bias,
                            class_balanced=class_balanced, match_batch=match_batch, lam=lam,
                            atoms_per_step=atoms_per_step, seed=seed)
