"""`leanrobust speedup`: compute to a target held-out robust accuracy read from synthetic learning curves
whose answers are known by hand; first reach, ratios of means over seeds, the bootstrap CI, clear errors."""
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from leanrobust.cli import app
from leanrobust.speedup import bootstrap_ratio, build_speedup, parse_target, to_markdown, write_speedup

runner = CliRunner()


def fake_run(root: Path, name: str, seed: int, points, *, order=None, finished=True, dirname=None) -> Path:
    """A run directory: config.yaml (name, seed) and metrics.jsonl with one row per point (grad_evals,
    val_robust[, train_seconds]); seconds default to grad_evals / 10. `order` permutes the rows in the file."""
    d = root / (dirname or f"{name}_s{seed}")
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump({"name": name, "seed": seed, "validation": {"n": 100}}))
    rows = [{"epoch": i + 1, "grad_evals": p[0], "forward_evals": p[0] // 2, "val_robust": p[1], "val_clean": 0.9,
             "train_seconds": p[2] if len(p) > 2 else p[0] / 10, "val_n": 100} for i, p in enumerate(points)]
    rows = [rows[i] for i in order] if order else rows
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if finished:
        (d / "summary.json").write_text("{}")
    return d


def group(res, name):
    return next(g for g in res.groups if g.name == name)


BASE = [(100, 0.5), (200, 0.6), (400, 0.7)]  # reaches 0.70 at 400 grad evals, 40 s


def test_default_target_is_the_mean_of_the_baseline_seeds_bests_minus_one_point(tmp_path):
    fake_run(tmp_path, "base", 0, [(100, 0.5), (200, 0.70)])
    fake_run(tmp_path, "base", 1, [(100, 0.5), (200, 0.74), (300, 0.72)])
    res = build_speedup([tmp_path], "base")
    assert res.target == pytest.approx(0.71)  # (0.70 + 0.74) / 2 - 0.01
    assert "minus 1 point" in res.target_how and "72.00%" in res.target_how
    assert "71.00%" in to_markdown(res).splitlines()[0]
    assert build_speedup([tmp_path], "base", drop=2.5).target == pytest.approx(0.695)


@pytest.mark.parametrize("given", [0.65, 65.0])
def test_explicit_target_as_a_fraction_or_a_percentage(tmp_path, given):
    fake_run(tmp_path, "base", 0, [(100, 0.6), (200, 0.65), (300, 0.7)])
    res = build_speedup([tmp_path], "base", target=given)
    assert res.target == pytest.approx(0.65) and "--target" in res.target_how
    assert res.groups[0].runs[0].grad_evals == 200


def test_target_errors():
    assert parse_target(1.0) == 1.0 and parse_target(1.5) == 0.015
    with pytest.raises(ValueError, match="percentage"):
        parse_target(101)


def test_target_and_drop_together_are_refused(tmp_path):
    fake_run(tmp_path, "base", 0, BASE)
    with pytest.raises(ValueError, match="not both"):
        build_speedup([tmp_path], "base", target=0.6, drop=2)


@pytest.mark.parametrize("order", [None, [2, 0, 3, 1]])
def test_first_reach_is_the_first_point_at_or_above_even_if_the_curve_drops_and_rows_are_unsorted(tmp_path, order):
    fake_run(tmp_path, "base", 0, [(100, 0.5), (200, 0.7), (300, 0.6), (400, 0.75)], order=order)
    r = build_speedup([tmp_path], "base", target=0.65).groups[0].runs[0]
    assert (r.grad_evals, r.seconds, r.epoch, r.best, r.final_grad_evals) == (200, 20.0, 2, 0.75, 400)


def test_half_the_grad_evals_is_a_speedup_of_exactly_two_and_seconds_are_their_own_ratio(tmp_path):
    fake_run(tmp_path, "base", 0, BASE)
    fake_run(tmp_path, "fast", 0, [(100, 0.6, 5.0), (200, 0.7, 10.0), (300, 0.8, 15.0)])  # 40 s / 10 s
    res = build_speedup([tmp_path], "base", target=0.7)
    g = group(res, "fast")
    assert (g.grad_evals, g.seconds, g.speedup, g.speedup_seconds) == (200, 10.0, 2.0, 4.0)
    assert g.speedup_ci is None and "1 seed" in g.note  # a single seed on both sides: no CI
    b = group(res, "base")
    assert res.groups[0] is b and b.speedup == 1.0 and b.speedup_ci is None
    md = to_markdown(res)
    assert "| fast | 1 | 80.00 | 200 | 2.00 | 10.0 | 4.00 | 300 | 1 seed |" in md
    assert "1 (baseline)" in md


def test_a_run_that_never_reaches_gets_no_ratio_and_says_its_best(tmp_path):
    fake_run(tmp_path, "base", 0, BASE)
    fake_run(tmp_path, "slow", 0, [(100, 0.5), (200, 0.6), (300, 0.55)])
    res = build_speedup([tmp_path], "base", target=0.7)
    g = group(res, "slow")
    assert not g.runs[0].reached and g.grad_evals is None and g.speedup is None and g.speedup_seconds is None
    assert "not reached (best 60.00%)" in g.note
    assert "slow seed 0" in to_markdown(res) and "not reached (best 60.00%)" in to_markdown(res)


def test_a_group_with_two_of_three_seeds_reached_gets_no_ratio(tmp_path):
    fake_run(tmp_path, "base", 0, BASE)
    for s, best in enumerate([0.7, 0.8, 0.65]):
        fake_run(tmp_path, "mixed", s, [(100, 0.5), (200, best)])
    g = group(build_speedup([tmp_path], "base", target=0.7), "mixed")
    assert g.reached == 2 and g.grad_evals is None and g.speedup is None and g.note.startswith("2/3 seeds reached")
    assert g.best_mean == pytest.approx(0.7166666) and g.best_sd == pytest.approx(np.std([0.7, 0.8, 0.65], ddof=1))


def test_a_baseline_that_misses_the_target_with_one_seed_gives_no_speedups(tmp_path):
    fake_run(tmp_path, "base", 0, BASE)
    fake_run(tmp_path, "base", 1, [(100, 0.5), (200, 0.6)])
    fake_run(tmp_path, "fast", 0, [(100, 0.7)])
    res = build_speedup([tmp_path], "base", target=0.7)
    assert group(res, "fast").speedup is None and "1/2 seeds" in res.warnings[0]


def test_bootstrap_ci_identical_seeds_degenerate_differing_seeds_contain_the_ratio_and_is_seeded(tmp_path):
    for s in (0, 1):
        fake_run(tmp_path / "same", "base", s, BASE)
        fake_run(tmp_path / "same", "fast", s, [(100, 0.5), (200, 0.7)])
    g = group(build_speedup([tmp_path / "same"], "base", target=0.7, boot=500), "fast")
    assert g.speedup == 2.0 and g.speedup_ci == (2.0, 2.0) and g.speedup_seconds_ci == (2.0, 2.0)

    for s, ge in enumerate([400, 600, 500]):
        fake_run(tmp_path / "diff", "base", s, [(100, 0.5), (ge, 0.7)])
    for s, ge in enumerate([200, 250]):
        fake_run(tmp_path / "diff", "fast", s, [(100, 0.5), (ge, 0.7)])
    res = build_speedup([tmp_path / "diff"], "base", target=0.7, boot=2000, seed=3)
    g = group(res, "fast")
    assert g.speedup == pytest.approx(500 / 225)
    lo, hi = g.speedup_ci
    assert lo < g.speedup < hi and lo >= 400 / 250 and hi <= 600 / 200  # within the extreme resamples
    assert group(build_speedup([tmp_path / "diff"], "base", target=0.7, boot=2000, seed=3), "fast").speedup_ci == (lo, hi)
    assert bootstrap_ratio(np.array([4.0]), np.array([2.0]), 100, 0) is None
    assert bootstrap_ratio(np.array([4.0, 6.0]), np.array([2.0]), 0, 0) is None


def test_same_name_and_seed_is_an_error_naming_both(tmp_path):
    a = fake_run(tmp_path, "base", 0, BASE, dirname="a")
    b = fake_run(tmp_path, "base", 0, BASE, dirname="b")
    with pytest.raises(ValueError, match="two runs named 'base' with seed 0") as e:
        build_speedup([tmp_path], "base")
    assert str(a) in str(e.value) and str(b) in str(e.value)
    assert len(build_speedup([a, a, tmp_path / "a"], "base").groups[0].runs) == 1  # one directory named thrice


def test_unknown_baseline_lists_the_names(tmp_path):
    fake_run(tmp_path, "base", 0, BASE)
    fake_run(tmp_path, "fast", 0, BASE)
    with pytest.raises(ValueError, match="no group named 'pgdat'.*found: base, fast"):
        build_speedup([tmp_path], "pgdat")


def test_runs_without_curve_points_are_named_with_how_to_get_them(tmp_path):
    fake_run(tmp_path, "base", 0, BASE)
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.yaml").write_text("name: old\nseed: 0\n")
    (old / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "grad_evals": 10, "train_loss": 1.0}) + "\n")
    res = build_speedup([tmp_path], "base")
    assert [g.name for g in res.groups] == ["base"]
    assert str(old / "metrics.jsonl") in res.skipped[str(old)] and "validation.n > 0" in res.skipped[str(old)]
    assert "Not in the table" in to_markdown(res)
    with pytest.raises(ValueError, match=r"baseline 'old' has no curve points: .*old/metrics.jsonl.*validation.n > 0"):
        build_speedup([tmp_path], "old")


def test_no_runs_found(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no leanrobust run"):
        build_speedup([tmp_path / "empty"], "base")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        build_speedup([tmp_path / "missing"], "base")


def test_a_torn_last_line_is_ignored_and_unfinished_runs_count(tmp_path):
    d = fake_run(tmp_path, "base", 0, BASE, finished=False)
    with open(d / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 4, "grad_evals": 500, "val_rob')
    res = build_speedup([tmp_path], "base", target=0.7)
    r = res.groups[0].runs[0]
    assert not r.finished and r.grad_evals == 400 and r.final_grad_evals == 400
    assert "1 unfinished" in res.groups[0].note
    lines = (d / "metrics.jsonl").read_text().splitlines()
    (d / "metrics.jsonl").write_text("\n".join([lines[0], "{torn", *lines[1:3]]) + "\n")
    with pytest.raises(ValueError, match="metrics.jsonl:2: not a JSON row"):
        build_speedup([tmp_path], "base")


def test_write_speedup_writes_three_files(tmp_path):
    for s in (0, 1):
        fake_run(tmp_path / "runs", "base", s, BASE)
        fake_run(tmp_path / "runs", "fast", s, [(100, 0.6), (200 + 50 * s, 0.7)])
    fake_run(tmp_path / "runs", "slow", 0, [(100, 0.5)])
    res = build_speedup([tmp_path / "runs"], "base", boot=200)
    files = write_speedup(res, tmp_path / "out")
    assert {p.name for p in files.values()} == {"speedup.md", "speedup.json", "speedup.png"}
    js = json.loads(files["json"].read_text())
    assert js["baseline"] == "base" and [g["name"] for g in js["groups"]] == ["base", "fast", "slow"]
    assert js["groups"][1]["runs"][0]["reached"] and files["png"].stat().st_size > 10_000


def test_cli_writes_the_files_and_a_bad_baseline_exits_2(tmp_path):
    fake_run(tmp_path / "runs", "base", 0, BASE)
    fake_run(tmp_path / "runs", "fast", 0, [(100, 0.6), (200, 0.7)])
    out = tmp_path / "out"
    r = runner.invoke(app, ["speedup", str(tmp_path / "runs"), "--baseline", "base", "--target", "70", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "| fast | 1 |" in r.output and "wrote" in r.output
    assert all((out / f).is_file() for f in ("speedup.md", "speedup.json", "speedup.png"))
    r = runner.invoke(app, ["speedup", str(tmp_path / "runs"), "--baseline", "base", "--out", str(out), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["groups"][1]["speedup"] == 2.0
    r = runner.invoke(app, ["speedup", str(tmp_path / "runs"), "--baseline", "nope", "--out", str(tmp_path / "o2")])
    assert r.exit_code == 2 and "no group named 'nope'" in r.output and "found: base, fast" in r.output
    assert not (tmp_path / "o2").exists()


def test_plot_bands_every_curve_measured_on_few_points_and_explains_every_series(tmp_path):
    import matplotlib.pyplot as plt

    from leanrobust.speedup_figure import caption, make_figure
    for s in (0, 1):
        fake_run(tmp_path, "base", s, BASE)
        fake_run(tmp_path, "fast", s, [(100, 0.6), (200, 0.7)])
    res = build_speedup([tmp_path], "base", boot=50)
    fig = make_figure(res)
    ax = fig.axes[0]
    assert len([c for c in ax.collections if c.get_gid() == "band"]) == 4  # one per seed curve (100 points each)
    text = caption(res)
    assert "Wilson" in text and "100 held-out points" in text and "thin lines" in text and "Star" in text
    assert "Dashed line: the target" in text and [t.get_text() for t in fig.texts if t.get_gid() == "caption"]
    legend = ax.get_legend()
    renderer = fig.canvas.get_renderer()
    assert legend.get_window_extent(renderer).y1 <= ax.get_window_extent(renderer).y0  # below the curves
    plt.close(fig)
