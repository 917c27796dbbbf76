"""Gradient-masking flags: the rule on hand-made numbers, a model built to mask flagged by
evaluate_model (and the same model unmasked not flagged), the CLI warning and the report column."""
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from leanrobust import evaluate as evaluate_mod
from leanrobust.attacks.autoattack import AutoAttackResult
from leanrobust.cli.run import _print_accuracies
from leanrobust.evaluate import ScaledLogits, evaluate_model, parse_attacks
from leanrobust.masking import masking_flags, merge_masking, short_flag
from leanrobust.report import build_report, default_attack, read_run, to_markdown

ATTACKS = ["pgd20", "cw20", "pgd20x10", "pgd20x100"]


# --- the rule on hand-made numbers -------------------------------------------------------------

@pytest.mark.parametrize("other, acc, flagged", [
    ("cw20", 0.73, False), ("cw20", 0.72, False), ("cw20", 0.70, True),                # floor 3 points
    ("pgd20x10", 0.73, False), ("pgd20x10", 0.72, False), ("pgd20x10", 0.70, True),
    ("autoattack", 0.70, False), ("autoattack", 0.69, False), ("autoattack", 0.68, True),  # floor 6 points
])
def test_floor_below_at_and_above_the_threshold(other, acc, flagged):
    m = masking_flags({"pgd20": 0.75, other: acc}, n=10000)   # 3 SE ~ 1.9 points: the floor rules
    comp = {"cw20": "cw", "pgd20x10": "scaled", "autoattack": "autoattack"}[other]
    assert m["flag"] is flagged and m["gaps"][comp]["flag"] is flagged
    assert m["gaps"][comp]["threshold"] == pytest.approx(0.06 if comp == "autoattack" else 0.03)
    assert len(m["reasons"]) == flagged and "max(floor_X, 3 SE)" in m["rule"]
    if flagged:
        assert m["reasons"][0].endswith(f"below PGD-20 (threshold {6.0 if comp == 'autoattack' else 3.0}, n=10000)")


def test_standard_error_dominates_on_few_points():
    few = masking_flags({"pgd20": 0.60, "cw20": 0.50}, n=100)      # 3 SE = 21 points: a 10-point gap is noise
    assert not few["flag"] and few["gaps"]["cw"]["threshold"] == pytest.approx(0.21)
    many = masking_flags({"pgd20": 0.60, "cw20": 0.50}, n=10000)
    assert many["flag"] and many["reasons"] == ["CW-20 is 10.0 points below PGD-20 (threshold 3.0, n=10000)"]


def test_autoattack_on_fewer_points():
    # GAIR-AT row of benchmarks/results/selection_fmnist.md: PGD-20 on 1000 points, AutoAttack on 200
    m = masking_flags({"pgd20": 0.622, "cw20": 0.61, "autoattack": 0.46}, n=1000, autoattack_n=200)
    g = m["gaps"]["autoattack"]
    assert m["flag"] and g["n"] == 200 and g["gap"] == pytest.approx(0.162) and not m["gaps"]["cw"]["flag"]
    # on the points both saw PGD-CE was 64% (not 70%): an 8-point gap on 200 points is within 3 SE
    unpaired = masking_flags({"pgd20": 0.70, "autoattack": 0.56}, n=1000, autoattack_n=200)
    paired = masking_flags({"pgd20": 0.70, "autoattack": 0.56}, n=1000, autoattack_n=200,
                           on_autoattack_points={"pgd20": 0.64})
    assert unpaired["flag"] and not paired["flag"]
    assert paired["gaps"]["autoattack"]["gap"] == pytest.approx(0.08)


def test_reference_models_are_not_flagged_and_missing_attacks_give_no_comparison():
    # full-test-set reference rows (benchmarks/results/reference_fmnist.md): PGD-AT and TRADES
    for pgd20, cw20, aa in ((0.7238, 0.7255, 0.7059), (0.6884, 0.6807, 0.6664)):
        m = masking_flags({"pgd20": pgd20, "cw20": cw20, "autoattack": aa}, n=10000)
        assert not m["flag"] and set(m["gaps"]) == {"cw", "autoattack"}
    assert masking_flags({"cw20": 0.5, "autoattack": 0.4}, n=1000)["gaps"] == {}   # no PGD-CE to compare
    # several attacks of a kind: the strongest (lowest accuracy) stands for it
    m = masking_flags({"pgd10": 0.70, "pgd20": 0.69, "pgd20x10": 0.62, "pgd20x100": 0.68}, n=10000)
    assert (m["gaps"]["scaled"]["reference"], m["gaps"]["scaled"]["attack"]) == ("pgd20", "pgd20x10")


def test_parse_attacks_accepts_scaled_ce_only_for_pgd():
    assert parse_attacks("pgd20,cw20,PGD20X10,autoattack") == ["pgd20", "cw20", "pgd20x10", "autoattack"]
    for bad in ("cw20x10", "pgd20x0", "pgdx10", "pgd20x", "pgd0", "cw0", "pgd0x10"):
        with pytest.raises(ValueError, match="pgdKxS"):
            parse_attacks(bad)


# --- a model built to mask -------------------------------------------------------------------

CENTRES = torch.tensor([[0.5, 0.5], [0.7, 0.5], [0.0, 0.9], [0.0, 0.5], [0.0, 0.1]])


def centroid_model(scale: float = 300.0) -> nn.Module:
    """Nearest-centre classifier as a linear layer: z_k = scale * (c_k . x - |c_k|^2 / 2)."""
    lin = nn.Linear(2, len(CENTRES))
    with torch.no_grad():
        lin.weight.copy_(scale * CENTRES)
        lin.bias.copy_(-scale * (CENTRES ** 2).sum(1) / 2)
    return lin.eval()


class Compressed(nn.Module):
    """Logits divided by `t`: the same predictions, compressed logits as a masking model has."""

    def __init__(self, model: nn.Module, t: float):
        super().__init__()
        self.model, self.t = model, t

    def forward(self, x):
        return self.model(x) / self.t


def masking_data():
    """50 class-0 points 0.02-0.08 (Linf) from the class-1 boundary at x1 = 0.6, and 10 points near each centre."""
    g = torch.Generator().manual_seed(0)
    near = torch.stack([0.52 + 0.06 * torch.rand(50, generator=g), 0.4 + 0.2 * torch.rand(50, generator=g)], 1)
    rest = (CENTRES.clamp(0.05, 0.95).repeat_interleave(10, 0) + 0.02 * torch.randn(50, 2, generator=g)).clamp(0, 1)
    y = torch.cat([torch.zeros(50, dtype=torch.long), torch.arange(5).repeat_interleave(10)])
    return torch.cat([near, rest]), y


def test_compressed_logits_mask_pgd_ce_and_are_flagged():
    """Class 0 sits between class 1 (0.2 to the east, the closest) and classes 2-4 (0.5 to the west).
    The CE input gradient is sum_k p_k (W_k - W_y). With logits at scale 300 the softmax near the
    0/1 boundary puts nearly all wrong-class mass on class 1, so sign-PGD steps east and crosses. With
    the logits divided by 100 the softmax is near uniform: the gradient is about the mean of the
    wrong-class directions, dominated by the three western classes, so PGD-CE walks west, away from
    the only boundary within eps, and the 50 points look robust. CW's margin gradient (W_1 - W_y) and CE
    on the logits x10 (the original scale / 10) still step east. A model with two opposed wrong classes
    would not do: sign() of their nearly cancelling mean still points to the closer one."""
    x, y = masking_data()
    base = centroid_model()
    res = evaluate_model(base, x, y, eps=0.1, norm="linf", attacks=ATTACKS, progress=False)
    ra = res["robust_acc"]
    assert res["clean_acc"] == 1.0 and ra["pgd20"] == ra["cw20"] == pytest.approx(0.42)
    assert not res["masking"]["flag"] and set(res["masking"]["gaps"]) == {"cw", "scaled"}

    masked = Compressed(base, 100.0)
    res = evaluate_model(masked, x, y, eps=0.1, norm="linf", attacks=ATTACKS, progress=False)
    ra = res["robust_acc"]
    assert res["clean_acc"] == 1.0 and ra["pgd20"] >= 0.95        # PGD-CE: almost nothing falls
    assert ra["cw20"] == ra["pgd20x10"] == ra["pgd20x100"] == pytest.approx(0.42)
    m = res["masking"]
    assert m["flag"] and m["gaps"]["cw"]["flag"] and m["gaps"]["scaled"]["flag"]
    assert m["gaps"]["scaled"]["attack"] == "pgd20x10"     # x10 and x100 tie: the first name stands
    assert any(r.startswith("CW-20 is 5") for r in m["reasons"])
    json.dumps(res)   # goes into summary.json as is


def test_scaled_logits_wrapper_keeps_predictions():
    x, _ = masking_data()
    base = Compressed(centroid_model(), 100.0)
    assert torch.equal(ScaledLogits(base, 10)(x).argmax(1), base(x).argmax(1))
    assert torch.allclose(ScaledLogits(base, 10)(x), base(x) * 10)


def test_autoattack_gap_is_taken_on_the_points_autoattack_saw(monkeypatch):
    """AutoAttack on the first 20 points (faked here: none robust) against PGD-CE on those 20."""
    x, y = masking_data()

    def fake_autoattack(model, x, y, **kw):
        return AutoAttackResult(x_adv=x, robust=torch.zeros(len(x), dtype=torch.bool), accuracy=0.0)

    monkeypatch.setattr(evaluate_mod, "autoattack", fake_autoattack)
    res = evaluate_model(Compressed(centroid_model(), 100.0), x, y, eps=0.1, norm="linf",
                         attacks=["pgd20", "autoattack"], autoattack_n=20, progress=False)
    g = res["masking"]["gaps"]["autoattack"]
    assert res["autoattack_n"] == 20 and g["n"] == 20 and g["flag"]
    assert g["gap"] == pytest.approx(1.0)   # the first 20 points are near-boundary class-0 points: all PGD-robust


# --- CLI and report ---------------------------------------------------------------------------

def test_print_accuracies_warns_or_reports_the_gaps(capsys):
    flagged = {"clean_acc": 0.8, "n": 1000, "robust_acc": {"pgd20": 0.622, "cw20": 0.531}}
    _print_accuracies({**flagged, "masking": masking_flags(flagged["robust_acc"], 1000)})
    out = capsys.readouterr().out
    assert "WARNING likely gradient masking: CW-20 is 9.1 points below PGD-20 (threshold" in out
    ok = {"clean_acc": 0.8, "n": 1000, "robust_acc": {"pgd20": 0.622, "cw20": 0.615, "pgd20x10": 0.62}}
    _print_accuracies({**ok, "masking": masking_flags(ok["robust_acc"], 1000)})
    out = capsys.readouterr().out
    assert "WARNING" not in out and "masking check: no flag (PGD-20 - CW-20 +0.7 <= " in out
    assert "PGD-20 - PGD-20 on logits x10 +0.2" in out


def fake_run(d: Path, robust: dict, *, n=1000, aa_n=None, masking=True) -> Path:
    """A run directory with summary.json in the trainer's format; masking=False: an older summary."""
    ev = {"n": n, "eps": 0.1, "norm": "linf", "eval_seconds": 1.0}
    if "autoattack" in robust:
        ev.update(autoattack_n=aa_n or n, autoattack_version="standard")
    if masking:
        ev["masking"] = masking_flags(robust, n, autoattack_n=ev.get("autoattack_n"))
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({
        "status": "complete", "clean_acc": 0.8, "robust_acc": robust, "eval": ev, "train_seconds": 1.0,
        "samples_seen": 10, "grad_evals": 10, "n_train": 10, "device": "cpu",
        "config": {"objective": {"name": "pgd_at", "eps": 0.1, "norm": "linf"}, "data": {}}}))
    return d


def test_report_shows_the_masking_column_for_new_and_old_summaries(tmp_path):
    fake_run(tmp_path / "gair", {"pgd20": 0.622, "cw20": 0.531, "pgd20x10": 0.50})
    fake_run(tmp_path / "old_gair", {"pgd20": 0.622, "cw20": 0.531, "pgd20x10": 0.50}, masking=False)
    fake_run(tmp_path / "at", {"pgd20": 0.60, "cw20": 0.595, "pgd20x10": 0.598})
    fake_run(tmp_path / "pgd_only", {"pgd20": 0.55, "cw20": 0.56, "pgd20x10": 0.56}, masking=False)
    rep = build_report([tmp_path])
    assert rep.attack == "cw20"    # pgd20x10 has the lowest mean accuracy but is a diagnostic, never the default
    md = to_markdown(rep)
    header = next(line for line in md.splitlines() if line.startswith("| run |"))
    assert "| pgd20 | cw20 | pgd20x10 | masking |" in header
    rows = {line.split(" | ")[0][2:]: line for line in md.splitlines() if line.startswith("| ") and "---" not in line}
    assert "| ⚠ CW -9.1, CEx10 -12.2 |" in rows["gair"] and "| ⚠ CW -9.1, CEx10 -12.2 |" in rows["old_gair"]
    assert "⚠" not in rows["at"] and "⚠" not in rows["pgd_only"]
    assert {r.name: r.masking["flag"] for r in rep.records} == {"gair": True, "old_gair": True, "at": False,
                                                              "pgd_only": False}


def test_report_compares_across_evaluations(tmp_path):
    """PGD-20 in summary.json, AutoAttack on 1000 points from a later `leanrobust eval`: compared."""
    d = fake_run(tmp_path / "a", {"pgd20": 0.622}, masking=False)
    later = {"n": 1000, "eps": 0.1, "norm": "linf", "clean_acc": 0.8, "robust_acc": {"autoattack": 0.46},
             "autoattack_n": 1000, "autoattack_version": "standard"}
    (d / "eval_linf_0.1_1000_autoattack-standard_seed0.json").write_text(json.dumps(later))
    r = read_run(d)
    assert r.masking["flag"] and r.masking["gaps"]["autoattack"]["n"] == 1000
    assert short_flag(r.masking) == "⚠ AA -16.2"
    assert short_flag(read_run(fake_run(tmp_path / "b", {"pgd20": 0.5}, masking=False)).masking) == "-"
    assert default_attack([r]) == "autoattack"


def test_merge_keeps_the_comparison_on_the_most_points():
    small = masking_flags({"pgd20": 0.70, "cw20": 0.60}, n=100)      # not flagged: 3 SE = 20 points
    large = masking_flags({"pgd20": 0.70, "cw20": 0.60}, n=5000)     # flagged
    assert merge_masking([small, large])["flag"] and not merge_masking([small])["flag"]
    assert merge_masking([large, small])["gaps"]["cw"]["n"] == 5000
