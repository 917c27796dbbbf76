"""How fast is MFC on the full Fashion-MNIST training set (60k, 784-d, L2), and how much does the
exact MILP gain over greedy set cover? Writes benchmarks/results/mfc_speed.json and .md.

    PYTHONPATH=src python benchmarks/mfc_speed.py            # everything (a few minutes on 2 cores)
    PYTHONPATH=src python benchmarks/mfc_speed.py --no-budget  # skip the fixed-budget bisection run
    PYTHONPATH=src python benchmarks/mfc_speed.py --lp-full    # also: LP bound + LP-pruned MILP on all 60k
    PYTHONPATH=src python benchmarks/mfc_speed.py --markdown-from benchmarks/results/mfc_speed.json

Data: the 60,000 Fashion-MNIST training images (leanrobust.data.load_dataset), as [0,1] pixel vectors;
L2 coverings per class; torch threads --threads (1) outside the thread comparison.

(a) the radius that keeps ~10% of the data is found once by an untimed probe (per class: the
    coverage graph at CONFIG["probe_max"], greedy cover sizes on a grid of radii, linear
    interpolation of the total), then a fixed-radius run of ``mfc_selection`` is timed end to end (distances,
    sparse graphs, greedy, assignment, exact eta), --repeats times at each of --fixed-threads torch
    thread counts (on a shared, oversubscribed CPU one thread avoids barrier stalls); the
    fixed-budget mode (ipc = 10% per class, bisection on eta) is timed too. With --lp-full, the
    same radius with solver="lp_milp" gives every class's LP lower bound, hence greedy's LP gap.
(b) on one class (a seeded subsample, and the whole class), greedy vs exact MILP vs the authors'
    LP-pruned MILP, with the LP relaxation bound, at that radius.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import scipy
import torch

from common import parse_json_table_args, write_table
from leanrobust.data import load_dataset
from leanrobust.selection.mfc import (coverage, greedy_cover, lp_relaxation, mfc_selection, milp_cover,
                                      solve_cover, to_unit_flat)

CONFIG = dict(
    data="fashion_mnist",   # the training split, read by leanrobust.data.load_dataset
    target_fraction=0.10,
    eps=8 / 255,            # only shifts Selection.eps; irrelevant to timing
    metric="l2",
    probe_max=6.2,          # probe coverage radius (must keep fewer than the target)
    probe_grid=11,          # radii in [probe_lo_factor * probe_max, probe_max]
    probe_lo_factor=0.85,
    exact_class=0,
    exact_n=1500,
    exact_seed=0,
    time_limit=120.0,       # seconds per HiGHS call in (b)
)


def probe_radius(x: torch.Tensor, y: np.ndarray, cfg: dict) -> dict:
    """Greedy cover sizes on a grid of radii, per class, from one coverage graph per class."""
    t0 = time.perf_counter()
    grid = np.linspace(cfg["probe_lo_factor"] * cfg["probe_max"], cfg["probe_max"], cfg["probe_grid"])
    total = np.zeros(grid.size, dtype=np.int64)
    xf = to_unit_flat(x)
    for c in np.unique(y):
        cov = coverage(xf[torch.from_numpy(np.flatnonzero(y == c))], float(grid[-1]), cfg["metric"])
        for i, r in enumerate(grid):
            total[i] += greedy_cover(cov.pattern(float(r)), symmetric=True).size
        del cov
    target = cfg["target_fraction"] * y.size
    if not (total[-1] <= target <= total[0]):
        raise SystemExit(f"probe grid does not bracket the target {target}: sizes {total[0]}..{total[-1]}; "
                         "change probe_max / probe_lo_factor")
    # total decreases with the radius: interpolate between the bracketing grid points
    i = int(np.flatnonzero(total <= target)[0])
    r0, r1, k0, k1 = grid[i - 1], grid[i], total[i - 1], total[i]
    radius = float(r1 if k0 == k1 else r0 + (k0 - target) * (r1 - r0) / (k0 - k1))
    return {"radius": radius, "grid": grid.tolist(), "greedy_sizes": total.tolist(),
            "seconds": time.perf_counter() - t0}


def class_rows(rep) -> list[dict]:
    keep = ("label", "n", "k", "eta", "solver", "lp_bound", "lower_bound", "lower_bound_kind", "gap",
            "seconds", "eta_lower_bound", "nnz")
    return [{k: getattr(c, k) for k in keep} for c in rep.classes]


def exact_vs_greedy(xc: torch.Tensor, radius: float, cfg: dict, tag: str) -> dict:
    xf = to_unit_flat(xc)
    t = time.perf_counter()
    cov = coverage(xf, radius, cfg["metric"])
    A = cov.pattern()
    t_cov = time.perf_counter() - t
    out = {"subset": tag, "n": int(xf.shape[0]), "radius": radius, "nnz": cov.nnz, "coverage_seconds": t_cov}
    t = time.perf_counter(); g = greedy_cover(A, symmetric=True); out["greedy"] = {"k": int(g.size), "seconds": time.perf_counter() - t}
    t = time.perf_counter(); lp, _ = lp_relaxation(A, cfg["time_limit"])
    out["lp"] = {"bound": lp, "seconds": time.perf_counter() - t}
    t = time.perf_counter(); cols, optimal, dual = milp_cover(A, cfg["time_limit"])
    out["milp"] = {"k": None if cols is None else int(cols.size), "proven_optimal": bool(optimal),
                   "dual_bound": dual, "seconds": time.perf_counter() - t}
    t = time.perf_counter(); r = solve_cover(A, "lp_milp", time_limit=cfg["time_limit"], lp_bound=False, symmetric=True)
    out["lp_milp"] = {"k": int(r.centres.size), "solver": r.solver, "seconds": time.perf_counter() - t}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-budget", action="store_true", help="skip the fixed-budget (bisection) run")
    ap.add_argument("--lp-full", action="store_true", help="LP bound and LP-pruned MILP on the full set")
    ap.add_argument("--repeats", type=int, default=2, help="timed fixed-radius runs per thread count")
    ap.add_argument("--fixed-threads", default="2,1", help="torch thread counts for the timed fixed-radius runs")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for everything else")
    ap.add_argument("--out", default="benchmarks/results/mfc_speed")
    args = parse_json_table_args(ap, markdown)
    if args is None:
        return
    cfg = dict(CONFIG)
    load0 = os.getloadavg()
    x, labels = load_dataset(cfg["data"], "train")  # uint8 (N, 1, 28, 28)
    y = labels.numpy()
    res: dict = {"config": cfg, "command": "PYTHONPATH=src python " + " ".join(shlex.quote(a) for a in sys.argv),
                 "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                             "torch": torch.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
                             "python": platform.python_version(), "platform": platform.platform(),
                             "processor": platform.processor() or platform.machine(),
                             "loadavg_start": load0, "threads_other_steps": args.threads}}

    torch.set_num_threads(args.threads)
    res["probe"] = probe_radius(x, y, cfg)
    radius = res["probe"]["radius"]
    print(f"probe: radius {radius:.4f} ({res['probe']['seconds']:.1f}s)", flush=True)

    runs = []
    for nt in [int(v) for v in args.fixed_threads.split(",")]:
        torch.set_num_threads(nt)
        for _ in range(max(1, args.repeats)):
            t = time.perf_counter()
            sel, rep = mfc_selection(x, torch.from_numpy(y), eps=cfg["eps"], radius=radius, metric=cfg["metric"])
            runs.append({"threads": nt, "seconds": time.perf_counter() - t, "loadavg_1min": os.getloadavg()[0]})
            print(f"fixed radius, {nt} threads: k={rep.k} ({rep.k / rep.n:.3%}) in {runs[-1]['seconds']:.1f}s", flush=True)
    torch.set_num_threads(args.threads)
    res["fixed_radius"] = {"seconds": min(r["seconds"] for r in runs), "runs": runs, "n": rep.n, "k": rep.k,
                           "fraction": rep.k / rep.n, "radius": radius,
                           "max_distance": float(rep.distance.max()), "weight_mean": float(sel.weight.mean()),
                           "classes": class_rows(rep)}

    if args.lp_full:
        t = time.perf_counter()
        _, rep_l = mfc_selection(x, torch.from_numpy(y), eps=cfg["eps"], radius=radius, metric=cfg["metric"],
                                 solver="lp_milp", time_limit=cfg["time_limit"])
        secs = time.perf_counter() - t
        res["fixed_radius_lp_milp"] = {"seconds": secs, "k": rep_l.k, "classes": class_rows(rep_l)}
        print(f"fixed radius, lp_milp: k={rep_l.k} in {secs:.1f}s", flush=True)

    if not args.no_budget:
        ipc = int(round(cfg["target_fraction"] * np.bincount(y).min()))
        t = time.perf_counter()
        sel_b, rep_b = mfc_selection(x, torch.from_numpy(y), eps=cfg["eps"], ipc=ipc, metric=cfg["metric"])
        secs = time.perf_counter() - t
        res["fixed_budget"] = {"seconds": secs, "ipc": ipc, "k": rep_b.k, "fraction": rep_b.k / rep_b.n,
                               "max_eta": max(c.eta for c in rep_b.classes), "classes": class_rows(rep_b)}
        print(f"fixed budget ipc={ipc}: k={rep_b.k} in {secs:.1f}s", flush=True)

    members = np.flatnonzero(y == cfg["exact_class"])
    sub = np.sort(np.random.default_rng(cfg["exact_seed"]).choice(members, cfg["exact_n"], replace=False))
    res["exact_vs_greedy"] = [exact_vs_greedy(x[torch.from_numpy(sub)], radius, cfg,
                                              f"class {cfg['exact_class']}, {cfg['exact_n']} random points"),
                              exact_vs_greedy(x[torch.from_numpy(members)], radius, cfg,
                                              f"class {cfg['exact_class']}, all {members.size} points")]
    for r in res["exact_vs_greedy"]:
        print(f"{r['subset']}: greedy {r['greedy']['k']}, milp {r['milp']['k']} (optimal {r['milp']['proven_optimal']}), "
              f"lp_milp {r['lp_milp']['k']}, LP {r['lp']['bound']}", flush=True)
    res["machine"]["loadavg_end"] = os.getloadavg()

    out = Path(args.out)
    write_table(out, markdown(res), data=res, echo=False)
    print(f"wrote {out}.json and {out}.md")


def markdown(r: dict) -> str:
    m, fr = r["machine"], r["fixed_radius"]
    L = ["# MFC speed on Fashion-MNIST (60k training images, L2 in [0,1] pixel space)", "",
         f"Command: `{r['command']}`  ",
         f"Machine: {m['cpu_count']} CPUs ({m['processor']}), torch {m['torch']} (default {m['torch_threads']} threads), "
         f"scipy {m['scipy']} (HiGHS), {m['platform']}; torch threads {m['threads_other_steps']} outside the "
         "thread comparison.  ",
         f"Load average at start / end: {', '.join(f'{v:.1f}' for v in m['loadavg_start'])} / "
         f"{', '.join(f'{v:.1f}' for v in m['loadavg_end'])} (the 2 cores were shared with other jobs, so "
         "times are pessimistic and noisy).", "",
         "## (a) Full training set", "",
         f"Radius from the untimed probe ({r['probe']['seconds']:.0f} s, greedy sizes on a grid): "
         f"eta = {fr['radius']:.4f}.", "",
         "| mode | seconds | centres k | share kept | note |", "|---|---|---|---|---|",
         f"| fixed radius eta={fr['radius']:.3f} (auto: greedy, classes of 6000 > milp_max_n) | {fr['seconds']:.1f} | "
         f"{fr['k']} | {fr['fraction']:.2%} | fastest run; all runs (torch threads: s @ 1-min load): "
         + "; ".join(f"{q['threads']}: {q['seconds']:.1f} @ {q['loadavg_1min']:.1f}" for q in fr["runs"])
         + f"; max point-to-centre distance {fr['max_distance']:.4f} |"]
    if "fixed_radius_lp_milp" in r:
        fl = r["fixed_radius_lp_milp"]
        L.append(f"| same radius, solver lp_milp (LP relaxation + MILP on its support) | {fl['seconds']:.1f} | {fl['k']} | "
                 f"{fl['k'] / fr['n']:.2%} | LP bound total {sum(c['lp_bound'] or 0 for c in fl['classes']):.1f} |")
    if "fixed_budget" in r:
        fb = r["fixed_budget"]
        L.append(f"| fixed budget ipc={fb['ipc']} (bisection on eta, greedy) | {fb['seconds']:.1f} | {fb['k']} | "
                 f"{fb['fraction']:.2%} | per-class eta up to {fb['max_eta']:.3f} |")
    lpc = {c["label"]: c for c in r.get("fixed_radius_lp_milp", {}).get("classes", [])}
    L += ["", "Per class, fixed radius (greedy run; lower bound: free dual-feasible bound; LP columns from the "
          "lp_milp run when present):", "",
          "| class | k greedy | eta | lower bound (kind) | seconds | graph nnz | LP bound | greedy - ceil(LP) | k lp_milp | s lp_milp |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for c in fr["classes"]:
        l = lpc.get(c["label"])
        lp = "" if not l or l["lp_bound"] is None else f"{l['lp_bound']:.1f} | {c['k'] - math.ceil(l['lp_bound'] - 1e-6)} | {l['k']} | {l['seconds']:.1f}"
        L.append(f"| {c['label']} | {c['k']} | {c['eta']:.4f} | {c['lower_bound']} ({c['lower_bound_kind']}) | "
                 f"{c['seconds']:.1f} | {c['nnz']} | {lp or ' | | | '} |")
    if "fixed_budget" in r:
        L += ["", "Per class, fixed budget:", "", "| class | k | eta | eta lower bound (Gonzalez r/2) | seconds |",
              "|---|---|---|---|---|"]
        for c in r["fixed_budget"]["classes"]:
            L.append(f"| {c['label']} | {c['k']} | {c['eta']:.4f} | {c['eta_lower_bound']:.4f} | {c['seconds']:.1f} |")
    L += ["", "## (b) Exact MILP vs greedy on one class, same radius", "",
          "| subset | n | greedy k (s) | MILP k (s, proven optimal) | LP-pruned MILP k (s) | LP bound (s) |",
          "|---|---|---|---|---|---|"]
    for e in r["exact_vs_greedy"]:
        L.append(f"| {e['subset']} | {e['n']} | {e['greedy']['k']} ({e['greedy']['seconds']:.2f}) | "
                 f"{e['milp']['k']} ({e['milp']['seconds']:.1f}, {e['milp']['proven_optimal']}) | "
                 f"{e['lp_milp']['k']} ({e['lp_milp']['seconds']:.1f}) | "
                 f"{'n/a' if e['lp']['bound'] is None else format(e['lp']['bound'], '.1f')} ({e['lp']['seconds']:.1f}) |")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
