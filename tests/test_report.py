"""`leanrobust report`: runs collected from directories, the best evaluation per attack kept,
the ranking attack chosen honestly, the Pareto front, and clear errors."""
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leanrobust.cli import app
from leanrobust.report import (FAST_AA, build_report, default_attack, find_runs, pareto_front, read_run,
                               to_markdown, write_report)

runner = CliRunner()
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def fake_run(d: Path, clean=0.8, robust=None, *, n=1000, aa_n=None, aa_version="standard", eps=0.1, norm="linf",
             objective="pgd_at", grad_evals=1000, data=None) -> Path:
    """A run directory with summary.json in the trainer's format (train.Trainer.finish)."""
    robust = {"pgd20": 0.7} if robust is None else robust
    ev = {"n": n, "eps": eps, "norm": norm, "eval_seconds": 1.0}
    if "autoattack" in robust:
        ev.update(autoattack_n=aa_n or n, autoattack_version=aa_version)
    cfg = {"objective": {"name": objective, "eps": eps, "norm": norm}, "data": data or {}, "selection": {"method": "none"}}
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({
        "status": "complete", "clean_acc": clean, "robust_acc": robust, "eval": ev, "train_seconds": 10.0,
        "samples_seen": 100, "grad_evals": grad_evals, "n_train": 100, "device": "cpu", "config": cfg}))
    (d / "config.yaml").write_text("{}\n")
    return d


def write_eval(d: Path, clean, robust, *, n, eps=0.1, norm="linf", aa_n=None, aa_version="standard"):
    res = {"n": n, "eps": eps, "norm": norm, "clean_acc": clean, "robust_acc": robust, "eval_seconds": 1.0}
    if "autoattack" in robust:
        res.update(autoattack_n=aa_n or n, autoattack_version=aa_version)
    (d / f"eval_{norm}_{eps:g}_{n}.json").write_text(json.dumps(res))


def test_the_evaluation_on_the_most_points_wins_and_other_threat_models_are_ignored(tmp_path):
    d = fake_run(tmp_path / "a", clean=0.80, robust={"pgd20": 0.70, "autoattack": 0.60}, n=1000, aa_n=100)
    write_eval(d, 0.79, {"autoattack": 0.65}, n=1000)                 # AA on 1000 points: replaces the 100-point AA
    write_eval(d, 0.50, {"pgd20": 0.10, "autoattack": 0.05}, n=10000, eps=0.3)   # another eps: not this run's
    write_eval(d, 0.81, {"cw20": 0.69}, n=200)                        # fewer points: clean stays from n=1000
    r = read_run(d)
    assert r.robust["autoattack"] == (0.65, 1000)
    assert r.robust["pgd20"] == (0.70, 1000)
    assert r.robust["cw20"] == (0.69, 200)
    assert (r.clean_acc, r.n) == (0.79, 1000)


def test_fast_autoattack_is_never_mixed_with_the_standard_version(tmp_path):
    a = fake_run(tmp_path / "a", robust={"autoattack": 0.6}, aa_version="fast")
    b = fake_run(tmp_path / "b", robust={"autoattack": 0.5})
    assert set(read_run(a).robust) == {FAST_AA}
    assert set(read_run(b).robust) == {"autoattack"}
    # neither attack is common to both runs: the report refuses to invent a ranking
    with pytest.raises(ValueError, match="pick one with --attack"):
        build_report([tmp_path])
    assert [r.name for r in build_report([tmp_path], attack=FAST_AA).records] == ["a"]


def test_default_attack_prefers_autoattack_then_the_strongest_common_attack(tmp_path):
    a = read_run(fake_run(tmp_path / "a", robust={"pgd20": 0.70, "cw20": 0.66, "autoattack": 0.6}))
    b = read_run(fake_run(tmp_path / "b", robust={"pgd20": 0.60, "cw20": 0.61, "autoattack": 0.5}))
    c = read_run(fake_run(tmp_path / "c", robust={"pgd20": 0.50, "cw20": 0.52}))
    assert default_attack([a, b]) == "autoattack"
    assert default_attack([a, c]) == "cw20"    # mean 0.59 < 0.60: CW is the stronger attack on these runs
    assert default_attack([b, c]) == "pgd20"   # mean 0.55 < 0.565


def test_pareto_front():
    pts = {"a": (0.9, 0.5), "b": (0.8, 0.6), "c": (0.7, 0.55), "d": (0.8, 0.6), "e": (0.95, 0.1)}
    assert sorted(pareto_front(pts)) == ["a", "b", "d", "e"]   # c is beaten by b; equal points b, d both stay


def test_report_ranks_marks_the_front_lists_unfinished_runs_and_writes_files(tmp_path):
    fake_run(tmp_path / "runs" / "weak", clean=0.70, robust={"pgd20": 0.40}, grad_evals=10)
    fake_run(tmp_path / "runs" / "strong", clean=0.85, robust={"pgd20": 0.60}, grad_evals=1000,
             data={"train_subset": 500, "generated": "gen/top20.npz", "gen_fraction": 0.5})
    (tmp_path / "runs" / "half").mkdir()
    (tmp_path / "runs" / "half" / "config.yaml").write_text("{}\n")
    rep = build_report([tmp_path / "runs"])
    assert [r.name for r in rep.records] == ["strong", "weak"]
    # the same run named twice (through a detour) is one run
    same = build_report([tmp_path / "runs" / "weak", tmp_path / "runs" / "half" / ".." / "weak"])
    assert [r.name for r in same.records] == ["weak"]
    assert rep.front == ["strong"]
    assert "leanrobust resume" in rep.skipped[str(tmp_path / "runs" / "half")]
    md = to_markdown(rep)
    assert md.index("| strong |") < md.index("| weak |")
    assert "subset 500, +gen top20 50%" in md
    assert "Warning" not in md
    files = write_report(rep, tmp_path / "out")
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(files["json"].read_text())
    assert saved["attack"] == "pgd20" and [r["name"] for r in saved["runs"]] == ["strong", "weak"]


def test_different_threat_models_are_flagged(tmp_path):
    fake_run(tmp_path / "a", robust={"pgd20": 0.5}, eps=0.1)
    fake_run(tmp_path / "b", robust={"pgd20": 0.6}, eps=0.2)
    fake_run(tmp_path / "c", robust={"pgd20": 0.4}, eps=0.1, clean=0.7)
    rep = build_report([tmp_path / "a", tmp_path / "b", tmp_path / "c"])
    assert "not comparable" in to_markdown(rep)
    # a front per threat model: b (eps 0.2) does not dominate a or c (eps 0.1); a dominates c within eps 0.1
    assert sorted(rep.front) == ["a", "b"]


def test_runs_without_the_ranking_attack_are_listed_not_dropped_silently(tmp_path):
    fake_run(tmp_path / "a", robust={"pgd20": 0.5, "cw20": 0.4})
    fake_run(tmp_path / "b", robust={"pgd20": 0.6})
    rep = build_report([tmp_path], attack="cw20")
    assert [r.name for r in rep.records] == ["a"]
    assert "leanrobust eval" in rep.skipped[str(tmp_path / "b")]
    with pytest.raises(ValueError, match="no run was evaluated with 'autoattack'"):
        build_report([tmp_path], attack="autoattack")


def test_bad_paths_and_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_runs([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no leanrobust run"):
        find_runs([tmp_path / "empty"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "summary.json").write_text("{not json")
    with pytest.raises(ValueError, match="summary.json: not a readable JSON"):
        read_run(bad)
    odd = fake_run(tmp_path / "odd")
    (odd / "eval_linf_0.1_5.json").write_text(json.dumps({"n": 5, "eps": 0.1, "norm": "linf"}))
    with pytest.raises(ValueError, match="eval_linf_0.1_5.json: missing"):
        read_run(odd)
    r = runner.invoke(app, ["report", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "holds no leanrobust run" in r.output
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not FMNIST.exists(), reason="apt-get install dataset-fashion-mnist")
def test_cli_report_over_real_runs_uses_a_later_eval(tmp_path):
    base = ("progress: false\ndata: {train_subset: 128, val_size: 32}\nmodel: {width: 0.25}\n"
            "optim: {epochs: 1, batch_size: 64}\nvalidation: {n: 32, steps: 2}\neval: {n: 32, attacks: [pgd3]}\n")
    for name, objective in (("erm", "erm"), ("fast_at", "fgsm_rs")):
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(base + f"objective: {{name: {objective}, eps: 0.1}}\n")
        r = runner.invoke(app, ["train", str(cfg), "--out", str(tmp_path / "runs" / name)])
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["eval", str(tmp_path / "runs" / "erm"), "--attacks", "pgd3", "--n", "64", "--json"])
    assert r.exit_code == 0, r.output
    later = json.loads(r.output)
    r = runner.invoke(app, ["report", str(tmp_path / "runs"), "--out", str(tmp_path / "rep"), "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["attack"] == "pgd3" and {x["name"] for x in rep["runs"]} == {"erm", "fast_at"}
    erm = next(x for x in rep["runs"] if x["name"] == "erm")
    assert erm["n"] == 64 and erm["robust"]["pgd3"] == [later["robust_acc"]["pgd3"], 64]
    summary = json.loads((tmp_path / "runs" / "fast_at" / "summary.json").read_text())
    fast = next(x for x in rep["runs"] if x["name"] == "fast_at")
    assert fast["clean_acc"] == summary["clean_acc"] and fast["grad_evals"] == summary["grad_evals"] > 0
    assert all((tmp_path / "rep" / f).exists() for f in ("report.md", "report.json", "report.png"))


def test_report_points_a_generator_run_to_synth_train_not_resume(tmp_path):
    import yaml
    fake_run(tmp_path / "runs" / "clf")
    gen = tmp_path / "runs" / "synth"
    (gen / "checkpoints" / "step_0000050").mkdir(parents=True)
    (gen / "config.yaml").write_text(yaml.safe_dump({"name": "synth", "steps": 100, "timesteps": 1000}))
    (gen / "latest").write_text("step_0000050\n")
    rep = build_report([tmp_path / "runs"])
    why = rep.skipped[str(gen)]
    assert f"leanrobust synth train {gen / 'config.yaml'} --out {gen}" in why and "step 50 of 100" in why
    assert "leanrobust resume" not in why
    (gen / "latest").write_text("step_0000100\n")
    assert "leanrobust synth sample" in build_report([tmp_path / "runs"]).skipped[str(gen)]
    row = next(line for line in to_markdown(rep).splitlines() if line.startswith("| clf |"))
    assert row.endswith("| 1 |")  # column #: the run's number on the plot


def _overlaps(fig, gid):
    """The text boxes (without leader lines) of the labels, and the pairs that overlap within one axes."""
    from matplotlib.text import Text
    renderer = fig.canvas.get_renderer()
    texts = [(ax, t) for ax in fig.axes for t in ax.texts if t.get_gid() == gid]
    for _, t in texts:
        t.update_positions(renderer)
    boxes = [(id(ax), Text.get_window_extent(t, renderer)) for ax, t in texts]
    return boxes, [(i, j) for i in range(len(boxes)) for j in range(i)
                   if boxes[i][0] == boxes[j][0] and boxes[i][1].overlaps(boxes[j][1])]


def test_plot_has_error_bars_separate_labels_a_caption_and_a_one_run_front(tmp_path):
    import matplotlib.pyplot as plt
    from matplotlib.container import ErrorbarContainer

    from leanrobust.report_figure import caption, make_figure
    # eight runs bunched within a point of each other: their labels must not overlap
    for i in range(8):
        fake_run(tmp_path / f"r{i}", clean=0.80 + 0.001 * i, robust={"pgd20": 0.60 + 0.001 * (i % 3)}, n=1000,
                 grad_evals=1000 + 10 * i)
    fake_run(tmp_path / "big", clean=0.7, robust={"pgd20": 0.5}, n=10000)
    rep = build_report([tmp_path])
    fig = make_figure(rep)
    fig.canvas.draw()
    boxes, clashes = _overlaps(fig, "label")
    assert len(boxes) == 2 * len(rep.records) and clashes == []
    left, right = fig.axes[:2]
    bars = [c for c in left.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == len(rep.records)
    big = next(c for c, r in zip(bars, rep.records) if r.name == "big")  # one threat model: records' order
    assert not big.has_xerr and not big.has_yerr  # 10,000 points: no bar
    assert all(c.has_xerr and c.has_yerr for c in bars if c is not big)
    text = " ".join(t.get_text() for t in fig.texts)
    legend = [t.get_text() for t in left.get_legend().get_texts()]
    assert all(label in text or label in caption(rep) for label in legend)
    assert "Wilson" in caption(rep) and "Pareto front" in caption(rep) and "r0" in text
    plt.close(fig)
    # a front of one run is still drawn
    one = build_report([tmp_path / "r0"])
    fig = make_figure(one)
    rings = [c for c in fig.axes[0].collections if c.get_gid() == "pareto"]
    assert len(rings) == 1 and len(rings[0].get_offsets()) == 1
    plt.close(fig)


def test_an_evaluation_on_another_test_set_is_not_merged_into_the_run(tmp_path):
    d = fake_run(tmp_path / "a", clean=0.8, robust={"pgd20": 0.7}, n=100, data={"dataset": "fashion_mnist"})
    (d / "eval_linf_0.1_1000_pgd20_seed0.json").write_text(json.dumps(
        {"dataset": "mnist", "n": 1000, "eps": 0.1, "norm": "linf", "clean_acc": 0.1, "robust_acc": {"pgd20": 0.05}}))
    r = read_run(d)
    assert (r.clean_acc, r.n) == (0.8, 100) and r.robust["pgd20"] == (0.7, 100)
