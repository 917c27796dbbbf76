"""End-to-end runs on a small real Fashion-MNIST subset: the run directory, resume, bad inputs."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from leanrobust.config import validate_config
from leanrobust.experiment import build_trainer, resume
from leanrobust.io import load_checkpoint, load_weights
from leanrobust.train import Trainer

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
needs_fmnist = pytest.mark.skipif(not FMNIST.exists(), reason="apt-get install dataset-fashion-mnist")


def tiny_config(**over):
    raw = {
        "seed": 3, "progress": False, "threads": 2,
        "data": {"dataset": "fashion_mnist", "train_subset": 256, "val_size": 64},
        "model": {"name": "smallcnn", "width": 0.25},
        "objective": {"name": "pgd_at", "eps": 0.1, "steps": 2},
        "optim": {"epochs": 2, "batch_size": 64, "lr": 0.05, "schedule": "cosine"},
        "validation": {"n": 64, "steps": 2},
        "eval": {"n": 64, "attacks": ["pgd5"], "batch_size": 64},
    }
    return validate_config(set_keys(raw, over))


def set_keys(raw: dict, over: dict) -> dict:
    """raw with dotted keys ("optim.epochs": 3) set, sections made as needed."""
    for k, v in over.items():
        node = raw
        *path, last = k.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = v
    return raw


@needs_fmnist
def test_one_epoch_run_writes_every_file(tmp_path):
    cfg = tiny_config(**{"optim.epochs": 1, "eval.attacks": ["pgd5", "cw5", "autoattack"], "eval.autoattack_n": 8,
                         "eval.autoattack_version": "fast"})
    summary = Trainer(cfg, tmp_path).fit()
    for f in ["config.yaml", "metrics.jsonl", "model.safetensors", "checkpoint.pt", "summary.json"]:
        assert (tmp_path / f).is_file(), f
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["status"] == "complete"
    assert set(on_disk["robust_acc"]) == {"pgd5", "cw5", "autoattack"}
    assert 0.0 <= on_disk["clean_acc"] <= 1.0
    assert all(acc <= on_disk["clean_acc"] for acc in on_disk["robust_acc"].values())  # robust implies correct
    assert on_disk["n_train"] == 256 and on_disk["samples_seen"] == 256
    # PGD-2 training: each sample costs 2 attack passes + 1 update pass (all with grad)
    assert on_disk["grad_evals"] == 256 * 3
    assert on_disk["train_seconds"] > 0 and on_disk["config"]["objective"]["name"] == "pgd_at"
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and {"val_clean", "val_robust", "images_per_s"} <= set(rows[0])
    import leanrobust
    model = leanrobust.load(tmp_path)
    assert not model.training
    x = torch.rand(2, 1, 28, 28)
    assert model(x).shape == (2, 10)


@needs_fmnist
def test_a_crash_between_the_epoch_writes_leaves_consistent_best_weights_and_metrics(tmp_path, monkeypatch):
    """Killed after epoch 2's metrics row and staged best weights but before its checkpoint: the resumed
    run retrains epoch 2 without a duplicate metrics row, and best.safetensors matches best_epoch."""
    import leanrobust.train as train_mod

    cfg = tiny_config(**{"eval.attacks": [], "validation.select": "last"})
    full = Trainer(cfg, tmp_path / "full").fit()
    real_save = train_mod.save_checkpoint

    def dies_at_epoch_2(path, state):
        if state["epoch"] == 2:
            raise KeyboardInterrupt
        real_save(path, state)

    monkeypatch.setattr(train_mod, "save_checkpoint", dies_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, tmp_path / "cut").fit()
    run = tmp_path / "cut"
    assert (run / "best.next.safetensors").exists() and len((run / "metrics.jsonl").read_text().splitlines()) == 2
    monkeypatch.undo()
    resumed = resume(run)
    epochs = [json.loads(ln)["epoch"] for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2] and not (run / "best.next.safetensors").exists()
    wa, wb = load_weights(tmp_path / "full" / "best.safetensors"), load_weights(run / "best.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert resumed["best_epoch"] == full["best_epoch"] == 2


@needs_fmnist
@pytest.mark.parametrize("objective,ema", [("trades", None), ("pgd_at", 0.9)])
def test_interrupted_and_resumed_run_ends_with_identical_weights(tmp_path, objective, ema, monkeypatch):
    cfg = tiny_config(**{"objective.name": objective, "optim.ema_tau": ema, "eval.attacks": []})
    full = Trainer(cfg, tmp_path / "full").fit()
    assert Trainer(cfg, tmp_path / "cut").fit(stop_after_epoch=1) is None
    assert not (tmp_path / "cut" / "summary.json").exists()
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["epoch"] == 1
    trained = []
    epoch_fn = Trainer.train_epoch
    monkeypatch.setattr(Trainer, "train_epoch", lambda self, e: (trained.append(e), epoch_fn(self, e))[1])
    resumed = resume(tmp_path / "cut")
    assert trained == [1]  # the checkpoint was restored: only the missing epoch ran
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    wa, wb = load_weights(tmp_path / "full" / "model.safetensors"), load_weights(tmp_path / "cut" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert full["grad_evals"] == resumed["grad_evals"] and full["samples_seen"] == resumed["samples_seen"]
    assert full["clean_acc"] == resumed["clean_acc"]
    with pytest.raises(ValueError, match="finished run"):  # would redo the evaluation and overwrite it
        resume(tmp_path / "cut")


@needs_fmnist
def test_resumed_forgetting_selection_keeps_the_counts_observed_before_the_cut(tmp_path):
    cfg = tiny_config(**{"optim.epochs": 4, "eval.attacks": [], "selection.method": "forgetting",
                         "selection.fraction": 0.5, "selection.start_epoch": 3})
    build_trainer(cfg, tmp_path / "full").fit()
    build_trainer(cfg, tmp_path / "cut").fit(stop_after_epoch=2)  # observations of epochs 0-1 live in the checkpoint
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["hook"]["forgetting"]["observed"].max() == 2
    resume(tmp_path / "cut")
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert torch.equal(a["selection"]["indices"], b["selection"]["indices"])
    assert torch.equal(a["hook"]["forgetting"]["events"], b["hook"]["forgetting"]["events"])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


@needs_fmnist
def test_selection_sets_subset_eps_and_weight(tmp_path, monkeypatch):
    """Each batch carries the selection's own pool indices, per-sample eps and loss weights."""
    from leanrobust.selection import Selection
    eps = torch.where(torch.arange(100) % 2 == 0, 0.05, 0.02)
    weight = 1.0 + torch.arange(100) % 3
    sel = Selection(torch.arange(0, 200, 2), weight, eps)
    sel.save(tmp_path / "sel.npz")
    cfg = tiny_config(**{"optim.epochs": 1, "data.selection": str(tmp_path / "sel.npz"), "eval.attacks": []})
    trainer = Trainer(cfg, tmp_path / "run")
    seen = []
    batch = trainer.batch

    def spy(positions, generator):
        out = batch(positions, generator)
        seen.append((trainer.sel_indices[positions.to(trainer.sel_indices.device)].cpu(), out[2].cpu(), out[3].cpu()))
        return out

    monkeypatch.setattr(trainer, "batch", spy)
    summary = trainer.fit()
    assert summary["n_train"] == 100 and summary["samples_seen"] == 100
    idx, e, w = (torch.cat(t) for t in zip(*seen))
    pos = idx // 2  # pool index 2k is the selection's k-th sample
    assert torch.equal(idx % 2, torch.zeros_like(idx)) and sorted(pos.tolist()) == list(range(100))
    torch.testing.assert_close(e, eps[pos].to(e.dtype))
    torch.testing.assert_close(w, weight[pos].to(w.dtype))


@needs_fmnist
def test_sample_weighting_draws_by_weight_and_trains_with_weight_one(tmp_path, monkeypatch):
    """data.weighting='sample': a centre weighted 9x is drawn ~9x as often and its loss is not scaled."""
    from leanrobust.selection import Selection
    w = torch.ones(64)
    w[:8] = 9.0
    Selection(torch.arange(64), w, torch.full((64,), 0.1)).save(tmp_path / "sel.npz")
    cfg = tiny_config(**{"optim.epochs": 3, "data.selection": str(tmp_path / "sel.npz"), "eval.attacks": [],
                         "data.weighting": "sample", "optim.batch_size": 16})
    trainer = Trainer(cfg, tmp_path / "run")
    seen_w, seen_idx = [], []
    batch = trainer.batch

    def spy(positions, generator):
        x, y, eps, weight = batch(positions, generator)
        seen_w.append(weight)
        seen_idx.append(positions.cpu())
        return x, y, eps, weight
    monkeypatch.setattr(trainer, "batch", spy)
    trainer.fit()
    assert all(bool((sw == 1).all()) for sw in seen_w)
    drawn = torch.bincount(torch.cat(seen_idx), minlength=64)
    assert drawn[:8].float().mean() > 4 * drawn[8:].float().mean()  # 9x the weight: ~9x the draws per position
    loss_cfg = tiny_config(**{"data.selection": str(tmp_path / "sel.npz"), "data.weighting": "loss"})
    assert torch.equal(Trainer(loss_cfg, tmp_path / "run2").sel_weight.cpu(), w)
    _write_npz(tmp_path / "gen.npz", np.zeros((32, 28, 28, 1), np.uint8), np.arange(32) % 10)
    n_pool = len(trainer.pool) + 32  # the real pool, then the generated images
    Selection(torch.arange(n_pool), torch.linspace(1, 2, n_pool), torch.full((n_pool,), 0.1)).save(tmp_path / "all.npz")
    mixed = tiny_config(**{"data.selection": str(tmp_path / "all.npz"), "data.weighting": "sample",
                           "data.generated": str(tmp_path / "gen.npz")})
    with pytest.raises(ValueError, match="cannot be combined"):
        Trainer(mixed, tmp_path / "run3")


def _write_npz(path, images, labels):
    np.savez(path, image=images, label=labels)


@pytest.mark.parametrize("where", ["train", "test"])
@pytest.mark.parametrize("problem,needle", [
    ("wrong_keys", "expected keys 'image' and 'label'"),
    ("label_range", "out of range"),
    ("nan", "non-finite"),
    ("truncated", "corrupt|truncated|not an .npz"),
])
def test_bad_npz_gives_clear_error_and_no_finished_run(tmp_path, problem, needle, where):
    """A bad training file fails before anything is written; a bad test file is only read after
    training: the run keeps its checkpoint (resumable once the file is fixed) but is not marked complete."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, 64)
    good, path = tmp_path / "good.npz", tmp_path / f"{where}.npz"
    _write_npz(good, images, labels)
    if problem == "wrong_keys":
        np.savez(path, images=images, labels=labels)
    elif problem == "label_range":
        _write_npz(path, images, labels + 10)
    elif problem == "nan":
        bad = images.astype(np.float32) / 255
        bad[0, 0, 0, 0] = np.nan
        _write_npz(path, bad, labels)
    else:
        _write_npz(path, images, labels)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    train_file, test_file = (path, good) if where == "train" else (good, path)
    cfg = tiny_config(**{"data.dataset": "npz", "data.path": str(train_file), "data.test_path": str(test_file),
                         "data.num_classes": 10, "data.train_subset": None, "data.val_size": 8,
                         "optim.epochs": 1, "eval.attacks": []})
    with pytest.raises(ValueError, match=needle) as e:
        Trainer(cfg, tmp_path / "run").fit()
    assert f"{where}.npz" in str(e.value)
    assert not (tmp_path / "run" / "summary.json").exists()
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # test-side errors come before any training


def test_npz_dataset_trains(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(120) % 3
    images = (rng.integers(0, 60, (120, 28, 28, 3)) + 60 * labels[:, None, None, None]).astype(np.uint8)
    _write_npz(tmp_path / "d.npz", images, labels)
    cfg = tiny_config(**{"data.dataset": "npz", "data.path": str(tmp_path / "d.npz"),
                         "data.test_path": str(tmp_path / "d.npz"), "data.num_classes": 3,
                         "data.train_subset": None, "data.val_size": 12, "optim.epochs": 1,
                         "model.name": "smallcnn", "validation.n": 12})
    summary = Trainer(cfg, tmp_path / "run").fit()
    assert summary["n_train"] == 108


@needs_fmnist
def test_generated_pool_is_mixed_at_the_configured_fraction(tmp_path):
    rng = np.random.default_rng(1)
    _write_npz(tmp_path / "gen.npz", rng.integers(0, 256, (500, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, 500))
    cfg = tiny_config(**{"optim.epochs": 1, "data.generated": str(tmp_path / "gen.npz"), "data.gen_fraction": 0.5,
                         "objective.name": "gaussian_noise", "objective.params": {"sigma": 0.25},
                         "eval.attacks": [], "validation.select": "clean"})
    tr = Trainer(cfg, tmp_path / "run")
    assert len(tr.pool) == 256 + 500 and int(tr.pool.is_generated.sum()) == 500
    batches = tr.sampler.epoch(0, cfg.seed)
    gen_share = [float(tr.pool.is_generated[tr.sel_indices[b]].float().mean()) for b in batches]
    assert gen_share == [0.5] * len(batches)
    summary = tr.fit()
    # an epoch is the real set's size over the batch size (Wang et al. 2023)
    assert summary["samples_seen"] == (256 // 64) * 64 and summary["n_real"] == 256
    assert summary["grad_evals"] == summary["samples_seen"]  # noise training: one pass per sample


@needs_fmnist
def test_dynamic_selection_from_config_counts_its_passes(tmp_path):
    cfg = tiny_config(**{"selection.method": "loss", "selection.fraction": 0.5, "selection.every": 1,
                         "eval.attacks": []})
    summary = build_trainer(cfg, tmp_path / "run").fit()
    assert summary["n_train"] == 128 and summary["samples_seen"] == 2 * 128
    training_passes = 2 * 128 * 3  # PGD-2 + update, per kept sample and epoch
    assert summary["grad_evals"] > training_passes  # the scoring attacks on all 256 are counted too
    resumed_cfg = tiny_config(**{"selection.method": "loss", "selection.fraction": 0.5, "selection.every": 1,
                                 "eval.attacks": []})
    tr = build_trainer(resumed_cfg, tmp_path / "cut")
    tr.fit(stop_after_epoch=1)
    again = resume(tmp_path / "cut")
    assert again["grad_evals"] == summary["grad_evals"] and again["clean_acc"] == summary["clean_acc"]


METHOD_CONFIGS = sorted((Path(__file__).parents[1] / "configs" / "methods").glob("*.yaml"))


@needs_fmnist
@pytest.mark.parametrize("path", METHOD_CONFIGS, ids=[p.stem for p in METHOD_CONFIGS])
def test_every_shipped_method_config_trains(tmp_path, path):
    from leanrobust.config import load_config

    cfg = load_config(path, ["progress=false", "threads=2", "data.train_subset=192", "data.val_size=32",
                             "model.width=0.25", "objective.steps=2", "optim.epochs=2", "optim.batch_size=64",
                             "validation.n=32", "validation.steps=2", "eval.n=32", "eval.attacks=[pgd5]"])
    summary = build_trainer(cfg, tmp_path).fit()
    assert summary["config"]["objective"]["name"] == cfg.objective.name
    assert summary["grad_evals"] > 0 and 0.0 <= summary["robust_acc"]["pgd5"] <= summary["clean_acc"]
    if cfg.selection.method != "none":  # selected at epoch 1 of 2: the second epoch trains on half the pool
        assert summary["samples_seen"] < 2 * 192


def test_npz_run_without_a_test_file_fails_before_training(tmp_path):
    rng = np.random.default_rng(0)
    _write_npz(tmp_path / "d.npz", rng.integers(0, 256, (40, 28, 28, 1)).astype(np.uint8), np.arange(40) % 3)
    cfg = tiny_config(**{"data.dataset": "npz", "data.path": str(tmp_path / "d.npz"), "data.num_classes": 3,
                         "data.train_subset": None, "data.val_size": 4, "optim.epochs": 1})
    with pytest.raises(ValueError, match="data.test_path is needed"):
        Trainer(cfg, tmp_path / "run").fit()
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # nothing trained


def test_npz_test_file_of_another_shape_is_named(tmp_path):
    rng = np.random.default_rng(0)
    _write_npz(tmp_path / "d.npz", rng.integers(0, 256, (40, 28, 28, 1)).astype(np.uint8), np.arange(40) % 3)
    _write_npz(tmp_path / "t.npz", rng.integers(0, 256, (8, 32, 32, 3)).astype(np.uint8), np.arange(8) % 3)
    cfg = tiny_config(**{"data.dataset": "npz", "data.path": str(tmp_path / "d.npz"), "data.num_classes": 3,
                         "data.test_path": str(tmp_path / "t.npz"), "data.train_subset": None,
                         "data.val_size": 4, "optim.epochs": 1, "eval.attacks": []})
    with pytest.raises(ValueError, match=r"t.npz: images are \(3, 32, 32\)"):
        Trainer(cfg, tmp_path / "run").fit()
    assert not (tmp_path / "run" / "summary.json").exists()
