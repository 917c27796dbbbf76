"""Long jobs show tqdm bars with an ETA on stderr (score, compress, proxy-quality, synth discriminator),
honour the config's `progress: false`, and AutoAttack's bar moves inside a batch."""
import re
import sys

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from leanrobust.cli import app

runner = CliRunner()
ETA = re.compile(r"<\d\d:\d\d")  # tqdm's "[elapsed<remaining, rate]"


@pytest.fixture
def cfg(tiny_npz_config):
    return tiny_npz_config(progress=True)


def _bar(stderr: str, desc: str) -> bool:
    return any(desc in line and ETA.search(line) for line in re.split(r"[\r\n]", stderr))


def test_score_shows_bars_on_stderr_and_progress_false_silences_them(cfg, tmp_path):
    args = ["score", str(cfg), "--method", "margin", "--warmup-epochs", "1", "--param", "deepfool_steps=3",
            "--out", str(tmp_path / "m.npz")]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert _bar(r.stderr, "deepfool margins") and _bar(r.stderr, "scores margin"), r.stderr
    assert "deepfool margins" not in r.stdout
    r = runner.invoke(app, args + ["--set", "progress=false"])
    assert r.exit_code == 0 and "deepfool margins" not in r.stderr and "scores margin" not in r.stderr


@pytest.mark.parametrize("args,desc", [(["mfc", "--ipc", "3"], "mfc (l2)"), (["kcenter", "--ipc", "3"], "kcenter (l2)"),
                                       (["dm", "--ipc", "2", "--iterations", "3"], "dm")])
def test_compress_shows_a_bar_per_method(cfg, tmp_path, args, desc):
    out = tmp_path / "o.npz"
    r = runner.invoke(app, ["compress", str(cfg), "--method", *args, "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert _bar(r.stderr, desc), r.stderr
    r = runner.invoke(app, ["compress", str(cfg), "--method", *args, "--set", "progress=false", "--out", str(out)])
    assert r.exit_code == 0 and desc + ":" not in r.stderr and not ETA.search(r.stderr), r.stderr


def test_proxy_quality_and_synth_discriminator_show_bars(tmp_path):
    g = torch.Generator().manual_seed(0)
    real = (torch.rand(40, 1, 16, 16, generator=g) * 255).to(torch.uint8)
    gen = (real.float() * 0.8).to(torch.uint8)
    for name, x in (("real", real), ("gen", gen)):
        np.savez(tmp_path / f"{name}.npz", image=x.permute(0, 2, 3, 1).numpy(), label=np.arange(40) % 2)
    r = runner.invoke(app, ["proxy-quality", str(tmp_path / "real.npz"), str(tmp_path / "gen.npz"), "--n", "20",
                            "--epochs", "1", "--steps", "1", "--radii", "0,0.05", "--m", "5", "--repeats", "2",
                            "--device", "cpu"])
    assert r.exit_code == 0, r.output
    for desc in ("robust discrimination", "conditional W1 (input)", "conditional W1 (features)", "frechet features"):
        assert _bar(r.stderr, desc), (desc, r.stderr)
    assert "frechet_features" in r.stdout and "frechet features" not in r.stdout
    r = runner.invoke(app, ["synth", "discriminator", str(tmp_path / "real.npz"), str(tmp_path / "gen.npz"),
                            "--out", str(tmp_path / "disc"), "--epochs", "1", "--steps", "1", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert _bar(r.stderr, "synth discriminator"), r.stderr


def test_autoattack_bar_advances_within_one_batch(monkeypatch):
    """One batch of 6 points: the bar moves with the attack's forward passes, not once at the end,
    and ends at exactly the points attacked; the result is the one without a bar."""
    from leanrobust.attacks import autoattack

    aa_mod = sys.modules["leanrobust.attacks.autoattack"]
    updates = []

    class Recording(aa_mod.tqdm):
        def update(self, n=1):
            updates.append(n)
            return super().update(n)

    monkeypatch.setattr(aa_mod, "tqdm", Recording)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.rand(6, 1, 4, 4)
    with torch.no_grad():
        y = model(x).argmax(1)
    kw = dict(eps=0.01, version="custom", attacks=["apgd-ce"], batch_size=250)
    shown = autoattack(model, x, y, progress=True, **kw)
    assert len([n for n in updates if n > 0]) > 1 and sum(updates) == 6, updates
    assert torch.equal(shown.robust, autoattack(model, x, y, **kw).robust)


def test_deepfool_reports_finished_images():
    from leanrobust.attacks import deepfool

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    done = []
    deepfool(model, torch.rand(10, 1, 4, 4), steps=5, batch_size=4, on_finished=done.append)
    assert sum(done) == 10 and len(done) > 1
