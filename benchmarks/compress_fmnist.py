"""Robust dataset compression on Fashion-MNIST (Linf eps 0.1): MFC with the generalized
adversarial loss (centres attacked at eps + eta, weighted by coverage), MFC at the plain eps,
Distribution Matching, random and k-centre, at 10/50/100/600 images per class. Per row: clean
accuracy after ERM, clean / PGD-20 / AutoAttack accuracy after adversarial training, compression
time. Resumable (one JSON line per finished row in benchmarks/results/compress_fmnist.jsonl).

    python benchmarks/compress_fmnist.py [--ipc 10 50 100 600] [--methods ...] [--steps 800] [--plot-only]
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from common import RESULTS, pct, run_table

from leanrobust.cli_compress import compress

BASE = Path(__file__).parent / "configs" / "compress_fmnist.yaml"
RUNS = Path("runs/bench")
# mfc_gen: Linf covering (the training norm, as the bound needs), centres attacked at eps + eta;
# mfc_plain: the same centres and weights at the plain eps; mfc_l2_plain: an L2 covering (the
# authors' default metric) trained at the plain Linf eps, an ablation without the guarantee.
# MFC rows train with data.weighting=sample (centres drawn in proportion to the points they cover,
# weight 1): the weighted loss's expectation without its variance. Rows named *_lossw ran with the
# weights multiplying the loss instead (the first runs: a centre weighing 30x in a batch of 64 blew
# up several of them, see the notes under the table).
METHODS = {"mfc_gen": ("mfc", {"metric": "linf"}), "mfc_plain": ("mfc", {"metric": "linf", "plain_eps": True}),
           "dm": ("dm", {}), "random": ("random", {"metric": "linf"}), "kcenter": ("kcenter", {"metric": "linf"}),
           "mfc_l2_plain": ("mfc", {"metric": "l2", "plain_eps": True})}


def compressed(method: str, ipc: int, dm_iterations: int) -> tuple[Path, dict]:
    """Compress once per (method, ipc); ERM and AT rows share the output."""
    kind, kw = METHODS[method]
    out = RUNS / "compress_fmnist" / "pools" / f"{method}_{ipc}.npz"
    if not out.with_suffix(".json").exists():
        compress(BASE, kind, ipc=ipc, iterations=dm_iterations, batch_real=64, out=out, **kw)
    return out, json.loads(out.with_suffix(".json").read_text())


def rows(ipcs: list[int], methods: list[str], steps: int, dm_iterations: int) -> list[dict]:
    out = []
    for ipc in ipcs:
        epochs = max(1, math.ceil(steps * 64 / (10 * ipc)))
        for m in methods:
            def prepare(_row_dir, m=m, ipc=ipc):
                path, rep = compressed(m, ipc, dm_iterations)
                key = "data.pool" if m == "dm" else "data.selection"
                info = {"compress_seconds": rep["seconds"], "k": rep["k"]}
                if m.startswith("mfc"):
                    info["eta_mean"] = sum(c["eta"] for c in rep["classes"]) / len(rep["classes"])
                return [f"{key}={path}"], info
            for objective in ("erm", "pgd_at"):
                ov = [f"optim.epochs={epochs}", f"objective.name={objective}", "progress=false"]
                if m.startswith("mfc"):
                    ov.append("data.weighting=sample")
                if objective == "erm":
                    ov.append("eval.attacks=[]")
                out.append({"name": f"{m}_ipc{ipc}_{objective}", "config": BASE, "overrides": ov, "prepare": prepare})
    return out


NOTES = """Notes:
- k: images kept (MFC: the centres of the smallest covering radius eta that fits the budget, per class).
- mean eta: the mean per-class covering radius in pixel units ([0,1] images): Linf for mfc_gen / mfc_plain, L2
  for mfc_l2_plain. A Linf eta near 1 means the generalized radius eps + eta spans the whole [0,1] box: the bound
  holds but is vacuous, and mfc_gen trains its centres against an attacker that can reach any image.
- MFC rows draw centres in proportion to their weight (data.weighting=sample). Rows *_lossw use the same
  centres with the weights multiplying the loss (data.weighting=loss): with a centre weighing up to ~37x the
  mean in a batch of 64, several of those runs diverged to a constant network (ERM clean ~10%).
- dm (N it): Distribution Matching iterations; one iteration updates every synthetic image, so its cost grows with
  the budget (300 iterations took 524 s at 10 ipc): 300 at 10 and 50 ipc, fewer at 100 and 600 to fit the CPU.
- compress s and training times come from 1-3 benchmark processes sharing 2 cores."""


def _order(name: str) -> tuple:
    m, rest = name.rsplit("_ipc", 1)
    base = m.removesuffix("_lossw")
    return (int(rest.split("_")[0]), list(METHODS).index(base) if base in METHODS else 99, m)


def report(done: list[dict]) -> None:
    done = sorted(done, key=lambda r: _order(r["name"]))
    by = {r["name"]: r for r in done}
    lines = ["# Robust dataset compression, Fashion-MNIST, Linf eps 0.1", "",
             "Command: `python benchmarks/compress_fmnist.py` (rows: compress_fmnist.jsonl; config "
             "benchmarks/configs/compress_fmnist.yaml: half-width SmallCNN, PGD-7 training, same SGD steps for every "
             "budget). Clean and PGD-20 on 1000 test points, AutoAttack (standard) on the first 200.", "",
             "| method | ipc | k | ERM clean | AT clean | AT PGD-20 | AT AutoAttack | mean eta | compress s | device |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    seen = []
    for r in done:
        key = r["name"].removesuffix("_erm").removesuffix("_pgd_at")
        if key in seen:
            continue
        seen.append(key)
        m, ipc = key.rsplit("_ipc", 1)
        pool_report = RUNS / "compress_fmnist" / "pools" / f"{m}_{ipc}.json"
        label = m
        if m == "dm" and pool_report.exists():  # DM's iterations differ by budget (CPU time)
            label = f"dm ({json.loads(pool_report.read_text())['iterations']} it)"
        erm, at = by.get(f"{key}_erm"), by.get(f"{key}_pgd_at")
        any_r = at or erm
        eta = any_r["info"].get("eta_mean")
        lines.append(f"| {label} | {ipc} | {any_r['info']['k']} | {pct(erm and erm['clean_acc'])} | "
                     f"{pct(at and at['clean_acc'])} | {pct(at and at['robust_acc'].get('pgd20'))} | "
                     f"{pct(at and at['robust_acc'].get('autoattack'))} | {'-' if eta is None else f'{eta:.3f}'} | "
                     f"{any_r['info']['compress_seconds']:.1f} | {any_r['device']} |")
    lines += ["", NOTES]
    (RESULTS / "compress_fmnist.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(done)


def plot(done: list[dict]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for m in METHODS:
        pts = sorted((int(r["name"].split("_ipc")[1].split("_")[0]), r) for r in done
                     if r["name"].startswith(m + "_ipc") and r["name"].endswith("pgd_at"))
        if pts:
            ax.plot([p[1]["clean_acc"] * 100 for p in pts],
                    [p[1]["robust_acc"].get("autoattack", p[1]["robust_acc"].get("pgd20", 0)) * 100 for p in pts],
                    "o-", label=m)
            for ipc, r in pts:
                ax.annotate(str(ipc), (r["clean_acc"] * 100, r["robust_acc"].get("autoattack", 0) * 100), fontsize=7)
    ax.set_xlabel("clean accuracy after AT (%)")
    ax.set_ylabel("AutoAttack accuracy (%)")
    ax.set_title("Compressed Fashion-MNIST (labels: images per class)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "compress_fmnist.png", dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ipc", type=int, nargs="+", default=[10, 50, 100, 600])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--steps", type=int, default=800, help="SGD steps per training run (batch 64)")
    ap.add_argument("--dm-iterations", type=int, default=300)
    ap.add_argument("--plot-only", action="store_true")
    args = ap.parse_args()
    table = rows(args.ipc, args.methods, args.steps, args.dm_iterations)
    done = run_table("compress_fmnist", [] if args.plot_only else table)
    if args.plot_only:
        from common import done_rows
        done = list(done_rows(RESULTS / "compress_fmnist.jsonl").values())
    report(done)


if __name__ == "__main__":
    main()
