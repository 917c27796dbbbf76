"""Multi-process runs on the CPU (gloo) under torchrun: a 2-process run equals a 1-process run of the same
global batch, a run killed with SIGKILL mid-epoch resumes to the same weights, a 2-process eval equals a
1-process eval; and the collectives in distributed.py on two ranks.

How equality across world sizes is reached (and what the test accounts for): rank r trains the global
batches r, r + 2, ... of the sampler, so each step's 2 x 16 samples are the 1-process batch of 32, and DDP
averages the two half-batch gradients into the 32-sample mean. Scores for the dynamic selection are
computed on batch-aligned shards and gathered, and rank 0's Selection is shared. What stays per rank is
randomness: every rank draws its own stream (attack starts, dropout, augmentation), so a sample's random
start depends on its rank. The equality test therefore uses PGD random starts keyed on the sample's pixels
(ENTRY patches random_init), no dropout and no augmentation; SmallCNN has no BatchNorm. Everything else is
the shipped code path."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from leanrobust import distributed
from leanrobust.io import load_checkpoint

TIMEOUT = 240  # seconds per launch; a hung collective fails the test instead of hanging CI

# Runs the leanrobust CLI with sample-keyed PGD random starts, writes its pid, and (LR_TEST_KILL_AT=k) has
# rank 1 SIGKILL the torchrun agent, rank 0 and itself before its k-th training step.
ENTRY = r'''
import os, signal, sys
from pathlib import Path
import torch
import leanrobust.attacks.common, leanrobust.attacks.pgd

def keyed_init(x, eps, norm):
    k = torch.arange(x[0].numel(), dtype=x.dtype).view_as(x[0])
    u = torch.frac(torch.sin(x * 12.9898 + k * 78.233) * 43758.5453)
    return (x + (2 * u - 1) * eps).clamp(0.0, 1.0)

for name in ("leanrobust.attacks.common", "leanrobust.attacks.pgd"):
    sys.modules[name].random_init = keyed_init
pids = Path(os.environ["LR_TEST_PIDS"])
(pids / f"rank{os.environ.get('RANK', 0)}").write_text(str(os.getpid()))
if os.environ.get("LR_TEST_KILL_AT"):
    from leanrobust.train import Trainer
    batch = Trainer.batch

    def batch_or_die(self, positions, generator):
        if self.rank == 1 and self.iteration == int(os.environ["LR_TEST_KILL_AT"]):
            for pid in (os.getppid(), int((pids / "rank0").read_text()), os.getpid()):
                os.kill(pid, signal.SIGKILL)
        return batch(self, positions, generator)

    Trainer.batch = batch_or_die
from leanrobust.cli import main
sys.argv = ["leanrobust", *sys.argv[1:]]
main()
'''

CONFIG = """name: ddp
seed: 3
progress: false
threads: 1
data: {dataset: npz, path: %(dir)s/train.npz, test_path: %(dir)s/test.npz, num_classes: 4, val_size: 32, augment: false}
model: {name: smallcnn, width: 0.25, dropout: 0.0}
objective: {name: pgd_at, eps: 0.1, steps: 2}
optim: {epochs: 3, batch_size: 16, lr: 0.05, schedule: cosine}
selection: {method: loss, fraction: 0.5, every: 1, start_epoch: 1, params: {batch_size: 32}}
validation: {n: 32, steps: 2}
eval: {n: 32, attacks: [], batch_size: 16}
"""


def _data(folder: Path) -> None:
    """4 classes of 16x16 images: a bright quadrant per class plus noise (learnable in a few steps)."""
    rng = np.random.default_rng(0)
    for name, n in (("train", 160), ("test", 48)):
        y = np.arange(n) % 4
        x = rng.integers(0, 96, (n, 16, 16), dtype=np.uint8)
        for c in range(4):
            r, q = divmod(c, 2)
            x[y == c, 8 * r:8 * r + 8, 8 * q:8 * q + 8] += 128
        np.savez(folder / f"{name}.npz", image=x, label=y)


def _torchrun(args: list[str], cwd: Path, pids: Path, env: dict | None = None, module: bool = False):
    """torchrun --standalone --nproc_per_node 2 (ENTRY or -m leanrobust) ARGS; kills what it started on timeout."""
    pids.mkdir(exist_ok=True)
    target = ["-m", "leanrobust"] if module else [str(cwd / "entry.py")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *target, "--", *args]
    full_env = {**os.environ, "LR_TEST_PIDS": str(pids), "LEANROBUST_DIST_TIMEOUT": "120", "OMP_NUM_THREADS": "1",
                **(env or {})}
    proc = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        for pid in [proc.pid] + [int(f.read_text()) for f in pids.glob("rank*")]:  # agent and workers (own sessions)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        out, err = proc.communicate()
        pytest.fail(f"torchrun {' '.join(args)} timed out after {TIMEOUT}s:\n{err[-3000:]}")
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    """The data, the config and one uninterrupted 2-process run (3 epochs, dynamic selection every epoch)."""
    d = tmp_path_factory.mktemp("ddp")
    _data(d)
    (d / "cfg.yaml").write_text(CONFIG % {"dir": d})
    (d / "entry.py").write_text(ENTRY)
    rc, out, err = _torchrun(["train", "cfg.yaml", "--out", "two"], d, d / "pids_two")
    assert rc == 0, err[-3000:]
    return d


def _patch_keyed_starts(monkeypatch):
    ns: dict = {}
    exec(ENTRY.split("for name in")[0], ns)  # the same keyed_init the 2-process run used
    for name in ("leanrobust.attacks.common", "leanrobust.attacks.pgd"):
        monkeypatch.setattr(sys.modules[name], "random_init", ns["keyed_init"])


def test_two_processes_equal_one_process_of_the_same_global_batch(ddp, monkeypatch):
    from leanrobust.config import load_config
    from leanrobust.experiment import build_trainer

    _patch_keyed_starts(monkeypatch)
    one = build_trainer(load_config(ddp / "cfg.yaml", ["optim.batch_size=32"]), ddp / "one").fit()
    two = json.loads((ddp / "two" / "summary.json").read_text())
    a, b = load_checkpoint(ddp / "two" / "checkpoint.pt"), load_checkpoint(ddp / "one" / "checkpoint.pt")
    assert torch.equal(a["selection"]["indices"], b["selection"]["indices"])  # the second dynamic selection too
    assert len(a["selection"]["indices"]) == 64
    for k in b["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-4, atol=1e-5)
    assert max((a["model"][k] - b["model"][k]).abs().max().item() for k in b["model"]) > 0  # two real runs
    assert two["world_size"] == 2 and "world_size" not in one
    for key in ("grad_evals", "forward_evals", "samples_seen", "n_train", "best_epoch"):
        assert two[key] == one[key], key  # counters are summed over the ranks
    rows = [[json.loads(ln) for ln in (ddp / r / "metrics.jsonl").read_text().splitlines()] for r in ("two", "one")]
    assert [r["epoch"] for r in rows[0]] == [1, 2, 3]
    for r2, r1 in zip(*rows):
        assert abs(r2["train_loss"] - r1["train_loss"]) < 1e-4 and abs(r2["train_acc"] - r1["train_acc"]) <= 1 / 64
        assert abs(r2["val_robust"] - r1["val_robust"]) <= 1 / 32 and r2["grad_evals"] == r1["grad_evals"]


def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_weights(ddp):
    rc, _, err = _torchrun(["train", "cfg.yaml", "--out", "cut"], ddp, ddp / "pids_cut", {"LR_TEST_KILL_AT": "5"})
    assert rc != 0  # every process was killed in epoch 2 (steps 4-5), before its checkpoint
    assert load_checkpoint(ddp / "cut" / "checkpoint.pt")["epoch"] == 1 and not (ddp / "cut" / "summary.json").exists()
    rc, out, err = _torchrun(["resume", "cut"], ddp, ddp / "pids_resume")
    assert rc == 0, err[-3000:]
    a, b = load_checkpoint(ddp / "two" / "checkpoint.pt"), load_checkpoint(ddp / "cut" / "checkpoint.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["optimizer"]["state"][i]["momentum_buffer"], b["optimizer"]["state"][i]["momentum_buffer"])
               for i in a["optimizer"]["state"])
    sa, sb = (json.loads((ddp / r / "summary.json").read_text()) for r in ("two", "cut"))
    assert sa["grad_evals"] == sb["grad_evals"] and sa["samples_seen"] == sb["samples_seen"]
    assert [json.loads(ln)["epoch"] for ln in (ddp / "cut" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert "run directory" in out and out.count("run directory") == 1  # rank 0 alone reports


def test_two_process_eval_equals_one_process_eval(ddp):
    """clean, PGD and CW: the same accuracies (each rank attacks whole batches, starting from the random
    numbers one process draws for them). AutoAttack: each rank attacks its half of the points in its own
    state file; the merged result is exactly what one process gets attacking the two halves."""
    from typer.testing import CliRunner

    from leanrobust import load
    from leanrobust.attacks import autoattack
    from leanrobust.cli import app
    from leanrobust.config import load_config
    from leanrobust.data.build import load_test_set

    args = ["--attacks", "pgd5,cw5,autoattack", "--aa-version", "fast", "--n", "24", "--batch-size", "8", "--json"]
    rc, out, err = _torchrun(["eval", "two", *args], ddp, ddp / "pids_eval", module=True)
    assert rc == 0, err[-3000:]
    two = json.loads(out)
    single = ddp / "single"
    single.mkdir()
    for f in ("model.safetensors", "config.yaml"):
        shutil.copy(ddp / "two" / f, single / f)
    res = CliRunner().invoke(app, ["eval", str(single), *args])
    assert res.exit_code == 0, res.output
    one = json.loads(res.stdout)
    assert two["clean_acc"] == one["clean_acc"]
    for attack in ("pgd5", "cw5"):
        assert two["robust_acc"][attack] == one["robust_acc"][attack], attack
    files = sorted(p.name for p in (ddp / "two").glob("autoattack_*"))
    assert files == ["autoattack_fast_24.rank0of2.json", "autoattack_fast_24.rank1of2.json"]
    assert len(list((ddp / "two").glob("eval_*.json"))) == 1  # written once, by rank 0
    model = load(single)
    x, y = load_test_set(load_config(single / "config.yaml", lenient=True).data)
    x, y = x[:24].float() / 255, y[:24]
    halves = [autoattack(model, x[a:b], y[a:b], eps=0.1, version="custom", attacks=["apgd-ce", "apgd-t"], seed=0,
                         batch_size=8).robust for a, b in (distributed.even_range(24, r, 2) for r in range(2))]
    assert two["robust_acc"]["autoattack"] == torch.cat(halves).float().mean().item()
    assert abs(two["robust_acc"]["autoattack"] - one["robust_acc"]["autoattack"]) <= 2 / 24  # see the docstring


COLLECTIVES = r'''
import json, os, sys, torch
from pathlib import Path
from leanrobust import distributed as d
d.init(torch.device("cpu"))
r = d.rank()
out = {"rank": r, "world": d.world_size(), "main": d.is_main(), "seed": d.rank_seed(7)}
out["gather"] = d.gather(torch.arange(r * 3, dtype=torch.float32)).tolist()          # lengths 0 and 3
out["gather_bool"] = d.gather(torch.tensor([r == 1, True])).tolist()
out["sum"] = d.sum_all([1.5, r], dtype=torch.float64)
out["share"] = d.share({"x": torch.tensor([r])})["x"].tolist()
out["on_main"] = d.on_main(lambda: {"v": torch.ones(2) * (r + 5)})["v"].tolist()
try:
    d.on_main(lambda: 1 / 0)
except Exception as e:
    out["error"] = f"{type(e).__name__}: {e}"
out["shards"] = d.shard_range(50, 8)
out["state"] = str(d.state_path(Path("/x/autoattack_standard_10.json")))
bn = torch.nn.BatchNorm1d(2)
bn.running_mean.fill_(float(r))
d.sync_running_stats(bn)
out["bn"] = bn.running_mean.tolist()
Path(sys.argv[1], f"rank{r}.json").write_text(json.dumps(out))
'''


def test_collectives_on_two_gloo_ranks(tmp_path):
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, "-c", COLLECTIVES, str(tmp_path)], start_new_session=True,
                              env={**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                                   "LEANROBUST_DIST_TIMEOUT": "60"},
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    try:
        errs = [p.communicate(timeout=TIMEOUT)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), errs
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert (r0["rank"], r0["world"], r0["main"], r1["main"]) == (0, 2, True, False)
    assert r0["seed"] == 7 and r1["seed"] != 7  # rank 0 keeps the one-process streams
    assert r0["gather"] == r1["gather"] == [0.0, 1.0, 2.0] and r0["gather_bool"] == [False, True, True, True]
    assert r0["sum"] == r1["sum"] == [3.0, 1.0]
    assert r0["share"] == r1["share"] == [0] and r0["on_main"] == r1["on_main"] == [5.0, 5.0]
    assert r0["error"].startswith("ZeroDivisionError")  # rank 0 raises its own error, the others hear of it
    assert r1["error"] == "RuntimeError: rank 0 failed: ZeroDivisionError: division by zero"
    assert r0["shards"] == [0, 24] and r1["shards"] == [24, 50]
    assert r1["state"] == "/x/autoattack_standard_10.rank1of2.json"
    assert r0["bn"] == r1["bn"] == [0.5, 0.5]


def test_one_process_helpers_are_the_identity():
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.rank_seed(123) == 123 and distributed.sum_all([1.5, 2]) == [1.5, 2]
    t = torch.tensor([True, False])
    assert torch.equal(distributed.gather(t), t) and distributed.share({"a": 1}) == {"a": 1}
    assert distributed.on_main(lambda: 4) == 4 and distributed.state_path(Path("a.json")) == Path("a.json")
    assert distributed.shard_range(10, 4) == (0, 10) and distributed.even_range(7) == (0, 7)
    assert [distributed.shard_range(100, 16, r, 3) for r in range(3)] == [(0, 32), (32, 64), (64, 100)]
    assert [distributed.shard_range(10, 16, r, 2) for r in range(2)] == [(0, 0), (0, 10)]  # one batch: one rank
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap(model, torch.device("cpu")) is model
