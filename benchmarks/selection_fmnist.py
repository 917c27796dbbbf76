"""Data selection for robust training on Fashion-MNIST (Linf eps 0.1): which training subset, chosen by
which method, keeps the robustness of full-data adversarial training, at what cost?

Regime (benchmarks/configs/selection_fmnist.yaml): half-width SmallCNN, SGD lr 0.05 cosine, batch 128,
6 epochs; PGD-7 adversarial training at Linf eps 0.1 on a 10,000-image class-balanced subset of the
Fashion-MNIST training set; model selection on 500 held-out images (PGD-10). Eval: clean / PGD-20 /
CW-20 on the first 1000 test points, AutoAttack (standard) on the first 200 (the same points for every
row). Wall time and grad evals count warm-up, scoring and selection.

Rows:
  full_100                 all 10,000 images
  {method}_{kept}          each selection method at 70 / 50 / 30% kept (--fractions):
    random                   class-balanced random subset, drawn once
    prune_low_margin         drop the lowest DeepFool margins   } scored once, after one full-data
    prune_high_margin        drop the highest DeepFool margins  } warm-up epoch (DeepFool: 3 candidates,
    puma                     PUMA                               } 20 steps, box-clipped iterates)
    loss_adaptive            by loss                            } re-selected every 2 epochs, after
    gradmatch_adaptive       by gradient matching               } one full-data warm-up epoch
    gradmatch_bullet         gradient matching + Bullet-Train   }
  gair_at, mail_at         full data, reweighted adversarial training (GAIR-AT, MAIL) against full_100
Resumable: one JSON line per finished row in benchmarks/results/selection_fmnist.jsonl.

    python benchmarks/selection_fmnist.py [--fractions 0.5 0.3 0.7] [--only NAME ...] [--report-only]
                                          [--rerun-stale] [--rerun NAME ...]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import legacy_rows
from common import RESULTS, done_rows, override, pct, plot_clean_vs_robust, run_table, subplots, write_table

BASE = Path(__file__).parent / "configs" / "selection_fmnist.yaml"
# deepfool_clip: the table's margin rows were scored with box-clipped DeepFool iterates (the default
# before the unclipped reference-code rule); kept so that every row of the table is comparable
MARGIN = ["selection.params={deepfool_candidates: 3, deepfool_steps: 20, deepfool_clip: true}",
          "selection.start_epoch=1"]
METHODS = {
    "random": ["selection.method=random"],
    "prune_low_margin": ["selection.method=margin", "selection.prune=lowest", *MARGIN],
    "prune_high_margin": ["selection.method=margin", "selection.prune=highest", *MARGIN],
    "puma": ["selection.method=puma", *MARGIN],
    "loss_adaptive": ["selection.method=loss", "selection.every=2", "selection.start_epoch=1"],
    "gradmatch_adaptive": ["selection.method=gradmatch", "selection.every=2", "selection.start_epoch=1",
                           "selection.params={match_batch: 32}"],
    "gradmatch_bullet": ["selection.method=gradmatch", "selection.every=2", "selection.start_epoch=1",
                         "selection.params={match_batch: 32}", "objective.name=bullet_pgd_at"],
}
REWEIGHT = {"gair_at": ["objective.name=gair_at"], "mail_at": ["objective.name=mail_at"]}


def rows(fractions: list[float]) -> list[dict]:
    out = [{"name": "full_100", "config": BASE, "overrides": ["progress=false"]}]
    for f in fractions:
        for m, ov in METHODS.items():
            out.append({"name": f"{m}_{round(100 * f)}", "config": BASE,
                        "overrides": ["progress=false", f"selection.fraction={f}", *ov]})
    out += [{"name": k, "config": BASE, "overrides": ["progress=false", *ov]} for k, ov in REWEIGHT.items()]
    return out


WARMUP_MARK, LR_MARK, GAIR_MARK = "†", "‡", "§"


def start_epoch(r: dict) -> int:
    """The row's selection.start_epoch override (0, the config default, when absent)."""
    return int(override(r, "selection.start_epoch", 0))


def warmup_checkpoint(r: dict) -> bool:
    """Model selection kept an epoch at or before the first selection (best_epoch is 1-based, start_epoch
    counts the full-data warm-up epochs): the weights never trained on a selected subset."""
    return start_epoch(r) >= 1 and r.get("best_epoch") is not None and r["best_epoch"] <= start_epoch(r)


def flags(r: dict) -> str:
    marks = [m for m, on in ((WARMUP_MARK, warmup_checkpoint(r)), (LR_MARK, legacy_rows.old_lr_schedule(r)),
                             (GAIR_MARK, legacy_rows.old_gair_burn_in(r))) if on]
    return " ".join(marks) or "-"


def report(done: list[dict]) -> None:
    full = next((r for r in done if r["name"] == "full_100"), None)
    fix = legacy_rows.REVIEW_FIXES[0]  # the commit of the review fixes (see legacy_rows)
    base_s = full["total_seconds"] if full else None
    base_g = int(full["grad_evals"]) if full else None
    lines = ["# Data selection for robust training, Fashion-MNIST, Linf eps 0.1", "",
             "Command: `python benchmarks/selection_fmnist.py` (rows: selection_fmnist.jsonl; base config "
             "benchmarks/configs/selection_fmnist.yaml). Clean / PGD-20 / CW-20 on 1000 test points, AutoAttack "
             "(standard) on the first 200; wall time includes warm-up, scoring and selection. The rows ran as "
             "single-thread benchmark processes, two or three of them sharing the machine's cores, so wall-time "
             "speed-ups carry the machine's load; the pass ratio (full-data grad evals / the row's: forward+backward passes, "
             "attack, scoring and selection included) is the load-independent cost ratio."]
    same = [r for r in done if full and r is not full and int(r["grad_evals"]) == base_g]
    if same:  # equal passes, so any wall-time "speed-up" is the machine's load, not the method
        lines[-1] += (" Rows with exactly full_100's passes show the load's effect: "
                      + ", ".join(f"{r['name']} {base_s / r['total_seconds']:.2f}x" for r in same)
                      + " wall-time 'speed-up' at a pass ratio of 1.00x.")
    old_passes = [r["name"] for r in done if legacy_rows.old_pass_count(r)]
    if old_passes:
        lines[-1] += (f" Rows {', '.join(old_passes)} counted passes before DeepFool's extra backward passes were "
                      "(grad_evals_version 1): their grad evals are low; rerun them (`--rerun NAME`).")
    old_count = [r["name"] for r in done if legacy_rows.before_review_fixes(r)]
    if old_count:
        lines[-1] += (f" Rows trained before commit {fix} ({len(old_count)} of {len(done)}"
                      + (f": {', '.join(old_count)}" if len(old_count) < len(done) else "")
                      + ") counted a PGD-20/CW-20 point robust when the attack's end point was classified "
                      "correctly, even if the clean point was not; since then a robust point must also be clean-"
                      "correct, as AutoAttack's column always required, so their PGD-20/CW-20 may be slightly higher.")
    lines.append("")
    warm = [r for r in done if warmup_checkpoint(r)]
    old_lr = [r for r in done if legacy_rows.old_lr_schedule(r)]
    old_gair = [r for r in done if legacy_rows.old_gair_burn_in(r)]
    if warm:
        lines += [f"**{WARMUP_MARK} Warm-up checkpoint ({len(warm)} rows: {', '.join(r['name'] for r in warm)}):** "
                  "model selection kept the warm-up checkpoint trained on all data before any selection (best "
                  "epoch <= the row's selection.start_epoch); the row does not measure the method. Rows that kept "
                  "the same warm-up checkpoint share identical accuracies.", ""]
    if old_lr:
        every = len(old_lr) == sum(start_epoch(r) >= 1 for r in done)
        lines += [f"**{LR_MARK} Old learning-rate schedule ({len(old_lr)} rows"
                  + (": every row with selection.start_epoch >= 1" if every else ", with selection.start_epoch >= 1")
                  + f"):** trained before commit {fix}, when the schedule's horizon was recomputed from the "
                  "shrunken selected epoch, so the cosine reached its floor early. "
                  "Their accuracies and best epochs are not those of the intended schedule; they need a rerun "
                  "(`--rerun-stale`).", ""]
    if old_gair:
        lines += [f"**{GAIR_MARK} Old GAIR-AT burn-in ({', '.join(r['name'] for r in old_gair)}):** trained before "
                  f"commit {fix}, when begin_epoch counted from 0, so reweighting began one epoch later than "
                  "in the reference code; it needs a rerun (`--rerun-stale`).", ""]
    lines += ["| row | kept | clean | PGD-20 | CW-20 | AutoAttack | wall s | speed-up | grad evals | pass ratio | "
              "best epoch | flags | device |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in done:
        ra = r["robust_acc"]
        sp = f"{base_s / r['total_seconds']:.2f}x" if base_s else "-"
        pr = f"{base_g / int(r['grad_evals']):.2f}x" if base_g else "-"
        kept = r["name"].rsplit("_", 1)[1] + "%" if r["name"].rsplit("_", 1)[1].isdigit() else "100%"
        lines.append(f"| {r['name']} | {kept} | {pct(r['clean_acc'])} | {pct(ra.get('pgd20'))} | {pct(ra.get('cw20'))} | "
                     f"{pct(ra.get('autoattack'))} | {r['total_seconds']:.0f} | {sp} | {int(r['grad_evals']):,} | "
                     f"{pr} | {legacy_rows.best_epoch(r)} | {flags(r)} | {r['device']} |")
    write_table(RESULTS / "selection_fmnist", lines, fig=plot(done))


def plot(done: list[dict]):
    """AutoAttack vs clean accuracy, one colour per method, each point labelled with its % kept."""
    fig, ax = subplots(figsize=(6.5, 4.5))
    for m in [*METHODS, "full", *REWEIGHT]:
        pts = [r for r in done if r["name"] == m or r["name"].startswith(m + "_")]
        if pts:
            plot_clean_vs_robust(ax, pts, lambda r: r["name"].rsplit("_", 1)[1] if r["name"][-1].isdigit() else "",
                                 label=m)
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("AutoAttack accuracy (%), 200 test points")
    ax.set_title("Selection methods (labels: % of data kept)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.3, 0.7])
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--rerun-stale", action="store_true",
                    help="train again the rows whose method ran differently from the current code (flags ‡ §)")
    ap.add_argument("--rerun", nargs="+", default=[], metavar="NAME",
                    help="train these rows again while their line predates the review fixes (e.g. to put every "
                         "row under the current robust count); a restart skips those already rerun")
    args = ap.parse_args()
    if not args.report_only:
        path = RESULTS / "selection_fmnist.jsonl"
        done = done_rows(path)
        again = {n for n, r in done.items() if (args.rerun_stale and legacy_rows.stale_selection(r))
                 or (n in args.rerun and legacy_rows.before_review_fixes(r))}
        run_table("selection_fmnist", rows(args.fractions), only=args.only, rerun=again)
    report(list(done_rows(RESULTS / "selection_fmnist.jsonl").values()))


if __name__ == "__main__":
    main()
