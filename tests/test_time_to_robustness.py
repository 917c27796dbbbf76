"""The time-to-robustness protocol (benchmarks/time_to_robustness.py) and its verdict logic: every row is
named once, compression rows train equal SGD steps under their own threat model and stay out of the
full-data speed-ups, and the MFC verdict follows its confidence interval."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import time_to_robustness as ttr  # noqa: E402
import time_to_robustness_report as report  # noqa: E402


def _override(r: dict, key: str) -> str:
    return [o.split("=", 1)[1] for o in r["overrides"] if o.startswith(key + "=")][-1]


def test_rows_have_unique_names_and_seeds_share_a_group():
    rows = ttr.rows(ttr.CPU)
    names = [r["name"] for r in rows]
    assert len(names) == len(set(names))
    for r in rows:
        assert r["name"] == f"{r['group']}_s{r['seed']}"
        assert _override(r, "seed") == str(r["seed"])
    assert {r["stage"] for r in rows} == set(ttr.STAGES)


def test_compression_rows_train_under_their_threat_model():
    rows = [r for r in ttr.rows(ttr.CPU) if r["stage"] == "compression"]
    for r in rows:
        method, ipc, norm = r["prepare"]
        assert _override(r, "objective.norm") == norm
        assert float(_override(r, "objective.eps")) == ttr.COMPRESS_THREATS[norm]
        assert ("data.weighting=sample" in r["overrides"]) == method.startswith("mfc")
        assert r["seed"] in ttr.COMPRESS_SEEDS[ipc]
    groups = {r["group"]: r["prepare"] for r in rows}
    assert "mfc_gen_linf_ipc10" not in groups  # the generalized loss is made in the bound's metric only
    assert not [g for g, (m, ipc, _) in groups.items() if m == "dm" and ipc not in ttr.DM_ITERATIONS]
    # the MFC verdict's rows have 3 seeds
    for m in ("mfc_gen", "mfc_plain", "dm", "random"):
        assert sum(r["group"] == f"{m}_l2_ipc10" for r in rows) == 3


@pytest.mark.parametrize("k", [1, 63, 64, 65, 100, 500, 5000])
def test_compression_epochs_give_at_least_the_step_budget(k):
    batches = math.ceil(k / 64)
    e = ttr.compression_epochs(k, 1600)
    assert e * batches >= 1600 and (e - 1) * batches < 1600


def test_diff_ci_closed_form():
    d, h = report.diff_ci([0.5], [0.4], n=10000)
    assert d == pytest.approx(10.0)
    assert h == pytest.approx(196 * math.sqrt(0.25 / 1e4 + 0.24 / 1e4))
    # seeds add their standard error: values 0.5, 0.6 (mean 0.55, sample var 0.005, SE^2 0.0025)
    d, h = report.diff_ci([0.5, 0.6], [0.55, 0.55], n=10000)
    assert d == pytest.approx(0.0, abs=1e-9)
    assert h == pytest.approx(196 * math.sqrt(0.0025 + 2 * 0.55 * 0.45 / 1e4))


def _rows(group: str, accs: list[float], **info) -> list[dict]:
    return [{"name": f"{group}_s{i}", "group": group, "seed": i, "stage": "compression", "robust_acc": {"pgd20": a},
             "clean_acc": a + 0.1, "eval": {"n": 10000}, "info": {"eps": 1.5, **info}} for i, a in enumerate(accs)]


def test_mfc_verdict_follows_the_interval():
    base = {"dm_l2_ipc10": _rows("dm_l2_ipc10", [0.50, 0.51, 0.49]),
            "random_l2_ipc10": _rows("random_l2_ipc10", [0.48, 0.49, 0.50]),
            "mfc_plain_l2_ipc10": _rows("mfc_plain_l2_ipc10", [0.5, 0.5, 0.5])}
    assert report._mfc_measure(base)[1] == "undecided"  # mfc_gen missing
    worse = {**base, "mfc_gen_l2_ipc10": _rows("mfc_gen_l2_ipc10", [0.10, 0.11, 0.09], vacuous=True)}
    meas, verdict, _ = report._mfc_measure(worse)
    assert verdict == "not reproduced" and "vacuous" in meas
    same = {**base, "mfc_gen_l2_ipc10": _rows("mfc_gen_l2_ipc10", [0.50, 0.49, 0.50])}
    assert report._mfc_measure(same)[1] == "undecided"
    better = {**base, "mfc_gen_l2_ipc10": _rows("mfc_gen_l2_ipc10", [0.60, 0.61, 0.60])}
    meas, verdict, why = report._mfc_measure(better)
    assert verdict == "undecided" and "AutoAttack" in why


def test_mfc_measure_shows_the_comparisons_measured_while_rows_are_missing():
    g = {"random_l2_ipc10": _rows("random_l2_ipc10", [0.44]),
         "mfc_gen_l2_ipc10": _rows("mfc_gen_l2_ipc10", [0.10, 0.10, 0.10])}
    meas, verdict, why = report._mfc_measure(g)
    # below random beyond the interval already refutes "better than DM and random"; DM is named as still to run
    assert verdict == "not reproduced" and "below random" in why and "dm_l2_ipc10" in why
    assert "mfc_gen - random (3 vs 1 seeds): -34.00" in meas and "- dm" not in meas
    level = {**g, "mfc_gen_l2_ipc10": _rows("mfc_gen_l2_ipc10", [0.44, 0.44, 0.44])}
    meas, verdict, why = report._mfc_measure(level)
    assert verdict == "undecided" and "dm_l2_ipc10" in why


def _seeded(group: str, accs: list[float]) -> list[dict]:
    return [_trained(group, i, 1, a) for i, a in enumerate(accs)]


def test_puma_verdict_is_taken_at_the_kept_shares_of_its_range():
    base = {"pgd_at_e15": _seeded("pgd_at_e15", [0.73]), "random_50": _seeded("random_50", [0.71]),
            "random_70": _seeded("random_70", [0.72]), "random_30": _seeded("random_30", [0.69])}
    partial = {**base, "puma_50": _seeded("puma_50", [0.665])}
    meas, verdict, why = report._puma_measure(partial, 15)
    assert verdict == "undecided" and why == "rows not run yet: puma_70"
    assert "50% kept, PUMA - random (1 vs 1 seeds): -4.50" in meas
    # below random at 50% and 70% kept decides it; 30% kept lies outside PUMA's 20-50% pruning
    worse = {**partial, "puma_70": _seeded("puma_70", [0.68])}
    meas, verdict, why = report._puma_measure(worse, 15)
    assert verdict == "not reproduced" and "50%, 70%" in why
    better_outside = {**worse, "puma_30": _seeded("puma_30", [0.75])}
    meas, verdict, _ = report._puma_measure(better_outside, 15)
    assert verdict == "not reproduced" and "30% kept (outside its range)" in meas
    level = {**partial, "puma_70": _seeded("puma_70", [0.72])}
    assert report._puma_measure(level, 15)[1] == "undecided"
    above = {**partial, "puma_70": _seeded("puma_70", [0.76])}
    meas, verdict, why = report._puma_measure(above, 15)
    assert verdict == "undecided" and "AutoAttack" in why


def test_compression_rows_stay_out_of_the_full_data_speedups():
    curve = [{"epoch": 1, "grad_evals": 10, "train_seconds": 1.0, "val_robust": 0.5, "val_n": 2000}]
    base = {"name": "pgd_at_e15_s0", "group": "pgd_at_e15", "seed": 0, "stage": "plateau", "overrides": [],
            "curve": curve}
    comp = {**_rows("random_l2_ipc10", [0.5])[0], "overrides": ["objective.norm=l2"], "curve": curve}
    sp = report.family_speedups([base, comp], 15, 2000)
    assert [g.name for g in sp["pgd_at"].groups] == ["pgd_at_e15"]
    assert "random_l2_ipc10" in "\n".join(report.compression_table([comp]))


def _trained(group: str, seed: int, grad_evals: int, pgd20: float, **info) -> dict:
    return {"name": f"{group}_s{seed}", "group": group, "seed": seed, "stage": "x", "overrides": [],
            "grad_evals": grad_evals, "robust_acc": {"pgd20": pgd20}, "clean_acc": pgd20 + 0.1,
            "eval": {"n": 10000}, "info": info}


def test_frontier_compares_a_row_with_full_data_at_the_same_compute():
    done = [_trained("pgd_at_e2", 0, 1_000_000, 0.60), _trained("pgd_at_e6", 0, 3_000_000, 0.70),
            _trained("random_50", 0, 2_000_000, 0.70),  # full data at 2M: 0.65 -> +5 points
            _trained("random_30", 0, 1_500_000, 0.62),  # full data at 1.5M: 0.625 -> on the frontier
            _trained("puma_50", 0, 1_900_000, 0.55, scoring_grad_evals=100_000),  # 2M with its scoring: 0.65
            _trained("random_70", 0, 4_000_000, 0.71)]
    assert [c for c, _, _ in report.frontier(done, "pgd_at")] == [1_000_000, 3_000_000]
    table = {line.split(" | ")[0].strip("| "): line for line in report.frontier_table(done, "pgd_at")
             if line.startswith("| ") and not line.startswith("| row")}
    assert "+5.00" in table["random_50"] and "saves compute" in table["random_50"]
    assert "on the frontier" in table["random_30"]
    assert "2,000,000" in table["puma_50"] and "-10.00" in table["puma_50"] and "costs compute" in table["puma_50"]
    assert "outside" in table["random_70"]


def test_generated_rows_use_the_pool_and_compare_within_their_own_family():
    rows = [r for r in ttr.rows(ttr.CPU) if r["stage"] == "generated"]
    assert rows and all(_override(r, "data.generated") == str(ttr.GEN_POOL) for r in rows)
    assert {report.family(r) for r in rows} == {"gen_trades"}  # recipe (bullet_trades) included, not real TRADES
    assert report.family(next(r for r in ttr.rows(ttr.CPU) if r["group"] == "trades_e15")) == "trades"
    margin = [r for r in rows if r.get("prepare")]
    assert {r["prepare"][0] for r in margin} == {"puma", "prune_high_margin"}
    assert all(r["prepare"][2] == "gen" for r in margin)
    assert ttr.CPU.margin_model("gen") == "gen_trades_e15_s0" and ttr.CPU.margin_model() == "pgd_at_e15_s0"
    # the verdict rows have 3 seeds
    for g in ("gen_trades_e15", "gen_puma_50", "gen_random_50", "gen_recipe"):
        assert sum(r["group"] == g for r in rows) == 3
    assert not ttr.generated_rows(ttr.GPU)  # no generated pool at the GPU size


def test_the_recipe_row_trains_the_committed_recipe():
    """What the benchmark measures is what configs/recipes/fmnist_stacked_trades.yaml trains (up to the
    evaluation, the seed and the progress bar)."""
    from leanrobust.config import load_config

    r = next(r for r in ttr.rows(ttr.CPU) if r["name"] == "gen_recipe_s0")
    ours = load_config(r["config"], r["overrides"]).model_dump()
    recipe = load_config(ttr.RECIPE).model_dump()
    for key in ("name", "eval", "progress", "seed"):
        ours.pop(key), recipe.pop(key)
    assert ours == recipe


def _gen(group: str, accs: list[float], samples: int = 100) -> list[dict]:
    return [{**_trained(group, i, 1, a), "samples_seen": samples} for i, a in enumerate(accs)]


def test_generated_verdicts_follow_their_intervals():
    g = {f"gen_{m}_{k}": _gen(f"gen_{m}_{k}", [0.70, 0.70, 0.70]) for m in ("random", "prune_high_margin")
         for k in (50, 70)}
    assert report._gen_puma_measure(g)[1] == "undecided"  # PUMA rows missing
    worse = {**g, **{f"gen_puma_{k}": _gen(f"gen_puma_{k}", [0.60, 0.60, 0.60]) for k in (50, 70)}}
    assert report._gen_puma_measure(worse)[1] == "not reproduced"
    better = {**g, **{f"gen_puma_{k}": _gen(f"gen_puma_{k}", [0.75, 0.75, 0.75]) for k in (50, 70)}}
    meas, verdict, why = report._gen_puma_measure(better)
    assert verdict == "undecided" and "AutoAttack" in why and "+5.00" in meas

    real, gen = _gen("trades_e15", [0.70, 0.71, 0.70]), _gen("gen_trades_e15", [0.60, 0.61, 0.60])
    assert report._proxy_measure({"trades_e15": real}, 15)[1] == "undecided"
    assert report._proxy_measure({"trades_e15": real, "gen_trades_e15": gen}, 15)[1] == "not reproduced"
    unequal = _gen("gen_trades_e15", [0.80, 0.80, 0.80], samples=300)
    meas, verdict, why = report._proxy_measure({"trades_e15": real, "gen_trades_e15": unequal}, 15)
    assert verdict == "undecided" and "same steps" in why


def _curved(group: str, seed: int, evals: list[int], vals: list[float]) -> dict:
    curve = [{"epoch": i + 1, "grad_evals": e, "train_seconds": e / 1e4, "val_robust": v, "val_n": 2000}
             for i, (e, v) in enumerate(zip(evals, vals))]
    return {"name": f"{group}_s{seed}", "group": group, "seed": seed, "stage": "generated", "curve": curve,
            "overrides": ["data.generated=pool.npz", "objective.name=trades"]}


def test_recipe_verdict_reads_the_speedup_against_its_own_family():
    base = [_curved("gen_trades_e15", s, [3_000_000, 6_000_000, 9_000_000], [0.60, 0.695, 0.70 + s / 1000])
            for s in range(3)]
    fast = [_curved("gen_recipe", s, [1_000_000, 2_000_000], [0.62, 0.695 + s / 1000]) for s in range(3)]
    sp = report.family_speedups(base + fast, 15, 2000)
    assert set(sp) == {"gen_trades"}
    meas, verdict, _ = report._recipe_measure(sp)
    assert verdict == "reached" and meas.startswith("3.00x")  # target 0.701 - 0.01: the baseline at 6M, the recipe at 2M
    slow = [_curved("gen_recipe", s, [2_000_000, 4_000_000], [0.62, 0.695]) for s in range(3)]
    assert report._recipe_measure(report.family_speedups(base + slow, 15, 2000))[1] == "not reached"  # 1.5x
    never = [_curved("gen_recipe", s, [2_000_000], [0.5]) for s in range(3)]
    assert report._recipe_measure(report.family_speedups(base + never, 15, 2000))[1] == "not reached"
    assert report._recipe_measure({})[1] == "undecided"


def test_autoattack_table_shows_the_pgd_gap_on_the_same_points_and_the_masking_flag(tmp_path):
    import json

    from leanrobust.masking import masking_flags

    n = 1000
    honest = masking_flags({"pgd20": 0.74, "autoattack": 0.73}, n, autoattack_n=n)
    masked = masking_flags({"pgd20": 0.60, "autoattack": 0.30}, n, autoattack_n=n)
    assert not honest["flag"] and masked["flag"]
    rows = [{"name": "a@1000:standard", "row": "a", "n": n, "version": "standard", "autoattack": 0.73,
             "pgd20": 0.74, "clean_acc": 0.8, "masking": honest, "seconds": 10.0, "device": "cpu"},
            {"name": "b@1000:standard", "row": "b", "n": n, "version": "standard", "autoattack": 0.30,
             "pgd20": 0.60, "clean_acc": 0.8, "masking": masked, "seconds": 10.0, "device": "cpu"},
            {"name": "c@500:fast", "row": "c", "n": 500, "version": "fast", "autoattack": 0.5,  # an older row
             "clean_acc": 0.8, "seconds": 10.0, "device": "cpu"}]
    path = tmp_path / "aa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cells = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in report.autoattack_table(path)
             if line.startswith("| ") and not line.startswith("| row")}
    assert cells["a"][4].startswith("74.00 ± ") and cells["a"][6] == "+1.00" and cells["a"][7] == "no"
    assert cells["b"][6] == "+30.00" and cells["b"][7].startswith("⚠ ")
    assert cells["c"][2] == "fast (upper bound)" and cells["c"][4] == "-" and cells["c"][7] == "-"


def test_select_rows_narrows_a_stage_to_the_named_rows_and_refuses_unknown_names():
    rows = ttr.rows(ttr.CPU)
    comp = [r["name"] for r in ttr.select_rows(rows, ["compression"], None)]
    assert comp and all(n in {r["name"] for r in rows if r["stage"] == "compression"} for n in comp)
    both = ttr.select_rows(rows, ["compression"], ["random_l2_ipc10_s0", "pgd_at_e15_s1"])
    assert [r["name"] for r in both] == ["random_l2_ipc10_s0"]  # a stage and names: both must hold
    assert [r["name"] for r in ttr.select_rows(rows, None, ["pgd_at_e15_s1"])] == ["pgd_at_e15_s1"]
    assert ttr.select_rows(rows, None, None) == []
    with pytest.raises(SystemExit, match="unknown rows: nope"):
        ttr.select_rows(rows, None, ["nope"])


def test_rows_from_another_device_compare_by_grad_evals_only():
    """A row trained on a (shared) GPU keeps its grad-eval speed-up against a CPU baseline but gets no
    speed-up in wall seconds: the two devices' seconds are not one unit."""
    def row(group, device, evals):
        curve = [{"epoch": e, "grad_evals": g, "train_seconds": 10.0 * e, "val_robust": v, "val_n": 2000}
                 for e, (g, v) in enumerate(zip(evals, (0.5, 0.7, 0.72)), start=1)]
        return {"name": f"{group}_s0", "group": group, "seed": 0, "stage": "x", "overrides": [], "curve": curve,
                "device": device}
    done = [row("pgd_at_e15", "cpu:2 cores (x86_64)", (100, 200, 300)),
            row("random_50", "cuda:NVIDIA H200", (50, 100, 150)),
            row("random_70", "cpu:2 cores (x86_64)", (70, 140, 210))]
    groups = {g.name: g for g in report.family_speedups(done, 15, 2000)["pgd_at"].groups}
    assert groups["random_50"].speedup == pytest.approx(2.0) and groups["random_50"].speedup_seconds is None
    assert groups["random_70"].speedup == pytest.approx(200 / 140)
    assert groups["random_70"].speedup_seconds == pytest.approx(1.0)
