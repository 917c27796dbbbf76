"""Randomized smoothing: Clopper-Pearson bound, abstention, the exact radius of a linear classifier,
the Gaussian-noise objective and the `certify` command."""
import json
import math

import numpy as np
import pytest
import torch
import typer
from scipy.stats import binom, norm
from torch import nn
from typer.testing import CliRunner

from leanrobust.certify import ABSTAIN, certified_accuracy, certify, clopper_pearson_lower, noise_counts
from leanrobust.objectives.noise import gaussian_noise


def test_clopper_pearson_matches_scipy_and_hand_cases():
    for k, n, alpha in [(1, 10, 0.05), (57, 100, 0.001), (9990, 10000, 0.001), (3, 3, 0.1)]:
        # the defining property of the one-sided bound: P(Binomial(n, p_lower) >= k) = alpha
        assert binom.sf(k - 1, n, clopper_pearson_lower(k, n, alpha)) == pytest.approx(alpha, rel=1e-6)
    assert clopper_pearson_lower(10, 10, 0.05) == pytest.approx(0.05 ** (1 / 10))  # k = n: alpha^(1/n) = 0.7411
    assert clopper_pearson_lower(0, 10, 0.05) == 0.0
    with pytest.raises(ValueError):
        clopper_pearson_lower(11, 10, 0.05)


class SwitchesClassAfterItsFirstCall(nn.Module):
    """Class 3 on its first forward (the n0 selection samples, one batch), class 5 on every later one."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return nn.functional.one_hot(torch.full((len(x),), 3 if self.calls == 1 else 5), 10).float() * 10


def test_certify_selects_the_class_on_n0_samples_and_estimates_on_fresh_ones():
    """cA comes from the selection samples only: the estimation samples never vote for it, so it abstains.
    Picking cA from the estimation samples would certify class 5 with pA_lower near 1."""
    res = certify(SwitchesClassAfterItsFirstCall(), torch.rand(1, 1, 4, 4), torch.tensor([5]), sigma=0.25, n0=20,
                  n=200, batch_size=256, num_classes=10)  # no probe forward: call 1 is the n0 batch
    assert res["prediction"] == [ABSTAIN] and res["pA_lower"] == [0.0] and res["correct"] == [False]


class RandomGuess(nn.Module):
    """Ignores its input: uniformly random logits over 10 classes."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.rand(len(x), 10, device=x.device)


def test_certify_abstains_on_a_random_model():
    res = certify(RandomGuess(), torch.rand(3, 1, 4, 4), torch.tensor([0, 1, 2]), sigma=0.25, n0=50, n=500,
                  batch_size=128)
    assert res["prediction"] == [ABSTAIN] * 3 and res["radius"] == [0.0] * 3
    assert all(p <= 0.5 for p in res["pA_lower"]) and res["correct"] == [False] * 3
    assert certified_accuracy(res, [0.0, 0.5]) == {0.0: 0.0, 0.5: 0.0}


def linear_binary(w: torch.Tensor, b: float) -> nn.Module:
    """Logits (-f/2, f/2) with f(x) = w.x + b: class 1 exactly when f(x) > 0."""
    lin = nn.Linear(w.numel(), 2)
    with torch.no_grad():
        lin.weight.copy_(torch.stack([-w, w]) / 2)
        lin.bias.copy_(torch.tensor([-b, b]) / 2)
    return nn.Sequential(nn.Flatten(), lin)


def test_certified_radius_of_a_linear_classifier():
    """The smoothed linear classifier has pA = Phi(d / sigma), d the distance to the hyperplane, so its
    certified radius sigma Phi^-1(pA_lower) is at most d and, with n samples, within
    sigma (Phi^-1(pA) - Phi^-1(pA - 6 se)), se = sqrt(pA (1 - pA) / n), of it (3.09 se for alpha = 1e-3
    plus under 3 se of sampling error)."""
    w, b = torch.tensor([1.0, 0.5, -0.3, 0.2]), -0.1
    sigma, d, n, alpha = 0.5, 0.4, 200_000, 0.001
    x = (d * w.norm() - b) * w / w.norm() ** 2  # w.x + b = d |w|
    x = x.reshape(1, 1, 2, 2)
    res = certify(linear_binary(w, b), x, torch.tensor([1]), sigma=sigma, n0=100, n=n, alpha=alpha, batch_size=50_000)
    p_a = norm.cdf(d / sigma)
    se = math.sqrt(p_a * (1 - p_a) / n)
    lo = sigma * norm.ppf(p_a - 6 * se)
    assert res["prediction"] == [1] and res["correct"] == [True]
    assert lo <= res["radius"][0] <= d, (lo, res["radius"][0], d)
    assert res["count"][0] / n == pytest.approx(p_a, abs=5 * se)
    acc = certified_accuracy(res, [0.0, 0.3, d + 1e-6])
    assert acc == {0.0: 1.0, 0.3: 1.0, d + 1e-6: 0.0}


def test_noise_is_not_clamped_and_counts_sum_to_n():
    seen = {}

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            seen["min"], seen["max"] = float(x.min()), float(x.max())
            return self.lin(x.flatten(1))

    counts = noise_counts(Spy(), torch.zeros(1, 2, 2), 250, sigma=1.0, num_classes=3, batch_size=100)
    assert counts.sum() == 250 and seen["min"] < 0
    out = gaussian_noise(Spy(), torch.ones(8, 1, 2, 2), torch.zeros(8, dtype=torch.long), 0.0, None, sigma=1.0)
    assert seen["max"] > 1 and out.per_sample.shape == (8,) and torch.isfinite(out.loss)


def test_certify_command_writes_json_and_summary(tmp_path):
    from leanrobust.cli.proxy import register
    from leanrobust.config import dump_config, validate_config
    from leanrobust.io import save_weights, write_json
    from leanrobust.models import build_model

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        np.savez(tmp_path / f"{split}.npz", image=rng.integers(0, 256, (20, 16, 16, 1), dtype=np.uint8),
                 label=np.arange(20) % 3)
    cfg = validate_config({"data": {"dataset": "npz", "path": str(tmp_path / "train.npz"),
                                    "test_path": str(tmp_path / "test.npz"), "num_classes": 3}})
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_config(cfg))
    spec = {"name": "smallcnn", "num_classes": 3, "in_channels": 1, "mean": [0.5], "std": [0.5],
            "kwargs": {"width": 0.25, "input_size": 16}}
    torch.manual_seed(0)
    model = build_model("smallcnn", 3, 1, [0.5], [0.5], width=0.25, input_size=16)
    nn.init.normal_(model.net.classifier.fc3.weight)
    save_weights(run / "model.safetensors", model, {"leanrobust_model": json.dumps(spec)})
    write_json(run / "summary.json", {"status": "complete"})
    app = typer.Typer()
    register(app)
    r = CliRunner().invoke(app, ["certify", str(run), "--sigma", "0.25", "--n0", "10", "--n", "100", "--num", "4",
                                 "--radii", "0,0.1", "--batch-size", "50", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    rep = json.loads((run / "certify_0.25.json").read_text())
    assert rep["num"] == 4 and len(rep["rows"]) == 4 and set(rep["certified_acc"]) == {"0", "0.1"}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["certified_acc"] == rep["certified_acc"]
    r = CliRunner().invoke(app, ["certify", str(run), "--sigma", "0.5", "--n0", "10", "--n", "100", "--num", "4",
                                 "--radii", "0,0.1", "--batch-size", "50", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["certified"]) == {"0.25", "0.5"}  # a second sigma keeps the first
    assert summary["certified"]["0.25"]["certified_acc"] == rep["certified_acc"]
    assert "was not trained with Gaussian noise" in r.output  # a pgd_at run: certifying it is allowed, with a warning
    r = CliRunner().invoke(app, ["certify", str(run), "--num", "4"])
    assert r.exit_code == 2 and "pass --sigma" in r.output  # no noise training: no sigma to default to
    noisy = validate_config({**cfg.model_dump(mode="json"), "objective": {"name": "gaussian_noise",
                                                                         "params": {"sigma": 0.5}}})
    (run / "config.yaml").write_text(dump_config(noisy))
    (run / "certify_0.5.json").unlink()
    r = CliRunner().invoke(app, ["certify", str(run), "--n0", "10", "--n", "100", "--num", "4", "--radii", "0,0.1",
                                 "--batch-size", "50", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert (run / "certify_0.5.json").is_file() and "warning" not in r.output  # sigma from the noise training
    r = CliRunner().invoke(app, ["certify", str(tmp_path), "--sigma", "0.25"])
    assert r.exit_code == 2 and "config.yaml" in r.output
