"""Robust dataset compression on Fashion-MNIST (Linf eps 0.1): MFC with the generalized adversarial
loss, MFC at the plain eps, Distribution Matching, random and k-centre, at 10 / 50 / 100 / 600 images
per class (ipc).

Regime (benchmarks/configs/compress_fmnist.yaml): half-width SmallCNN, SGD lr 0.05 cosine, batch 64, the
last checkpoint kept; adversarial training PGD-7 at Linf eps 0.1. Data: the Fashion-MNIST training set
(1000 held out) compressed by the row's method to k images. Budget: epochs = ceil(steps * 64 / k) for
the k images a row keeps (--steps 800: about 51,200 training samples per run; equal samples, not
equal SGD steps: a run makes epochs * ceil(k / 64) steps of batch 64, and for small k the last batch
of an epoch is short or, with weighted sampling, padded to 64). Eval: clean and PGD-20 on the first
1000 test points, AutoAttack (standard) on the first 200.

Rows: {method}_ipc{ipc}_erm (plain training: clean accuracy) and {method}_ipc{ipc}_pgd_at (adversarial
training: clean / PGD-20 / AutoAttack) for every ipc and method, both on one compressed set:
  mfc_gen       MFC, Linf covering (the training norm, as the bound needs), centres attacked at eps + eta
  mfc_plain     the same centres and weights, attacked at the plain eps
  mfc_l2_plain  MFC, L2 covering (the authors' default metric) at the plain Linf eps: no guarantee
  dm            Distribution Matching, --dm-iterations (300; the rows at 100 / 600 ipc ran 150 / 40)
  random        class-balanced random images
  kcenter       Linf k-centre
MFC rows draw centres in proportion to their weight (data.weighting=sample); the compression time is
part of each row. Resumable: one JSON line per finished row in benchmarks/results/compress_fmnist.jsonl.

    python benchmarks/compress_fmnist.py [--ipc 10 50 100 600] [--methods ...] [--steps 800] [--plot-only]
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import legacy_rows
from common import RESULTS, done_rows, pct, plot_clean_vs_robust, run_table, subplots, write_table

from leanrobust.selection.compress import compress

BASE = Path(__file__).parent / "configs" / "compress_fmnist.yaml"
RUNS = Path("runs/bench")
# The methods of the docstring: row name -> (compress method, its options).
# MFC rows train with data.weighting=sample (centres drawn in proportion to the points they cover,
# weight 1): the weighted loss's expectation without its variance. Rows named *_lossw ran with the
# weights multiplying the loss instead (the first runs: a centre weighing 30x in a batch of 64 blew
# up several of them, see the notes under the table).
# mfc_gen is vacuous on Fashion-MNIST (eps + eta >= 0.5 in Linf); compress now refuses such a covering, so the
# row that measures what that costs passes force=True.
METHODS = {"mfc_gen": ("mfc", {"metric": "linf", "force": True}), "mfc_plain": ("mfc", {"metric": "linf", "plain_eps": True}),
           "dm": ("dm", {}), "random": ("random", {}), "kcenter": ("kcenter", {"metric": "linf"}),
           "mfc_l2_plain": ("mfc", {"metric": "l2", "plain_eps": True})}


def pool_file(method: str, ipc: int) -> Path:
    """Where the compressed set of (method, ipc) goes (its report: the same name, .json)."""
    return RUNS / "compress_fmnist" / "pools" / f"{method}_{ipc}.npz"


def compressed(method: str, ipc: int, dm_iterations: int) -> tuple[Path, dict]:
    """Compress once per (method, ipc); ERM and AT rows share the output."""
    kind, kw = METHODS[method]
    out = pool_file(method, ipc)
    if not out.with_suffix(".json").exists():
        dm = {"iterations": dm_iterations, "batch_real": 64} if kind == "dm" else {}  # DM's own options
        compress(BASE, kind, ipc=ipc, out=out, **dm, **kw)
    return out, json.loads(out.with_suffix(".json").read_text())


def budget_epochs(steps: int, k: int) -> int:
    """Epochs for about steps * 64 training samples on k images (batch 64)."""
    return max(1, math.ceil(steps * 64 / k))


def rows(ipcs: list[int], methods: list[str], steps: int, dm_iterations: int) -> list[dict]:
    out = []
    for ipc in ipcs:
        epochs = budget_epochs(steps, 10 * ipc)  # the budget's k; prepare replaces it by the row's actual k
        for m in methods:
            def prepare(_row_dir, m=m, ipc=ipc):
                path, rep = compressed(m, ipc, dm_iterations)
                key = "data.pool" if m == "dm" else "data.selection"
                info = {"compress_seconds": rep["seconds"], "k": rep["k"], "epochs_from_k": True}
                if "iterations" in rep:
                    info["iterations"] = rep["iterations"]
                if m.startswith("mfc"):
                    info["eta_mean"] = sum(c["eta"] for c in rep["classes"]) / len(rep["classes"])
                # the later override wins: epochs from the k images the row actually keeps (MFC keeps fewer
                # than 10 * ipc), so every row sees about steps * 64 samples
                return [f"{key}={path}", f"optim.epochs={budget_epochs(steps, rep['k'])}"], info
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
- compress s and training times come from 1-3 benchmark processes sharing 2 cores.
- AT steps / samples seen (from the AT row, else the ERM row; ERM and AT rows of a budget train alike): SGD
  steps of batch 64 = epochs x ceil(k / 64), and the training samples the row's trainer counted."""


def ipc_of(name: str) -> int:
    """The images per class of a row name: {method}_ipc{ipc}_{objective}."""
    return int(name.rsplit("_ipc", 1)[1].split("_")[0])


def _order(name: str) -> tuple:
    m = name.rsplit("_ipc", 1)[0]
    base = m.removesuffix("_lossw")
    return (ipc_of(name), list(METHODS).index(base) if base in METHODS else 99, m)


def sgd_steps(r: dict) -> int:
    """SGD steps of batch 64: epochs x ceil(k / 64) (plain shuffling and weighted draws alike)."""
    return legacy_rows.row_epochs(r) * math.ceil(r["n_train"] / 64)


def budget_notes(done: list[dict]) -> list[str]:
    """How far the rows' training budgets are from equal, from the rows' own counts."""
    trained = {r["name"]: r for r in done}
    ref_rows = [r for r in done if r["name"].startswith("random_ipc")]
    if not ref_rows:
        return []
    lo = min(ref_rows, key=lambda r: r["samples_seen"])
    hi = max(ref_rows, key=lambda r: r["samples_seen"])
    steps = sorted({sgd_steps(r) for r in ref_rows})
    out = [f"Training budget: epochs = ceil(steps x 64 / k) with --steps 800, meant as about 51,200 training "
           f"samples per run, not equal SGD steps: the random rows (k = 10 x ipc) saw "
           f"{lo['samples_seen']:,}-{hi['samples_seen']:,} samples in {steps[0]:,}-{steps[-1]:,} steps of 64 "
           "(an epoch is ceil(k / 64) batches, the last one short)."]
    odd = []
    for key in dict.fromkeys(r["name"].removesuffix("_erm").removesuffix("_pgd_at") for r in done):
        m, ipc = key.rsplit("_ipc", 1)
        r = trained.get(f"{key}_pgd_at") or trained.get(f"{key}_erm")
        ref = trained.get(f"random_ipc{ipc}_pgd_at") or trained.get(f"random_ipc{ipc}_erm")
        if r and ref and abs(r["samples_seen"] / ref["samples_seen"] - 1) > 0.05:
            odd.append(f"{m} at {ipc} ipc (k = {r['n_train']:,}): {sgd_steps(r):,} steps / {r['samples_seen']:,} "
                       f"samples, {r['samples_seen'] / ref['samples_seen']:.2f}x random's {sgd_steps(ref):,} / "
                       f"{ref['samples_seen']:,}")
    if odd:
        # rows whose epochs assumed k = 10 x ipc although they kept another k
        old_k = any(legacy_rows.epochs_from_assumed_k(r, ipc_of(r["name"])) for r in done)
        out.append("Rows whose samples seen differ by more than 5% from the random row of their budget: "
                   + "; ".join(odd) + ". Their accuracies are not at an equal training budget with the other rows "
                   "of the same ipc. MFC rows trained with weighted sampling (data.weighting=sample) fill every "
                   "batch to 64, so their epochs are ceil(k / 64) full batches (more samples for the same steps)."
                   + (" Rows without `info.epochs_from_k` (all the MFC rows written before it) computed their "
                      "epochs from k = 10 x ipc, which MFC's coverings do not keep (fewer centres: fewer steps and "
                      "samples); rows trained from now on take their epochs from the actual k." if old_k else ""))
    return out


def report(done: list[dict]) -> None:
    done = sorted(done, key=lambda r: _order(r["name"]))
    by = {r["name"]: r for r in done}
    lines = ["# Robust dataset compression, Fashion-MNIST, Linf eps 0.1", "",
             "Command: `python benchmarks/compress_fmnist.py` (rows: compress_fmnist.jsonl; config "
             "benchmarks/configs/compress_fmnist.yaml: half-width SmallCNN, PGD-7 training, batch 64, epochs set "
             "per budget by the script, see below). Clean and PGD-20 on 1000 test points, AutoAttack (standard) on "
             "the first 200.", ""]
    for para in budget_notes(done):
        lines += [para, ""]
    lines += ["| method | ipc | k | AT steps | samples seen | ERM clean | AT clean | AT PGD-20 | AT AutoAttack | "
              "mean eta | compress s | device |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    seen = []
    for r in done:
        key = r["name"].removesuffix("_erm").removesuffix("_pgd_at")
        if key in seen:
            continue
        seen.append(key)
        m, ipc = key.rsplit("_ipc", 1)
        erm, at = by.get(f"{key}_erm"), by.get(f"{key}_pgd_at")
        any_r = at or erm
        label = m
        if m == "dm":  # DM's iterations differ by budget (CPU time)
            it = legacy_rows.dm_iterations(any_r, int(ipc), pool_file(m, int(ipc)).with_suffix(".json"))
            label = f"dm ({it} it)" if it else "dm"
        eta = any_r["info"].get("eta_mean")
        lines.append(f"| {label} | {ipc} | {any_r['info']['k']} | {sgd_steps(any_r):,} | {any_r['samples_seen']:,} | "
                     f"{pct(erm and erm['clean_acc'])} | "
                     f"{pct(at and at['clean_acc'])} | {pct(at and at['robust_acc'].get('pgd20'))} | "
                     f"{pct(at and at['robust_acc'].get('autoattack'))} | {'-' if eta is None else f'{eta:.3f}'} | "
                     f"{any_r['info']['compress_seconds']:.1f} | {any_r['device']} |")
    lines += ["", NOTES]
    write_table(RESULTS / "compress_fmnist", lines, fig=plot(done))


def plot(done: list[dict]):
    """AutoAttack vs clean accuracy after AT, one line per method through its budgets."""
    fig, ax = subplots(figsize=(6, 4.5))
    for m in METHODS:
        pts = sorted((r for r in done if r["name"].startswith(m + "_ipc") and r["name"].endswith("pgd_at")),
                     key=lambda r: ipc_of(r["name"]))
        if pts:
            plot_clean_vs_robust(ax, pts, lambda r: str(ipc_of(r["name"])), label=m, line=True)
    ax.set_xlabel("clean accuracy after AT (%)")
    ax.set_ylabel("AutoAttack accuracy (%)")
    ax.set_title("Compressed Fashion-MNIST (labels: images per class)")
    ax.legend()
    fig.tight_layout()
    return fig


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ipc", type=int, nargs="+", default=[10, 50, 100, 600])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--steps", type=int, default=800,
                    help="training budget: epochs = ceil(steps * 64 / k), about steps * 64 samples per run")
    ap.add_argument("--dm-iterations", type=int, default=300)
    ap.add_argument("--plot-only", action="store_true")
    args = ap.parse_args()
    table = rows(args.ipc, args.methods, args.steps, args.dm_iterations)
    done = run_table("compress_fmnist", [] if args.plot_only else table)
    if args.plot_only:
        done = list(done_rows(RESULTS / "compress_fmnist.jsonl").values())
    report(done)


if __name__ == "__main__":
    main()
