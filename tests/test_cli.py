"""The command line: clear errors with exit code 2, no run directory marked complete."""
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leanrobust.cli import app

runner = CliRunner()
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def test_unknown_config_key_is_rejected(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("optim:\n  epochz: 3\n")
    r = runner.invoke(app, ["train", str(cfg), "--out", str(tmp_path / "run")])
    assert r.exit_code == 2
    assert "optim.epochz: unknown key" in r.output
    assert not (tmp_path / "run").exists()


def test_bad_override_type(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}\n")
    r = runner.invoke(app, ["train", str(cfg), "--set", "optim.batch_size=big", "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and "optim.batch_size" in r.output


def test_eval_refuses_a_pickle(tmp_path):
    import pickle
    (tmp_path / "model.safetensors").write_bytes(pickle.dumps({"a": 1}))
    (tmp_path / "config.yaml").write_text("name: run\n")
    r = runner.invoke(app, ["eval", str(tmp_path), "--attacks", "pgd5", "--n", "10"])
    assert r.exit_code == 2 and "not a valid safetensors weights file" in r.output


def test_eval_rejects_unknown_attack(tmp_path):
    r = runner.invoke(app, ["eval", str(tmp_path), "--attacks", "pgd,deepfoo"])
    assert r.exit_code == 2 and "unknown attack" in r.output


@pytest.mark.skipif(not FMNIST.exists(), reason="apt-get install dataset-fashion-mnist")
def test_train_then_eval_then_refuse_overwrite(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "progress: false\ndata: {train_subset: 128, val_size: 32}\nmodel: {width: 0.25}\n"
        "objective: {name: fgsm_rs, eps: 0.1}\noptim: {epochs: 1, batch_size: 64}\n"
        "validation: {n: 32, steps: 2}\neval: {n: 32, attacks: [pgd3]}\n")
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", str(cfg), "--out", str(run)])
    assert r.exit_code == 0, r.output
    assert "robust pgd3" in r.output
    r = runner.invoke(app, ["eval", str(run), "--attacks", "pgd3,cw3", "--n", "32", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert set(res["robust_acc"]) == {"pgd3", "cw3"} and res["n"] == 32
    r = runner.invoke(app, ["eval", str(run), "--attacks", "pgd5", "--n", "32", "--json"])
    assert r.exit_code == 0, r.output
    # a later evaluation with other attacks adds a file; the earlier result stays
    assert sorted(f.name for f in run.glob("eval_*.json")) == ["eval_linf_0.1_32_pgd3+cw3_seed0.json",
                                                                "eval_linf_0.1_32_pgd5_seed0.json"]
    r = runner.invoke(app, ["eval", str(run), "--attacks", "pgd3", "--n", "0"])
    assert r.exit_code == 2 and "--n" in r.output
    r = runner.invoke(app, ["train", str(cfg), "--out", str(run)])
    assert r.exit_code == 2 and "finished run" in r.output


def test_version_and_python_dash_m():
    import subprocess
    import sys

    import leanrobust
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"leanrobust {leanrobust.__version__}"
    p = subprocess.run([sys.executable, "-m", "leanrobust", "--version"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == f"leanrobust {leanrobust.__version__}"


def test_config_show_prints_every_default_after_overrides(tmp_path):
    import yaml

    from leanrobust.config import RunConfig
    cfg = tmp_path / "c.yaml"
    cfg.write_text("optim: {epochs: 3}\n")
    r = runner.invoke(app, ["config", "show", str(cfg), "--set", "objective.eps=0.2"])
    assert r.exit_code == 0, r.output
    shown = yaml.safe_load(r.output)
    assert shown["optim"]["epochs"] == 3 and shown["objective"]["eps"] == 0.2
    assert set(shown) == set(RunConfig.model_fields) and shown["data"]["val_seed"] == 0
    r = runner.invoke(app, ["config", "show", str(cfg), "--set", "optim.epochz=4"])
    assert r.exit_code == 2 and "did you mean 'epochs'?" in r.output


def test_negative_boolean_flags_parse(tmp_path):
    r = runner.invoke(app, ["report", str(tmp_path / "none"), "--no-json"])
    assert r.exit_code == 2 and "does not exist" in r.output  # --no-json parsed, the path is what fails
    r = runner.invoke(app, ["eval", str(tmp_path), "--no-json", "--attacks", "pgd,x"])
    assert r.exit_code == 2 and "unknown attack" in r.output
    r = runner.invoke(app, ["train", str(tmp_path / "c.yaml"), "--no-dry-run"])
    assert r.exit_code == 2 and "does not exist" in r.output


@pytest.mark.skipif(not FMNIST.exists(), reason="apt-get install dataset-fashion-mnist")
def test_train_dry_run_prints_sizes_and_cost_and_writes_nothing(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("progress: false\ndata: {train_subset: 256, val_size: 32}\nmodel: {width: 0.25}\n"
                   "objective: {steps: 2}\noptim: {epochs: 3, batch_size: 64}\n")
    r = runner.invoke(app, ["train", str(cfg), "--out", str(tmp_path / "run"), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "training on 256, validation 32, test 10,000" in r.output
    assert "one epoch: 4 batches of 64, ~768 grad evals (3 per sample)" in r.output and "3 epochs" in r.output
    assert not (tmp_path / "run").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]
    cfg.write_text("data: {train_subset: 256, selection: missing.npz}\n")
    r = runner.invoke(app, ["train", str(cfg), "--out", str(tmp_path / "run"), "--dry-run"])
    assert r.exit_code == 2 and "missing.npz" in r.output


@pytest.mark.parametrize("cmd, flag", [(["speedup"], "--no-json"), (["compress"], "--no-force"),
                                       (["compress"], "--no-plain-eps"), (["select"], "--no-puma"),
                                       (["proxy-quality"], "--no-json"), (["synth", "gaussian"], "--no-overwrite")])
def test_boolean_flags_have_a_negative_form(cmd, flag):
    from typer.testing import CliRunner

    from leanrobust.cli import app

    r = CliRunner().invoke(app, [*cmd, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
    assert r.exit_code == 0 and flag in r.output
