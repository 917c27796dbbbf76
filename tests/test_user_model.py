"""Any model can be evaluated: a user's factory with `leanrobust eval --model`, `leanrobust.benchmark` (named
after RobustBench's), and a run exported as one safetensors file that `leanrobust.load` and `eval` read back."""
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import leanrobust
from leanrobust.cli import app

runner = CliRunner()
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
needs_fmnist = pytest.mark.skipif(not FMNIST.exists(), reason="apt-get install dataset-fashion-mnist")

FACTORY = '''
import torch
from torch import nn


def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))


def wrong_size():
    return nn.Sequential(nn.Flatten(), nn.Linear(100, 10))


def not_a_model():
    return 3
'''


@pytest.fixture
def factory(tmp_path, monkeypatch):
    (tmp_path / "mynet.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    yield tmp_path / "mynet.py"
    import sys
    sys.modules.pop("mynet", None)


@needs_fmnist
def test_eval_a_users_model_from_a_factory_and_weights(factory, tmp_path):
    from leanrobust.io import save_weights
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    with torch.no_grad():
        net[1].weight.mul_(0)
        net[1].bias.copy_(torch.arange(10.0))  # always predicts class 9
    save_weights(tmp_path / "w.safetensors", net)
    r = runner.invoke(app, ["eval", str(tmp_path / "w.safetensors"), "--model", "mynet:make", "--dataset",
                            "fashion_mnist", "--eps", "0.1", "--attacks", "pgd2", "--n", "40", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    from leanrobust import load_test_set
    _, y = load_test_set("fashion_mnist", n=40)
    assert res["n"] == 40 and res["dataset"] == "fashion_mnist" and res["eps"] == 0.1 and res["norm"] == "linf"
    assert res["clean_acc"] == pytest.approx((y == 9).float().mean().item())  # the weights were loaded
    r = runner.invoke(app, ["eval", "--model", f"{factory}:make", "--dataset", "fashion_mnist", "--attacks", "pgd1",
                            "--n", "8", "--json"])  # a file path, no weights, the dataset's conventional eps
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["eps"] == 0.1
    assert not list(tmp_path.glob("eval_*.json"))  # no run directory: nothing written


@pytest.mark.parametrize("target,needle", [
    ("mynet:missing", "has no function 'missing'"), ("nosuchmodule:make", "cannot import nosuchmodule"),
    ("mynet:not_a_model", "returned int, not a torch nn.Module"), ("mynet", "expected pkg.module:function"),
])
def test_a_bad_factory_is_a_clear_error(factory, target, needle):
    r = runner.invoke(app, ["eval", "--model", target, "--dataset", "fashion_mnist", "--attacks", "pgd1"])
    assert r.exit_code == 2 and needle in r.output, r.output


@needs_fmnist
def test_a_model_that_does_not_fit_the_data_says_so(factory):
    r = runner.invoke(app, ["eval", "--model", "mynet:wrong_size", "--dataset", "fashion_mnist", "--attacks", "pgd1"])
    assert r.exit_code == 2 and "cannot take fashion_mnist images of shape (1, 28, 28)" in r.output
    r = runner.invoke(app, ["eval", "--model", "mynet:make", "--attacks", "pgd1"])
    assert r.exit_code == 2 and "pass --dataset" in r.output
    r = runner.invoke(app, ["eval", "--model", "mynet:make", "--dataset", "fashion_mnist", "--eps", "8"])
    assert r.exit_code == 2 and "exceeds 1" in r.output


@needs_fmnist
def test_benchmark_follows_robustbench_and_returns_the_eval_report():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    res = leanrobust.benchmark(model, n_examples=16, dataset="fashion_mnist", threat_model="Linf", eps=0.1,
                               attacks=["pgd2", "cw2"])
    assert res["dataset"] == "fashion_mnist" and res["threat_model"] == "Linf" and res["n"] == 16
    assert set(res["robust_acc"]) == {"pgd2", "cw2"} and 0 <= res["clean_acc"] <= 1 and "masking" in res
    same = leanrobust.benchmark(model, dataset="fashion-mnist", n=16, threat_model="linf", attacks=["pgd2", "cw2"])
    assert same["eps"] == 0.1 and same["robust_acc"] == res["robust_acc"]  # the same points, the same seed
    with pytest.raises(ValueError, match="give one"):
        leanrobust.benchmark(model, n_examples=10, n=20, dataset="fashion_mnist")
    with pytest.raises(ValueError, match="corruptions are not supported"):
        leanrobust.benchmark(model, dataset="fashion_mnist", threat_model="corruptions")
    with pytest.raises(ValueError, match="no conventional eps"):
        leanrobust.benchmark(model, dataset="fashion_mnist", threat_model="L2")
    x, y = leanrobust.load_test_set("fashion_mnist", n=5)
    assert x.dtype == torch.float32 and x.shape == (5, 1, 28, 28) and 0 <= x.min() and x.max() <= 1 and len(y) == 5


def _finished_run(d: Path) -> Path:
    """A finished run directory as Trainer.finish leaves it: model.safetensors with its model description,
    config.yaml, summary.json, one later eval file."""
    from leanrobust.config import dump_config, load_config
    from leanrobust.io import save_weights
    from leanrobust.runs import build_from_spec
    spec = {"name": "smallcnn", "num_classes": 10, "in_channels": 1, "mean": [0.286], "std": [0.353],
            "kwargs": {"width": 0.25, "input_size": 28}}
    torch.manual_seed(1)
    model = build_from_spec(spec)
    torch.nn.init.normal_(model.net.classifier.fc3.weight)
    d.mkdir(parents=True)
    save_weights(d / "model.safetensors", model, {"leanrobust_model": json.dumps(spec), "leanrobust_version": "0.1.0"})
    cfg = load_config(None, ["name=tiny", "objective.eps=0.05", "model.width=0.25"])
    (d / "config.yaml").write_text(dump_config(cfg))
    (d / "summary.json").write_text(json.dumps({
        "status": "complete", "clean_acc": 0.8, "robust_acc": {"pgd20": 0.6},
        "eval": {"n": 100, "eps": 0.05, "norm": "linf"}, "train_seconds": 3.0, "samples_seen": 10, "grad_evals": 99,
        "n_train": 10, "epochs": 1, "best_epoch": 1, "device": "cpu", "config": cfg.model_dump(mode="json")}))
    (d / "eval_linf_0.05_200_cw20_seed0.json").write_text(json.dumps(
        {"n": 200, "eps": 0.05, "norm": "linf", "clean_acc": 0.79, "robust_acc": {"cw20": 0.55}}))
    return d


def test_export_writes_one_self_describing_file_that_load_reads_back(tmp_path):
    run = _finished_run(tmp_path / "run")
    r = runner.invoke(app, ["export", str(run), str(tmp_path / "tiny.safetensors")])
    assert r.exit_code == 0, r.output
    assert "smallcnn on fashion_mnist, linf eps=0.05" in r.output
    out = tmp_path / "tiny.safetensors"
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(leanrobust.load(out)(x), leanrobust.load(run)(x))
    info = leanrobust.model_info(out)
    assert info["model"]["name"] == "smallcnn" and info["normalization"] == {"mean": [0.286], "std": [0.353]}
    assert info["dataset"] == {"name": "fashion_mnist"} and info["threat_model"] == {"norm": "linf", "eps": 0.05}
    assert info["eval"]["robust_acc"] == {"pgd20": {"acc": 0.6, "n": 100}, "cw20": {"acc": 0.55, "n": 200}}
    assert info["training"]["grad_evals"] == 99 and info["config"]["name"] == "tiny"
    again = leanrobust.export(run, tmp_path / "again.safetensors")
    assert again.read_bytes() == out.read_bytes()  # deterministic file
    (run / "summary.json").unlink()
    r = runner.invoke(app, ["export", str(run), str(tmp_path / "x.safetensors")])
    assert r.exit_code == 2 and "not a finished run" in r.output and "leanrobust resume" in r.output


@needs_fmnist
def test_eval_of_an_exported_file_uses_its_dataset_and_threat_model(tmp_path):
    run = _finished_run(tmp_path / "run")
    out = leanrobust.export(run, tmp_path / "tiny.safetensors")
    r = runner.invoke(app, ["eval", str(out), "--attacks", "pgd1", "--n", "8", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["dataset"] == "fashion_mnist" and res["eps"] == 0.05 and res["norm"] == "linf" and res["n"] == 8
