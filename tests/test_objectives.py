"""Objectives: each lowers its own loss, honours weight 0 exactly, and matches hand formulas."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from leanrobust.objectives import (OBJECTIVES, ObjectiveOutput, call_objective, gair_lambda,
                                   gair_weights, probabilistic_margin)
from leanrobust.objectives.base import normalise_instance_weights, weighted_mean
from leanrobust.objectives.mail import mail_weights
from leanrobust.objectives.mart import mart_per_sample
from leanrobust.objectives.trades import trades_per_sample

NAMES = ["erm", "pgd_at", "trades", "mart", "fgsm_rs", "gair_at", "gair_trades", "mail_at", "gaussian_noise",
         "bullet_pgd_at", "bullet_trades"]
# Tiny attacks; epoch/num_epochs put the reweighting methods past their burn-in (gair_trades at
# lambda 3, so its CW branch runs).
HP = dict(steps=3, epoch=9, num_epochs=10)


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Linear(16, 3)).train()


def make_data(n: int = 24, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centres = torch.rand(3, 1, 6, 6, generator=g)
    x = (centres[y] + 0.15 * torch.randn(n, 1, 6, 6, generator=g)).clamp(0, 1)
    return x, y


def run(name, model, x, y, eps, weight, seed=123, **hp):
    torch.manual_seed(seed)
    return call_objective(name, model, x, y, eps, weight, **{**HP, **hp})


def grads(model, out: ObjectiveOutput):
    model.zero_grad()
    out.loss.backward()
    return [p.grad.clone() for p in model.parameters()]


def test_registry_names():
    assert sorted(OBJECTIVES) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_objective_lowers_its_loss(name):
    model = make_model()
    x, y = make_data()
    eps = torch.full((len(x),), 0.05)
    weight = torch.ones(len(x))
    before = run(name, model, x, y, eps, weight)
    assert before.loss.ndim == 0 and before.per_sample.shape == (len(x),)
    assert before.logits.shape == (len(x), 3) and not before.logits.requires_grad
    assert model.training  # attacks restore train mode
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    for step in range(15):
        opt.zero_grad()
        run(name, model, x, y, eps, weight, seed=step).loss.backward()
        opt.step()
    after = run(name, model, x, y, eps, weight)
    assert after.loss.item() < 0.8 * before.loss.item(), (before.loss.item(), after.loss.item())


@pytest.mark.parametrize("name", NAMES)
def test_weight_zero_sample_contributes_no_gradient(name):
    """Sample 2 has weight 0: replacing it by a different image and label leaves the parameter
    gradient bit-identical (same attack seed; the model has no cross-sample coupling), while with
    weight 1 the same replacement changes it."""
    model = make_model()
    x, y = make_data(8)
    eps = torch.full((8,), 0.05)
    x2, y2 = x.clone(), y.clone()
    x2[2], y2[2] = 1.0 - x[2], (y[2] + 1) % 3
    w0 = torch.tensor([1.0, 0.5, 0.0, 2.0, 1.0, 1.0, 0.3, 1.0])
    out_a, out_b = run(name, model, x, y, eps, w0), run(name, model, x2, y2, eps, w0)
    assert out_a.per_sample[2] != out_b.per_sample[2]  # the objective did see the replacement
    for ga, gb in zip(grads(model, out_a), grads(model, out_b)):
        assert torch.equal(ga, gb)
    w1 = w0.clone()
    w1[2] = 1.0
    ga = grads(model, run(name, model, x, y, eps, w1))
    gb = grads(model, run(name, model, x2, y2, eps, w1))
    assert any(not torch.allclose(a, b) for a, b in zip(ga, gb))


def test_erm_weight_zero_equals_dropping_the_sample():
    model = make_model()
    x, y = make_data(8)
    w = torch.ones(8)
    w[5] = 0.0
    g_full = grads(model, run("erm", model, x, y, 0.0, w))
    keep = torch.arange(8) != 5
    g_drop = grads(model, run("erm", model, x[keep], y[keep], 0.0, None))
    for a, b in zip(g_full, g_drop):
        torch.testing.assert_close(a * 8 / 7, b)


def test_gair_weights_eq6_table():
    kappa = torch.tensor([0, 2, 5, 8, 10])
    # lam = -1, K = 10: argument lam + 5 (1 - 2 kappa / K) = 4 - kappa; (1 + tanh a) / 2 = sigmoid(2a)
    tanh = [0.9996646499, 0.9820137900, 0.1192029220, 0.0003353501, 0.0000061442]
    sigm = [0.9820137900, 0.8807970780, 0.2689414214, 0.0179862100, 0.0024726232]
    disc = [11 / 11, 9 / 11, 6 / 11, 3 / 11, 1 / 11]
    for mode, table in [("tanh", tanh), ("sigmoid", sigm), ("discrete", disc)]:
        torch.testing.assert_close(gair_weights(kappa, 10, -1.0, mode), torch.tensor(table),
                                   rtol=1e-5, atol=1e-7)  # float32 cancellation in 1 + tanh
    # lam = 0: kappa = K / 2 sits exactly at weight 1/2
    assert gair_weights(torch.tensor([5]), 10, 0.0).item() == pytest.approx(0.5)
    for mode in ("tanh", "sigmoid", "discrete"):
        assert torch.equal(gair_weights(kappa, 10, math.inf, mode), torch.ones(5))
    with pytest.raises(ValueError, match="weight_mode"):
        gair_weights(kappa, 10, -1.0, "linear")


def test_instance_weight_normalisation():
    w = torch.tensor([0.2, 0.5, 1.0, 0.3])
    torch.testing.assert_close(normalise_instance_weights(w, None), w * 4 / w.sum())
    sw = torch.tensor([1.0, 0.0, 2.0, 1.0])
    c = normalise_instance_weights(w, sw)
    assert c[1] == 0
    torch.testing.assert_close(c.sum(), sw.sum())  # weight-0 samples stay out of the normaliser
    torch.testing.assert_close(c, sw * w * sw.sum() / (sw * w).sum())
    assert torch.equal(normalise_instance_weights(torch.ones(4), sw), sw)


def test_gair_lambda_schedule():
    # 0-based epochs; begin_epoch is 1-based as in the reference (`epoch + 1 >= begin_epoch`)
    assert gair_lambda(0, 120) == math.inf and gair_lambda(58, 120) == math.inf
    assert gair_lambda(59, 120) == -1.0 and gair_lambda(119, 120) == -1.0
    assert gair_lambda(28, 100, begin_epoch=30) == math.inf
    assert gair_lambda(29, 100, begin_epoch=30, lam_after=-2.0) == -2.0


@pytest.mark.parametrize("weight", [None, torch.tensor([1.0, 0.0, 2.0, 0.5, 1.0, 1.0, 3.0, 1.0])])
def test_gair_at_with_infinite_lambda_is_pgd_at(weight):
    model = make_model()
    x, y = make_data(8)
    ref = run("pgd_at", model, x, y, 0.1, weight)
    g_ref = grads(model, ref)
    for kw in (dict(lam=math.inf), dict(epoch=3, num_epochs=10)):  # explicit inf, or burn-in
        out = run("gair_at", model, x, y, 0.1, weight, **kw)
        assert out.extras["lambda"] == math.inf
        torch.testing.assert_close(out.loss, ref.loss)
        torch.testing.assert_close(out.per_sample, ref.per_sample)
        for a, b in zip(grads(model, out), g_ref):
            torch.testing.assert_close(a, b)


def test_gair_at_reweights_by_kappa():
    model = make_model()
    x, y = make_data(8)
    out = run("gair_at", model, x, y, 0.1, None, lam=-1.0)
    kappa = out.extras["kappa"]
    assert kappa.dtype == torch.long and ((0 <= kappa) & (kappa <= 3)).all()
    w = gair_weights(kappa, 3, -1.0)
    torch.testing.assert_close(out.loss, (w * 8 / w.sum() * out.per_sample).mean())


def test_gair_trades_schedule():
    """Default schedule: lambda 100 before the 5th of 10 epochs (every weight is 1, so the CW term
    vanishes and the result equals TRADES with the same seed), then lambda 3 with the CW-PGD kappa."""
    model = make_model()
    x, y = make_data(8)
    ref = run("trades", model, x, y, 0.1, None)
    early = run("gair_trades", model, x, y, 0.1, None, epoch=3, num_epochs=10)
    assert early.extras["lambda"] == 100.0 and "kappa" not in early.extras
    torch.testing.assert_close(early.loss, ref.loss)
    late = run("gair_trades", model, x, y, 0.1, None, epoch=4, num_epochs=10)
    assert late.extras["lambda"] == 3.0
    torch.testing.assert_close(late.extras["gair_weight"], gair_weights(late.extras["kappa"], 3, 3.0))
    assert not torch.allclose(late.loss, ref.loss)


def test_mail_margin_and_weights():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1], [0.3, 0.3, 0.4]])
    y = torch.tensor([0, 2, 1])
    pm = probabilistic_margin(p.log(), y)
    torch.testing.assert_close(pm, torch.tensor([0.2 - 0.7, 0.7 - 0.1, 0.4 - 0.3]))
    published = [3 / (1 + math.exp(-10 * (m - 0.5))) for m in (-0.5, 0.6, 0.1)]  # MAIL-AT's command: -0.5, 10
    torch.testing.assert_close(mail_weights(pm), torch.tensor(published))
    argparse = [3 / (1 + math.exp(-(m - 1.5))) for m in (-0.5, 0.6, 0.1)]  # the code's argparse defaults
    torch.testing.assert_close(mail_weights(pm, bias=-1.5, slope=1.0), torch.tensor(argparse))
    model = make_model()
    x, y = make_data(8)
    out = run("mail_at", model, x, y, 0.1, None)
    w = mail_weights(probabilistic_margin(out.logits, y))
    torch.testing.assert_close(out.loss, (w * out.per_sample).mean())  # no batch normalisation, as in MAIL's code
    normed = run("mail_at", model, x, y, 0.1, None, normalize=True)
    w = mail_weights(probabilistic_margin(normed.logits, y))
    torch.testing.assert_close(normed.loss, (w * 8 / w.sum() * normed.per_sample).mean())
    burn_in = run("mail_at", model, x, y, 0.1, None, epoch=5, num_epochs=10)  # begins at 6
    torch.testing.assert_close(burn_in.loss, burn_in.per_sample.mean())


LOGITS_NAT = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-1.0, 3.0, 0.0]])
LOGITS_ADV = torch.tensor([[0.5, 1.5, -0.5], [0.3, 0.0, 0.1], [0.2, 0.1, 0.4]])
Y = torch.tensor([0, 2, 1])


def _softmax(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def _kl(p, q):
    return sum(pk * math.log(pk / qk) for pk, qk in zip(p, q))


def test_trades_per_sample_hand_formula():
    beta, ls = 6.0, 0.1
    expect = []
    for zn, za, yi in zip(LOGITS_NAT.tolist(), LOGITS_ADV.tolist(), Y.tolist()):
        pn, pa = _softmax(zn), _softmax(za)
        ce = (1 - ls) * -math.log(pn[yi]) + ls * sum(-math.log(v) for v in pn) / 3
        expect.append(ce + beta * _kl(pn, pa))
    torch.testing.assert_close(trades_per_sample(LOGITS_NAT, LOGITS_ADV, Y, beta, ls), torch.tensor(expect))


def test_mart_per_sample_hand_formula():
    beta = 6.0
    expect = []
    for zn, za, yi in zip(LOGITS_NAT.tolist(), LOGITS_ADV.tolist(), Y.tolist()):
        pn, pa = _softmax(zn), _softmax(za)
        top_other = max(v for k, v in enumerate(pa) if k != yi)
        bce = -math.log(pa[yi]) - math.log(1.0001 - top_other + 1e-12)
        expect.append(bce + beta * _kl(pn, pa) * (1.0000001 - pn[yi]))
    torch.testing.assert_close(mart_per_sample(LOGITS_NAT, LOGITS_ADV, Y, beta), torch.tensor(expect))


@pytest.mark.parametrize("name,fn", [("trades", trades_per_sample), ("mart", mart_per_sample)])
def test_objective_per_sample_matches_its_logits(name, fn):
    """End to end: per_sample is the formula on the clean logits and the returned adversarial ones."""
    model = make_model()
    x, y = make_data(8)
    out = run(name, model, x, y, 0.1, None, beta=2.0)
    with torch.no_grad():
        torch.testing.assert_close(out.per_sample, fn(model(x), out.logits, y, 2.0))
    assert not torch.allclose(out.logits, model(x))  # the attack moved the inputs


def test_call_objective_filters_kwargs_and_rejects_unknown(monkeypatch):
    model = make_model()
    x, y = make_data(6)
    seen = {}

    def probe(model, x, y, eps, weight, *, epoch, beta=1.0):
        seen.update(epoch=epoch, beta=beta)
        return ObjectiveOutput(x.sum(), torch.zeros(len(x)), torch.zeros(len(x), 3))

    monkeypatch.setitem(OBJECTIVES, "probe", probe)
    call_objective("probe", model, x, y, 0.1, None, epoch=4, beta=None, steps=7, norm="l2")
    assert seen == {"epoch": 4, "beta": 1.0}  # undeclared dropped, None means "use the default"
    out = call_objective("erm", model, x, y, 0.1, None, steps=3, beta=2.0, label_smoothing=0.0)
    torch.testing.assert_close(out.loss, nn.functional.cross_entropy(model(x), y))
    torch.manual_seed(0)
    out = call_objective("trades", model, x, y, 0.1, None, beta=0.0, steps=1, epoch=1, foo="bar")
    torch.testing.assert_close(out.per_sample, nn.functional.cross_entropy(model(x), y, reduction="none"))
    with pytest.raises(ValueError, match="unknown objective 'nope'.*erm.*pgd_at"):
        call_objective("nope", model, x, y, 0.1, None)


def test_weighted_mean():
    per = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert weighted_mean(per, torch.tensor([1.0, 0.0, 2.0, 0.5])).item() == pytest.approx(9.0 / 4)
    assert weighted_mean(per, None).item() == pytest.approx(2.5)


@pytest.mark.parametrize("name", ["pgd_at", "mart", "mail_at", "gair_at"])
def test_objective_step_size_stays_relative_to_eps(name):
    """objective.step_size (configs) is a multiple of eps: the objective passes it to pgd as rel_step."""
    from leanrobust.attacks import pgd

    model, (x, y) = make_model(), make_data()
    eps = 0.2
    out = run(name, model, x, y, eps, None, step_size=0.3, steps=2)
    torch.manual_seed(123)
    ref = pgd(model, x, y, eps, steps=2, rel_step=0.3)
    with torch.no_grad():
        torch.testing.assert_close(out.logits, model(ref))
