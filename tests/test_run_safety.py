"""A run directory survives concurrency, divergence, killed writes and a bad test set: one process per
run directory (a lock naming its holder), no NaN run marked complete, no orphaned temp files, and every
test-side error before the first training step."""
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from leanrobust import objectives
from leanrobust.config import validate_config
from leanrobust.experiment import resume
from leanrobust.io import RunLock, RunLockedError, load_checkpoint
from leanrobust.train import NonFiniteLossError, Trainer

from test_train import set_keys

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
needs_fmnist = pytest.mark.skipif(not FMNIST.exists(), reason="apt-get install dataset-fashion-mnist")


def _npz(path, n, shape=(16, 16, 1), classes=3, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    images = (rng.integers(0, 60, (n, *shape)) + 60 * labels.reshape(-1, *[1] * len(shape))).astype(np.uint8)
    np.savez(path, image=images, label=labels.astype(np.int64))
    return path


def npz_config(tmp_path, **over):
    raw = {
        "seed": 1, "progress": False, "threads": 1,
        "data": {"dataset": "npz", "path": str(_npz(tmp_path / "train.npz", 48)),
                 "test_path": str(_npz(tmp_path / "test.npz", 16, seed=1)), "num_classes": 3, "val_size": 8,
                 "augment": False},
        "model": {"name": "smallcnn", "width": 0.125},
        "objective": {"name": "pgd_at", "eps": 0.1, "steps": 1},
        "optim": {"epochs": 2, "batch_size": 8, "lr": 0.05, "schedule": "cosine"},
        "validation": {"n": 8, "steps": 1},
        "eval": {"n": 8, "attacks": ["pgd2"], "batch_size": 8},
    }
    return validate_config(set_keys(raw, over))


# ----------------------------------------------------------------------------- (a) the lock
HOLD = textwrap.dedent("""
    import sys, time
    from leanrobust.io import RunLock
    lock = RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
""")


def _holder(run_dir, seconds=30):
    """A second real process holding the run directory's lock (until it is killed)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_process_fails_at_once_and_names_the_holder(tmp_path):
    run = tmp_path / "run"
    proc = _holder(run)
    try:
        with pytest.raises(RunLockedError, match=rf"pid {proc.pid} on host {socket.gethostname()}"):
            RunLock(run).acquire()
        cfg = npz_config(tmp_path)
        with pytest.raises(RunLockedError, match=rf"{run} is in use.*pid {proc.pid}"):
            Trainer(cfg, run).fit()
        assert not (run / "config.yaml").exists() and not (run / "metrics.jsonl").exists()  # nothing written
    finally:
        proc.kill()
        proc.wait(timeout=10)
    # the OS dropped the lock of the killed holder: the stale .lock file does not block
    with RunLock(run) as lock:
        assert lock.held and json.loads((run / ".lock").read_text())["pid"] == os.getpid()
    assert not lock.held


def test_resume_is_locked_too(tmp_path):
    cfg = npz_config(tmp_path)
    run = tmp_path / "run"
    assert Trainer(cfg, run).fit(stop_after_epoch=1) is None
    proc = _holder(run)
    try:
        with pytest.raises(RunLockedError, match=f"pid {proc.pid}"):
            resume(run)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert resume(run)["status"] == "complete"  # the lock was released by the OS when the holder died


def test_two_train_processes_into_one_out(tmp_path):
    """Two real `train` processes: one finishes the run, the other fails at once naming the first."""
    cfg = npz_config(tmp_path, **{"optim.epochs": 4})
    (tmp_path / "c.yaml").write_text(json.dumps(cfg.model_dump(mode="json")))  # JSON is YAML
    script = textwrap.dedent("""
        import os, sys, time
        from leanrobust.config import load_config
        from leanrobust.io import RunLockedError
        from leanrobust.train import Trainer
        trainer = Trainer(load_config(sys.argv[1]), sys.argv[2])
        open(sys.argv[3] + f".ready{os.getpid()}", "w").close()
        while not os.path.exists(sys.argv[3]):  # both start fit() together
            time.sleep(0.005)
        try:
            trainer.fit()
        except RunLockedError as e:
            print(e); sys.exit(3)
    """)
    run, go = tmp_path / "run", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "c.yaml"), str(run), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("go.ready*"))) < 2 and time.monotonic() < deadline and \
            all(p.poll() is None for p in procs):
        time.sleep(0.01)
    go.touch()
    outs = [p.communicate(timeout=60) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 3], outs
    winner, loser = (procs[0], procs[1]) if procs[0].returncode == 0 else (procs[1], procs[0])
    message = outs[procs.index(loser)][0]
    assert f"pid {winner.pid}" in message and "in use" in message
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]  # one run's epochs, not two interleaved
    assert json.loads((run / "summary.json").read_text())["status"] == "complete"


# ----------------------------------------------------------------------------- (b) divergence
def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = npz_config(tmp_path, **{"optim.epochs": 3})
    run = tmp_path / "run"
    Trainer(cfg, run).fit(stop_after_epoch=1)
    good = load_checkpoint(run / "checkpoint.pt")
    best = (run / "best.safetensors").read_bytes()
    real = objectives.call_objective
    calls = {"n": 0}

    def poisoned(*a, **k):
        out = real(*a, **k)
        calls["n"] += 1
        if calls["n"] == 3:  # the third step of epoch 2
            out = out._replace(loss=out.loss * float("nan"))
        return out

    monkeypatch.setattr("leanrobust.train.call_objective", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2 of 3, step 3 of 5.*checkpoint \(epoch 1\).*is kept"):
        resume(run)
    assert not (run / "summary.json").exists() and not (run / "model.safetensors").exists()
    after = load_checkpoint(run / "checkpoint.pt")
    assert after["epoch"] == 1 and all(torch.equal(after["model"][k], v) for k, v in good["model"].items())
    assert (run / "best.safetensors").read_bytes() == best and not (run / "best.next.safetensors").exists()
    assert [json.loads(ln)["epoch"] for ln in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    monkeypatch.setattr("leanrobust.train.call_objective", real)
    assert resume(run)["status"] == "complete"  # the kept checkpoint resumes (a transient fault)


def test_a_huge_learning_rate_is_not_reported_complete(tmp_path):
    cfg = npz_config(tmp_path, **{"optim.lr": 1e30})
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"epoch 1 of 2, step \d+ of 5.*no checkpoint was written"):
        Trainer(cfg, run).fit()
    assert not (run / "summary.json").exists() and not (run / "checkpoint.pt").exists()


# ----------------------------------------------------------------------------- (c) orphaned temp files
def test_orphaned_temp_files_are_cleaned_on_start_and_resume(tmp_path):
    cfg = npz_config(tmp_path)
    run = tmp_path / "run"
    Trainer(cfg, run).fit(stop_after_epoch=1)
    orphans = [run / ".checkpoint.pt.k3j_9x0q.tmp", run / ".best.next.safetensors.abcdefgh.tmp",
               run / ".metrics.jsonl.0a1b2c3d.tmp"]
    keep = [run / ".notes.txt.abcdefgh.tmp", run / "mine.tmp", run / ".checkpoint.pt.bak"]  # not ours
    for p in orphans + keep:
        p.write_bytes(b"torn")
    assert resume(run)["status"] == "complete"
    assert not any(p.exists() for p in orphans) and all(p.exists() for p in keep)
    assert not list(run.glob(".checkpoint.pt.*.tmp"))
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / ".checkpoint.pt.zzzzzzzz.tmp").write_bytes(b"torn")
    Trainer(cfg, fresh).fit(stop_after_epoch=1)
    assert not (fresh / ".checkpoint.pt.zzzzzzzz.tmp").exists() and (fresh / "checkpoint.pt").exists()


# ----------------------------------------------------------------------------- (d) test side before training
def _assert_nothing_trained(run):
    assert not (run / "checkpoint.pt").exists() and not (run / "summary.json").exists()
    assert not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text().strip()


@pytest.mark.parametrize("problem, needle", [
    ("missing", "no such file"),
    ("shape", r"images are \(3, 20, 20\)"),
    ("pickle", "test.npz"),
    ("garbage", "test.npz"),
])
def test_a_bad_npz_test_set_fails_before_the_first_step(tmp_path, problem, needle):
    cfg = npz_config(tmp_path)
    test = Path(cfg.data.test_path)
    if problem == "missing":
        test.unlink()
    elif problem == "shape":
        _npz(test, 16, shape=(20, 20, 3))
    elif problem == "pickle":
        np.savez(test, image=np.array([{"x": 1}] * 4, dtype=object), label=np.arange(4))
    else:
        test.write_bytes(b"not a zip file at all" * 10)
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=needle):
        Trainer(cfg, run).fit()
    _assert_nothing_trained(run)
    with pytest.raises(ValueError, match=needle):  # budgeted runs too: a later resume would meet it
        Trainer(cfg, tmp_path / "run2").fit(stop_after_epoch=1)
    _assert_nothing_trained(tmp_path / "run2")


def test_resume_checks_the_test_set_before_training_again(tmp_path):
    cfg = npz_config(tmp_path)
    run = tmp_path / "run"
    Trainer(cfg, run).fit(stop_after_epoch=1)
    _npz(Path(cfg.data.test_path), 16, shape=(20, 20, 3))
    with pytest.raises(ValueError, match=r"test.npz: images are"):
        resume(run)
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1  # no epoch trained again
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_an_unknown_attack_fails_before_the_first_step(tmp_path):
    cfg = npz_config(tmp_path).model_copy(deep=True)
    object.__setattr__(cfg.eval, "attacks", ["fgsm"])  # past the config check (e.g. an old run's config.yaml)
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="unknown attack 'fgsm'"):
        Trainer(cfg, run).fit()
    _assert_nothing_trained(run)


@needs_fmnist
def test_garbage_idx_test_files_fail_before_the_first_step(tmp_path):
    root = tmp_path / "fm"
    root.mkdir()
    src = FMNIST.parent
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (root / name).symlink_to(src / name)
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(b"garbage" * 100)
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage" * 100)
    cfg = validate_config({"seed": 0, "progress": False, "threads": 1,
                           "data": {"dataset": "fashion_mnist", "root": str(root), "download": False,
                                    "train_subset": 64, "val_size": 16},
                           "model": {"name": "smallcnn", "width": 0.125},
                           "objective": {"name": "pgd_at", "eps": 0.1, "steps": 1},
                           "optim": {"epochs": 1, "batch_size": 32},
                           "validation": {"n": 8, "steps": 1}, "eval": {"n": 8, "attacks": ["pgd2"]}})
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="t10k"):
        Trainer(cfg, run).fit()
    _assert_nothing_trained(run)
