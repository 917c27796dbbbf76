"""`leanrobust compress`: every method writes something `train` accepts; bad budgets fail clearly."""
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leanrobust.cli import app
from leanrobust.config import validate_config
from leanrobust.selection import Selection
from leanrobust.train import Trainer

runner = CliRunner()


@pytest.fixture
def tiny_cfg(tiny_npz_config):
    return tiny_npz_config(progress=False)


@pytest.mark.parametrize("args", [["mfc", "--ipc", "4"], ["mfc", "--ipc", "4", "--metric", "linf"],
                                  ["mfc", "--radius", "0.8", "--metric", "linf"], ["mfc", "--radius", "4"],
                                  ["mfc", "--ipc", "4", "--metric", "l2", "--plain-eps"],
                                  ["random", "--fraction", "0.2"], ["kcenter", "--ipc", "5"]])
def test_selection_methods_write_a_trainable_selection(tiny_cfg, tmp_path, args):
    out = tmp_path / "sel.npz"
    r = runner.invoke(app, ["compress", str(tiny_cfg), "--method", *args, "--out", str(out)])
    assert r.exit_code == 0, r.output
    sel = Selection.load(out)
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["k"] == len(sel) and report["n_pool"] == 81
    if args[0] == "mfc" and "--plain-eps" not in args:
        etas = {c["label"]: c["eta"] for c in report["classes"]}
        assert max(etas.values()) > 0 and (sel.eps >= 0.05).all() and (sel.eps > 0.05).any()
        assert abs(float(sel.weight.mean()) - 1.0) < 1e-5
    else:
        assert (sel.eps == 0.05).all()
    import yaml
    cfg = validate_config({**yaml.safe_load(tiny_cfg.read_text()), "data": {
        **yaml.safe_load(tiny_cfg.read_text())["data"], "selection": str(out)}})
    summary = Trainer(cfg, tmp_path / "run").fit()
    assert summary["n_train"] == len(sel)


def test_dm_writes_a_pool_that_train_accepts(tiny_cfg, tmp_path):
    out = tmp_path / "dm.npz"
    r = runner.invoke(app, ["compress", str(tiny_cfg), "--method", "dm", "--ipc", "2", "--iterations", "2",
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert not [p for p in tmp_path.iterdir() if "state" in p.name]  # its resume state is removed once done
    r = runner.invoke(app, ["train", str(tiny_cfg), "--set", f"data.pool={out}", "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["n_train"] == 6


@pytest.mark.parametrize("args,needle", [
    (["mfc", "--ipc", "0"], "ipc"), (["random", "--ipc", "1000"], "more than the data"),
    (["mfc", "--radius", "-1"], "radius"), (["kcenter"], "exactly one"),
    (["mfc", "--ipc", "3", "--fraction", "0.1"], "exactly one"), (["dm"], "--ipc"),
    (["mfc", "--ipc", "3", "--metric", "l3"], "metric"), (["bogus", "--ipc", "3"], "--method"),
    (["kcenter", "--ipc", "3", "--force"], "--force not used by --method kcenter"),
    (["mfc", "--ipc", "3", "--set", "objective.eps=0.2"], "vacuous MFC covering"),
    (["random", "--ipc", "3", "--solver", "milp"], "--solver not used by --method random (--solver is for mfc)"),
    (["dm", "--ipc", "3", "--fraction", "0.1"], "--fraction not used by --method dm"),
    (["kcenter", "--ipc", "3", "--iterations", "5", "--plain-eps"], "--plain-eps, --iterations not used"),
    (["mfc", "--ipc", "3", "--batch-real", "8"], "--batch-real is for dm"),
])
def test_bad_budgets_give_clear_errors(tiny_cfg, tmp_path, args, needle):
    r = runner.invoke(app, ["compress", str(tiny_cfg), "--method", *args, "--out", str(tmp_path / "x.npz")])
    assert r.exit_code == 2 and needle in r.output, r.output
    assert not (tmp_path / "x.npz").exists()


def test_default_metric_is_l2_and_eps_plus_eta_is_measured_in_the_training_norm(tiny_cfg, tmp_path):
    """L2 covering (the authors' metric) for a Linf threat model: each centre is attacked at eps + its
    class's largest Linf distance to an assigned point, which the inclusion B(x, eps) in B(c, eps + eta) needs."""
    out = tmp_path / "sel.npz"
    r = runner.invoke(app, ["compress", str(tiny_cfg), "--method", "mfc", "--ipc", "4", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rep = json.loads(out.with_suffix(".json").read_text())
    assert rep["metric"] == "l2" and rep["norm"] == "linf" and not rep["vacuous"]
    for c in rep["classes"]:
        assert 0 < c["eta_norm"] <= c["eta"]  # ||d||_inf <= ||d||_2
    sel = Selection.load(out)
    etas = sorted({round(float(e) - 0.05, 6) for e in sel.eps})
    assert etas == sorted({round(c["eta_norm"], 6) for c in rep["classes"]})
    assert "eps 0.05" in r.output and "nearest-neighbour distance" in r.output and "eta" in r.output


def test_vacuous_covering_is_refused_unless_forced(tiny_cfg, tmp_path):
    """At eps 0.2 the Linf balls of radius eps + eta (~0.5) around all centres share an image: refused."""
    out = tmp_path / "sel.npz"
    args = ["compress", str(tiny_cfg), "--method", "mfc", "--ipc", "3", "--set", "objective.eps=0.2", "--out", str(out)]
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and not out.exists()
    for needle in ("vacuous MFC covering", "eps 0.2", "nearest-neighbour distance", "--force", "--plain-eps"):
        assert needle in r.output, (needle, r.output)
    r = runner.invoke(app, args + ["--force"])
    assert r.exit_code == 0, r.output
    rep = json.loads(out.with_suffix(".json").read_text())
    assert rep["vacuous"] and rep["forced"] and "warning: vacuous covering" in r.stderr
    r = runner.invoke(app, args + ["--plain-eps"])  # the ablation attacks at eps: nothing to refuse
    assert r.exit_code == 0, r.output
    assert (Selection.load(out).eps == 0.2).all()


FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.mark.skipif(not FMNIST.exists(), reason="apt-get install dataset-fashion-mnist (make data)")
def test_readme_mfc_command_refuses_the_vacuous_linf_radius(tmp_path):
    """The README's command on its Linf config: centres would be attacked at eps + eta ~ 1 (chance-level
    training); refused, naming eta, eps and the nearest-neighbour scale."""
    cfg = Path(__file__).parent.parent / "configs" / "fmnist_smallcnn_pgdat.yaml"
    r = runner.invoke(app, ["compress", str(cfg), "--method", "mfc", "--ipc", "10", "--set", "data.train_subset=1000",
                            "--set", "progress=false", "--out", str(tmp_path / "mfc.npz")])
    assert r.exit_code == 2 and "vacuous MFC covering" in r.output and "(linf)" in r.output, r.output
    assert not (tmp_path / "mfc.npz").exists()
