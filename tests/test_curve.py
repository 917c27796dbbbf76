"""The learning curve every run logs: held-out robust accuracy against cumulative compute, on a held-out
set that does not depend on the run's seed, with the curve's own passes kept out of the method's cost."""
import json

import numpy as np
import pytest
import torch

from leanrobust.config import load_config, validate_config
from leanrobust.data.build import build_training_data
from leanrobust.io import load_weights
from leanrobust.train import Trainer

from test_train import needs_fmnist, tiny_config


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _unique_npz(path, n=120, classes=4):
    """Images whose first pixels spell their index, so any two are different and can be traced."""
    images = np.zeros((n, 8, 8, 1), dtype=np.uint8)
    images[:, 0, 0, 0], images[:, 0, 1, 0] = np.arange(n) % 256, np.arange(n) // 256
    np.savez(path, image=images, label=np.arange(n) % classes)
    return path


def _ids(pool):
    return set((pool.images[:, 0, 0, 0].long() + 256 * pool.images[:, 0, 0, 1].long()).tolist())


def test_held_out_set_is_the_same_for_every_seed_and_disjoint_from_training(tmp_path):
    cfg = validate_config({"data": {"dataset": "npz", "path": str(_unique_npz(tmp_path / "d.npz")), "num_classes": 4,
                                    "val_size": 20, "train_subset": 40}})
    a, b = build_training_data(cfg.data, seed=0), build_training_data(cfg.data, seed=1)
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.val.labels, b.val.labels)
    assert _ids(a.pool) != _ids(b.pool)  # the training subset still follows the run's seed
    for d in (a, b):
        assert len(d.pool) == 40 and len(d.val) == 20 and not (_ids(d.pool) & _ids(d.val))
    other = validate_config({"data": {**cfg.data.model_dump(), "val_seed": 5}})
    assert _ids(build_training_data(other.data, seed=0).val) != _ids(a.val)


def test_a_run_written_before_val_seed_keeps_its_split(tmp_path):
    """An old run's config.yaml (no data.val_seed) re-read leniently splits as it did: from the run's seed."""
    path = tmp_path / "config.yaml"
    raw = {"seed": 3, "data": {"dataset": "npz", "path": str(_unique_npz(tmp_path / "d.npz")), "num_classes": 4,
                               "val_size": 20, "train_subset": 40}}
    import yaml
    path.write_text(yaml.safe_dump(raw))
    old = load_config(path, lenient=True)
    assert old.data.val_seed is None and load_config(path).data.val_seed == 0
    a, b = build_training_data(old.data, seed=3), build_training_data(old.data, seed=4)
    assert _ids(a.val) != _ids(b.val)  # the legacy split moved with the seed


@needs_fmnist
def test_every_epoch_logs_a_curve_point_with_its_compute_and_the_curve_costs_nothing_to_the_method(tmp_path):
    cfg = tiny_config(**{"eval.attacks": []})  # 256 train, PGD-2 training, validation n=64 steps=2
    summary = Trainer(cfg, tmp_path).fit()
    rows = _rows(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2]
    for k, r in enumerate(rows, start=1):
        assert r["grad_evals"] == k * 256 * 3  # training only: 2 attack passes + 1 update per sample
        assert r["val_grad_evals"] == k * 64 * 2  # the curve's PGD-2 on 64 points, counted apart
        assert r["val_forward_evals"] == k * 64 * 2  # clean check + the check on the attacked point
        assert r["val_n"] == 64 and r["val_steps"] == 2 and 0 <= r["val_robust"] <= r["val_clean"] <= 1
        assert r["train_seconds"] > 0 and r["val_seconds"] > 0
    assert rows[1]["train_seconds"] > rows[0]["train_seconds"] and rows[1]["val_seconds"] > rows[0]["val_seconds"]
    assert summary["grad_evals"] == 2 * 256 * 3 and summary["val_grad_evals"] == 2 * 64 * 2


@needs_fmnist
def test_mid_epoch_points_leave_the_training_run_unchanged(tmp_path):
    """every_grad_evals adds points inside epochs; validation forks the RNG, so the weights are those of a run
    without them, and mid-epoch rows sit between the epoch rows in the order of their compute."""
    base = tiny_config(**{"eval.attacks": [], "validation.select": "last"})
    Trainer(base, tmp_path / "plain").fit()
    dense = tiny_config(**{"eval.attacks": [], "validation.select": "last", "validation.every_grad_evals": 256})
    Trainer(dense, tmp_path / "dense").fit()
    w0, w1 = load_weights(tmp_path / "plain" / "model.safetensors"), load_weights(tmp_path / "dense" / "model.safetensors")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    rows = _rows(tmp_path / "dense")
    mids = [r for r in rows if r.get("point") == "mid"]
    assert len(mids) == 4  # 768 grad evals per epoch: crossings of 256 and 512 inside each epoch (768 is its end)
    assert [r["epoch"] for r in rows] == sorted(r["epoch"] for r in rows)
    assert [r["grad_evals"] for r in rows] == sorted(r["grad_evals"] for r in rows)
    assert all(0 < r["epoch"] % 1 for r in mids) and all(isinstance(r["epoch"], int) for r in rows if r not in mids)
    assert [r["train_seconds"] for r in rows] == sorted(r["train_seconds"] for r in rows)
    assert rows[-1]["val_grad_evals"] == 6 * 64 * 2  # six points in all


@needs_fmnist
def test_resume_drops_the_mid_epoch_points_of_the_epoch_it_retrains(tmp_path, monkeypatch):
    cfg = tiny_config(**{"eval.attacks": [], "validation.every_grad_evals": 256})
    calls = []
    real = Trainer.curve_point

    def dies_in_epoch_2(self, seconds_in_epoch=0.0):
        if self.epoch == 1 and seconds_in_epoch:
            calls.append(self.epoch)
            if len(calls) == 2:
                raise KeyboardInterrupt  # killed at the second mid-epoch point of epoch 2, the first one logged
        return real(self, seconds_in_epoch)

    monkeypatch.setattr(Trainer, "curve_point", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, tmp_path).fit()
    assert sum(r.get("point") == "mid" and r["epoch"] > 1 for r in _rows(tmp_path)) == 1
    monkeypatch.setattr(Trainer, "curve_point", real)
    Trainer(cfg, tmp_path).fit()
    rows = _rows(tmp_path)
    assert [r["epoch"] for r in rows if r.get("point") != "mid"] == [1, 2]
    assert len([r for r in rows if r.get("point") == "mid"]) == 4
    assert [r["grad_evals"] for r in rows] == sorted(r["grad_evals"] for r in rows)


@needs_fmnist
def test_every_epochs_validates_on_its_epochs_and_the_last_and_picks_the_best_among_them(tmp_path):
    """Runs of many short epochs validate every k epochs (and after the last); the epochs between carry their
    compute only, are never the best checkpoint, and the weights equal those of a run validating every epoch."""
    over = {"eval.attacks": [], "optim.epochs": 5, "data.train_subset": 64}
    sparse = tiny_config(**over, **{"validation.every_epochs": 2})
    summary = Trainer(sparse, tmp_path / "sparse").fit()
    rows = _rows(tmp_path / "sparse")
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5]
    assert [("val_robust" in r) for r in rows] == [False, True, False, True, True]
    assert all("grad_evals" in r and "train_seconds" in r for r in rows)
    assert rows[-1]["val_grad_evals"] == 3 * 64 * 2  # three validations of 64 points with PGD-2
    assert summary["best_epoch"] in (2, 4, 5)
    Trainer(tiny_config(**over, **{"validation.select": "last"}), tmp_path / "dense").fit()
    last = tiny_config(**over, **{"validation.every_epochs": 2, "validation.select": "last"})
    Trainer(last, tmp_path / "sparse_last").fit()
    w0 = load_weights(tmp_path / "dense" / "model.safetensors")
    w1 = load_weights(tmp_path / "sparse_last" / "model.safetensors")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
