"""MFC covering, its solvers and the generalized-loss bound; random and k-centre baselines."""
import json
import math

import numpy as np
import pytest
import torch

from leanrobust.selection.kcenter import kcenter_selection
from leanrobust.selection.mfc import (coverage, greedy_cover, lp_relaxation, mfc_selection, milp_cover,
                                      to_unit_flat)
from leanrobust.selection.random_subset import random_selection
from leanrobust.selection import Selection

P = {"l2": 2.0, "l1": 1.0, "linf": math.inf}
DUAL = {"l2": 2.0, "l1": math.inf, "linf": 1.0}  # dual norm of the covering/attack norm


def brute(x: torch.Tensor, metric: str) -> np.ndarray:
    """Independent float64 pairwise distances (no matmul trick)."""
    xd = x.reshape(x.shape[0], -1).double()
    return torch.cdist(xd, xd, p=P[metric], compute_mode="donot_use_mm_for_euclid_dist").numpy()


def clustered(n_per_class=40, classes=2, dim=12, seed=0, spread=0.08):
    """Float images in [0.2, 0.8]: a few clusters per class, points near (not at) the box edges only."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for c in range(classes):
        centres = 0.3 + 0.4 * torch.rand(4, dim, generator=g)
        pick = torch.randint(0, 4, (n_per_class,), generator=g)
        xs.append((centres[pick] + spread * torch.randn(n_per_class, dim, generator=g)).clamp(0.2, 0.8))
        ys.append(torch.full((n_per_class,), c))
    return torch.cat(xs).reshape(-1, 1, 3, dim // 3), torch.cat(ys)


def check_cover(x, y, sel: Selection, rep, metric, eps):
    """Solver-independent check: every point has a same-class centre within its class's eta, and the
    Selection's weights/eps follow the documented rule."""
    D = brute(x, metric)
    idx = sel.indices.numpy()
    yn = y.numpy()
    eta = {c.label: c.eta for c in rep.classes}
    for i in range(len(yn)):
        same = idx[yn[idx] == yn[i]]
        assert D[i, same].min() <= eta[int(yn[i])] + 1e-9
        a = idx[rep.assigned[i]]
        assert yn[a] == yn[i]
        assert abs(D[i, a] - rep.distance[i]) < 1e-9
        assert rep.distance[i] <= eta[int(yn[i])] + 1e-12
    counts = np.bincount(rep.assigned, minlength=len(idx))
    assert counts.sum() == len(yn) and (counts > 0).all()
    np.testing.assert_allclose(sel.weight.numpy(), counts / counts.mean(), rtol=1e-6)
    assert abs(float(sel.weight.mean()) - 1.0) < 1e-5
    np.testing.assert_allclose(sel.eps.numpy(), eps + np.array([eta[int(yn[j])] for j in idx]), rtol=1e-6)
    assert rep.k == len(idx) and rep.n == len(yn)


@pytest.mark.parametrize("metric", ["l2", "l1", "linf"])
def test_coverage_matches_bruteforce_with_chunks(metric):
    x, _ = clustered(70, 1, seed=1)
    xf = to_unit_flat(x)
    D = brute(x, metric)
    r = float(np.quantile(D[np.triu_indices(len(D), 1)], 0.2))
    cov = coverage(xf, r, metric, chunk=16)  # several row blocks of the upper triangle
    A = cov.pattern().toarray().astype(bool)
    np.testing.assert_array_equal(A, D <= r)
    # stored distances are accurate and never above the radius; sub-radius filtering agrees
    rows = np.repeat(np.arange(cov.n), np.diff(cov.indptr))
    true = D[rows, cov.indices]
    assert (cov.dist <= r).all() and np.abs(cov.dist - true).max() < 1e-5
    r2 = 0.7 * r  # filtering at a smaller radius uses the stored (float32) distances
    clear = np.abs(D - r2) > 1e-5
    np.testing.assert_array_equal(cov.pattern(r2).toarray().astype(bool)[clear], (D <= r2)[clear])


def test_boundary_distance_counts_as_covered():
    """Points exactly eta apart are covered (<=), even where float32 matmul rounds the other way."""
    x = torch.zeros(3, 1, 4, 4)
    x[1, 0, 0, 0] = 0.5
    x[2, 0, 0, 0] = 1.0  # 0 -- 0.5 -- 1.0 on a line: one centre (the middle) covers all at radius 0.5
    y = torch.zeros(3, dtype=torch.long)
    sel, rep = mfc_selection(x, y, eps=0.0, radius=0.5, solver="milp")
    assert sel.indices.tolist() == [1] and rep.classes[0].eta == 0.5
    sel, rep = mfc_selection(x, y, eps=0.0, radius=0.5 - 1e-7, solver="milp")
    assert len(sel) == 3  # just below: nobody covers anybody else


@pytest.mark.parametrize("metric", ["l2", "l1", "linf"])
@pytest.mark.parametrize("mode", [{"radius": "q"}, {"ipc": 5}, {"fraction": 0.2}])
def test_every_point_covered_by_same_class_centre(metric, mode):
    x, y = clustered(40, 3, seed=2)
    kw = dict(mode)
    if "radius" in kw:
        D = brute(x, metric)
        kw["radius"] = float(np.quantile(D, 0.15))
    # force: these overlapping 12-pixel clusters are vacuous coverings (test_vacuous_*); this checks the cover
    sel, rep = mfc_selection(x, y, eps=0.1, metric=metric, solver="greedy", force=True, **kw)
    check_cover(x, y, sel, rep, metric, 0.1)
    for c in rep.classes:
        assert c.solver in ("greedy", "farthest_point", "trivial")
        if "radius" in kw:
            assert c.eta <= kw["radius"]
        else:
            assert c.k <= c.budget and c.eta_lower_bound <= c.eta + 1e-9
        assert c.lower_bound <= c.k and c.gap == c.k - c.lower_bound
    json.dumps(rep.to_dict())


def test_uint8_input_and_selection_roundtrip(tmp_path):
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (30, 1, 4, 4), generator=g, dtype=torch.uint8)
    y = torch.arange(30) % 3
    sel, rep = mfc_selection(x, y, eps=0.05, radius=1.5, force=True)  # random pixels: a vacuous covering
    check_cover(x.float() / 255, y, sel, rep, "l2", 0.05)
    sel.save(tmp_path / "mfc.npz")
    back = Selection.load(tmp_path / "mfc.npz")
    assert torch.equal(back.indices, sel.indices) and torch.allclose(back.weight, sel.weight)


def test_exact_milp_known_optimum_line_and_clusters():
    # 10 points on a line, spacing 0.05: at radius 0.06 a centre covers itself and its two neighbours,
    # so the minimum cover is ceil(10 / 3) = 4 (e.g. points 1, 4, 7, 9).
    line = torch.full((10, 1, 2, 2), 0.3)
    line[:, 0, 0, 0] = 0.1 + 0.05 * torch.arange(10)
    y = torch.zeros(10, dtype=torch.long)
    sel, rep = mfc_selection(line, y, eps=0.0, radius=0.06, solver="milp")
    c = rep.classes[0]
    assert c.k == 4 and c.solver == "milp" and c.gap == 0 and c.lower_bound == 4
    check_cover(line, y, sel, rep, "l2", 0.0)
    # 5 tight, well separated clusters of 6 points: the minimum cover is one centre per cluster.
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.2, 0.2], [0.2, 0.8], [0.8, 0.2], [0.8, 0.8], [0.5, 0.5]])
    pts = centres.repeat_interleave(6, 0) + 0.01 * torch.randn(30, 2, generator=g)
    xs = pts.reshape(30, 1, 1, 2)
    sel, rep = mfc_selection(xs, torch.zeros(30, dtype=torch.long), eps=0.0, radius=0.1, solver="milp")
    assert rep.classes[0].k == 5 and rep.classes[0].gap == 0
    # the authors' LP-pruned MILP finds the same optimum here
    sel2, rep2 = mfc_selection(xs, torch.zeros(30, dtype=torch.long), eps=0.0, radius=0.1, solver="lp_milp")
    assert rep2.classes[0].k == 5


def test_greedy_never_smaller_than_exact_and_lp_bounds():
    strict = 0
    for seed in range(6):
        x, _ = clustered(60, 1, dim=6, seed=10 + seed, spread=0.15)
        xf = to_unit_flat(x)
        D = brute(x, "l2")
        r = float(np.quantile(D[np.triu_indices(60, 1)], 0.1))
        A = coverage(xf, r).pattern()
        g = greedy_cover(A)
        opt, optimal, _ = milp_cover(A, time_limit=20)
        lp, _ = lp_relaxation(A)
        assert optimal and g.size >= opt.size >= math.ceil(lp - 1e-6)
        strict += g.size > opt.size
        # through the public API too: report solver and bounds
        _, rep_g = mfc_selection(x, torch.zeros(60, dtype=torch.long), eps=0, radius=r, solver="greedy")
        _, rep_m = mfc_selection(x, torch.zeros(60, dtype=torch.long), eps=0, radius=r, solver="milp")
        assert rep_g.classes[0].k >= rep_m.classes[0].k == opt.size
        assert rep_m.classes[0].lp_bound == pytest.approx(lp) and rep_m.classes[0].lp_gap >= 0
    assert strict >= 1  # on these instances greedy is strictly worse at least once, so the MILP matters


@pytest.mark.parametrize("solver", ["milp", "greedy"])
def test_bisection_finds_smallest_feasible_eta(solver):
    x, _ = clustered(40, 1, dim=6, seed=5, spread=0.12)
    y = torch.zeros(40, dtype=torch.long)
    k, tol = 6, 1e-3
    sel, rep = mfc_selection(x, y, eps=0.0, ipc=k, solver=solver, tol=tol)
    c = rep.classes[0]
    assert c.k <= k
    check_cover(x, y, sel, rep, "l2", 0.0)
    if solver == "milp":  # exact feasibility is monotone in eta: eta feasible, eta - tol not
        _, at = mfc_selection(x, y, eps=0.0, radius=c.eta, solver="milp")
        _, below = mfc_selection(x, y, eps=0.0, radius=c.eta - tol, solver="milp")
        assert at.classes[0].k <= k < below.classes[0].k
        assert c.eta >= c.eta_lower_bound  # Gonzalez: optimal k-centre radius >= r_fp / 2


@pytest.mark.parametrize("metric", ["l2", "linf", "l1"])
def test_generalized_loss_bound_linear_closed_form(metric):
    """For a linear logistic model f(x) = w.x + b and label s in {-1, 1}, the worst case over the
    unbounded ball ||d|| <= r is softplus(-s f(x) + r ||w||_*) (dual norm), exactly. Since every
    point x lies within eta of its same-label centre c, -s f(x) + eps||w||_* <= -s f(c) + (eps + eta)
    ||w||_*, so the weighted loss on the centres bounds the mean loss on all points. The [0,1] box is
    ignored on both sides (unbounded balls), which is what the inclusion argument covers."""
    x, y = clustered(50, 2, seed=7)
    eps = 0.05
    for mode in ({"radius": 0.25 if metric != "l1" else 1.0}, {"ipc": 4}):
        sel, rep = mfc_selection(x, y, eps=eps, metric=metric, solver="greedy", force=True, **mode)  # the bound holds anyway
        X = x.reshape(len(x), -1).double()
        s = (2 * y - 1).double()
        g = torch.Generator().manual_seed(1)
        for _ in range(5):
            w = torch.randn(X.shape[1], generator=g, dtype=torch.float64) * 3
            b = float(torch.randn((), generator=g, dtype=torch.float64))
            wn = torch.linalg.vector_norm(w, ord=DUAL[metric])
            full = torch.nn.functional.softplus(-s * (X @ w + b) + eps * wn).mean()
            ci = sel.indices
            centre_loss = torch.nn.functional.softplus(-s[ci] * (X[ci] @ w + b) + sel.eps.double() * wn)
            bound = (sel.weight.double() * centre_loss).mean()  # the trainer's (weight * loss).mean()
            assert bound >= full - 1e-9
            # weights = covered counts / mean count, i.e. (count / n) summed = the same bound
            counts = np.bincount(rep.assigned, minlength=len(ci))
            assert float((torch.from_numpy(counts / len(X)) * centre_loss).sum()) == pytest.approx(float(bound))


def test_kcenter_and_random_selection():
    x, y = clustered(40, 3, seed=8)
    r = random_selection(y, ipc=5, seed=1, eps=0.1)
    assert len(r) == 15 and torch.equal(r.indices, r.indices.sort().values)
    assert np.bincount(y[r.indices].numpy()).tolist() == [5, 5, 5]
    assert torch.equal(random_selection(y, ipc=5, seed=1).indices, r.indices)
    assert (r.weight == 1).all() and torch.allclose(r.eps, torch.full((15,), 0.1))
    assert np.bincount(y[random_selection(y, fraction=0.25, seed=0).indices].numpy()).tolist() == [10, 10, 10]
    kc = kcenter_selection(x, y, ipc=5, seed=0, eps=0.2)
    assert np.bincount(y[kc.indices].numpy()).tolist() == [5, 5, 5] and (kc.weight == 1).all()
    # farthest-point greedy is a 2-approximation of the optimal k-centre radius (exact via MILP bisection)
    D = brute(x, "l2")
    _, rep = mfc_selection(x, y, eps=0.0, ipc=5, solver="milp", tol=1e-4)
    for c in rep.classes:
        members = np.flatnonzero(y.numpy() == c.label)
        centres = kc.indices.numpy()[y.numpy()[kc.indices.numpy()] == c.label]
        r_kc = D[np.ix_(members, centres)].min(1).max()
        assert r_kc <= 2 * c.eta + 1e-4


@pytest.mark.parametrize("kw, name", [
    ({"ipc": 0}, "ipc"), ({"ipc": -3}, "ipc"), ({"ipc": 41}, "ipc"), ({"ipc": 2.5}, "ipc"),
    ({"fraction": 0.0}, "fraction"), ({"fraction": 1.5}, "fraction"), ({"fraction": float("nan")}, "fraction"),
    ({"radius": -0.1}, "radius"), ({"radius": float("inf")}, "radius"),
    ({"radius": 0.1, "ipc": 3}, "radius"), ({"ipc": 3, "fraction": 0.1}, "ipc"), ({}, "radius"),
    ({"radius": 0.1, "metric": "l3"}, "metric"), ({"radius": 0.1, "solver": "cplex"}, "solver"),
    ({"radius": 0.1, "eps": -1.0}, "eps"),
])
def test_bad_budgets_raise_naming_the_parameter(kw, name):
    x, y = clustered(40, 2, seed=9)
    kw = dict(kw)
    eps = kw.pop("eps", 0.1)
    with pytest.raises(ValueError, match=name):
        mfc_selection(x, y, eps=eps, **kw)


@pytest.mark.parametrize("kw, name", [({"ipc": 0}, "ipc"), ({"ipc": 100}, "ipc"), ({"fraction": 2.0}, "fraction"),
                                      ({}, "ipc"), ({"ipc": 2, "fraction": 0.5}, "ipc")])
def test_baselines_bad_budgets_raise(kw, name):
    x, y = clustered(40, 2, seed=9)
    with pytest.raises(ValueError, match=name):
        random_selection(y, seed=0, **kw)
    with pytest.raises(ValueError, match=name):
        kcenter_selection(x, y, seed=0, **kw)
    with pytest.raises(ValueError, match="metric"):
        kcenter_selection(x, y, ipc=2, metric="cosine")


def test_float_images_outside_unit_box_rejected():
    x, y = clustered(10, 1)
    with pytest.raises(ValueError, match="images"):
        mfc_selection(x * 3, y, eps=0.1, radius=0.2)


def test_common_image_rule_linf_exact_and_l2_search():
    """The vacuity rule: do the balls B(c_j, r_j) of all centres share an image of [0,1]^D?"""
    from leanrobust.selection.mfc import _common_image

    c = torch.tensor([[0.1] * 4, [0.9] * 4])
    assert _common_image(c, torch.tensor([0.4, 0.4]), "linf") == (True, pytest.approx(0.4))
    assert _common_image(c, torch.tensor([0.3, 0.5]), "linf")[0]  # 0.1 + 0.3 >= 0.9 - 0.5
    assert not _common_image(c, torch.tensor([0.39, 0.4]), "linf")[0]
    assert not _common_image(torch.tensor([[0.0], [1.0]]), torch.tensor([0.6, 0.3]), "linf")[0]  # box edge
    tri = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, 1.0]])  # circumradius 0.625 (centre (0.5, 0.375))
    found, radius = _common_image(tri, torch.full((3,), 0.64), "l2")
    assert found and 0.625 <= radius < 0.64
    assert not _common_image(tri, torch.full((3,), 0.6), "l2")[0]


def test_vacuous_covering_raises_with_the_result_and_force_returns_it():
    """Two classes of images near 0 and near 1: once eps + eta reaches half the centres' widest pixel
    range, every Linf ball contains one image, which no classifier labels right for both classes."""
    from leanrobust.selection.mfc import VacuousCoverError

    g = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 2
    x = (0.25 * torch.rand(40, 1, 2, 4, generator=g) + 0.75 * y.view(-1, 1, 1, 1)).clamp(0, 1)
    sel, rep = mfc_selection(x, y, eps=0.05, ipc=2, metric="linf")  # eps + eta ~ 0.25: fine
    assert not rep.vacuous and rep.common_radius == pytest.approx(float((x[sel.indices].amax(0) - x[sel.indices].amin(0)).max()) / 2)
    with pytest.raises(ValueError, match=r"vacuous MFC covering.*force=True") as err:
        mfc_selection(x, y, eps=0.3, ipc=2, metric="linf")
    assert isinstance(err.value, VacuousCoverError) and err.value.report.vacuous and len(err.value.selection) == 4
    sel, rep = mfc_selection(x, y, eps=0.3, ipc=2, metric="linf", force=True)
    assert rep.vacuous and rep.to_dict()["vacuous"] and float(sel.eps.min()) >= rep.common_radius


def test_nn_median_and_training_norm_radius():
    """The report's median nearest-neighbour distance (covering metric, same class) matches brute force;
    with norm="linf" on an L2 covering, eps + eta uses the assigned points' Linf distances."""
    x, y = clustered(40, 2, seed=4)
    D = brute(x, "l2")
    yn = y.numpy()
    np.fill_diagonal(D, np.inf)
    nn = np.array([D[i, yn == yn[i]].min() for i in range(len(yn))])
    sel, rep = mfc_selection(x, y, eps=0.05, radius=float(nn.max()) + 0.01, metric="l2", norm="linf", force=True)
    assert rep.nn_median == pytest.approx(float(np.median(nn)), rel=1e-5)
    Dinf = brute(x, "linf")
    idx = sel.indices.numpy()
    for c in rep.classes:
        pts = np.flatnonzero(yn == c.label)
        c_inf = max(Dinf[i, idx[rep.assigned[i]]] for i in pts)
        assert c.eta_norm == pytest.approx(c_inf) and c.eta_norm <= c.eta
        assert np.allclose(sel.eps.numpy()[yn[idx] == c.label], 0.05 + c_inf)
