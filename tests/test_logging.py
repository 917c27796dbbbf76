"""Per-epoch metrics (issue 19, item 6): metrics.csv holds exactly the rows of metrics.jsonl (through new columns
and resumes), and logging.tensorboard writes them as TensorBoard scalars or fails at start-up without the package."""
import csv
import json
import sys

import pytest
import yaml
from typer.testing import CliRunner

import leanrobust.metrics_log as metrics_log
from leanrobust.cli import app
from leanrobust.config import validate_config
from leanrobust.experiment import resume
from leanrobust.metrics_log import csv_cell
from leanrobust.train import Trainer


def config(path, **over):
    raw = yaml.safe_load(path.read_text())
    raw["optim"]["epochs"] = 3
    raw["validation"]["every_grad_evals"] = 200  # mid-epoch rows: a "point" column appears after the first row
    for k, v in over.items():
        section, key = k.split(".")
        raw.setdefault(section, {})[key] = v
    return validate_config(raw)


def jsonl_rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_csv_matches_jsonl(run):
    rows = jsonl_rows(run)
    with open(run / "metrics.csv", newline="") as f:
        table = list(csv.reader(f))
    columns = list(dict.fromkeys(k for r in rows for k in r))
    assert table[0] == columns
    assert table[1:] == [[csv_cell(r.get(c)) for c in columns] for r in rows]
    return rows


def test_csv_has_the_jsonl_rows_also_after_a_resume(tiny_npz_config, tmp_path):
    cfg, run = config(tiny_npz_config()), tmp_path / "run"
    assert Trainer(cfg, run).fit(stop_after_epoch=1) is None
    rows = assert_csv_matches_jsonl(run)
    assert any(r.get("point") == "mid" for r in rows) and rows[-1]["epoch"] == 1
    # a crash after epoch 2's row was logged but before its checkpoint: resuming drops the row from both files
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 2, "train_loss": 9.0, "extra": 1}) + "\n")
    with open(run / "metrics.csv", "a") as f:
        f.write("2,torn")
    resume(run)
    rows = assert_csv_matches_jsonl(run)
    assert [r["epoch"] for r in rows if r.get("point") != "mid"] == [1, 2, 3] and "extra" not in rows[-1]
    assert all(r.get("train_loss") != 9.0 for r in rows)


def test_a_fresh_run_starts_new_files(tiny_npz_config, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 7, "old": true}\n')
    (run / "metrics.csv").write_text("epoch,old\n7,true\n")
    Trainer(config(tiny_npz_config(), **{"optim.epochs": 1}), run).fit(stop_after_epoch=1)
    rows = assert_csv_matches_jsonl(run)
    assert rows and all("old" not in r for r in rows)


def test_tensorboard_without_the_package_fails_at_start_up(tiny_npz_config, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(RuntimeError, match=r"pip install leanrobust\[tensorboard\]"):
        Trainer(config(tiny_npz_config(), **{"logging.tensorboard": True}), tmp_path / "run")
    path = tiny_npz_config()
    r = CliRunner().invoke(app, ["train", str(path), "--set", "logging.tensorboard=true", "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "pip install leanrobust[tensorboard]" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "c").exists()


class FakeWriter:
    """Records what the trainer writes (stands in for torch.utils.tensorboard.SummaryWriter)."""
    made = []

    def __init__(self, log_dir, purge_step=None):
        self.log_dir, self.purge_step, self.scalars, self.closed = log_dir, purge_step, [], False
        FakeWriter.made.append(self)

    def add_scalar(self, tag, value, global_step=None):
        self.scalars.append((tag, value, global_step))

    def flush(self):
        pass

    def close(self):
        self.closed = True


def test_tensorboard_gets_the_per_epoch_scalars(tiny_npz_config, tmp_path, monkeypatch):
    monkeypatch.setattr(metrics_log, "summary_writer_class", lambda: FakeWriter)
    FakeWriter.made = []
    cfg, run = config(tiny_npz_config(), **{"logging.tensorboard": True}), tmp_path / "run"
    Trainer(cfg, run).fit(stop_after_epoch=2)
    resume(run)
    first, second = FakeWriter.made
    assert first.log_dir == str(run / "tensorboard") and first.purge_step == 1 and second.purge_step == 3
    assert first.closed and second.closed
    epochs = [r for r in jsonl_rows(run) if r.get("point") != "mid"]
    got = {(tag, step): value for w in (first, second) for tag, value, step in w.scalars}
    for r in epochs:
        for key in ("train_loss", "val_robust", "grad_evals", "lr"):
            assert got[(key, r["epoch"])] == r[key]
    assert {step for _, step in got} == {1, 2, 3}  # mid-epoch points stay in metrics.jsonl / metrics.csv
    assert not any(tag in ("epoch", "point") for tag, _ in got)
