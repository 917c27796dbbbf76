"""The resumable benchmark tables (benchmarks/common.py): finished rows are skipped, a rerun appends
a newer line that wins, and a rerun sets the stale finished run aside but resumes an unfinished one;
the shared report helpers; the patches for old rows (benchmarks/legacy_rows.py); and every table's
committed report is what its script writes from the committed rows."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import common  # noqa: E402
import legacy_rows  # noqa: E402


@pytest.fixture
def table(tmp_path, monkeypatch):
    """run_table over a results dir in tmp_path, with run_row replaced by a recorder (no training)."""
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    calls = []

    def fake_run_row(table, name, config, overrides, *, runs_dir, prepare=None):
        calls.append(name)
        return {"name": name, "value": len(calls)}

    monkeypatch.setattr(common, "run_row", fake_run_row)
    return calls, tmp_path


def test_finished_rows_are_skipped_and_reruns_append_a_line_that_wins(table):
    calls, tmp = table
    rows = [{"name": n, "config": "c.yaml"} for n in ("a", "b")]
    common.run_table("t", rows, runs_dir=tmp / "runs")
    assert calls == ["a", "b"]
    common.run_table("t", rows, runs_dir=tmp / "runs")
    assert calls == ["a", "b"]  # nothing left to do
    out = common.run_table("t", rows, runs_dir=tmp / "runs", rerun={"b"})
    assert calls == ["a", "b", "b"]
    lines = [json.loads(x) for x in (tmp / "results" / "t.jsonl").read_text().splitlines()]
    assert [r["name"] for r in lines] == ["a", "b", "b"]  # history kept
    assert common.done_rows(tmp / "results" / "t.jsonl")["b"]["value"] == 3
    assert [r["value"] for r in out] == [1, 3]


def test_a_rerun_sets_a_finished_run_aside_and_keeps_an_unfinished_one(table):
    calls, tmp = table
    finished = tmp / "runs" / "t" / "a" / "run"
    finished.mkdir(parents=True)
    (finished / "summary.json").write_text("{}")
    unfinished = tmp / "runs" / "t" / "b" / "run"
    unfinished.mkdir(parents=True)
    (unfinished / "checkpoint.pt").write_text("x")
    common.run_table("t", [{"name": "a", "config": "c"}, {"name": "b", "config": "c"}],
                     runs_dir=tmp / "runs", rerun={"a", "b"})
    assert not finished.exists()
    assert (tmp / "runs" / "t" / "a" / "run.superseded-1" / "summary.json").exists()
    assert (unfinished / "checkpoint.pt").exists()  # resumes, not retrained from scratch
    finished.mkdir()
    (finished / "summary.json").write_text("{}")
    assert common.set_aside_finished_run(tmp / "runs" / "t" / "a").name == "run.superseded-2"
    assert common.set_aside_finished_run(tmp / "runs" / "t" / "a") is None


def test_selection_rows_are_stale_only_when_their_method_ran_differently():
    stale = legacy_rows.stale_selection
    old = {"finished": "2026-11-23 05:00:00"}
    warm = ["selection.method=loss", "selection.start_epoch=1"]
    assert stale({**old, "overrides": warm})  # old LR schedule
    assert stale({**old, "overrides": ["objective.name=gair_at"]})  # old burn-in
    assert not stale({**old, "overrides": ["selection.method=random"]})
    assert not stale({**old, "overrides": ["objective.name=mail_at"]})
    assert not stale({"finished": "2026-12-03 05:00:00", "overrides": warm})  # after the fixes
    # a rerun records its commit: no longer stale, so a restarted --rerun-stale skips it
    assert not stale({"finished": "2026-11-23 05:00:00", "git": "abc1234", "overrides": warm})


def test_proxy_rows_are_stale_when_trained_before_the_review_fixes(tmp_path, monkeypatch):
    """The generated-data rows of the old sampler and the real-only rows they are compared with are rerun,
    so the equal-step comparison runs one code version; a rerun (it records its commit) is current."""
    import proxy_fmnist

    monkeypatch.setattr(proxy_fmnist, "RESULTS", tmp_path)
    rows = [{"name": "real_only", "overrides": ["progress=false"], "finished": "2026-11-30 10:00:00"},
            {"name": "real_2", "overrides": ["progress=false"], "finished": "2026-12-03 10:00:00", "git": "abc"},
            {"name": "gen1x", "overrides": ["data.generated=g.npz"], "finished": "2026-11-30 10:00:00"},
            {"name": "gen2x", "overrides": ["data.generated=g.npz"], "finished": "2026-11-30 10:00:00"},
            {"name": "gen2x", "overrides": ["data.generated=g.npz"], "finished": "2026-12-03 10:00:00", "git": "abc"}]
    (tmp_path / "proxy_fmnist.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert proxy_fmnist.stale_rows("proxy_fmnist") == {"gen1x", "real_only"}  # gen2x's rerun (last line) is current


def test_a_retrained_certification_model_is_certified_again():
    certified_is_current = legacy_rows.certified_is_current
    original = {"name": "cert_gen2x", "finished": "2026-11-30 10:00:00"}
    rerun = {"name": "cert_gen2x", "finished": "2026-12-03 10:00:00", "git": "abc1234"}
    old_cert = {"name": "cert_gen2x"}  # written before certified rows recorded their training
    assert certified_is_current(old_cert, original)
    assert not certified_is_current(old_cert, rerun)
    assert certified_is_current({**old_cert, "trained": rerun["finished"]}, rerun)
    assert not certified_is_current({**old_cert, "trained": original["finished"]}, rerun)


def test_override_is_the_last_value_given_as_in_load_config():
    row = {"overrides": ["optim.epochs=6", "selection.start_epoch=1", "optim.epochs=12"]}
    assert common.override(row, "optim.epochs") == "12"
    assert common.override(row, "optim.epoch") is None  # a key, not a prefix
    assert common.override(row, "selection.every", 0) == 0
    assert common.override({}, "optim.epochs", "-") == "-"


def test_write_npz_writes_atomically_under_the_given_name(tmp_path):
    """The table scripts write npz through leanrobust.io.write_npz (benchmarks keep no copy of it)."""
    from leanrobust.io import write_npz

    out = write_npz(tmp_path / "sub" / "pool.npz", image=np.zeros((2, 4, 4, 1), np.uint8), label=np.arange(2))
    assert out == tmp_path / "sub" / "pool.npz" and sorted(p.name for p in out.parent.iterdir()) == ["pool.npz"]
    with np.load(out, allow_pickle=False) as z:
        assert z["image"].shape == (2, 4, 4, 1) and z["label"].tolist() == [0, 1]


def test_write_table_writes_the_markdown_json_and_figure_of_a_table(tmp_path, capsys):
    fig, ax = common.subplots()
    rows = [{"name": "a_50", "clean_acc": 0.8, "robust_acc": {"pgd20": 0.6, "autoattack": 0.5}},
            {"name": "b_30", "clean_acc": 0.7, "robust_acc": {"pgd20": 0.4}}]
    common.plot_clean_vs_robust(ax, rows, lambda r: r["name"], label="a", line=True)
    assert [tuple(p) for p in ax.lines[0].get_xydata()] == [(80.0, 50.0), (70.0, 40.0)]  # AutoAttack, else PGD-20
    assert [t.get_text() for t in ax.texts] == ["a_50", "b_30"]
    common.write_table(tmp_path / "t", ["# T", "", "| a |"], data={"x": 1}, fig=fig)
    assert (tmp_path / "t.md").read_text() == "# T\n\n| a |\n"
    assert json.loads((tmp_path / "t.json").read_text()) == {"x": 1}
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    assert capsys.readouterr().out == "# T\n\n| a |\n"
    common.write_table(tmp_path / "t", "text\n", echo=False)  # a markdown string as it is; no figure, no JSON
    assert (tmp_path / "t.md").read_text() == "text\n" and capsys.readouterr().out == ""


def test_old_rows_fill_in_what_they_did_not_record(tmp_path):
    assert legacy_rows.row_epochs({"epochs": 7, "overrides": ["optim.epochs=3"]}) == 7
    assert legacy_rows.row_epochs({"overrides": ["optim.epochs=3", "optim.epochs=5"]}) == 5
    pool_report = tmp_path / "dm_10.json"
    assert legacy_rows.dm_iterations({"info": {"iterations": 12}}, 10, pool_report) == 12
    assert legacy_rows.dm_iterations({"info": {}}, 100, pool_report) == legacy_rows.DM_ITERATIONS[100]
    pool_report.write_text(json.dumps({"iterations": 99}))
    assert legacy_rows.dm_iterations({"info": {}}, 100, pool_report) == 99
    assert legacy_rows.epochs_from_assumed_k({"info": {}, "n_train": 63}, 10)
    assert not legacy_rows.epochs_from_assumed_k({"info": {}, "n_train": 100}, 10)
    assert not legacy_rows.epochs_from_assumed_k({"info": {"epochs_from_k": True}, "n_train": 63}, 10)
    row = {"table": "t", "name": "r"}
    assert legacy_rows.best_epoch({**row, "best_epoch": 3, "epochs": 6}, tmp_path) == "3/6"
    assert legacy_rows.best_epoch(row, tmp_path) == "-"
    (tmp_path / "t" / "r" / "run").mkdir(parents=True)
    (tmp_path / "t" / "r" / "run" / "summary.json").write_text(json.dumps({"best_epoch": 4, "epochs": 6}))
    assert legacy_rows.best_epoch(row, tmp_path) == "4/6"
    assert legacy_rows.old_pass_count({}) and not legacy_rows.old_pass_count({"grad_evals_version": 2})


RESULTS = BENCHMARKS / "results"


@pytest.fixture
def results_copy(tmp_path, monkeypatch):
    """A copy of the committed rows for a table module to write its report into (the repository's untouched)."""
    def copy(module):
        shutil.copytree(RESULTS, tmp_path, dirs_exist_ok=True,
                        ignore=lambda d, names: [n for n in names if not n.endswith((".jsonl", ".json"))])
        monkeypatch.setattr(module, "RESULTS", tmp_path)
        return tmp_path
    return copy


@pytest.mark.parametrize("table", ["compress_fmnist", "selection_fmnist", "proxy_fmnist", "reference_fmnist",
                                   "memory_pool"])
def test_a_table_report_from_the_committed_rows_is_the_committed_report(table, results_copy, monkeypatch):
    module = __import__(table)
    out = results_copy(module)
    monkeypatch.chdir(out)  # no run directories: a report must not need them
    done = lambda name: list(common.done_rows(out / f"{name}.jsonl").values())  # noqa: E731
    if table == "proxy_fmnist":
        module.report()
    elif table == "reference_fmnist":
        rows = {r["name"]: r for r in done(table)}
        common.write_table(out / table, module.markdown([rows[r["name"]] for r in module.train_rows(10, "auto")]))
    elif table == "memory_pool":
        module.report(sorted(done(table), key=lambda r: r["n_generated"]))
    else:
        module.report(done(table))
    assert (out / f"{table}.md").read_text() == (RESULTS / f"{table}.md").read_text()


@pytest.mark.parametrize("table, render", [("mfc_speed", "markdown"), ("deepfool_speed", "to_markdown"),
                                           ("throughput", "markdown")])
def test_a_json_table_report_is_the_committed_report(table, render):
    md = getattr(__import__(table), render)(json.loads((RESULTS / f"{table}.json").read_text()))
    assert md == (RESULTS / f"{table}.md").read_text()


def test_markdown_from_rewrites_only_the_report_of_a_saved_json_document(tmp_path, monkeypatch):
    import argparse

    (tmp_path / "t.json").write_text(json.dumps({"x": 2}))
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1)
    monkeypatch.setattr(sys, "argv", ["t.py", "--markdown-from", str(tmp_path / "t.json")])
    assert common.parse_json_table_args(ap, lambda d: f"x = {d['x']}\n") is None
    assert (tmp_path / "t.md").read_text() == "x = 2\n"
    monkeypatch.setattr(sys, "argv", ["t.py", "--n", "3"])
    args = argparse.ArgumentParser()
    args.add_argument("--n", type=int, default=1)
    assert common.parse_json_table_args(args, lambda d: "").n == 3
