"""Attacks: box and per-sample ball, caller's modes and BatchNorm buffers untouched, no parameter
grads; PGD strength vs eps, kappa vs a slow reference, DeepFool vs exact linear distances, and
the AutoAttack adapter (custom, standard, resume)."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from leanrobust.attacks import (AutoAttackResult, DeepFoolResult, autoattack, deepfool, fgsm_rs,
                                pgd, trades_kl)
from leanrobust.attacks.common import cw_margin, flat_norm, project

EPS = {"linf": torch.tensor([0.0, 0.03, 0.1, 0.3, 0.05, 0.2]),
       "l2": torch.tensor([0.0, 0.3, 1.0, 2.0, 0.5, 0.1])}

ATTACKS = {
    "fgsm_rs": ("linf", lambda m, x, y, e: fgsm_rs(m, x, y, e)),
    "pgd_linf_ce": ("linf", lambda m, x, y, e: pgd(m, x, y, e, steps=3, restarts=2)),
    "pgd_linf_cw": ("linf", lambda m, x, y, e: pgd(m, x, y, e, steps=3, restarts=2, loss="cw")),
    "pgd_l2_ce": ("l2", lambda m, x, y, e: pgd(m, x, y, e, steps=3, restarts=2, norm="l2")),
    "pgd_l2_cw": ("l2", lambda m, x, y, e: pgd(m, x, y, e, steps=3, restarts=2, norm="l2", loss="cw")),
    "pgd_kappa": ("linf", lambda m, x, y, e: pgd(m, x, y, e, steps=3, return_kappa=True)[0]),
    "trades_kl_linf": ("linf", lambda m, x, y, e: trades_kl(m, x, e, steps=3)),
    "trades_kl_l2": ("l2", lambda m, x, y, e: trades_kl(m, x, e, steps=3, norm="l2")),
    "deepfool_l2": (None, lambda m, x, y, e: deepfool(m, x, steps=5).x_adv),
    "deepfool_linf": (None, lambda m, x, y, e: deepfool(m, x, steps=5, norm="linf").x_adv),
}


def _batch(n=6):
    x = torch.rand(n, 1, 8, 8)
    x[:, :, 0, :] = 0.0  # pixels on the box edges: clipping must hold there too
    x[:, :, -1, :] = 1.0
    return x, torch.arange(n) % 3


def _modes(model):
    return [m.training for m in model.modules()]


def _bn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


@pytest.mark.parametrize("name", sorted(ATTACKS))
@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_attack_contract(name, mode, tiny_cnn):
    norm, attack = ATTACKS[name]
    model = tiny_cnn(num_classes=3)
    model.train(mode != "eval")
    if mode == "mixed":
        model[1].eval()  # BatchNorm in eval, dropout in train
    modes, bn = _modes(model), _bn_state(model)
    x, y = _batch()
    eps = EPS[norm or "l2"]
    x_adv = attack(model, x, y, eps)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert _modes(model) == modes
    for k, v in _bn_state(model).items():
        assert torch.equal(v, bn[k]), k
    assert all(p.grad is None for p in model.parameters())
    assert not torch.equal(x_adv, x)
    if norm is not None:
        d = (x_adv - x).flatten(1)
        size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        assert (size <= eps + 1e-5).all(), (size, eps)
        assert torch.equal(x_adv[0], x[0])  # eps 0 comes back unchanged


def test_attacks_work_under_no_grad(tiny_cnn):
    model = tiny_cnn(num_classes=3)
    x, y = _batch()
    with torch.no_grad():
        assert not torch.equal(pgd(model, x, y, 0.1, steps=2), x)
        assert not torch.equal(trades_kl(model, x, 0.1, steps=2), x)
        assert deepfool(model, x, steps=20).converged.any()


def test_bad_arguments_raise(tiny_linear_model):
    model = tiny_linear_model(num_classes=3)
    x, y = _batch()
    with pytest.raises(ValueError, match="norm"):
        pgd(model, x, y, 0.1, norm="l1")
    with pytest.raises(ValueError, match="loss"):
        pgd(model, x, y, 0.1, loss="dlr")
    with pytest.raises(ValueError, match="entries"):
        pgd(model, x, y, torch.tensor([0.1, 0.2]))


# ---- PGD strength on a trained linear model ---------------------------------------------------

@pytest.fixture(scope="module")
def logistic():
    """Logistic regression on two 16-pixel clusters (means 0.35 and 0.65): trained in ~0.2 s."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 2
    x = (0.35 + 0.3 * y.float().view(-1, 1, 1, 1) + 0.04 * torch.randn(200, 1, 4, 4, generator=g)).clamp(0, 1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval(), x, y


@pytest.mark.parametrize("norm,grid", [("linf", [0.0, 0.02, 0.05, 0.1, 0.15, 0.3]),
                                       ("l2", [0.0, 0.1, 0.2, 0.4, 0.6, 1.2])])
@pytest.mark.parametrize("loss", ["ce", "cw"])
def test_pgd_success_rises_with_eps(logistic, norm, grid, loss):
    model, x, y = logistic
    w, b = model[1].weight, model[1].bias
    with torch.no_grad():
        f = (x.flatten(1) @ (w[1] - w[0]) + b[1] - b[0]) * (2 * y - 1)  # > 0 when correct
        dist = f / (w[1] - w[0]).norm(p=1 if norm == "linf" else 2)  # exact distance to the boundary
    assert (f > 0).all()
    rates = []
    for eps in grid:
        x_adv = pgd(model, x, y, eps, steps=10, norm=norm, loss=loss)
        fooled = model(x_adv).argmax(1) != y
        rates.append(fooled.float().mean().item())
        assert not fooled[dist > eps].any()  # outside the reach of the ball: cannot be fooled
        assert fooled[dist < 0.9 * eps].all()  # a linear model is broken wherever it can be
    assert all(a <= b for a, b in zip(rates, rates[1:])), rates
    assert rates[0] == 0.0 and rates[-1] == 1.0


def test_pgd_restarts_keep_worst_case(logistic):
    model, x, y = logistic
    eps = torch.full((len(x),), 0.08)
    one = pgd(model, x, y, eps, steps=1, rel_step=0.3, norm="l2")
    torch.manual_seed(0)
    many = pgd(model, x, y, eps, steps=1, rel_step=0.3, norm="l2", restarts=4)
    with torch.no_grad():
        fooled_one = model(one).argmax(1) != y
        fooled_many = model(many).argmax(1) != y
        loss_one = F.cross_entropy(model(one), y, reduction="none")
        loss_many = F.cross_entropy(model(many), y, reduction="none")
    assert fooled_many.sum() >= fooled_one.sum()
    # restart 1 is the same run as `one` (same seed): never worse for a still-robust sample
    assert (loss_many[~fooled_many] >= loss_one[~fooled_many] - 1e-6).all()


# ---- GAIRAT kappa ---------------------------------------------------------------------------

def _kappa_reference(model, x, y, eps, steps, alpha):
    """Slow per-sample PGD-linf with kappa, from the same uniform start (same RNG draw)."""
    x0 = (x + (2 * torch.rand_like(x) - 1) * eps.view(-1, 1, 1, 1)).clamp(0, 1)
    kappa, out = [], []
    for i in range(len(x)):
        xi, k = x0[i:i + 1].clone(), 0
        for _ in range(steps):
            xi.requires_grad_(True)
            logits = model(xi)
            k += int(logits.argmax(1).item() == y[i].item())
            g, = torch.autograd.grad(F.cross_entropy(logits, y[i:i + 1]), xi)
            xi = xi.detach() + alpha * eps[i] * g.sign()
            xi = torch.min(torch.max(xi, x[i:i + 1] - eps[i]), x[i:i + 1] + eps[i]).clamp(0, 1)
        kappa.append(k)
        out.append(xi.detach())
    return torch.tensor(kappa), torch.cat(out)


def test_kappa_matches_reference_without_extra_forwards(tiny_cnn):
    model = tiny_cnn(num_classes=3)
    x = torch.rand(12, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[1:3] = (y[1:3] + 1) % 3  # two wrong labels: kappa can be 0
    eps = torch.linspace(0.0, 0.5, 12)
    calls = []
    hook = model.register_forward_hook(lambda *a: calls.append(1))
    torch.manual_seed(1)
    x_adv, kappa = pgd(model, x, y, eps, steps=6, return_kappa=True)
    hook.remove()
    assert len(calls) == 6  # one forward per step, kappa read off those logits
    torch.manual_seed(1)
    ref_kappa, ref_x = _kappa_reference(model, x, y, eps, 6, 2.5 / 6)
    assert kappa.dtype == torch.long
    assert torch.equal(kappa, ref_kappa)
    torch.testing.assert_close(x_adv, ref_x)
    assert kappa[0] == 6  # eps 0 and a correct label: correct before every one of the 6 steps
    assert len(set(kappa.tolist())) >= 3  # the check is not vacuous


# ---- DeepFool -------------------------------------------------------------------------------
# Points sit near 0.5 with small linear-model distances, so the overshot step never reaches
# the [0,1] box edges: clipping does not interfere (asserted: x_adv == x + delta).

def _affine(d, k, seed):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, k)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(k, d, generator=g))
        lin.bias.copy_(torch.randn(k, generator=g) * 0.3)
    return nn.Sequential(nn.Flatten(), lin).eval(), lin


def test_deepfool_l2_equals_exact_distance_on_affine_multiclass():
    model, lin = _affine(16, 5, 0)
    x = 0.5 + 0.01 * torch.randn(20, 1, 4, 4)
    with torch.no_grad():
        z = model(x)
    y = z.argmax(1)
    w = lin.weight
    with torch.no_grad():
        gap = z.gather(1, y[:, None]) - z  # f_y - f_k >= 0
        wn = (w[y][:, None, :] - w[None, :, :]).norm(dim=2)  # ||w_y - w_k||_2
        dist = (gap / wn).masked_fill(F.one_hot(y, 5).bool(), float("inf"))
        exact, nearest = dist.min(1)
    res = deepfool(model, x, overshoot=0.02)
    assert isinstance(res, DeepFoolResult)
    assert torch.equal(res.x_adv, x + res.delta)  # clipping did not interfere
    assert res.converged.all() and (res.iterations == 1).all()
    expected = 1.02 * (exact + 1e-4 / wn.gather(1, nearest[:, None]).squeeze(1))  # reference code's +1e-4
    torch.testing.assert_close(res.margin, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(res.margin, flat_norm(res.delta, 2).flatten())
    assert (model(res.x_adv).argmax(1) == nearest).all()  # crossed into the nearest class


def test_deepfool_linf_equals_l1_dual_distance_on_binary():
    model, lin = _affine(16, 2, 1)
    x = 0.5 + 0.01 * torch.randn(20, 1, 4, 4)
    with torch.no_grad():
        z = model(x)
    y = z.argmax(1)
    w = (lin.weight[1] - lin.weight[0]).detach()
    exact = (z[:, 1] - z[:, 0]).abs() / w.abs().sum()
    res = deepfool(model, x, norm="linf")
    assert torch.equal(res.x_adv, x + res.delta)
    assert res.converged.all() and (res.iterations == 1).all()
    torch.testing.assert_close(res.margin / 1.02, exact + 1e-4 / w.abs().sum(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(res.margin, res.delta.flatten(1).abs().amax(1))
    assert (model(res.x_adv).argmax(1) != y).all()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_deepfool_nonlinear_batched_and_two_forwards_per_step(norm):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    x = torch.rand(10, 1, 8, 8)
    seen = []
    hook = model.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    res = deepfool(model, x, norm=norm, steps=20)
    hook.remove()
    assert sum(seen) == 2 * int(res.iterations.sum())  # per step: a gradient pass, then a no-grad check
    assert seen == sorted(seen, reverse=True) and seen[0] == 10
    with torch.no_grad():  # unclipped iterates by default (the reference code): converged is about x + delta
        clean, adv = model(x).argmax(1), model(x + res.delta).argmax(1)
    assert torch.equal(adv != clean, res.converged)
    assert res.converged.sum() >= 8
    boxed = deepfool(model, x, norm=norm, steps=20, clip=True)
    with torch.no_grad():
        assert torch.equal(model(boxed.x_adv).argmax(1) != clean, boxed.converged)
    assert (res.iterations[res.converged] >= 1).all()
    chunked = deepfool(model, x, norm=norm, steps=20, batch_size=3)
    for a, b in zip(res, chunked):
        torch.testing.assert_close(a, b)


def test_deepfool_refills_finished_slots_and_keeps_layouts():
    """batch_size is the number of images in flight: a finished image's slot goes to the next
    waiting one, so every pass is full until the queue runs dry; weights come back in their own
    layout with the same values, and the outputs keep the input's layout."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).eval()
    w_before = model[0].weight.detach().clone()
    stride_before = model[0].weight.stride()
    x = torch.rand(11, 3, 8, 8)
    seen, grads = [], []
    hook = model.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    bhook = model.register_full_backward_hook(lambda mod, gin, gout: grads.append(gout[0].shape[0]))
    res = deepfool(model, x, steps=20, batch_size=4)
    hook.remove()
    bhook.remove()
    assert max(seen) == 4 and sum(seen) == 2 * int(res.iterations.sum())
    assert sum(grads) == 3 * int(res.iterations.sum())  # 4 classes: 3 backward per step, none for fooled images
    k = next(i for i, size in enumerate(seen) if size < 4)  # full passes, then only a shrinking tail
    assert all(size == 4 for size in seen[:k]) and seen[k:] == sorted(seen[k:], reverse=True)
    assert k >= 11 // 4  # several full passes first (chunks of 4 would show a full pass after a shrunken one)
    whole = deepfool(model, x, steps=20)
    for a, b in zip(res, whole):
        torch.testing.assert_close(a, b)
    assert model[0].weight.stride() == stride_before and torch.equal(model[0].weight, w_before)
    assert res.x_adv.is_contiguous() and res.delta.is_contiguous()
    nhwc = deepfool(model, x.contiguous(memory_format=torch.channels_last), steps=20)
    assert nhwc.delta.is_contiguous(memory_format=torch.channels_last)


def test_deepfool_clipping_is_not_convergence():
    model, _ = _affine(16, 2, 2)
    x = torch.zeros(4, 1, 4, 4)
    with torch.no_grad():  # the boundary lies far outside the box: unreachable inside it
        model[1].bias.copy_(torch.tensor([100.0, -100.0]))
    res = deepfool(model, x, steps=3, clip=True)
    assert not res.converged.any() and (res.iterations == 3).all()
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    free = deepfool(model, x, steps=3)  # unclipped: one exact step to the far boundary, x_adv still in the box
    assert free.converged.all() and (free.iterations == 1).all()
    assert free.margin.min() > 1.0 and free.x_adv.min() >= 0 and free.x_adv.max() <= 1


# ---- AutoAttack adapter ---------------------------------------------------------------------

@pytest.fixture
def aa_setup(tiny_cnn):
    model = tiny_cnn(num_classes=10)
    with torch.no_grad():  # sharper logits: small radii break some points, so ball checks are not vacuous
        model[-1].weight.mul_(10)
    x = torch.rand(8, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[0] = (y[0] + 1) % 10  # one clean error
    return model, x, y


def _check_result(model, x, y, res, eps):
    assert isinstance(res, AutoAttackResult)
    assert res.robust.dtype == torch.bool and res.robust.shape == (len(x),)
    assert res.accuracy == pytest.approx(res.robust.float().mean().item())
    assert (res.x_adv - x).abs().max() <= eps + 1e-6
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    with torch.no_grad():
        assert torch.equal(res.robust, model(res.x_adv).argmax(1) == y)
    assert not res.robust[0]
    assert (res.x_adv != x).any()  # something was broken: the ball check above saw real perturbations


def test_autoattack_custom_apgd_ce_restores_model_and_rng(aa_setup):
    model, x, y = aa_setup
    model.train()
    modes, bn = _modes(model), _bn_state(model)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    res = autoattack(model, x, y, eps=0.05, version="custom", attacks=["apgd-ce"], batch_size=4)
    assert torch.equal(torch.rand(3), expected_next)  # pyautoattack's manual_seed did not leak
    assert _modes(model) == modes
    assert all(torch.equal(v, bn[k]) for k, v in _bn_state(model).items())
    model.eval()
    _check_result(model, x, y, res, 0.05)
    again = autoattack(model, x, y, eps=0.05, version="custom", attacks=["apgd-ce"], batch_size=4)
    assert torch.equal(again.x_adv, res.x_adv)  # seed=0: reproducible


def test_autoattack_l2_stays_in_the_l2_ball(aa_setup):
    model, x, y = aa_setup
    res = autoattack(model, x, y, eps=0.5, norm="l2", version="custom", attacks=["apgd-ce"], batch_size=8)
    assert (flat_norm(res.x_adv - x, 2).flatten() <= 0.5 + 1e-5).all()
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    with torch.no_grad():
        assert torch.equal(res.robust, model(res.x_adv).argmax(1) == y)
    assert (res.x_adv != x).any() and (flat_norm(res.x_adv - x, float("inf")).max() > 0.05)  # L2, not a tiny Linf


def test_autoattack_standard_small(aa_setup):
    model, x, y = aa_setup
    res = autoattack(model, x, y, eps=0.02, norm="linf", version="standard", batch_size=8)
    _check_result(model, x, y, res, 0.02)
    assert all(p.grad is None for p in model.parameters())  # FAB's backward left nothing
    assert all(p.requires_grad for p in model.parameters())


def test_autoattack_cpu_fast_paths_give_the_plain_result_and_restore_the_model(aa_setup, monkeypatch):
    import contextlib
    import sys

    aa_mod = sys.modules["leanrobust.attacks.autoattack"]  # the package re-exports the function of that name

    model, x, y = aa_setup
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs
    kw = dict(eps=0.05, version="custom", attacks=["apgd-ce", "apgd-t"], batch_size=8)
    fast = autoattack(model, x, y, **kw)
    assert all("forward" not in vars(m) and m.weight.is_contiguous() for m in convs)  # restored
    assert all(p.grad is None for p in model.parameters())
    monkeypatch.setattr(aa_mod, "_cpu_fast_paths", lambda model, device: contextlib.nullcontext())
    plain = autoattack(model, x, y, **kw)
    assert torch.equal(fast.robust, plain.robust)
    assert torch.allclose(fast.x_adv, plain.x_adv, atol=1e-4)


def test_autoattack_progress_bar_names_the_attack_and_keeps_the_result(aa_setup, capsys):
    model, x, y = aa_setup
    kw = dict(eps=0.05, version="custom", attacks=["apgd-ce"], batch_size=4)
    quiet = autoattack(model, x, y, **kw)
    shown = autoattack(model, x, y, progress=True, **kw)
    err = capsys.readouterr().err
    assert "autoattack apgd-ce" in err and "robust=" in err
    assert torch.equal(shown.robust, quiet.robust)


def test_autoattack_state_file_resumes(aa_setup, tmp_path, monkeypatch):
    import pyautoattack.autopgd_base as apgd

    model, x, y = aa_setup
    kw = dict(eps=0.05, version="custom", attacks=["apgd-ce", "apgd-t"], batch_size=8)
    full = autoattack(model, x, y, **kw)
    path = tmp_path / "aa_state.json"

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(apgd.APGDAttack_targeted, "perturb", interrupt)
    with pytest.raises(KeyboardInterrupt):
        autoattack(model, x, y, state_path=path, **kw)
    state = json.loads(path.read_text())
    assert state["done"] == ["apgd-ce"]
    monkeypatch.undo()
    monkeypatch.setattr(apgd.APGDAttack, "perturb", interrupt)  # APGD-CE must not run again
    resumed = autoattack(model, x, y, state_path=path, **kw)
    assert torch.equal(resumed.robust, full.robust)
    assert json.loads(path.read_text())["done"] == ["apgd-ce", "apgd-t"]
    with pytest.raises(ValueError, match="eps"):
        autoattack(model, x, y, state_path=path, **{**kw, "eps": 0.1})


@pytest.mark.parametrize("content", ["[1, 2]", "not json", "\"text\""])
def test_autoattack_state_file_of_another_kind_is_named(aa_setup, tmp_path, content):
    model, x, y = aa_setup
    path = tmp_path / "aa_state.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="aa_state.json is not an AutoAttack state file"):
        autoattack(model, x, y, eps=0.05, version="custom", attacks=["apgd-ce"], batch_size=8, state_path=path)


def _interrupt_apgd_at_batch_2(monkeypatch):
    """Make APGD-CE raise KeyboardInterrupt on its second batch (the first finishes); returns the real perturb."""
    import pyautoattack.autopgd_base as apgd

    perturb, calls = apgd.APGDAttack.perturb, []

    def second_batch_interrupts(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return perturb(self, *a, **k)

    monkeypatch.setattr(apgd.APGDAttack, "perturb", second_batch_interrupts)
    return perturb


def test_autoattack_resumes_inside_an_attack_from_the_last_finished_batch(aa_setup, tmp_path, monkeypatch):
    import pyautoattack.autopgd_base as apgd

    model, x, y = aa_setup
    kw = dict(eps=0.05, version="custom", attacks=["apgd-ce"], batch_size=3)
    whole = autoattack(model, x, y, **kw)  # uninterrupted
    path = tmp_path / "aa_state.json"
    perturb = _interrupt_apgd_at_batch_2(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        autoattack(model, x, y, state_path=path, **kw)
    state = json.loads(path.read_text())
    assert state["done"] == [] and state["partial"]["attack"] == "apgd-ce" and state["partial"]["points"] == 3
    ran = []
    monkeypatch.setattr(apgd.APGDAttack, "perturb", lambda self, *a, **k: (ran.append(1), perturb(self, *a, **k))[1])
    resumed = autoattack(model, x, y, state_path=path, **kw)
    assert len(ran) == -(-len(state["partial"]["idx"]) // 3) - 1  # the finished first batch did not run again
    assert torch.equal(resumed.robust, whole.robust)
    final = json.loads(path.read_text())
    assert final["done"] == ["apgd-ce"] and "partial" not in final


def test_autoattack_resume_with_another_batch_size_attacks_exactly_the_rest(aa_setup, tmp_path, monkeypatch):
    """The state counts points, not batches: resuming at a larger batch size neither skips unattacked
    points (which would count them robust) nor repeats attacked ones."""
    import pyautoattack.autopgd_base as apgd

    model, x, y = aa_setup
    kw = dict(eps=0.05, version="custom", attacks=["apgd-ce"])
    path = tmp_path / "aa_state.json"
    perturb = _interrupt_apgd_at_batch_2(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        autoattack(model, x, y, state_path=path, batch_size=3, **kw)
    to_attack = len(json.loads(path.read_text())["partial"]["idx"])
    assert to_attack > 6
    seen = []
    monkeypatch.setattr(apgd.APGDAttack, "perturb",
                        lambda self, xb, *a, **k: (seen.append(xb.shape[0]), perturb(self, xb, *a, **k))[1])
    autoattack(model, x, y, state_path=path, batch_size=6, **kw)
    assert sum(seen) == to_attack - 3 and max(seen) <= 6
    # a file from the previous version: a batch counter ("next") and no fingerprint, same batch size
    _interrupt_apgd_at_batch_2(monkeypatch)
    path.unlink()
    with pytest.raises(KeyboardInterrupt):
        autoattack(model, x, y, state_path=path, batch_size=3, **kw)
    old = json.loads(path.read_text())
    old.pop("model")
    old["partial"]["next"] = old["partial"].pop("points") // 3
    path.write_text(json.dumps(old))
    seen.clear()
    monkeypatch.setattr(apgd.APGDAttack, "perturb",
                        lambda self, xb, *a, **k: (seen.append(xb.shape[0]), perturb(self, xb, *a, **k))[1])
    autoattack(model, x, y, state_path=path, batch_size=3, **kw)
    assert sum(seen) == to_attack - 3


def test_autoattack_state_file_is_tied_to_the_weights(aa_setup, tmp_path):
    model, x, y = aa_setup
    kw = dict(eps=0.05, version="custom", attacks=["apgd-ce"], batch_size=8)
    path = tmp_path / "aa_state.json"
    autoattack(model, x, y, state_path=path, **kw)
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    with pytest.raises(ValueError, match="model"):
        autoattack(model, x, y, state_path=path, **kw)
    legacy = json.loads(path.read_text())
    legacy.pop("model")  # a file from before the fingerprint cannot be checked: it is adopted
    path.write_text(json.dumps(legacy))
    autoattack(model, x, y, state_path=path, **kw)


def test_autoattack_rejects_bad_arguments(aa_setup):
    model, x, y = aa_setup
    with pytest.raises(ValueError, match="norm"):
        autoattack(model, x, y, eps=0.1, norm="Linf")
    with pytest.raises(ValueError, match="custom"):
        autoattack(model, x, y, eps=0.1, version="custom")
    with pytest.raises(ValueError, match="one eps"):
        autoattack(model, x, y, eps=torch.linspace(0, 0.1, 8))


def test_project_and_cw_margin_helpers():
    x = torch.full((2, 1, 2, 2), 0.5)
    out = project(x + 1.0, x, torch.tensor([0.1, 0.0]).view(-1, 1, 1, 1), "linf")
    torch.testing.assert_close(out, torch.stack([x[0] + 0.1, x[1]]))
    z = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
    torch.testing.assert_close(cw_margin(z, torch.tensor([0, 2])), torch.tensor([-1.0, 4.0]))


def test_autoattack_with_no_robust_point_left_attacks_nothing(aa_setup):
    model, x, y = aa_setup
    with torch.no_grad():
        wrong = (model(x).argmax(1) + 1) % 10  # every point misclassified before any attack
    res = autoattack(model, x, wrong, eps=0.05, version="custom", attacks=["apgd-ce", "apgd-t"], batch_size=4)
    assert res.accuracy == 0.0 and torch.equal(res.x_adv, x)


class _FlatGradient(nn.Module):
    """Predicts class 1 iff the mean pixel > 0.5, with a zero input gradient: PGD cannot move, so its
    end point is its random start, which lands on the correct side for about half the points."""

    def forward(self, x):
        s = 50.0 * (x.detach().flatten(1).mean(1) - 0.5)
        return torch.stack([-s, s], 1) + 0.0 * x.flatten(1).sum(1, keepdim=True)


def test_evaluation_counts_a_misclassified_point_as_not_robust():
    from leanrobust.evaluate import evaluate_model

    x = torch.full((40, 1, 4, 4), 0.499)  # class 0 by the model, labelled 1: wrong on the clean point
    y = torch.ones(40, dtype=torch.long)
    model = _FlatGradient()
    torch.manual_seed(0)
    xa = pgd(model, x, y, 0.1, steps=2)
    assert (model(xa).argmax(1) == y).any()  # the attack's end point is sometimes correct...
    res = evaluate_model(model, x, y, eps=0.1, norm="linf", attacks=["pgd2", "cw2"], progress=False)
    assert res["clean_acc"] == 0.0 and res["robust_acc"] == {"pgd2": 0.0, "cw2": 0.0}  # ...but never robust


# ---- no silent traps: step names and the [0,1] input contract ----------------------------------

@pytest.mark.parametrize("call", [lambda m, x, y, **k: pgd(m, x, y, 0.1, **k),
                                  lambda m, x, y, **k: trades_kl(m, x, 0.1, **k),
                                  lambda m, x, y, **k: fgsm_rs(m, x, y, 0.1, **k)])
def test_step_size_is_refused_naming_alpha_and_rel_step(tiny_linear_model, call):
    """`step_size` was relative to eps here but is absolute in torchattacks: refused, not guessed."""
    model = tiny_linear_model(num_classes=3)
    x, y = _batch()
    with pytest.raises(TypeError, match=r"alpha=.*absolute.*rel_step="):
        call(model, x, y, step_size=0.25)
    with pytest.raises(TypeError, match="unexpected keyword"):
        call(model, x, y, stepsize=0.25)
    with pytest.raises(ValueError, match="not both"):
        call(model, x, y, alpha=0.01, rel_step=0.1)


def test_alpha_is_absolute_and_rel_step_a_multiple_of_eps(tiny_linear_model):
    model = tiny_linear_model(num_classes=3)
    x, y = _batch()
    x = x.clamp(0.2, 0.8)  # away from the box: the step is not clipped
    eps = torch.tensor([0.5, 0.5, 0.25, 0.25, 0.5, 0.5])
    one = dict(steps=1, random_start=False)
    a = pgd(model, x, y, eps, alpha=0.02, **one)
    assert torch.allclose((a - x).abs().flatten(1).amax(1), torch.full((6,), 0.02))
    r = pgd(model, x, y, eps, rel_step=0.1, **one)
    assert torch.allclose((r - x).abs().flatten(1).amax(1), 0.1 * eps)
    assert torch.equal(pgd(model, x, y, eps, **one), pgd(model, x, y, eps, rel_step=2.5, **one))  # default 2.5 / steps
    k = trades_kl(model, x, eps, alpha=0.02, steps=1)
    assert (k - x).abs().max() <= 0.02 + 0.001 * 6  # trades_kl starts at x + 0.001 N(0, 1)
    with pytest.raises(ValueError, match="rel_step=1.25"):
        fgsm_rs(model, x, y, 0.1, alpha=1.25)  # alpha was relative before: an absolute 1.25 is refused


def test_per_sample_broadcasts_a_number_and_names_a_wrong_length():
    from leanrobust.attacks.common import as_eps, default_rel_step, per_sample
    from leanrobust.objectives.base import as_weight

    like = torch.zeros(3, 1, 2, 2, dtype=torch.float64)
    assert per_sample(0.5, like, "eps").tolist() == [0.5] * 3 and per_sample(0.5, like, "eps").dtype == torch.float64
    assert as_eps([0.1, 0.2, 0.3], like).shape == (3, 1, 1, 1) and as_weight(None, like).tolist() == [1.0] * 3
    for call, name in ((lambda: as_eps([0.1, 0.2], like), "eps"), (lambda: as_weight([1.0], like[:2]), "weight")):
        with pytest.raises(ValueError, match=f"{name} has"):
            call()
    assert default_rel_step(10) == 0.25 and default_rel_step(0) == 2.5


def test_robust_correct_counts_a_point_only_when_correct_clean_and_attacked(tiny_linear_model):
    from leanrobust.evaluate import is_correct, robust_correct

    model = tiny_linear_model(num_classes=3)
    x, y = _batch()
    torch.manual_seed(0)
    clean, robust = robust_correct(model, x, y, 0.3, steps=3, norm="linf")
    assert torch.equal(clean, is_correct(model, x, y)) and not (robust & ~clean).any()
    torch.manual_seed(0)
    x_adv = pgd(model, x, y, 0.3, steps=3)
    assert torch.equal(robust, clean & (model(x_adv).argmax(1) == y))
    none = torch.zeros_like(clean)
    assert not robust_correct(model, x, y, 0.3, steps=3, norm="linf", clean=none)[1].any()  # given clean flags


@pytest.mark.parametrize("name", sorted(ATTACKS) + ["autoattack"])
@pytest.mark.parametrize("bad", [1.2, -0.1, float("nan")])
def test_inputs_outside_unit_box_raise_naming_the_normalisation(name, bad, tiny_cnn):
    model = tiny_cnn(num_classes=3)
    x, y = _batch()
    x[1, 0, 3, 3] = bad
    with pytest.raises(ValueError, match=r"\[0,1\].*normalisation inside"):
        if name == "autoattack":
            autoattack(model, x, y, eps=0.1, version="custom", attacks=["apgd-ce"])
        else:
            ATTACKS[name][1](model, x, y, EPS[ATTACKS[name][0] or "l2"])
