"""The resumable benchmark tables (benchmarks/common.py): finished rows are skipped, a rerun appends
a newer line that wins, and a rerun sets the stale finished run aside but resumes an unfinished one."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import common  # noqa: E402
import selection_fmnist  # noqa: E402


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
    old = {"finished": "2026-11-23 05:00:00"}
    warm = ["selection.method=loss", "selection.start_epoch=1"]
    assert selection_fmnist.stale({**old, "overrides": warm})  # old LR schedule
    assert selection_fmnist.stale({**old, "overrides": ["objective.name=gair_at"]})  # old burn-in
    assert not selection_fmnist.stale({**old, "overrides": ["selection.method=random"]})
    assert not selection_fmnist.stale({**old, "overrides": ["objective.name=mail_at"]})
    # a rerun records its commit: no longer stale, so a restarted --rerun-stale skips it
    assert not selection_fmnist.stale({"finished": "2026-11-23 05:00:00", "git": "abc1234", "overrides": warm})


def test_proxy_rows_are_stale_only_with_generated_data_under_the_old_sampler(tmp_path, monkeypatch):
    import proxy_fmnist

    monkeypatch.setattr(proxy_fmnist, "RESULTS", tmp_path)
    rows = [{"name": "real_only", "overrides": ["progress=false"], "finished": "2026-11-30 10:00:00"},
            {"name": "gen1x", "overrides": ["data.generated=g.npz"], "finished": "2026-11-30 10:00:00"},
            {"name": "gen2x", "overrides": ["data.generated=g.npz"], "finished": "2026-11-30 10:00:00"},
            {"name": "gen2x", "overrides": ["data.generated=g.npz"], "finished": "2026-12-03 10:00:00", "git": "abc"}]
    (tmp_path / "proxy_fmnist.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert proxy_fmnist.stale_rows("proxy_fmnist") == {"gen1x"}  # gen2x's rerun (the last line) is current


def test_a_retrained_certification_model_is_certified_again():
    import proxy_fmnist

    original = {"name": "cert_gen2x", "finished": "2026-11-30 10:00:00"}
    rerun = {"name": "cert_gen2x", "finished": "2026-12-03 10:00:00", "git": "abc1234"}
    old_cert = {"name": "cert_gen2x"}  # written before certified rows recorded their training
    assert proxy_fmnist.certified_is_current(old_cert, original)
    assert not proxy_fmnist.certified_is_current(old_cert, rerun)
    assert proxy_fmnist.certified_is_current({**old_cert, "trained": rerun["finished"]}, rerun)
    assert not proxy_fmnist.certified_is_current({**old_cert, "trained": original["finished"]}, rerun)
