"""Data selection for robust training on Fashion-MNIST (Linf eps 0.1): random, prune-low-margin,
prune-high-margin, PUMA, loss-adaptive, gradient-matching-adaptive (with and without Bullet-Train
acceleration) at 70 / 50 / 30% kept, against full data; and PGD-AT vs GAIR-AT vs MAIL. Margin
methods score with DeepFool after one warm-up epoch on the full pool; adaptive ones re-select every
2 epochs. Wall time counts warm-up, scoring and selection. Clean / PGD-20 / CW-20 on the first 1000
test points, AutoAttack (standard) on the first 200 (the same points for every row). Resumable:
one JSON line per finished row in benchmarks/results/selection_fmnist.jsonl.

    python benchmarks/selection_fmnist.py [--fractions 0.5 0.3 0.7] [--only NAME ...] [--report-only]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from common import RESULTS, best_epoch, done_rows, pct, run_table

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


TRAIN_PASSES_PER_SAMPLE = 8  # PGD-7 + the update (the base config's objective)
DEEPFOOL_CANDIDATES = 3  # MARGIN above: 2 class-gradient backward passes per DeepFool forward


def grad_evals(r: dict) -> int:
    """The row's grad evals under the current accounting. Rows from before grad_evals_version 2 counted
    one pass per DeepFool gradient forward, not its DEEPFOOL_CANDIDATES - 1 backward passes: for the
    margin/PUMA rows the scoring's forwards are grad_evals - 8 * samples_seen, each one pass short."""
    g = int(r["grad_evals"])
    deepfool = any(o in ("selection.method=margin", "selection.method=puma") for o in r["overrides"])
    if deepfool and r.get("grad_evals_version", 1) < 2:
        g += (g - TRAIN_PASSES_PER_SAMPLE * int(r["samples_seen"])) * (DEEPFOOL_CANDIDATES - 2)
    return g


def report(done: list[dict]) -> None:
    full = next((r for r in done if r["name"] == "full_100"), None)
    base_s = full["total_seconds"] if full else None
    base_g = grad_evals(full) if full else None
    lines = ["# Data selection for robust training, Fashion-MNIST, Linf eps 0.1", "",
             "Command: `python benchmarks/selection_fmnist.py` (rows: selection_fmnist.jsonl; base config "
             "benchmarks/configs/selection_fmnist.yaml). Clean / PGD-20 / CW-20 on 1000 test points, AutoAttack "
             "(standard) on the first 200; wall time includes warm-up, scoring and selection. The rows ran over "
             "several sessions with 2 to 5 benchmark processes sharing the 2 cores, so wall-time speed-ups mix "
             "contention levels; the pass ratio (full-data grad evals / the row's: forward+backward passes, "
             "attack, scoring and selection included) is the load-independent cost ratio. The margin and PUMA "
             "rows ran before DeepFool's extra backward passes were counted; their grad evals here add them "
             "from the rows' own counts (`grad_evals` in this script; +62,031 each, which lowers "
             "their pass ratios by 0.15-0.35x).", "",
             "| row | kept | clean | PGD-20 | CW-20 | AutoAttack | wall s | speed-up | grad evals | pass ratio | "
             "best epoch | device |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in done:
        ra = r["robust_acc"]
        sp = f"{base_s / r['total_seconds']:.2f}x" if base_s else "-"
        pr = f"{base_g / grad_evals(r):.2f}x" if base_g else "-"
        kept = r["name"].rsplit("_", 1)[1] + "%" if r["name"].rsplit("_", 1)[1].isdigit() else "100%"
        lines.append(f"| {r['name']} | {kept} | {pct(r['clean_acc'])} | {pct(ra.get('pgd20'))} | {pct(ra.get('cw20'))} | "
                     f"{pct(ra.get('autoattack'))} | {r['total_seconds']:.0f} | {sp} | {grad_evals(r):,} | "
                     f"{pr} | {best_epoch(r)} | "
                     f"{r['device']} |")
    (RESULTS / "selection_fmnist.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(done)


def plot(done: list[dict]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for m in [*METHODS, "full", *REWEIGHT]:
        pts = [r for r in done if r["name"] == m or r["name"].startswith(m + "_")]
        if not pts:
            continue
        xs = [100 * r["clean_acc"] for r in pts]
        ys = [100 * r["robust_acc"].get("autoattack", r["robust_acc"].get("pgd20", 0)) for r in pts]
        ax.scatter(xs, ys, label=m)
        for r, x, y in zip(pts, xs, ys):
            ax.annotate(r["name"].rsplit("_", 1)[1] if r["name"][-1].isdigit() else "", (x, y), fontsize=7)
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("AutoAttack accuracy (%), 200 test points")
    ax.set_title("Selection methods (labels: % of data kept)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "selection_fmnist.png", dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.3, 0.7])
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    if not args.report_only:
        run_table("selection_fmnist", rows(args.fractions), only=args.only)
    report(list(done_rows(RESULTS / "selection_fmnist.jsonl").values()))


if __name__ == "__main__":
    main()
