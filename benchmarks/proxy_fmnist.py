"""Proxy distributions on Fashion-MNIST (issue 5), sized for a 2-core CPU.

The real set is a class-balanced 2,000-image subset of the Fashion-MNIST training split (the exact
pool `data.train_subset=2000, data.val_size=500` gives every classifier row). A class-conditional DDPM
is trained on those same 2,000 images (so generated data adds no real information the classifier
could not see), and its checkpoints form a quality ladder together with a per-class Gaussian proxy.

Stages (each resumable; rerun the same command to go on):
  generator  train the DDPM (configs/synth/fmnist_ddpm.yaml, 1500 steps, checkpoints every 250)
  sample_ladder  1x the real set from each earlier checkpoint (waits for it) and from a Gaussian proxy
  sample_final   5x the real set from the final checkpoint (1x and 2x are its class-balanced heads)
  train      classifier rows (half-width SmallCNN, PGD-7 AT at Linf 0.1, 40 epochs): real only,
             real + generated 1x / 2x / 5x, generated only, one row per ladder rung. With the current
             sampler every epoch is ceil(real-set size / batch) batches, real_only's count, also
             gen_only's (generated share 1.0). The report shows each
             row's samples seen and grad evals, and flags budgets unequal to real_only's.
  quality    ARC (robust discrimination area), conditional W1 (input, features), Frechet per rung
  certify    Gaussian-noise training (sigma 0.25) with and without generated data, then
             randomized-smoothing certification at several L2 radii
  report     table + plots in benchmarks/results/proxy_fmnist.{md,png}

    PYTHONPATH=src:benchmarks python benchmarks/proxy_fmnist.py [--stages generator sample_ladder ...] [--only ROW ...]
        [--rerun-stale]   # retrain the rows the old mixing sampler trained with 3.3x real_only's samples
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from common import RESULTS, append_row, device_label, done_rows, pct, run_table

ROOT = Path("runs/bench/proxy_fmnist")
BASE = Path(__file__).parent / "configs" / "proxy_fmnist.yaml"
GEN_CONFIG = Path(__file__).parent.parent / "configs" / "synth" / "fmnist_ddpm.yaml"
N_REAL, VAL = 2000, 500
GEN_STEPS = 1500
RUNGS = [250, 500, 1000, 1500]      # generator checkpoints on the ladder (the last = the final generator)
SAMPLER = {"scheduler": "dpm", "steps": 10}  # DPM-Solver++ at 10 steps: ~9 ms per image per step here
MIX = {"gen1x": 1, "gen2x": 2, "gen5x": 5}
SIGMA = 0.25
RADII = [0.0, 0.25, 0.5, 0.75, 1.0]
# the commit that made a mixed epoch ceil(n_real / batch) batches (before: n_real // real_per_batch);
# rows without a `git` field finished before it are reported as trained with the old sampler
SAMPLER_FIX = ("8269fd9", "2026-12-02 09:43:18")


def real_npz() -> Path:
    """The classifier rows' real training pool, written once as npz (the generator's training set)."""
    out = ROOT / "real_2k.npz"
    if not out.exists():
        from leanrobust.config import DataConfig
        from leanrobust.data.build import build_training_data

        pool = build_training_data(DataConfig(dataset="fashion_mnist", train_subset=N_REAL, val_size=VAL), seed=0).pool
        ROOT.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp.npz")
        np.savez(tmp, image=pool.images.permute(0, 2, 3, 1).numpy(), label=pool.labels.numpy())
        tmp.replace(out)
    return out


def stage_generator() -> None:
    from leanrobust.proxy.generator import GeneratorTrainer, load_synth_config

    cfg = load_synth_config(GEN_CONFIG, [f"dataset={real_npz()}", f"out={ROOT / 'ddpm'}", f"steps={GEN_STEPS}",
                                         "keep_every=250", "checkpoint_every=250", "progress=false", "threads=1"])
    res = GeneratorTrainer(cfg, cfg.out).fit()
    print(f"generator: step {res['step']}, {res['seconds']:.0f}s", flush=True)


def balanced_head(src: Path, per_class: int, out: Path) -> Path:
    """The first `per_class` images of each class of `src` (so 1x / 2x are nested subsets of 5x)."""
    if not out.exists():
        with np.load(src, allow_pickle=False) as z:
            x, y = z["image"], z["label"]
        keep = np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(10)])
        if len(keep) != 10 * per_class:
            raise ValueError(f"{src}: fewer than {per_class} images in some class")
        keep.sort()
        tmp = out.with_suffix(".tmp.npz")
        np.savez(tmp, image=x[keep], label=y[keep])
        tmp.replace(out)
    return out


def gen_file(rung: int | str, times: int) -> Path:
    return ROOT / "gen" / f"{rung}_{times}x.npz"


def wait_for_checkpoint(step: int, poll: float = 30.0, limit: float = 3 * 3600.0) -> None:
    """Block until the generator run's newest complete checkpoint (its `latest` file) is at or past `step`
    (the ladder samples while the generator trains); give up with a clear message after `limit` seconds."""
    from leanrobust.proxy.generator import read_latest

    t0 = time.monotonic()
    while True:
        try:
            if int(read_latest(ROOT / "ddpm").rsplit("_", 1)[1]) >= step:
                return
        except (ValueError, FileNotFoundError, OSError):
            pass
        if time.monotonic() - t0 > limit:
            raise SystemExit(f"no generator checkpoint of step {step} in {ROOT / 'ddpm'} after {limit:.0f}s: "
                             "run (or resume) the generator stage")
        time.sleep(poll)


def sample_rung(rung: int, times: int) -> None:
    from leanrobust.proxy.generator import sample_to_npz

    out = gen_file(rung, times)
    if out.exists():
        return
    wait_for_checkpoint(rung)
    t0 = time.perf_counter()
    sample_to_npz(ROOT / "ddpm", out, times * N_REAL, step=rung, seed=rung, batch_size=250, device="cpu",
                  progress=False, **SAMPLER)
    print(f"sampled {out} in {time.perf_counter() - t0:.0f}s", flush=True)


def stage_sample(part: str) -> None:
    """part 'ladder': 1x from each earlier rung (waits for its checkpoint) and the Gaussian proxy;
    'final': 5x from the final generator, and its nested 1x / 2x class-balanced heads."""
    from leanrobust.proxy.generator import gaussian_to_npz

    (ROOT / "gen").mkdir(parents=True, exist_ok=True)
    if part == "ladder":
        if not gen_file("gaussian", 1).exists():
            gaussian_to_npz(real_npz(), gen_file("gaussian", 1), N_REAL, seed=1, progress=False)
        for rung in RUNGS[:-1]:
            sample_rung(rung, 1)
        return
    sample_rung(GEN_STEPS, 5)
    for times in (1, 2):
        balanced_head(gen_file(GEN_STEPS, 5), times * N_REAL // 10, gen_file(GEN_STEPS, times))


def ladder() -> dict[str, Path]:
    """Rung name -> its 1x generated set, worst proxy first."""
    return {"gaussian": gen_file("gaussian", 1), **{f"ddpm{r}": gen_file(r, 1) for r in RUNGS}}


def train_rows() -> list[dict]:
    base = ["progress=false"]
    rows = [{"name": "real_only", "config": BASE, "overrides": base}]
    rows += [{"name": k, "config": BASE, "overrides": base + [f"data.generated={gen_file(GEN_STEPS, t)}"]}
             for k, t in MIX.items()]
    rows.append({"name": "gen_only", "config": BASE,
                 "overrides": base + [f"data.generated={gen_file(GEN_STEPS, 5)}", "data.gen_fraction=1.0"]})
    rows += [{"name": f"ladder_{k}", "config": BASE, "overrides": base + [f"data.generated={f}"]}
             for k, f in ladder().items() if k != f"ddpm{GEN_STEPS}"]
    return rows


def stale_rows(table: str) -> set[str]:
    """Rows of a table trained with generated data under the old sampler (see old_sampler): --rerun-stale
    trains them again (the rerun's line wins in the table; the old one stays in the file)."""
    return {n for n, r in done_rows(RESULTS / f"{table}.jsonl").items()
            if any(o.startswith("data.generated=") for o in r["overrides"]) and old_sampler(r)}


def stage_train(only: list[str] | None, rerun_stale: bool = False) -> None:
    again = stale_rows("proxy_fmnist") if rerun_stale else set()
    run_table("proxy_fmnist", train_rows(), runs_dir=Path("runs/bench"), only=only, rerun=again)


def stage_quality() -> None:
    from leanrobust import load
    from leanrobust.proxy.generator import load_images
    from leanrobust.proxy.quality import proxy_quality

    path = RESULTS / "proxy_fmnist_quality.jsonl"
    done = done_rows(path)
    clf_run = Path("runs/bench/proxy_fmnist/real_only/run")
    if not (clf_run / "summary.json").exists():
        raise SystemExit("quality needs the real_only classifier row first (stage train)")
    clf = load(clf_run)
    rx, ry, _ = load_images(real_npz(), "train")
    for name, f in ladder().items():
        if name in done or not f.exists():
            continue
        sx, sy, _ = load_images(f, "train", num_classes=10)
        t0 = time.perf_counter()
        res = proxy_quality(rx, ry, sx, sy, classifier=clf, radii=[0.0, 0.025, 0.05, 0.1], n=N_REAL, epochs=3,
                            steps=5, m=100, repeats=5, seed=0, device="cpu")
        append_row(path, {"name": name, "file": str(f), "seconds": time.perf_counter() - t0,
                          "device": device_label("cpu"), **res})
        print(f"quality {name}: {time.perf_counter() - t0:.0f}s", flush=True)


def cert_rows() -> list[dict]:
    # Gaussian-noise training at sigma; eval PGD-20 at L2 radius sigma; no robust model selection (last epoch)
    ov = ["progress=false", "objective.name=gaussian_noise", f"objective.params={{sigma: {SIGMA}}}",
          "objective.norm=l2", f"objective.eps={SIGMA}", "eval.attacks=[pgd20]", "validation.n=0"]
    return [{"name": "cert_real_only", "config": BASE, "overrides": ov},
            {"name": "cert_gen2x", "config": BASE, "overrides": ov + [f"data.generated={gen_file(GEN_STEPS, 2)}"]}]


def certified_is_current(cert: dict, train: dict | None) -> bool:
    """A certified row belongs to one training of its model: it records that row's `finished` as `trained`.
    Certified rows from before that field certified the original trainings (training rows without `git`)."""
    if train is None:
        return True
    if "trained" in cert:
        return cert["trained"] == train.get("finished")
    return "git" not in train


def stage_certify(only: list[str] | None, rerun_stale: bool = False) -> None:
    from leanrobust.certify import certify_run

    again = stale_rows("proxy_fmnist_certify") if rerun_stale else set()
    trained = {r["name"]: r for r in run_table("proxy_fmnist_certify", cert_rows(), runs_dir=Path("runs/bench"),
                                               only=only, rerun=again)}
    path = RESULTS / "proxy_fmnist_certified.jsonl"
    done = done_rows(path)
    for r in cert_rows():
        run = Path("runs/bench/proxy_fmnist_certify") / r["name"] / "run"
        t = trained.get(r["name"])
        if (r["name"] in done and certified_is_current(done[r["name"]], t)) or not (run / "summary.json").exists():
            continue
        rep = certify_run(run, sigma=SIGMA, n0=100, n=2000, alpha=0.001, num=500, radii=RADII, progress=False)
        append_row(path, {"name": r["name"], "device": device_label("cpu"), "trained": t.get("finished") if t else None,
                          **rep})


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if len(a) >= 3 else float("nan")


def base_config() -> dict:
    import yaml

    return yaml.safe_load(BASE.read_text())


def se_points(p: float | None, n: int | None) -> float | None:
    """Binomial standard error of an accuracy p on n points, in percentage points: 100 sqrt(p(1-p)/n)."""
    return None if p is None or not n else 100 * math.sqrt(p * (1 - p) / n)


def se_range(values: list) -> str:
    if not values:
        return "-"
    lo, hi = f"{min(values):.1f}", f"{max(values):.1f}"
    return f"about {lo}" if lo == hi else f"{lo}-{hi}"


def old_sampler(row: dict) -> bool:
    """A generated-data row trained before SAMPLER_FIX (rows since then record their commit in `git`)."""
    return "git" not in row and row.get("finished", "") < SAMPLER_FIX[1]


def budget_caveat(rows: dict, base: dict | None, cert_rows: dict) -> list[str]:
    """The confound of unequal training budgets, computed from the rows' samples_seen / grad_evals."""
    if not base:
        return []
    cfg = base_config()
    B, f = cfg["optim"]["batch_size"], cfg["data"]["gen_fraction"]
    epochs = base.get("epochs") or cfg["optim"]["epochs"]
    groups: dict[tuple, list[str]] = {}
    order = [r["name"] for r in train_rows()]
    ordered = sorted(rows.values(), key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))
    for r in ordered:
        if r["name"] != "real_only":
            groups.setdefault((r["samples_seen"], r["grad_evals"]), []).append(r["name"])
    unequal = {k: v for k, v in groups.items() if abs(k[0] / base["samples_seen"] - 1) > 0.05}
    if not unequal:
        return []
    parts = [f"{', '.join(names)} {k[0]:,} ({k[0] / base['samples_seen']:.2f}x real_only's; {k[1]:,} grad evals)"
             for k, names in sorted(unequal.items())]
    out = ["**Caveat: unequal training budgets.** real_only saw "
           f"{base['samples_seen']:,} training samples ({base['grad_evals']:,} grad evals, "
           f"{epochs} epochs of ceil({base['n_train']:,} / {B}) = {math.ceil(base['n_train'] / B)} SGD steps each); "
           f"the other rows saw: {'; '.join(parts)}. So the gains of generated data over real_only in "
           "this table (AA gain, PGD-20 gain, and the gains in the quality ladder) are confounded with that "
           "many more SGD steps (and more adversarial-training compute), and do not show what the generated "
           "data alone contributes."]
    olds = [r for r in ordered if r["name"] not in ("real_only", "gen_only") and old_sampler(r)
            and abs(r["samples_seen"] / base["samples_seen"] - 1) > 0.05]
    if olds:
        real_pb = B - round(f * B)
        m = olds[0]
        out.append(f"{', '.join(r['name'] for r in olds)} were trained before commit {SAMPLER_FIX[0]} with the old "
                   f"sampler, whose real + generated epoch was n_real // real_per_batch = {N_REAL} // {real_pb} = "
                   f"{N_REAL // real_pb} batches of {B} (generated share {f}; the rows' own counts agree: "
                   f"{m['samples_seen']:,} / ({epochs} x {B}) = {m['samples_seen'] / (epochs * B):.0f} batches per "
                   f"epoch). The current sampler makes it ceil(n_real / batch) = {math.ceil(N_REAL / B)} batches as "
                   "in Wang et al. 2023, real_only's count, so a rerun of these rows gives them real_only's SGD "
                   "steps; until then their gains are not evidence for generated data.")
    if "gen_only" in rows and abs(rows["gen_only"]["samples_seen"] / base["samples_seen"] - 1) > 0.05:
        g = rows["gen_only"]
        n_gen = g["n_train"] - N_REAL
        was = f" ({g['samples_seen'] / (epochs * B):.0f} batches per epoch in its row)" if old_sampler(g) else ""
        out.append(f"gen_only (gen_fraction 1.0) took its epoch from the {n_gen:,} generated images{was}; the "
                   f"current sampler makes it ceil({N_REAL:,} real / {B}) = {math.ceil(N_REAL / B)} batches, "
                   "real_only's count, so a rerun gives it real_only's SGD steps.")
    cb = cert_rows.get("cert_real_only")
    for name, c in cert_rows.items():
        if cb and name != "cert_real_only" and abs(c["samples_seen"] / cb["samples_seen"] - 1) > 0.05:
            out.append(f"The certification rows have the same confound: {name} saw {c['samples_seen']:,} "
                       f"samples, {c['samples_seen'] / cb['samples_seen']:.2f}x cert_real_only's "
                       f"{cb['samples_seen']:,}.")
    out.append("Within the quality ladder every rung's row saw the same number of samples, and the gain is each "
               "row minus the same real_only value, so the rank correlations there compare equal budgets; the "
               "sizes and signs of the gains do not.")
    return out


def report() -> None:
    rows = done_rows(RESULTS / "proxy_fmnist.jsonl")
    quality = done_rows(RESULTS / "proxy_fmnist_quality.jsonl")
    cert = done_rows(RESULTS / "proxy_fmnist_certified.jsonl")
    cert_train = done_rows(RESULTS / "proxy_fmnist_certify.jsonl")
    aa = lambda r: r["robust_acc"].get("autoattack")  # noqa: E731
    base = rows.get("real_only")
    n_eval = next((r["eval"].get("n") for r in rows.values()), None)
    n_aa = next((r["eval"].get("autoattack_n") for r in rows.values()), None)
    aa_se = [se_points(aa(r), r["eval"].get("autoattack_n")) for r in rows.values() if aa(r) is not None]
    pgd_se = [se_points(r["robust_acc"].get("pgd20"), r["eval"].get("n")) for r in rows.values()
              if r["robust_acc"].get("pgd20") is not None]
    lines = ["# Proxy distributions, Fashion-MNIST (2,000 real images), SmallCNN x0.5, Linf eps 0.1", "",
             "Command: `PYTHONPATH=src:benchmarks python benchmarks/proxy_fmnist.py` (base config "
             "benchmarks/configs/proxy_fmnist.yaml; generator configs/synth/fmnist_ddpm.yaml trained on the same "
             f"2,000 images for {GEN_STEPS} steps; sampling DPM-Solver {SAMPLER['steps']} steps). Every row trains "
             f"{base_config()['optim']['epochs']} epochs (rows with generated data: a generated share of "
             f"{base_config()['data']['gen_fraction']} per batch, gen_only 1.0), but the number of SGD steps per "
             "epoch differs between rows: see the caveat and the `samples seen` / `grad evals` columns (read from "
             "the rows). Clean / "
             f"PGD-20 / CW-20 on {n_eval} test points (binomial standard error sqrt(p(1-p)/n) "
             + (f"{se_range(pgd_se)} points" if pgd_se else "-") + "). AutoAttack (standard) "
             f"only on the first {n_aa} of them: one point there is {100 / n_aa if n_aa else 0:.1f} percentage "
             "points, and its standard error is "
             + (f"{se_range(aa_se)} points" if aa_se else "-") + " (per row in the `AA SE` "
             "column), so AutoAttack differences of a few points are within noise; the PGD-20 and CW-20 columns, "
             f"on {n_eval} points, are the more precise comparison. `train s` is wall time measured with 2 to 5 "
             "benchmark processes sharing the 2 cores: it grows with the samples a row saw as well as with the "
             "load, so it is neither a cost comparison nor load alone. Certification rows: Gaussian-noise "
             "training at sigma 0.25, real only vs real + generated 2x.", ""]
    for para in budget_caveat(rows, base, cert_train):
        lines += [para, ""]
    lines += ["## Real vs real + generated", "",
              "| row | generated | samples seen | x real_only | grad evals | clean | PGD-20 | PGD-20 gain | CW-20 | "
              "AutoAttack | AA SE | AA gain | train s | device |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in train_rows():
        if r["name"] not in rows or r["name"].startswith("ladder_"):
            continue
        d = rows[r["name"]]
        gain = f"{100 * (aa(d) - aa(base)):+.1f}" if base and aa(d) is not None else "-"
        pgain = (f"{100 * (d['robust_acc']['pgd20'] - base['robust_acc']['pgd20']):+.1f}"
                 if base and d["robust_acc"].get("pgd20") is not None else "-")
        ratio = f"{d['samples_seen'] / base['samples_seen']:.2f}x" if base else "-"
        se = se_points(aa(d), d["eval"].get("autoattack_n"))
        gen = next((o.split("=", 1)[1] for o in d["overrides"] if o.startswith("data.generated=")), "-")
        lines.append(f"| {d['name']} | {Path(gen).name if gen != '-' else '-'} | {d['samples_seen']:,} | {ratio} | "
                     f"{d['grad_evals']:,} | {pct(d['clean_acc'])} | {pct(d['robust_acc'].get('pgd20'))} | {pgain} | "
                     f"{pct(d['robust_acc'].get('cw20'))} | {pct(aa(d))} | {'-' if se is None else f'{se:.1f}'} | "
                     f"{gain} | {d['train_seconds']:.0f} | {d['device']} |")
    lines += ["", "## Quality ladder (1x generated each): quality measures vs the robust-accuracy gain", "",
              "ARC area: area under the accuracy-vs-radius curve of real-vs-generated discriminators adversarially "
              "trained at each Linf radius (0, 0.025, 0.05, 0.1; warm-started from the previous radius), above chance, "
              "normalised so 0 = chance at every radius and 1 = always told apart (Sehwag et al.'s proposed "
              "measure); conditional "
              "W1: class-weighted mean of exact OT (L2 cost) between 100-image subsamples of the 200 per class, 5 "
              "draws (95% CI over draws), in pixel space and in the penultimate features of the real_only "
              "classifier, next to the real-vs-real floor (two disjoint 100-image real draws) that a perfect "
              "generator would reach; Frechet: in the same features.", "",
              "Each rung's row trains on real + 1x that proxy (the ddpm1500 rung is the gen1x row); gains are over "
              f"real_only, PGD-20 on {n_eval} points, AA on {n_aa} (see the caveat above for the step budgets).", "",
              "| proxy | ARC area | cond. W1 input (95% CI) | cond. W1 features | Frechet features | samples seen | "
              "PGD-20 | PGD-20 gain | AA | AA gain |", "|---|---|---|---|---|---|---|---|---|---|"]
    floors = [q["wasserstein_input"].get("real_vs_real_floor") for q in quality.values()]
    ffloors = [q["wasserstein_features"].get("real_vs_real_floor") for q in quality.values()]
    if floors and floors[0] and ffloors[0]:
        lines.insert(len(lines) - 2, f"Real-vs-real floor: W1 input {floors[0]['mean']:.3f}, W1 features "
                                     f"{ffloors[0]['mean']:.3f}.")
        lines.insert(len(lines) - 2, "")
    xs: dict[str, list[float]] = {"ARC": [], "W1 input": [], "W1 features": [], "Frechet": []}
    gains: dict[str, list[float]] = {"AutoAttack": [], "PGD-20": []}
    pgd = lambda r: r["robust_acc"].get("pgd20")  # noqa: E731
    for name in ladder():
        row = ladder_row(rows, name)
        q = quality.get(name)
        if not q:
            continue
        arc = q.get("robust_discrimination", {}).get("area")
        wi, wf = q["wasserstein_input"], q["wasserstein_features"]
        ga = 100 * (aa(row) - aa(base)) if row and base else None
        gp = 100 * (pgd(row) - pgd(base)) if row and base else None
        seen = f"{row['samples_seen']:,}" if row else "-"
        lines.append(f"| {name} | {arc:.3f} | {wi['mean']:.3f} [{wi['ci95'][0]:.3f}, {wi['ci95'][1]:.3f}] | "
                     f"{wf['mean']:.3f} | {q['frechet_features']:.2f} | {seen} | "
                     f"{pct(pgd(row)) if row else '-'} | "
                     f"{'-' if gp is None else f'{gp:+.1f}'} | {pct(aa(row)) if row else '-'} | "
                     f"{'-' if ga is None else f'{ga:+.1f}'} |")
        if ga is not None:
            gains["AutoAttack"].append(ga)
            gains["PGD-20"].append(gp)
            for k, v in zip(xs, (arc, wi["mean"], wf["mean"], q["frechet_features"])):
                xs[k].append(v)
    if len(gains["AutoAttack"]) >= 3:
        lines += ["", f"Spearman rank correlation between each distance and the gain over {len(gains['AutoAttack'])} "
                      "proxies (a measure that predicts the gain is strongly negative: closer proxy, larger gain):", "",
                  "| gain | " + " | ".join(xs) + " |", "|---|" + "---|" * len(xs)]
        for g, v in gains.items():
            lines.append(f"| {g} | " + " | ".join(f"{spearman(x, v):+.2f}" for x in xs.values()) + " |")
    if cert:
        from scipy.stats import norm as gauss

        c0 = next(iter(cert.values()))
        r_max = SIGMA * gauss.ppf(c0["alpha"] ** (1 / c0["n"]))
        lines += ["", f"## Certified accuracy (randomized smoothing, sigma {SIGMA}, n0 {c0['n0']}, n {c0['n']}, alpha "
                      f"{c0['alpha']}, {c0['num']} test points)", "",
                  f"L2 radii in [0,1] pixel units. With n = {c0['n']} the largest certifiable radius is "
                  f"sigma * Phi^-1(alpha^(1/n)) = {r_max:.2f}, so larger radii read 0 by construction. ACR: average "
                  "certified radius.", "",
                  "| row | train samples seen | " + " | ".join(f"r={r:g}" for r in RADII) +
                  " | ACR | abstain | certify s | device |",
                  "|---|---|" + "---|" * (len(RADII) + 4)]
        for name, c in cert.items():
            acc = c["certified_acc"]
            seen = f"{cert_train[name]['samples_seen']:,}" if name in cert_train else "-"
            lines.append(f"| {name} | {seen} | " + " | ".join(f"{100 * acc[f'{r:g}']:.1f}" for r in RADII) +
                         f" | {c['acr']:.3f} | {100 * c['abstain_rate']:.1f} | {c['seconds']:.0f} | {c['device']} |")
    (RESULTS / "proxy_fmnist.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(rows, quality, base)


def ladder_row(rows: dict, name: str) -> dict | None:
    """The training row of a ladder rung (the final generator's 1x row is gen1x)."""
    return rows.get(f"ladder_{name}") or (rows.get("gen1x") if name == f"ddpm{GEN_STEPS}" else None)


def plot(rows: dict, quality: dict, base: dict | None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    ax = axes[0]
    for d in rows.values():
        ra = d["robust_acc"].get("autoattack")
        if ra is not None:
            ax.scatter(100 * d["clean_acc"], 100 * ra)
            ax.annotate(d["name"], (100 * d["clean_acc"], 100 * ra), fontsize=7)
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("AutoAttack accuracy (%), 200 points")
    ax.set_title("Robust vs clean accuracy per row")
    for ax, key, label in ((axes[1], "arc", "ARC area (robust discrimination)"),
                           (axes[2], "frechet", "Frechet feature distance")):
        for name, q in quality.items():
            row = ladder_row(rows, name)
            if not (row and base):
                continue
            v = q.get("robust_discrimination", {}).get("area") if key == "arc" else q["frechet_features"]
            g = 100 * (row["robust_acc"]["autoattack"] - base["robust_acc"]["autoattack"])
            ax.scatter(v, g)
            ax.annotate(name, (v, g), fontsize=7)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xlabel(label)
        ax.set_ylabel("AutoAttack gain over real only (points, 200 test points)")
    fig.tight_layout()
    fig.savefig(RESULTS / "proxy_fmnist.png", dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stages", nargs="+",
                    default=["generator", "sample_ladder", "sample_final", "train", "quality", "certify"])
    ap.add_argument("--only", nargs="*", help="train/certify rows to run")
    ap.add_argument("--rerun-stale", action="store_true",
                    help="train again the generated-data rows trained with the old sampler (and certify them again)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for s in args.stages:
        if s == "generator":
            stage_generator()
        elif s in ("sample_ladder", "sample_final"):
            stage_sample(s.split("_")[1])
        elif s == "train":
            stage_train(args.only, args.rerun_stale)
        elif s == "quality":
            stage_quality()
        elif s == "certify":
            stage_certify(args.only, args.rerun_stale)
        elif s != "report":
            raise SystemExit(f"unknown stage {s}")
    report()


if __name__ == "__main__":
    main()
