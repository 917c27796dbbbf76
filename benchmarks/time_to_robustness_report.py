"""The report of benchmarks/time_to_robustness.py: the regime and its evidence, the verdict table, compute to
target per objective family (leanrobust.speedup on the curves the rows carry), final test accuracies with
binomial intervals, and the curves plots. Reads results/time_to_robustness.jsonl only (runs/ is not needed)."""
from __future__ import annotations

import math
from pathlib import Path

from common import RESULTS, done_rows, write_table
from leanrobust.speedup import Curve, Speedup, plot, speedup_from_curves

FAMILIES = {"pgd_at": "PGD-AT", "trades": "TRADES", "mart": "MART",  # baseline group prefix -> label
            "gen_trades": "TRADES on real + generated"}


def device_kind(row: dict) -> str:
    """'cpu' or 'cuda' from a row's device label ('cpu:2 cores (x86_64)', 'cuda:NVIDIA H200', ...)."""
    return str(row.get("device") or "cpu").split(":", 1)[0]


def curve_of(row: dict, val_n: int, seconds_on: str | None = None) -> Curve:
    """The row's learning curve as a speedup.Curve, with the compute spent before training (scoring with a
    pretrained model: info.scoring_grad_evals / scoring_seconds) added to every point: it is the row's cost.
    val_n: the held-out points of the base config, for rows written before their curves recorded it.
    seconds_on: keep wall seconds only for rows trained on this kind of device (seconds on a shared GPU and
    on the CPU are not one unit); the others compare by grad evals alone."""
    pts = row.get("curve") or []
    info = row.get("info") or {}
    g0, s0 = int(info.get("scoring_grad_evals", 0)), float(info.get("scoring_seconds", 0.0))
    timed = seconds_on is None or device_kind(row) == seconds_on
    return Curve(path=row["name"], name=row["group"], seed=int(row["seed"]), finished=True,
                 epoch=[p["epoch"] for p in pts], grad_evals=[int(p["grad_evals"]) + g0 for p in pts],
                 seconds=[None if p.get("train_seconds") is None or not timed else p["train_seconds"] + s0
                          for p in pts],
                 value=[float(p["val_robust"]) for p in pts],
                 val_n=pts[0].get("val_n", val_n) if pts else None)


def family(row: dict) -> str:
    """Which full-data baseline a row is compared with: its objective's (Bullet-TRADES and GAIR-TRADES:
    TRADES; GAIR-AT, MAIL-AT, PGD-AT schedules, pruning on PGD-AT: PGD-AT), on the same data (rows with
    generated data: 'gen_' + the objective's family)."""
    ov = row.get("overrides", [])
    obj = next((o.split("=", 1)[1] for o in reversed(ov) if o.startswith("objective.name=")), "pgd_at")
    fam = "trades" if "trades" in obj else "mart" if "mart" in obj else "pgd_at"
    return f"gen_{fam}" if any(o.startswith("data.generated=") for o in ov) else fam


def binom_ci(p: float, n: int) -> float:
    """Half-width of the 95% normal-approximation binomial interval, in points."""
    return 196 * math.sqrt(max(p * (1 - p), 1e-12) / n)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def accuracy_cell(rows: list[dict], key: str) -> str:
    """Mean over seeds with the binomial 95% half-width (one seed) or the seeds' range (several)."""
    vals = [r["robust_acc"].get(key) if key != "clean" else r["clean_acc"] for r in rows]
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    n = rows[0]["eval"].get("n", 10000)
    m = _mean(vals)
    if len(vals) == 1:
        return f"{100 * m:.2f} ± {binom_ci(m, n):.2f}"
    return f"{100 * m:.2f} [{100 * min(vals):.2f}-{100 * max(vals):.2f}]"


def groups(done: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in done:
        out.setdefault(r["group"], []).append(r)
    return out


def family_speedups(done: list[dict], epochs: int, val_n: int) -> dict[str, Speedup]:
    """leanrobust.speedup per objective family whose full-data baseline (the full schedule) has rows."""
    out = {}
    for fam in FAMILIES:
        base = f"{fam}_e{epochs}"
        rows = [r for r in done if family(r) == fam and r.get("curve") and r.get("stage") != "compression"]
        if any(r["group"] == base for r in rows):
            kind = device_kind(next(r for r in rows if r["group"] == base))  # seconds in the baseline's unit
            curves = [curve_of(r, val_n, seconds_on=kind) for r in rows]
            out[fam] = speedup_from_curves(curves, base)
    return out


def plateau_evidence(done: list[dict], epochs: int) -> list[str]:
    """The convergence check of the full schedule (seed 0) and how the schedule length moves the result."""
    lines = []
    full = next((r for r in done if r["name"] == f"pgd_at_e{epochs}_s0"), None)
    if full is None:
        return [f"- Full-data PGD-AT at {epochs} epochs (seed 0) has not finished yet: the choice is provisional."]
    vals = [p["val_robust"] for p in full["curve"] if isinstance(p["epoch"], int)]
    best, q = max(vals), max(1, math.ceil(len(vals) / 4))
    last = vals[-q:]
    ok = min(last) >= best - 0.01
    lines.append(f"- Full-data PGD-AT, {epochs} epochs, seed 0: best held-out robust accuracy {100 * best:.2f}% "
                 f"(epoch {vals.index(best) + 1}); over the last quarter (epochs {len(vals) - q + 1}-{len(vals)}) it "
                 f"stays within {100 * (best - min(last)):.2f} points of it: plateau criterion (within 1 point) "
                 f"{'met' if ok else 'NOT met'}.")
    ladder = sorted((r for r in done if r["group"].startswith("pgd_at_e") and r["seed"] == 0),
                    key=lambda r: int(r["group"].split("_e")[1]))
    if ladder:
        lines.append("- Schedule length (full data, PGD-AT, seed 0): " + "; ".join(
            f"{r['group'].split('_e')[1]} epochs: held-out best {100 * max(p['val_robust'] for p in r['curve']):.2f}, "
            f"test PGD-20 {100 * r['robust_acc']['pgd20']:.2f}" for r in ladder) + ".")
    return lines


def verdict_rows(done: list[dict], sp: dict[str, Speedup], epochs: int) -> list[tuple[str, str, str, str]]:
    """(claim, measurement, verdict, reason). A verdict needs its rows; until then it is undecided."""
    g = groups(done)
    out = []

    def missing(names: list[str]) -> list[str]:
        return [n for n in names if n not in g]

    li = [n for n in g if n.startswith(("loss_", "gradmatch_"))]
    need = missing([f"trades_e{epochs}", f"mart_e{epochs}"]) + ([] if li else ["the li stage"])
    out.append(("Li et al.: adaptive re-selection (+ Bullet-Train) trains 2-3.4x (up to 5.7x) faster at similar "
                "robust accuracy (TRADES, MART)", *_li_measure(sp, need)))
    out.append(("PUMA (real data only): pruning the highest-margin samples with lowered eps on the lowest keeps "
                "robustness with less data, better than random pruning at the same kept share",
                *_puma_measure(g, epochs)))
    need = missing([f"pgd_at_e{epochs}", "gair_at", "gair_trades", "mail_at"])
    out.append(("GAIRAT: reweighting by kappa raises robust accuracy over plain AT (+5.9 PGD-20 points on CIFAR-10); "
                "MAIL fixes its AutoAttack weakness", *_reweight_measure(g, epochs, need)))
    out.append(("MFC: adversarial training on real centres at eps + eta keeps robustness with a provable bound, "
                "better than DM and random at equal size", *_mfc_measure(g)))
    out.append(("PUMA (enlarged set, its regime): on real + generated data, pruning the highest margins with "
                "lowered eps on the lowest keeps robustness, better than random pruning and than margin pruning "
                "without the radius change at the same kept count", *_gen_puma_measure(g)))
    out.append(("Proxy distributions: adding generated images to the real set raises robust accuracy (full set, "
                "equal SGD steps: TRADES on real + generated vs real only)", *_proxy_measure(g, epochs)))
    out.append(("Stacked recipe (TRADES + generated data + adaptive PUMA re-selection + Bullet-Train): at least 3x "
                "less compute than full-data TRADES on the same data to reach its robust accuracy - 1 point",
                *_recipe_measure(sp)))
    return out


def _versus(g: dict, a: str, b: str) -> tuple[float, float, int, int]:
    """Test PGD-20 of group a minus group b (points) with its 95% half-width, and their seed counts."""
    d, h = diff_ci(_seed_values(g[a], "pgd20"), _seed_values(g[b], "pgd20"))
    return d, h, len(g[a]), len(g[b])


def _gen_puma_measure(g: dict) -> tuple[str, str, str]:
    """gen_puma_k against gen_random_k and gen_prune_high_margin_k, test PGD-20 on 10000 points, seeds' spread
    included; the comparison with the unpruned enlarged set at equal compute is the family's frontier table."""
    need = [n for k in (50, 70) for n in (f"gen_puma_{k}", f"gen_random_{k}", f"gen_prune_high_margin_{k}")
            if n not in g]
    if need:
        return "-", "undecided", "rows not run yet: " + ", ".join(need)
    parts, signs = [], []
    for k in (50, 70):
        for other in ("random", "prune_high_margin"):
            d, h, na, nb = _versus(g, f"gen_puma_{k}", f"gen_{other}_{k}")
            parts.append(f"{k}% kept, - {other} ({na} vs {nb} seeds): {d:+.2f} ± {h:.2f}")
            signs.append(1 if d > h else -1 if d < -h else 0)
    meas = "; ".join(parts)
    if all(x < 0 for x in signs[::2]):
        return meas, "not reproduced", "PUMA is below random pruning at every kept share (PGD-20)"
    if all(x > 0 for x in signs):
        return meas, "undecided", "above both baselines at every kept share under PGD-20; AutoAttack still to run"
    return meas, "undecided", "not above both baselines at every kept share beyond the interval (PGD-20)"


def _proxy_measure(g: dict, epochs: int) -> tuple[str, str, str]:
    """gen_trades_e{E} minus trades_e{E}: the same epochs of ceil(n_real / B) SGD steps each, so the same steps
    and attack passes; the 2,000-image equal-step rows are in results/proxy_fmnist.md."""
    a, b = f"gen_trades_e{epochs}", f"trades_e{epochs}"
    need = [n for n in (a, b) if n not in g]
    if need:
        return "-", "undecided", "rows not run yet: " + ", ".join(need)
    d, h, na, nb = _versus(g, a, b)
    steps = {r["samples_seen"] for r in g[a] + g[b] if r.get("samples_seen")}
    meas = f"real + generated - real only, test PGD-20 ({na} vs {nb} seeds): {d:+.2f} ± {h:.2f}" + \
        ("" if len(steps) <= 1 else f" (samples seen differ: {sorted(steps)})")
    if len(steps) > 1:
        return meas, "undecided", "the rows did not take the same steps"
    if d < -h:
        return meas, "not reproduced", "generated data lowers robust accuracy at equal steps (PGD-20)"
    if d > h:
        return meas, "undecided", "above real only beyond the interval under PGD-20; AutoAttack still to run"
    return meas, "undecided", "no difference beyond the interval (PGD-20)"


def _one_off_generator() -> str:
    """The generator's one-off cost (training + sampling the pool), from results/generated_pool.jsonl."""
    rows = done_rows(RESULTS / "generated_pool.jsonl")
    gen, pool = rows.get("generator"), rows.get("pool")
    if not gen:
        return "generator one-off cost: not measured yet"
    text = f"generator one-off cost: {gen['seconds'] / 3600:.1f} h training ({gen['step']} steps, {gen['device']})"
    if pool and pool.get("sample_seconds"):
        text += f" + {pool['sample_seconds'] / 3600:.1f} h sampling {pool['n_generated']:,} images"
    return text


def _recipe_measure(sp: dict[str, Speedup]) -> tuple[str, str, str]:
    s = sp.get("gen_trades")
    gr = next((x for x in s.groups if x.name == "gen_recipe"), None) if s else None
    if gr is None:
        return _one_off_generator(), "undecided", "rows not run yet: gen_trades baseline and gen_recipe"
    if gr.speedup is None:
        return (f"gen_recipe did not reach the target ({100 * s.target:.2f}%; best {100 * gr.best_mean:.2f}); "
                f"{_one_off_generator()}", "not reached", "the recipe stayed below the baseline's best - 1")
    ci = gr.speedup_ci
    meas = (f"{gr.speedup:.2f}x fewer grad evals" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f" ({len(gr.runs)} seed)")
            + f"; {_one_off_generator()}")
    if ci and ci[0] >= 3:
        return meas, "reached", "the CI's lower end is at least 3x (AutoAttack on 1000 points to confirm)"
    if ci and ci[1] < 3:
        return meas, "not reached", "the CI's upper end is below 3x"
    return meas, "undecided", "the CI spans 3x" if ci else "one seed: no CI"


def _seed_values(rows: list[dict], key: str) -> list[float]:
    return [r["robust_acc"][key] if key != "clean" else r["clean_acc"] for r in rows]


def diff_ci(a: list[float], b: list[float], n: int = 10000) -> tuple[float, float]:
    """Difference of two rows' seed means, in points, and its 95% half-width: the seeds' spread (standard
    error of each mean) plus the binomial error of n test points, for each side."""
    def var(xs: list[float]) -> float:
        m = _mean(xs)
        seeds = sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs) if len(xs) > 1 else 0.0
        return seeds + m * (1 - m) / n
    return 100 * (_mean(a) - _mean(b)), 196 * math.sqrt(var(a) + var(b))


def _mfc_measure(g: dict, ipc: int = 10, norm: str = "l2") -> tuple[str, str, str]:
    """MFC's generalized loss (mfc_gen: the bound's form) against DM and random at 10 images per class under
    L2 PGD-20 (the metric of MFC's bound), 3 seeds each; mfc_plain (the same centres at the plain eps) beside it."""
    names = {m: f"{m}_{norm}_ipc{ipc}" for m in ("mfc_gen", "mfc_plain", "dm", "random")}
    need = [n for n in names.values() if n not in g]
    vals = {m: _seed_values(g[n], "pgd20") for m, n in names.items() if n in g}
    parts, below, above = [], [], []
    for m in ("mfc_gen", "mfc_plain"):
        for other in ("dm", "random"):
            if m not in vals or other not in vals:
                continue
            d, h = diff_ci(vals[m], vals[other])
            parts.append(f"{m} - {other} ({len(vals[m])} vs {len(vals[other])} seeds): {d:+.2f} ± {h:.2f}")
            if m == "mfc_gen":
                (below if d < -h else above if d > h else []).append(other)
    eps = next((g[n][0]["info"].get("eps") for n in names.values() if n in g), None)
    vac = [r["info"].get("vacuous") for r in g.get(names["mfc_gen"], [])]
    meas = (f"L2 eps {eps}, {ipc} ipc, test PGD-20: " + "; ".join(parts) + (
        "; the covering is vacuous (all centres' eps + eta balls share an image)" if any(vac) else "")) if parts else "-"
    if below:  # below one baseline refutes "better than both", whatever the other gives
        return meas, "not reproduced", f"the generalized loss is below {' and '.join(below)} (95% CI)" + (
            f"; still to run: {', '.join(need)}" if need else "")
    if need:
        return meas, "undecided", "rows not run yet: " + ", ".join(need)
    if len(above) == 2:
        return meas, "undecided", "above DM and random under PGD-20; AutoAttack on the rows still to run"
    return meas, "undecided", "no significant difference from " + " and ".join(
        o for o in ("dm", "random") if o not in above)


def compression_table(done: list[dict]) -> list[str]:
    """The compression rows: what each kept, its covering radius against the data's nearest-neighbour
    distances, and its test accuracies under its threat model."""
    rows = [r for r in done if r.get("stage") == "compression"]
    if not rows:
        return []
    lines = ["", "## Compression: MFC, DM and random at equal size", "",
             "Every row trains the same SGD steps (batch 64) on its k images; compression seconds are a one-off cost. "
             "eta: mean per-class L2 covering radius; eps + eta: the largest generalized radius (in the threat "
             "model's norm); nn median: the median L2 distance to the nearest same-class image.", "",
             "| row | seeds | threat | k | steps | eta | eps + eta | nn median | vacuous | clean | PGD-20 | CW-20 | "
             "compress s |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    grouped = groups(rows)
    for name, rs in grouped.items():
        i = rs[0]["info"]
        fmt = lambda v: "-" if v is None else f"{v:.3g}"  # noqa: E731
        lines.append(f"| {name} | {len(rs)} | {i.get('threat')} {i.get('eps')} | {i.get('k')} | {i.get('steps')} | "
                     f"{fmt(i.get('eta_mean'))} | {fmt(i.get('generalized_radius'))} | {fmt(i.get('nn_median'))} | "
                     f"{'yes' if i.get('vacuous') else '-'} | {accuracy_cell(rs, 'clean')} | "
                     f"{accuracy_cell(rs, 'pgd20')} | {accuracy_cell(rs, 'cw20')} | {fmt(i.get('compress_seconds'))} |")
    return lines


def _li_measure(sp: dict[str, Speedup], need: list[str]) -> tuple[str, str, str]:
    if need:
        return "-", "undecided", "rows not run yet: " + ", ".join(need)
    best = None
    for fam in ("trades", "mart"):
        for gr in sp[fam].groups[1:] if fam in sp else []:
            if gr.name.startswith(("loss_", "gradmatch_")) and gr.speedup and (best is None or gr.speedup > best.speedup):
                best = gr
    if best is None:
        return "no Li et al. row reached the target", "not reproduced", "every row stayed below its baseline's best - 1"
    ci = best.speedup_ci
    meas = f"{best.name}: {best.speedup:.2f}x fewer grad evals" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else " (1 seed)")
    if ci and ci[0] >= 2:
        return meas, "reproduced", "the CI's lower end is at least 2x"
    if ci and ci[1] < 2:
        return meas, "not reproduced", "the CI's upper end is below 2x"
    return meas, "undecided", "the CI spans 2x" if ci else "one seed: no CI"


PUMA_KEPT = (50, 70)  # PUMA prunes 20-50% of the highest margins: kept shares 50-80% are its regime


def _puma_measure(g: dict, epochs: int) -> tuple[str, str, str]:
    """PUMA minus random pruning at each kept share measured so far (test PGD-20 on 10000 points, seeds' spread
    included). The verdict is taken at the kept shares of PUMA's own range (PUMA_KEPT); 30% kept is shown
    but lies outside it. AutoAttack on the same rows, where run, is in the AutoAttack table."""
    need = [n for n in [f"pgd_at_e{epochs}"] + [f"{m}_{k}" for k in PUMA_KEPT for m in ("random", "puma")]
            if n not in g]
    diffs = {k: _versus(g, f"puma_{k}", f"random_{k}") for k in (30, 50, 70)
             if f"puma_{k}" in g and f"random_{k}" in g}
    meas = "; ".join(f"{k}% kept{'' if k in PUMA_KEPT else ' (outside its range)'}, PUMA - random ({na} vs {nb} "
                     f"seeds): {d:+.2f} ± {h:.2f}" for k, (d, h, na, nb) in diffs.items()) or "-"
    if need:
        return meas, "undecided", "rows not run yet: " + ", ".join(need)
    inside = [diffs[k] for k in PUMA_KEPT]
    if all(d < -h for d, h, _, _ in inside):
        return meas, "not reproduced", (f"PUMA is below random pruning beyond the interval at every kept share of "
                                        f"its range ({', '.join(f'{k}%' for k in PUMA_KEPT)}; PGD-20)")
    if any(d > h for d, h, _, _ in inside):
        return meas, "undecided", "above random at some kept share under PGD-20; AutoAttack still to run"
    return meas, "undecided", "no significant difference under PGD-20 at some kept share of its range"


def _reweight_measure(g: dict, epochs: int, need: list[str]) -> tuple[str, str, str]:
    if need:
        return "-", "undecided", "rows not run yet: " + ", ".join(need)
    base, gair = g[f"pgd_at_e{epochs}"], g["gair_at"]
    pa, pb = _mean([r["robust_acc"]["pgd20"] for r in gair]), _mean([r["robust_acc"]["pgd20"] for r in base])
    d = pa - pb
    masked = [r["name"] for r in gair + g["gair_trades"] if (r["eval"].get("masking") or {}).get("flag")]
    meas = f"GAIR-AT - PGD-AT test PGD-20: {100 * d:+.2f} points (±{math.hypot(binom_ci(pa, 10000), binom_ci(pb, 10000)):.2f})" + \
        (f"; masking flagged: {', '.join(masked)}" if masked else "")
    return meas, "undecided", "AutoAttack on the rows is still to run (the claim is decided under AutoAttack)"


def schedule_reference(s: Speedup, fam: str) -> list[str]:
    """Full data on a shorter schedule is the baseline a pruned row must beat at equal compute."""
    full = [g for g in s.groups if g.name.startswith(f"{fam}_e") and g.grad_evals is not None]
    if not full:
        return []
    cheapest = min(full, key=lambda g: g.grad_evals)
    beat = [g.name for g in s.groups if not g.name.startswith(f"{fam}_e") and g.grad_evals is not None
            and g.grad_evals < cheapest.grad_evals]
    return ["", f"Cheapest full-data schedule to reach the target: {cheapest.name}, {cheapest.grad_evals:,.0f} grad "
                f"evals. Rows that reach it with less compute: {', '.join(beat) or 'none'}."]


def row_cost(row: dict) -> int:
    """A row's whole compute: its training, scoring and selection grad evals plus scoring done before training
    (margins from a pretrained model)."""
    return int(row["grad_evals"]) + int((row.get("info") or {}).get("scoring_grad_evals", 0))


def frontier(done: list[dict], fam: str) -> list[tuple[float, float, int]]:
    """The full-data schedules of a family as (compute, test PGD-20, test points), seed means, by compute."""
    pts = []
    for name, rs in groups([r for r in done if family(r) == fam and r.get("stage") != "compression"]).items():
        if name.startswith(f"{fam}_e") and name[len(fam) + 2:].isdigit():
            pts.append((_mean([row_cost(r) for r in rs]), _mean(_seed_values(rs, "pgd20")),
                        rs[0]["eval"].get("n") or 10000))
    return sorted(pts)


def frontier_table(done: list[dict], fam: str) -> list[str]:
    """Each method row against full data on a schedule of the same compute: the full-data test PGD-20
    interpolated (linearly in compute) between the two schedules around the row's compute. A row above the
    frontier beyond the 95% interval saves compute at equal robustness; one outside the schedules' range is
    not compared."""
    fr = frontier(done, fam)
    rows = groups([r for r in done if family(r) == fam and r.get("stage") != "compression"
                   and not (r["group"].startswith(f"{fam}_e") and r["group"][len(fam) + 2:].isdigit())])
    if len(fr) < 2 or not rows:
        return []
    lines = ["", f"Against full data at equal compute (test PGD-20; full-data schedules {', '.join(f'{c / 1e6:.2f}M' for c, _, _ in fr)} "
                 "grad evals, interpolated linearly in compute; ± the 95% interval of the difference, binomial "
                 "over the test points, seed spread included where a row has seeds):", "",
             "| row | seeds | grad evals | test PGD-20 | full data at that compute | difference | reading |",
             "|---|---|---|---|---|---|---|"]
    for name, rs in rows.items():
        c, vals = _mean([row_cost(r) for r in rs]), _seed_values(rs, "pgd20")
        acc = _mean(vals)
        if not fr[0][0] <= c <= fr[-1][0]:
            lines.append(f"| {name} | {len(rs)} | {c:,.0f} | {100 * acc:.2f} | outside the schedules' range | - | - |")
            continue
        (c0, a0, n0), (c1, a1, n1) = next((fr[i], fr[i + 1]) for i in range(len(fr) - 1) if fr[i][0] <= c <= fr[i + 1][0])
        t = 0.0 if c1 == c0 else (c - c0) / (c1 - c0)
        ref = a0 + t * (a1 - a0)
        d, h = diff_ci(vals, [ref], n=min(n0, n1))
        reading = "above: saves compute" if d > h else "below: costs compute" if d < -h else "on the frontier"
        lines.append(f"| {name} | {len(rs)} | {c:,.0f} | {100 * acc:.2f} | {100 * ref:.2f} | {d:+.2f} ± {h:.2f} | "
                     f"{reading} |")
    return lines


def margin_table(done: list[dict]) -> list[str]:
    rows = [r for r in done if (r.get("info") or {}).get("scoring_model")]
    if not rows:
        return []
    lines = ["", "## Margin rows: what was kept", "",
             "| row | kept | misclassified share kept (pool) | generated share kept (pool) | lowered eps | "
             "median margin kept | scoring model | scoring grad evals |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        i = r["info"]
        gen = (f"{100 * i['generated_kept_share']:.1f}% ({100 * i['generated_pool_share']:.1f}%)"
               if "generated_kept_share" in i else "-")
        lines.append(f"| {r['name']} | {i['kept']:,} | {100 * i['misclassified_kept_share']:.1f}% "
                     f"({100 * i['misclassified_pool_share']:.1f}%) | {gen} | {i['lowered_eps']:,} | "
                     f"{i['median_margin_kept']:.4f} | {i['scoring_model']} | {i['scoring_grad_evals']:,} |")
    lines.append("\nThe scoring model's training is a one-off cost, not counted in the rows; its DeepFool passes are.")
    return lines


def autoattack_table(path: Path) -> list[str]:
    """AutoAttack rows (standard; fast = APGD-CE + APGD-T is an upper bound), with binomial intervals."""
    rows = list(done_rows(path).values())
    if not rows:
        return ["", "## AutoAttack", "", "Not run yet (`--autoattack ROW ... --aa-n 1000`)."]
    lines = ["", "## AutoAttack", "",
             "On the first n test points; PGD-20 on the same points, so their gap reads as a gradient-masking "
             "check (flagged when PGD-20 - AutoAttack exceeds max(6 points, 3 SE); ± 95% binomial intervals).", "",
             "| row | test points | version | clean | PGD-20 | AutoAttack | PGD-20 - AA | masking | s | device |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["row"]):
        label = r["version"] + (" (upper bound)" if r["version"] == "fast" else "")
        aa, n = r["autoattack"], r["n"]
        pgd = f"{100 * r['pgd20']:.2f} ± {binom_ci(r['pgd20'], n):.2f}" if "pgd20" in r else "-"
        gap = f"{100 * (r['pgd20'] - aa):+.2f}" if "pgd20" in r else "-"
        flag = ("⚠ " + "; ".join(r["masking"]["reasons"]) if r["masking"].get("flag") else "no") \
            if r.get("masking") else "-"
        lines.append(f"| {r['row']} | {n} | {label} | {100 * r['clean_acc']:.2f} | {pgd} | {100 * aa:.2f} ± "
                     f"{binom_ci(aa, n):.2f} | {gap} | {flag} | {r['seconds']:,.0f} | {r['device']} |")
    return lines


def speedup_table(s: Speedup) -> list[str]:
    lines = [f"Target {100 * s.target:.2f}%: {s.target_how}.", "",
             "| row | seeds | best held-out robust | grad evals to target | speed-up [95% CI] | s to target | "
             "speed-up in s | note |", "|---|---|---|---|---|---|---|---|"]
    for gr in s.groups:
        sd = f" ± {100 * gr.best_sd:.2f}" if gr.best_sd is not None else ""
        sp = "1 (baseline)" if gr.name == s.baseline else ("-" if gr.speedup is None else f"{gr.speedup:.2f}" + (
            f" [{gr.speedup_ci[0]:.2f}, {gr.speedup_ci[1]:.2f}]" if gr.speedup_ci else ""))
        sps = "-" if gr.speedup_seconds is None else f"{gr.speedup_seconds:.2f}"
        lines.append(f"| {gr.name} | {len(gr.runs)} | {100 * gr.best_mean:.2f}{sd} | "
                     f"{'-' if gr.grad_evals is None else f'{gr.grad_evals:,.0f}'} | {sp} | "
                     f"{'-' if gr.seconds is None else f'{gr.seconds:,.0f}'} | {sps} | {gr.note or '-'} |")
    return lines


def write_report(all_rows: list[dict], protocol=None) -> Path:
    """results/<table>.md and its plots, from the finished rows of `protocol` (default: the CPU size)."""
    from time_to_robustness import CPU

    p = protocol or CPU
    epochs, TABLE = p.epochs, p.table
    finished = done_rows(RESULTS / f"{TABLE}.jsonl")
    done = [finished[r["name"]] for r in all_rows if r["name"] in finished]
    from leanrobust.config import load_config

    sp = family_speedups(done, epochs, load_config(p.base).validation.n)
    lines = [f"# Time to robustness: {p.title}", "",
             "Command: `PYTHONPATH=src:benchmarks python benchmarks/time_to_robustness.py "
             f"{p.flag}--stage STAGE` (rows: {TABLE}.jsonl, one per finished training, each with "
             f"its whole learning curve; base config benchmarks/configs/{p.base.name}). Status: "
             f"{len(done)} of {len(all_rows)} rows done.", "",
             "## Regime and the evidence for it", "",
             f"- {p.regime.format(epochs=epochs)}.",
             "- Learning curve: PGD-20 robust accuracy on 2000 held-out training images (data.val_seed 0: the same "
             "images for every row and seed), after every epoch, logged with the cumulative grad evals of training, "
             "scoring and selection (the curve's own passes are counted apart and left out). Model selection: "
             "the epoch of best held-out robust accuracy.",
             "- Final models: clean, PGD-20, CW-20 and PGD-20 on logits x10 (a gradient-masking check) on all 10000 "
             "test points; standard AutoAttack on >= 1000 test points for the baselines and the rows that carry a "
             "verdict (a later stage).",
             *plateau_evidence(done, epochs), "",
             "## Verdicts", "",
             "| claim | our measurement | verdict | reason |", "|---|---|---|---|"]
    lines += [f"| {c} | {m} | {v} | {why} |" for c, m, v, why in verdict_rows(done, sp, epochs)]
    for fam, s in sp.items():
        lines += ["", f"## Compute to target: {FAMILIES[fam]} family", "", *speedup_table(s),
                  *schedule_reference(s, fam), *frontier_table(done, fam), "", f"![curves]({TABLE}_{fam}.png)"]
        plot(s, RESULTS / f"{TABLE}_{fam}.png")
    lines += margin_table(done)
    lines += compression_table(done)
    lines += autoattack_table(RESULTS / f"{TABLE}_aa.jsonl")
    lines += ["", "## Final test accuracies (all 10000 test points)", "",
              "One seed: ± the binomial 95% half-width; several: mean [min-max over seeds].", "",
              "| row | seeds | clean | PGD-20 | CW-20 | PGD-20 logits x10 | masking | grad evals | train s | device |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name, rs in groups([r for r in done if r.get("stage") != "compression"]).items():
        flag = "⚠ " + "; ".join(rs[0]["eval"]["masking"]["reasons"]) if any(
            (r["eval"].get("masking") or {}).get("flag") for r in rs) else "-"
        lines.append(f"| {name} | {len(rs)} | {accuracy_cell(rs, 'clean')} | {accuracy_cell(rs, 'pgd20')} | "
                     f"{accuracy_cell(rs, 'cw20')} | {accuracy_cell(rs, 'pgd20x10')} | {flag} | "
                     f"{_mean([r['grad_evals'] for r in rs]):,.0f} | {_mean([r['train_seconds'] for r in rs]):,.0f} | "
                     f"{rs[0]['device']} |")
    write_table(RESULTS / TABLE, lines, echo=False)  # the curve plots are written per family above
    path = RESULTS / f"{TABLE}.md"
    print(f"wrote {path}")
    return path
