"""benchmarks/generated_pool.py's report (issue 16): quality rows in the shape proxy_quality writes, the
generator's budget from its log, and the one-off cost that the time-to-robustness verdict quotes."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import generated_pool  # noqa: E402
import time_to_robustness_report as ttr_report  # noqa: E402


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setattr(generated_pool, "RESULTS", tmp_path)
    monkeypatch.setattr(generated_pool, "TABLE", tmp_path / "generated_pool.jsonl")
    monkeypatch.setattr(generated_pool, "ROOT", tmp_path / "runs")
    monkeypatch.setattr(ttr_report, "RESULTS", tmp_path)
    return tmp_path


def _quality_row(name: str, step: int, area: float, n: int, sample_seconds=None) -> dict:
    """A row in the shape of generated_pool.measure: a committed proxy_quality row plus its own fields."""
    with open(BENCHMARKS / "results" / "proxy_fmnist_quality.jsonl") as f:
        q = json.loads(f.readline())
    q["robust_discrimination"]["area"] = area
    return {**q, "name": name, "step": step, "n_generated": n, "sample_seconds": sample_seconds,
            "quality_seconds": 12.0, "frechet_floor": 0.25, "device": "cpu:test"}


def test_report_shows_budget_quality_and_floors(results):
    log = results / "runs" / "ddpm" / "metrics.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text("".join(json.dumps({"step": s, "loss": 0.1 / s, "seconds": 2.0 * s, "step_seconds": 2.0}) + "\n"
                           for s in (250, 500, 750, 1000)))
    rows = [_quality_row("pool", generated_pool.GEN_STEPS, 0.05, 116000, sample_seconds=7200.0),
            _quality_row("rung1000", 1000, 0.30, 2000),
            {"name": "generator", "step": 5000, "seconds": 36000.0, "images_seen": 320000, "device": "cpu:test"}]
    (results / "generated_pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    generated_pool.report()
    md = (results / "generated_pool.md").read_text()
    assert f"1000 of {generated_pool.GEN_STEPS} steps" in md and "116,000 images): 2.00 hours" in md
    table = [line for line in md.splitlines() if line.startswith("| rung") or line.startswith("| pool")]
    assert [line.split(" | ")[0] for line in table] == ["| rung1000", "| pool"]  # rungs by step, the pool last
    assert " 0.300 " in table[0] and " 0.050 " in table[1] and " 0.25 " in table[1]  # ARC areas, Frechet floor
    assert generated_pool.kept_rungs() == [1000]
    # the one-off cost the recipe verdict quotes: generator training + sampling the pool
    assert ttr_report._one_off_generator() == ("generator one-off cost: 10.0 h training (5000 steps, cpu:test) + "
                                               "2.0 h sampling 116,000 images")


def test_sampling_waits_for_the_finished_generator(results, monkeypatch):
    """The pool is drawn from the final generator only: an unfinished one stops the stage with a clear message."""
    monkeypatch.setattr(generated_pool, "real_pool", lambda: (results / "real_pool.npz", 58000))
    with pytest.raises(SystemExit, match=f"has not reached step {generated_pool.GEN_STEPS}"):
        generated_pool.stage_sample()  # no generator log at all
    log = results / "runs" / "ddpm" / "metrics.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text(json.dumps({"step": 4750, "loss": 0.05, "seconds": 1.0, "step_seconds": 1.0}) + "\n")
    with pytest.raises(SystemExit, match="run \\(or resume\\) the generator stage"):
        generated_pool.stage_sample()
