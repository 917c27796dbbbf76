"""Data selection: scores, pruning, PUMA, GRAD-MATCH, dynamic re-selection, Bullet-Train, CLI."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import typer
from torch import nn
from typer.testing import CliRunner

from leanrobust.accounting import PassCounter
from leanrobust.config import validate_config
from leanrobust.data.pool import Pool
from leanrobust.objectives.bullet import BOUNDARY, OUTLIER, ROBUST, SKIPPED, bullet_pgd_at, bullet_trades
from leanrobust.selection import Selection
from leanrobust.selection.schedule import SelectionSchedule, selection_epochs
from leanrobust.selection.gradmatch import gradient_matrix, gradmatch_select, last_layer_factors, omp_nonneg
from leanrobust.selection.pruning import class_quotas, select_by_score
from leanrobust.selection.puma import puma_selection
from leanrobust.selection.scores import ForgettingTracker, compute_score_table, compute_scores


@pytest.fixture(autouse=True)
def one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def linear_model(d=16, c=3, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, c)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(c, d, generator=g) * scale)
        lin.bias.copy_(torch.randn(c, generator=g) * 0.1)
    return nn.Sequential(nn.Flatten(), lin)


def mid_images(n, shape=(1, 4, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(110, 146, (n, *shape), generator=g, dtype=torch.uint8)


# ----------------------------------------------------------------------------- scores
@pytest.mark.parametrize("norm,q", [("l2", 2), ("linf", 1)])
def test_deepfool_margin_of_linear_model_is_the_closed_form_distance(norm, q):
    model = linear_model(scale=1.0)
    imgs = mid_images(20)
    x = imgs.float() / 255
    with torch.no_grad():
        z = model(x)
    pred = z.argmax(1)
    W = model[1].weight.detach()
    dist = []
    for i in range(20):
        k = [j for j in range(3) if j != pred[i]]
        dist.append(min(float((z[i, pred[i]] - z[i, j]).abs() / (W[pred[i]] - W[j]).norm(p=q)) for j in k))
    dist = np.array(dist)
    m = compute_scores(model, imgs, pred, "margin", norm=norm, overshoot=0.0, signed=False)
    assert m.dtype == np.float32 and m.shape == (20,)
    # DeepFool adds 1e-4 to |f| (reference code): the only gap to the exact distance
    np.testing.assert_allclose(m, dist, rtol=1e-3, atol=2e-4)
    signed = compute_scores(model, imgs, (pred + 1) % 3, "margin", norm=norm, overshoot=0.0)
    np.testing.assert_allclose(signed, -m, rtol=1e-5)  # misclassified -> negative margin


def reference_kappa(model, x, y, eps, steps, alpha, noise):
    """Per-sample PGD-linf written from the definition: count correct iterates before each step."""
    out = []
    for i in range(x.shape[0]):
        xi, yi = x[i:i + 1], y[i:i + 1]
        xa = (xi + noise[i:i + 1] * eps).clamp(0, 1)
        k = 0
        for _ in range(steps):
            xa = xa.detach().requires_grad_(True)
            logits = model(xa)
            k += int(logits.argmax(1).item() == yi.item())
            g, = torch.autograd.grad(F.cross_entropy(logits, yi), xa)
            xa = torch.min(torch.max(xa.detach() + alpha * eps * g.sign(), xi - eps), xi + eps).clamp(0, 1)
        out.append(k)
    return np.array(out, dtype=np.float32)


def test_kappa_scorer_matches_per_sample_reference_loop():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))
    imgs = mid_images(24, seed=2)
    x = imgs.float() / 255
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:4] = (y[:4] + 1) % 3  # some start misclassified
    eps, steps, seed = 0.25, 5, 7
    kappa = compute_scores(model, imgs, y, "kappa", eps=eps, steps=steps, batch_size=24, seed=seed)
    torch.manual_seed(seed)  # the scorer's random start is the first draw after seeding
    noise = 2 * torch.rand(x.shape) - 1
    ref = reference_kappa(model, x, y, eps, steps, 2.5 / steps, noise)
    np.testing.assert_array_equal(kappa, ref)
    assert len(set(kappa.tolist())) > 1  # a non-trivial case
    again = compute_scores(model, imgs, y, "kappa", eps=eps, steps=steps, batch_size=24, seed=seed)
    np.testing.assert_array_equal(kappa, again)


def test_score_table_shares_passes_and_restores_mode():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 10), nn.ReLU(), nn.Dropout(0.5), nn.Linear(10, 3))
    model.train()
    imgs, y = mid_images(12), torch.arange(12) % 3
    counter = PassCounter()
    counter.attach(model)
    tab = compute_score_table(model, imgs, y, ["kappa", "loss", "pm", "el2n", "grand"], eps=0.1, steps=3)
    # one PGD-3 run (grad) + one adversarial and one clean no-grad forward per sample
    assert counter.grad_evals == 12 * 3 and counter.forward_evals == 12 * 2
    assert model.training and model[3].training
    p = F.softmax(model.eval()(imgs.float() / 255), 1).detach()
    onehot = F.one_hot(y, 3).float()
    np.testing.assert_allclose(tab["el2n"], (p - onehot).norm(dim=1).numpy(), rtol=1e-5)
    h = F.relu(model[1](imgs.float().flatten(1) / 255)).detach()
    grand = (p - onehot).norm(dim=1) * (h.pow(2).sum(1) + 1).sqrt()
    np.testing.assert_allclose(tab["grand"], grand.numpy(), rtol=1e-5)
    assert all(v.dtype == np.float32 and v.shape == (12,) for v in tab.values())
    with pytest.raises(ValueError, match="unknown score method 'nope'"):
        compute_scores(model, imgs, y, "nope")
    with pytest.raises(ValueError, match="q"):
        compute_scores(model, imgs, y, "loss", q=0.1)
    r1 = compute_scores(None, imgs, y, "random", seed=3)
    assert np.array_equal(r1, compute_scores(None, imgs, y, "random", seed=3))


def test_forgetting_tracker_counts_correct_to_incorrect():
    tr = ForgettingTracker(4)
    for correct in ([1, 0, 1, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 1, 0]):
        tr.update(np.arange(4), np.array(correct, bool))
    s = tr.scores()
    assert s[0] == 2 and s[2] == 1 and s[3] == s[1] == 5  # never learned: observations + 1
    assert np.array_equal(compute_scores(None, mid_images(4), torch.zeros(4, dtype=torch.long), "forgetting",
                                         tracker=tr), s)
    with pytest.raises(ValueError, match="tracker"):
        compute_scores(None, mid_images(4), torch.zeros(4, dtype=torch.long), "forgetting")


# ----------------------------------------------------------------------------- pruning
def test_selection_keeps_exact_count_class_balanced_within_one():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(5), [40, 13, 27, 7, 13])
    rng.shuffle(y)
    scores = rng.random(y.size)
    n = y.size
    for f in (0.05, 0.17, 0.5, 0.73, 1.0):
        sel = select_by_score(scores, y, fraction=f, eps=0.3)
        assert len(sel) == round(f * n) and len(set(sel.indices.tolist())) == len(sel)
        kept = np.bincount(y[sel.indices.numpy()], minlength=5)
        prop = np.bincount(y, minlength=5) * len(sel) / n
        assert np.all(np.abs(kept - prop) < 1)
        assert torch.all(sel.eps == 0.3) and torch.all(sel.weight == 1)
    assert sum(class_quotas(y, 50).values()) == 50
    glob = select_by_score(scores, y, count=20, class_balanced=False)
    assert set(glob.indices.tolist()) == set(np.argsort(scores)[:20].tolist())
    for bad, match in (({"fraction": 0.0}, "fraction"), ({"fraction": 1.5}, "fraction"), ({"count": 0}, "count"),
                       ({"count": n + 1}, "count"), ({"fraction": 0.001}, "fraction"), ({}, "fraction")):
        with pytest.raises(ValueError, match=match):
            select_by_score(scores, y, **bad)


def test_prune_highest_and_lowest_keep_the_right_samples():
    scores = np.array([5., 1., 3., 2., 4., 0., 9., 9., 7., 8.])
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    lo = select_by_score(scores, y, count=4, prune="highest")  # keep lowest 2 of each class
    assert lo.indices.tolist() == [1, 3, 5, 8]
    hi = select_by_score(scores, y, count=4, prune="lowest")  # keep highest; the 9-9 tie -> smaller index
    assert hi.indices.tolist() == [0, 4, 6, 7]
    tie = select_by_score(np.zeros(6), np.zeros(6, int), count=3, prune="lowest")
    assert tie.indices.tolist() == [0, 1, 2]
    w = select_by_score(scores, y, count=4, weight=np.arange(10.0), eps=np.arange(10.0) / 100)
    assert w.weight.tolist() == [1, 3, 5, 8] and np.allclose(w.eps.numpy(), [0.01, 0.03, 0.05, 0.08])


# ----------------------------------------------------------------------------- PUMA
def test_puma_eps_rule_on_a_hand_made_case():
    margins = np.array([0.02, 0.5, 0.05, 0.9, -0.1, 0.3, 0.08, 0.7, 0.01, 0.4])
    y = np.zeros(10, int)
    sel = puma_selection(margins, y, fraction=0.8, eps=0.1, q=0.5, floor=0.015, scale=1.0)
    # pruned: the two highest margins (0.9 at 3, 0.7 at 7); the 4 lowest of the 8 kept get lowered eps
    assert sel.indices.tolist() == [0, 1, 2, 4, 5, 6, 8, 9]
    expect = {0: 0.02, 1: 0.1, 2: 0.1, 4: 0.015, 5: 0.1, 6: 0.1, 8: 0.015, 9: 0.1}
    # lowest four of kept: -0.1 (4) -> floor, 0.01 (8) -> floor, 0.02 (0), 0.05 (2) -> 0.05
    expect[2] = 0.05
    np.testing.assert_allclose(sel.eps.numpy(), [expect[i] for i in sel.indices.tolist()], rtol=1e-6)
    rng = np.random.default_rng(1)
    m = rng.normal(0.1, 0.2, 300)
    lab = rng.integers(0, 3, 300)
    s = puma_selection(m, lab, fraction=0.6, eps=0.1, q=0.3, scale=3.0)
    assert len(s) == 180 and s.eps.max() <= np.float32(0.1) and float(s.eps.min()) >= 0.0
    assert 0 < int((s.eps < np.float32(0.1)).sum()) <= round(0.3 * 180)
    with pytest.raises(ValueError, match="floor"):
        puma_selection(m, lab, fraction=0.6, eps=0.1, floor=0.2)


# ----------------------------------------------------------------------------- GRAD-MATCH
def test_omp_recovers_a_sparse_nonnegative_combination():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((60, 150))
    support = np.array([3, 41, 77, 120, 149])
    w_true = np.array([1.0, 2.5, 0.7, 1.8, 1.2])
    b = A[:, support] @ w_true
    idx, w = omp_nonneg(A, b, 5)
    order = np.argsort(idx)
    assert np.array_equal(idx[order], support)
    np.testing.assert_allclose(w[order], w_true, rtol=1e-6)
    idx2, w2 = omp_nonneg(A, b, 20)  # stops once b is matched
    assert set(idx2.tolist()) == set(support.tolist())
    idx3, w3 = omp_nonneg(A, b, 5, solver="pg", pg_iters=3000)  # the warm-started projected-gradient solver
    order = np.argsort(idx3)
    assert np.array_equal(idx3[order], support)
    np.testing.assert_allclose(w3[order], w_true, rtol=1e-4)


def test_fista_step_bound_is_above_the_top_eigenvalue():
    from leanrobust.selection.gradmatch import _top_eig

    rng = np.random.default_rng(0)
    a = rng.standard_normal((120, 200))
    g = a @ a.T
    top = np.linalg.eigvalsh(g)[-1]
    assert top <= _top_eig(g) <= 1.02 * top  # 1/L must not exceed 1/lambda_max (FISTA's step)
    assert _top_eig(np.zeros((100, 100))) == 0.0  # all-zero gradients
    u = np.zeros(100)
    u[0], u[1] = 1.0, -1.0  # range orthogonal to the all-ones start vector
    assert _top_eig(np.outer(u, u)) == pytest.approx(2.0 * 1.01)


def test_gradmatch_gradients_and_selection():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.ReLU(), nn.Linear(6, 3))
    imgs, y = mid_images(30), torch.arange(30) % 3
    r, h, bias = last_layer_factors(model, imgs, y, adversarial=False)
    G = gradient_matrix(r, h, bias)
    i = 4
    model.zero_grad()
    F.cross_entropy(model(imgs[i:i + 1].float() / 255), y[i:i + 1]).backward()
    auto = torch.cat([model[3].weight.grad.flatten(), model[3].bias.grad]).numpy()
    np.testing.assert_allclose(G[:, i], auto, rtol=1e-4, atol=1e-6)
    sel = gradmatch_select(r, h, y, fraction=0.4, eps=0.1)
    assert len(sel) == 12 and np.bincount(y[sel.indices].numpy(), minlength=3).tolist() == [4, 4, 4]
    assert abs(float(sel.weight.mean()) - 1) < 1e-5 and torch.all(sel.weight > 0) and torch.all(sel.eps == 0.1)
    pb = gradmatch_select(r, h, y, fraction=0.5, eps=0.1, match_batch=3)
    assert len(pb) == 15


# ----------------------------------------------------------------------------- dynamic
def fake_trainer(n=24, epochs=8, **sel):
    cfg = validate_config({"seed": 1, "objective": {"eps": 0.2, "steps": 2}, "optim": {"epochs": epochs},
                           "selection": sel})
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    pool = Pool.from_tensors(mid_images(n), torch.arange(n) % 3, 3)
    tr = SimpleNamespace(cfg=cfg, model=model, pool=pool, selection=Selection.full(n, 0.2), device=torch.device("cpu"))
    return cfg, tr


def run_hook(cfg, tr):
    hook = SelectionSchedule(cfg)
    new = []
    for e in range(cfg.optim.epochs):
        sel = hook(tr.model, tr.pool, tr.selection, e)
        if sel is not None:
            new.append(e)
            tr.selection = sel
    return hook, new


@pytest.mark.parametrize("method", ["loss", "random", "puma", "gradmatch", "el2n"])
def test_dynamic_reselection_happens_on_schedule(method):
    cfg, tr = fake_trainer(method=method, fraction=0.5, every=3, start_epoch=1)
    hook, new = run_hook(cfg, tr)
    assert new == [1, 4, 7] == hook.calls == selection_epochs(1, 3, 8)
    assert len(tr.selection) == 12 and tr.selection.eps.max() <= np.float32(0.2)


def test_static_selection_once_and_full_pool_before_start():
    cfg, tr = fake_trainer(method="margin", fraction=0.25, start_epoch=2, params={"deepfool_steps": 5})
    tr.selection = Selection(torch.arange(5), torch.ones(5), torch.full((5,), 0.2))  # not the full pool
    hook, new = run_hook(cfg, tr)
    assert new == [0, 2] and hook.calls == [2] and len(tr.selection) == 6
    cfg, tr = fake_trainer(method="forgetting", fraction=0.5, start_epoch=3)
    hook, new = run_hook(cfg, tr)
    assert new == [3] and hook.last_scores is not None
    with pytest.raises(ValueError, match="start_epoch >= 2"):
        SelectionSchedule(fake_trainer(method="forgetting", start_epoch=0)[0])
    with pytest.raises(ValueError, match="not accepted"):
        SelectionSchedule(fake_trainer(method="loss", params={"q": 0.1})[0])
    with pytest.raises(ValueError, match="unknown selection.method"):
        SelectionSchedule(fake_trainer(method="bogus")[0])
    with pytest.raises(ValueError, match="highest margins"):  # was silently ignored
        SelectionSchedule(fake_trainer(method="puma", prune="lowest")[0])
    with pytest.raises(ValueError, match="gradmatch"):
        SelectionSchedule(fake_trainer(method="gradmatch", prune="highest")[0])


def test_dynamic_selection_in_a_real_trainer_counts_scoring_passes(tmp_path):
    from leanrobust.train import Trainer

    rng = np.random.default_rng(0)
    n = 48
    np.savez(tmp_path / "d.npz", image=rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
             label=np.arange(n) % 3)
    cfg = validate_config({
        "progress": False, "data": {"dataset": "npz", "path": str(tmp_path / "d.npz"), "num_classes": 3,
                                    "val_size": 6, "augment": False},
        "model": {"width": 0.125}, "objective": {"eps": 0.1, "steps": 1},
        "optim": {"epochs": 4, "batch_size": 16}, "validation": {"n": 0},
        "selection": {"method": "loss", "fraction": 0.5, "every": 1, "start_epoch": 1}})
    trainer = Trainer(cfg, tmp_path / "run", selection_schedule=SelectionSchedule(cfg))
    assert trainer.fit(stop_after_epoch=3) is None
    assert trainer.selection_schedule.calls == [1, 2] and len(trainer.selection) == 21
    # 42 pool samples: epoch 0 trains all (2 grad passes each), epochs 1-2 train 21 and first score
    # the pool (PGD-1: 1 grad pass and 1 no-grad forward each)
    assert trainer.counter.grad_evals == 42 * 2 + 2 * (21 * 2 + 42)
    assert trainer.counter.forward_evals == 2 * 42
    # the schedule runs in epochs: 3 batches in epoch 0, 2 after the selection; each logged rate is the
    # closed form at the epoch's last batch, not one from a horizon recomputed from the shorter epochs
    from leanrobust.schedule import lr_factor

    logged = [json.loads(ln)["lr"] for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    o = cfg.optim
    expected = [o.lr * lr_factor(o, e, ipe - 1, ipe) for e, ipe in enumerate([3, 2, 2])]
    assert logged == pytest.approx(expected)


def test_a_trainer_without_the_schedule_its_config_names_refuses_to_start(tmp_path):
    """The trainer imports no method: a selection config without an injected schedule is an error naming the
    builder, never a run that silently trains on the full pool."""
    from leanrobust.train import Trainer

    cfg = validate_config({"selection": {"method": "loss", "fraction": 0.5}})
    with pytest.raises(ValueError, match=r"selection.method 'loss' needs its selection schedule.*build_trainer"):
        Trainer(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_config_and_the_registry_name_the_same_methods():
    from leanrobust.config import SELECTION_METHODS
    from leanrobust.selection.registry import METHODS

    assert tuple(METHODS) == SELECTION_METHODS


# ----------------------------------------------------------------------------- Bullet-Train
def test_bullet_allocation_and_weight_zero():
    w = torch.zeros(1, 16)
    w[0, :8], w[0, 8:] = 1.0, -1.0
    lin = nn.Linear(16, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.cat([w, -w]) / 2)  # f1 - f0 = -w.x: the linf distance is |w.x| / 16
    model = nn.Sequential(nn.Flatten(), lin)
    counter = PassCounter()
    counter.attach(model)
    base = torch.full((6, 1, 4, 4), 0.5)
    shift = torch.tensor([0.2, 0.02, -0.03, 0.2, 0.01, 0.2])  # w.x = 16 * shift
    x = base + shift[:, None, None, None] * torch.sign(w.reshape(1, 1, 4, 4))
    y = torch.tensor([0, 0, 0, 0, 0, 1])  # class 0 iff w.x > 0
    weight = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    out = bullet_pgd_at(model, x, y, 0.05, weight, steps=4, probe_steps=1)
    # 0: far (robust), 1: within eps (boundary), 2: wrong side (outlier), 3: robust, 4: weight 0, 5: outlier
    assert out.extras["group"].tolist() == [ROBUST, BOUNDARY, OUTLIER, ROBUST, SKIPPED, OUTLIER]
    assert out.extras["steps"].tolist() == [1, 5, 0, 1, 0, 0]
    # passes: 5 clean + 3 probe-check forwards; probe 1 step x 3 + full 4 steps x 1 + 6 training forwards
    assert counter.forward_evals == 5 + 3 and counter.grad_evals == 3 + 4 + 6
    np.testing.assert_allclose(out.loss.item(), (weight * out.per_sample).mean().item(), rtol=1e-6)
    y2 = y.clone()
    y2[4] = 1  # a weight-0 sample's label does not change the loss
    again = bullet_pgd_at(model, x, y2, 0.05, weight, steps=4, probe_steps=1)
    assert torch.isclose(again.loss, out.loss)
    tr = bullet_trades(model, x, y, 0.05, weight, steps=4, probe_steps=1)
    g = tr.extras["group"].tolist()  # the KL probe starts at x + 0.001 N(0, 1): sample 1 may move either way
    assert g[:1] + g[2:] == [ROBUST, OUTLIER, ROBUST, SKIPPED, OUTLIER] and g[1] in (ROBUST, BOUNDARY)
    with pytest.raises(ValueError, match="probe_steps"):
        bullet_pgd_at(model, x, y, 0.05, weight, steps=2, probe_steps=2)


# ----------------------------------------------------------------------------- CLI
def cli_app():
    from leanrobust.cli.selection import register

    app = typer.Typer()
    register(app)
    return app


def test_cli_select_writes_a_selection_that_loads(tmp_path):
    from leanrobust.selection.scores_file import read_scores, write_scores

    rng = np.random.default_rng(0)
    n = 40
    write_scores(tmp_path / "s.npz", rng.random(n), np.arange(n) % 4, np.arange(100, 100 + n),
                 np.zeros(n, bool), {"method": "margin", "eps": 0.1})
    arrays, meta = read_scores(tmp_path / "s.npz")
    assert meta["method"] == "margin" and arrays["scores"].dtype == np.float32
    runner = CliRunner()
    r = runner.invoke(cli_app(), ["select", str(tmp_path / "s.npz"), "--fraction", "0.5", "--prune", "lowest",
                                  "--out", str(tmp_path / "sel.npz")])
    assert r.exit_code == 0, r.output
    sel = Selection.load(tmp_path / "sel.npz")
    assert len(sel) == 20 and int(sel.indices.min()) >= 100 and torch.all(sel.eps == np.float32(0.1))
    r = runner.invoke(cli_app(), ["select", str(tmp_path / "s.npz"), "--fraction", "0.5", "--puma", "--q", "0.5",
                                  "--out", str(tmp_path / "puma.npz")])
    assert r.exit_code == 0, r.output
    assert Selection.load(tmp_path / "puma.npz").eps.max() <= np.float32(0.1)
    write_scores(tmp_path / "l2.npz", rng.random(n), np.arange(n) % 4, np.arange(n), np.zeros(n, bool),
                 {"method": "margin", "eps": 0.1, "norm": "linf", "params": {"margin_norm": "l2"}})
    r = runner.invoke(cli_app(), ["select", str(tmp_path / "l2.npz"), "--fraction", "0.5", "--puma",
                                  "--out", str(tmp_path / "bad.npz")])
    assert r.exit_code == 2 and "l2 margins" in r.output and not (tmp_path / "bad.npz").exists()
    r = runner.invoke(cli_app(), ["select", str(tmp_path / "s.npz"), "--fraction", "0", "--out",
                                  str(tmp_path / "x.npz")])
    assert r.exit_code == 2 and "fraction" in r.output
    r = runner.invoke(cli_app(), ["select", str(tmp_path / "nope.npz"), "--fraction", "0.5", "--out",
                                  str(tmp_path / "x.npz")])
    assert r.exit_code == 2 and "nope.npz" in r.output


def test_cli_select_prunes_in_the_scores_direction_by_default(tmp_path):
    from leanrobust.selection.scores_file import write_scores

    n, runner = 40, CliRunner()
    s = np.arange(n, dtype=float)  # score i for pool index i
    for method, kept in (("el2n", range(20, 40)), ("margin", range(0, 20))):  # el2n: low = easy, pruned
        write_scores(tmp_path / f"{method}.npz", s, np.zeros(n, int), np.arange(n), np.zeros(n, bool),
                     {"method": method, "eps": 0.1})
        r = runner.invoke(cli_app(), ["select", str(tmp_path / f"{method}.npz"), "--fraction", "0.5", "--global",
                                      "--out", str(tmp_path / f"{method}_sel.npz")])
        assert r.exit_code == 0, r.output
        assert Selection.load(tmp_path / f"{method}_sel.npz").indices.tolist() == list(kept)
    write_scores(tmp_path / "anon.npz", s, np.zeros(n, int), np.arange(n), np.zeros(n, bool), {"eps": 0.1})
    r = runner.invoke(cli_app(), ["select", str(tmp_path / "anon.npz"), "--fraction", "0.5", "--out", str(tmp_path / "a.npz")])
    assert r.exit_code == 2 and "--prune highest or --prune lowest" in r.output
    r = runner.invoke(cli_app(), ["select", str(tmp_path / "anon.npz"), "--fraction", "0.5", "--puma",
                                  "--out", str(tmp_path / "p.npz")])  # PUMA needs no recorded method
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli_app(), ["select", str(tmp_path / "margin.npz"), "--fraction", "0.5", "--q", "0.3",
                                  "--out", str(tmp_path / "q.npz")])
    assert r.exit_code == 2 and "--q only apply with --puma" in r.output and not (tmp_path / "q.npz").exists()


def test_warmup_model_trains_under_the_configs_own_schedule(monkeypatch):
    """`score --warmup-epochs 2` trains epochs 0-1 of the full run's schedule, not a 2-epoch schedule."""
    import leanrobust.train
    from leanrobust.cli.selection import _warmup_model
    from leanrobust.config import validate_config

    seen = {}

    class FakeTrainer:
        def __init__(self, cfg, run_dir):
            seen["epochs"], seen["trained"] = cfg.optim.epochs, []
            self.pool = self.device = None

        def train_epoch(self, e):
            seen["trained"].append(e)

        def eval_model(self):
            return "ema-or-model"

    monkeypatch.setattr(leanrobust.train, "Trainer", FakeTrainer)
    cfg = validate_config({"optim": {"epochs": 10, "schedule": "cosine"}})
    assert _warmup_model(cfg, 2)[0] == "ema-or-model"
    assert seen == {"epochs": 10, "trained": [0, 1]}


def test_warmup_of_a_method_config_drops_its_selection_settings(monkeypatch):
    """A shipped method config (selection method, fraction, params, sample weighting) warms up on the full pool:
    the warm-up config keeps none of the settings that would be refused without a selection."""
    import leanrobust.train
    from leanrobust.cli.selection import _warmup_model
    from leanrobust.config import validate_config

    seen = {}

    class FakeTrainer:
        def __init__(self, cfg, run_dir):
            seen["cfg"] = cfg
            self.pool = self.device = None

        def train_epoch(self, e):
            pass

        def eval_model(self):
            return None

    monkeypatch.setattr(leanrobust.train, "Trainer", FakeTrainer)
    cfg = validate_config({"data": {"weighting": "sample"}, "selection": {
        "method": "puma", "fraction": 0.5, "start_epoch": 1, "params": {"q": 0.2}}})
    _warmup_model(cfg, 1)
    w = seen["cfg"]
    assert w.selection.method == "none" and w.selection.params == {} and w.data.weighting == "loss"


def test_cli_score_with_warmup_on_npz(tmp_path):
    rng = np.random.default_rng(0)
    n = 40
    np.savez(tmp_path / "d.npz", image=rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), label=np.arange(n) % 2)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"progress: false\ndata: {{dataset: npz, path: {tmp_path / 'd.npz'}, num_classes: 2, "
                   "val_size: 4}\nmodel: {width: 0.125}\nobjective: {eps: 0.1, steps: 1}\noptim: {batch_size: 16}\n")
    runner = CliRunner()
    r = runner.invoke(cli_app(), ["score", str(cfg), "--method", "el2n", "--warmup-epochs", "1",
                                  "--out", str(tmp_path / "s.npz")])
    assert r.exit_code == 0, r.output
    with np.load(tmp_path / "s.npz", allow_pickle=False) as z:
        assert z["scores"].shape == (36,) and z["indices"].tolist() == list(range(36))
        assert json.loads(str(z["meta"]))["method"] == "el2n"
    r = runner.invoke(cli_app(), ["score", str(cfg), "--method", "loss", "--out", str(tmp_path / "t.npz")])
    assert r.exit_code == 2 and "needs a model" in r.output
