"""Proxy data: generator training/resume, sharded resumable sampling, Gaussian proxy, filtering, and the
quality measures (robust discrimination area, conditional Wasserstein, Frechet distance)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import typer
from torch import nn
from typer.testing import CliRunner

from leanrobust.data import load_npz
from leanrobust.proxy import (GaussianProxy, GeneratorTrainer, class_counts, conditional_wasserstein, filter_npz,
                              frechet_distance, keep_top_per_class, load_generator, load_synth_config,
                              normalised_area, robust_discrimination, sample_to_npz)
from leanrobust.proxy.quality import pixels, random_features

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # diffusers + numpy 2


def smooth_images(n, size=16, seed=0):
    """Smooth random grey images (bilinear upsampling of 4x4 noise), uint8 (n, 1, size, size)."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.randn(n, 1, size // 4, size // 4, generator=g), size=size, mode="bilinear")
    return ((x * 0.25 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)


def add_noise(x, sigma, seed=1):
    g = torch.Generator().manual_seed(seed)
    return ((x.float() / 255 + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1) * 255).round().to(torch.uint8)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 2-step generator run on 40 random 8x8 images of 4 classes (an untrained UNet, in effect)."""
    d = tmp_path_factory.mktemp("synth")
    rng = np.random.default_rng(0)
    np.savez(d / "train.npz", image=rng.integers(0, 256, (40, 8, 8, 1), dtype=np.uint8), label=np.arange(40) % 4)
    cfg = load_synth_config(None, [f"dataset={d / 'train.npz'}", "image_size=8", "channels=[8,16]", "norm_groups=4",
                                   "steps=2", "batch_size=8", "checkpoint_every=1", "keep_every=2", "warmup=1",
                                   "progress=false", f"out={d / 'run'}"])
    GeneratorTrainer(cfg).fit()
    return d, cfg


# ----------------------------------------------------------------------------- generator
def test_shipped_config_validates_and_unknown_keys_are_rejected(tmp_path):
    cfg = load_synth_config(ROOT / "configs" / "synth" / "fmnist_ddpm.yaml")
    assert cfg.dataset == "fashion_mnist" and cfg.channels == [32, 64, 64]
    bad = tmp_path / "bad.yaml"
    bad.write_text("stepz: 3\n")
    with pytest.raises(ValueError, match="stepz: unknown key"):
        load_synth_config(bad)
    with pytest.raises(ValueError, match="divisible"):
        load_synth_config(None, ["image_size=30"])


def test_training_step_and_checkpoint_resume(tiny_run, tmp_path):
    d, cfg = tiny_run
    cfg = cfg.model_copy(update={"out": str(tmp_path / "a")})
    first = GeneratorTrainer(cfg)
    assert first.fit(stop_after=1)["step"] == 1
    resumed = GeneratorTrainer(cfg)
    assert resumed.restore() and resumed.step == 1 and resumed.ema.steps == 1
    for k, v in first.unet.state_dict().items():
        assert torch.equal(v, resumed.unet.state_dict()[k]), k
    for k, v in first.ema.model.state_dict().items():
        assert torch.equal(v, resumed.ema.model.state_dict()[k]), k
    assert resumed.fit()["step"] == 2
    # interrupted + resumed == uninterrupted (per-step seeded batches, restored optimizer)
    straight = GeneratorTrainer(cfg.model_copy(update={"out": str(tmp_path / "b")}))
    straight.fit()
    for k, v in straight.unet.state_dict().items():
        assert torch.equal(v, resumed.unet.state_dict()[k]), k
    assert (tmp_path / "a" / "latest").read_text().strip() == "step_0000002"
    # keep_every=2: step 1 was deleted once step 2 was written
    assert sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir()) == ["step_0000002"]
    assert load_generator(tmp_path / "a").step == 2


def test_sampled_npz_is_valid_with_requested_class_counts(tiny_run, tmp_path):
    d, _ = tiny_run
    out = tmp_path / "s.npz"
    res = sample_to_npz(d / "run", out, 10, steps=2, per_class="4,3,2,1", batch_size=4, progress=False, device="cpu")
    assert res["complete"] and res["n"] == 10
    x, y = load_npz(out, 4)
    assert x.shape == (10, 1, 8, 8) and x.dtype == torch.uint8
    assert y.bincount(minlength=4).tolist() == [4, 3, 2, 1]
    assert not out.with_name("s.npz.parts").exists()
    assert class_counts(10, 4) == [3, 3, 2, 2]
    with pytest.raises(ValueError, match="summing"):
        class_counts(10, 4, "1,1,1,1")
    with pytest.raises(ValueError, match="already exists"):
        sample_to_npz(d / "run", out, 10, steps=2, batch_size=4, progress=False, device="cpu")


def test_interrupted_sampling_resumes_from_shards(tiny_run, tmp_path):
    d, _ = tiny_run
    kw = dict(steps=2, scheduler="dpm", batch_size=4, progress=False, device="cpu", seed=3)
    out = tmp_path / "r.npz"
    first = sample_to_npz(d / "run", out, 10, stop_after=1, **kw)
    parts = tmp_path / "r.npz.parts"
    assert not first["complete"] and not out.exists() and (parts / "part_00000.npz").exists()
    stamp = (parts / "part_00000.npz").stat().st_mtime_ns
    with pytest.raises(ValueError, match="other options"):
        sample_to_npz(d / "run", out, 10, **{**kw, "seed": 4})
    assert (parts / "part_00000.npz").stat().st_mtime_ns == stamp
    second = sample_to_npz(d / "run", out, 10, **kw)
    assert (second["new_batches"], second["reused_batches"]) == (2, 1)
    ref = sample_to_npz(d / "run", tmp_path / "ref.npz", 10, **kw)
    assert ref["new_batches"] == 3
    (xa, ya), (xb, yb) = load_npz(out), load_npz(tmp_path / "ref.npz")
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and len(ya) == 10


def test_cli_synth_sample(tiny_run, tmp_path):
    from leanrobust.cli.proxy import register

    d, _ = tiny_run
    app = typer.Typer()
    register(app)
    r = CliRunner().invoke(app, ["synth", "sample", str(d / "run"), "--n", "6", "--out", str(tmp_path / "c.npz"),
                                 "--steps", "2", "--scheduler", "ddim", "--guidance", "2", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert load_npz(tmp_path / "c.npz")[1].bincount().tolist() == [2, 2, 1, 1]
    r = CliRunner().invoke(app, ["synth", "sample", str(d / "run"), "--n", "6", "--out", str(tmp_path / "e.npz"),
                                 "--scheduler", "euler", "--device", "cpu"])
    assert r.exit_code == 2 and "unknown scheduler" in r.output


def test_gaussian_proxy_matches_class_means():
    x = torch.cat([torch.full((50, 1, 4, 4), 40, dtype=torch.uint8), torch.full((50, 1, 4, 4), 200, dtype=torch.uint8)])
    x = add_noise(x, 0.05)
    y = torch.arange(100) // 50
    for rank in (0, 3):
        proxy = GaussianProxy.fit(x, y, 2, rank=rank)
        s = proxy.sample(torch.tensor([0] * 200 + [1] * 200), torch.Generator().manual_seed(0))
        assert s.shape == (400, 1, 4, 4) and s.dtype == torch.uint8
        assert abs(s[:200].float().mean() - 40) < 3 and abs(s[200:].float().mean() - 200) < 3


# ----------------------------------------------------------------------------- filtering
def test_keep_top_per_class():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.8, 0.2, 0.7, 0.4, 0.6, 0.0])
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    assert keep_top_per_class(scores, labels, 0.4).tolist() == [1, 4, 6, 8]
    assert keep_top_per_class(scores, labels, 1.0).tolist() == list(range(10))


def test_filter_npz_by_confidence_and_realism(tmp_path):
    """Images of constant brightness v; the model's logits are (v, -v) summed over pixels, so the
    confidence in label 0 grows with v and in label 1 falls with v."""
    v = np.arange(20, dtype=np.uint8) * 10
    img = np.repeat(v[:, None, None, None], 16, axis=1).reshape(20, 4, 4, 1)
    lab = np.arange(20) % 2
    np.savez(tmp_path / "g.npz", image=img, label=lab)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([torch.ones(16), -torch.ones(16)]) * 0.5)
        model[1].bias.zero_()
    res = filter_npz(tmp_path / "g.npz", tmp_path / "f.npz", by="confidence", model=model, keep=0.2)
    x, y = load_npz(tmp_path / "f.npz")
    assert res["kept"] == 4 and sorted(y.tolist()) == [0, 0, 1, 1]
    assert sorted(x[:, 0, 0, 0].tolist()) == [10, 30, 160, 180]  # brightest label-0, darkest label-1
    filter_npz(tmp_path / "g.npz", tmp_path / "r.npz", by="realism", model=model, keep=0.2)
    x, _ = load_npz(tmp_path / "r.npz")
    assert sorted(x[:, 0, 0, 0].tolist()) == [160, 170, 180, 190]  # highest p(class 0 = real) per class


# ----------------------------------------------------------------------------- quality
def test_wasserstein_zero_against_itself_and_grows_with_noise():
    x = smooth_images(60, size=8)
    y = torch.arange(60) % 3
    same = conditional_wasserstein(x, y, x, y, m=1000, repeats=2)  # m >= class size: the whole class
    assert same["mean"] < 1e-6 and same["m_per_class"] == {0: 20, 1: 20, 2: 20}
    means = []
    for s in (0.02, 0.08, 0.3):
        w = conditional_wasserstein(x, y, add_noise(x, s), y, m=15, repeats=4)
        assert w["ci95"][0] <= w["mean"] <= w["ci95"][1] and w["real_vs_real_floor"] is None
        means.append(w["mean"])
    assert means[0] < means[1] < means[2]
    feat = conditional_wasserstein(x, y, add_noise(x, 0.3), y, m=10, repeats=2, embed=lambda t: pixels(t) * 2)
    assert feat["real_vs_real_floor"] is not None and feat["mean"] > 0


def test_frechet_distance_zero_against_itself():
    x = smooth_images(200, size=16)
    feats = random_features(1, 16)
    f = feats(x)
    assert f.shape == (200, 200)
    assert frechet_distance(f, f) < 1e-6 * max(1.0, np.trace(np.cov(f, rowvar=False)))
    assert frechet_distance(f, feats(add_noise(x, 0.3))) > 1e-2


def test_normalised_area():
    assert normalised_area([0, 0.1], [1.0, 1.0]) == pytest.approx(1.0)
    assert normalised_area([0, 0.1], [0.5, 0.4]) == 0.0
    assert normalised_area([0, 0.05, 0.1], [1.0, 0.5, 0.5]) == pytest.approx(0.25)
    real = smooth_images(8, size=16)
    for bad in ([0.05, 0.0], [0.0, 0.0], [-0.1, 0.1], []):  # unsorted radii gave negative trapezoids
        with pytest.raises(ValueError, match="radii"):
            robust_discrimination(real[:4], real[4:], radii=bad)


def test_discrimination_area_shrinks_as_generated_data_approaches_real():
    real = smooth_images(480, size=16)
    kw = dict(radii=(0.0, 0.05), n=240, epochs=3, steps=3, eval_steps=5, width=0.5, batch_size=32, lr=3e-3)
    areas = [robust_discrimination(real[:240], add_noise(real[240:], s), **kw)["area"] for s in (0.3, 0.05, 0.0)]
    assert areas[0] > areas[1] + 0.1 and areas[1] > areas[2] + 0.1 and areas[2] < 0.15, areas


def test_unconditional_generator_with_pseudo_labels_and_realism_filter_cli(tmp_path):
    """An unconditional generator's samples get a classifier's argmax as labels; then a robust
    discriminator (synth discriminator) ranks them for `synth filter --by realism`."""
    from leanrobust import load
    from leanrobust.cli.proxy import register
    from leanrobust.io import save_weights
    from leanrobust.models import build_model

    real = smooth_images(40, size=16)
    np.savez(tmp_path / "real.npz", image=real.permute(0, 2, 3, 1).numpy(), label=np.arange(40) % 2)
    cfg = load_synth_config(None, [f"dataset={tmp_path / 'real.npz'}", "image_size=16", "channels=[8,8]",
                                   "norm_groups=4", "steps=1", "batch_size=4", "conditional=false", "progress=false",
                                   f"out={tmp_path / 'gen'}"])
    GeneratorTrainer(cfg).fit()
    with pytest.raises(ValueError, match="unconditional"):
        sample_to_npz(tmp_path / "gen", tmp_path / "x.npz", 4, steps=1, progress=False, device="cpu")
    torch.manual_seed(0)
    clf = build_model("smallcnn", 3, 1, [0.5], [0.5], width=0.25, input_size=16)
    nn.init.normal_(clf.net.classifier.fc3.weight)
    spec = {"name": "smallcnn", "num_classes": 3, "in_channels": 1, "mean": [0.5], "std": [0.5],
            "kwargs": {"width": 0.25, "input_size": 16}}
    save_weights(tmp_path / "clf" / "model.safetensors", clf, {"leanrobust_model": json.dumps(spec)})
    sample_to_npz(tmp_path / "gen", tmp_path / "u.npz", 8, steps=2, batch_size=4, label_with=tmp_path / "clf",
                  progress=False, device="cpu")
    x, y = load_npz(tmp_path / "u.npz")
    with torch.no_grad():
        assert torch.equal(y, load(tmp_path / "clf")(x.float() / 255).argmax(1))
    app = typer.Typer()
    register(app)
    run = CliRunner().invoke
    r = run(app, ["synth", "discriminator", str(tmp_path / "real.npz"), str(tmp_path / "u.npz"), "--out",
                  str(tmp_path / "disc"), "--eps", "0.05", "--epochs", "1", "--steps", "2", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    r = run(app, ["synth", "filter", str(tmp_path / "u.npz"), "--by", "realism", "--model", str(tmp_path / "disc"),
                  "--keep", "0.5", "--out", str(tmp_path / "kept.npz"), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    kept = load_npz(tmp_path / "kept.npz")[1]
    assert all(kept.eq(c).sum() == math.ceil(0.5 * int(y.eq(c).sum())) for c in y.unique())


def test_cli_proxy_quality_json(tmp_path):
    from leanrobust.cli.proxy import register

    real = smooth_images(60, size=16)
    for name, x in (("real", real), ("gen", add_noise(real, 0.2))):
        np.savez(tmp_path / f"{name}.npz", image=x.permute(0, 2, 3, 1).numpy(), label=np.arange(60) % 3)
    app = typer.Typer()
    register(app)
    r = CliRunner().invoke(app, ["proxy-quality", str(tmp_path / "real.npz"), str(tmp_path / "gen.npz"), "--n", "40",
                                 "--epochs", "1", "--steps", "2", "--radii", "0,0.05", "--m", "8", "--repeats", "2",
                                 "--device", "cpu", "--json", "--out", str(tmp_path / "q.json")])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res == json.loads((tmp_path / "q.json").read_text())
    assert res["robust_discrimination"]["radii"] == [0.0, 0.05] and 0 <= res["robust_discrimination"]["area"] <= 1
    for key in ("wasserstein_input", "wasserstein_features"):
        assert res[key]["mean"] > 0 and res[key]["m"] == 8 and res[key]["real_vs_real_floor"] is not None
    assert res["frechet_features"] > 0
