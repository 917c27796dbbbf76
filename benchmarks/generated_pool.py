"""The generated pool of the generated-data regime (issue 16, item 1): the project's class-conditional DDPM
trained on the real training pool of benchmarks/time_to_robustness.py (all 58,000 Fashion-MNIST training
images outside its fixed 2,000-image held-out set, so no held-out image leaks into generated data), then a
pool of 2x the real set drawn with the fast sampler, and the pool's quality next to the budget spent.

Stages (each resumable: rerun the same command to go on; every state lives under runs/bench/generated_pool):
  generator  `leanrobust synth train configs/synth/fmnist_ddpm.yaml` on the 58k pool for GEN_STEPS steps
             (batch 64, checkpoints every 250 steps, one kept every 1000: the rungs of the quality curve)
  ladder     2,000 images (class-balanced) from every kept rung, and their quality: does quality still
             improve at the last rung (is the generator trained long enough for its budget)?
  sample     the pool: 2 x 58,000 = 116,000 images from the final generator (DPM-Solver++, 10 steps),
             written as resumable shards, then merged into runs/bench/generated_pool/pool_2x.npz
  quality    the pool's quality: ARC area (adversarially trained real-vs-generated discriminators at Linf
             radii 0, 0.025, 0.05, 0.1), conditional W1 in pixels and in the penultimate features of the
             converged real-data PGD-AT model (time_to_robustness row pgd_at_e15_s0) against the real-vs-real
             floor, and the Frechet distance in those features against its real-vs-real floor
  report     results/generated_pool.md

    PYTHONPATH=src:benchmarks python benchmarks/generated_pool.py [--stages generator ladder sample quality]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from common import RESULTS, append_row, device_label, done_rows, write_table

from leanrobust.io import write_npz

ROOT = Path("runs/bench/generated_pool")
GEN_CONFIG = Path(__file__).parent.parent / "configs" / "synth" / "fmnist_ddpm.yaml"
TTR_BASE = Path(__file__).parent / "configs" / "time_to_robustness.yaml"
# the converged real-data PGD-AT (time_to_robustness row pgd_at_e15_s0): its committed weights, so quality
# does not depend on a runs folder an earlier session left behind
CLASSIFIER = RESULTS / "time_to_robustness_models" / "pgd_at_e15_s0.safetensors"
GEN_STEPS = 5000   # 320,000 images seen, 5.5 epochs of the 58k pool (budget: see the results file)
KEEP_EVERY = 1000
TIMES = 2          # the pool: 2x the real set
LADDER_N = 2000
SAMPLER = {"scheduler": "dpm", "steps": 10}  # DPM-Solver++ (2nd order), 10 steps
QUALITY = {"radii": [0.0, 0.025, 0.05, 0.1], "n": 2000, "epochs": 3, "steps": 5, "m": 500, "repeats": 5,
           "frechet_n": 10000}
TABLE = RESULTS / "generated_pool.jsonl"


def real_pool() -> tuple[Path, int]:
    """The classifier rows' real training pool (time_to_robustness's data config), written once as npz."""
    out = ROOT / "real_pool.npz"
    if not out.exists():
        import yaml

        from leanrobust.config import DataConfig
        from leanrobust.data.build import build_training_data

        data = DataConfig(**yaml.safe_load(TTR_BASE.read_text())["data"])
        pool = build_training_data(data, seed=0).pool
        write_npz(out, image=pool.images.permute(0, 2, 3, 1).numpy(), label=pool.labels.numpy())
    with np.load(out, allow_pickle=False) as z:
        return out, len(z["label"])


def stage_generator() -> None:
    from leanrobust.proxy.generator import GeneratorTrainer, load_synth_config

    real, _ = real_pool()
    cfg = load_synth_config(GEN_CONFIG, [f"dataset={real}", f"out={ROOT / 'ddpm'}", f"steps={GEN_STEPS}",
                                         f"keep_every={KEEP_EVERY}", "checkpoint_every=250", "progress=false",
                                         "threads=1"])
    res = GeneratorTrainer(cfg, cfg.out).fit()
    print(f"generator: step {res['step']}, {res['seconds']:.0f}s", flush=True)
    if res["step"] >= GEN_STEPS and "generator" not in done_rows(TABLE):  # the one-off cost, for the reports
        append_row(TABLE, {"name": "generator", "step": res["step"], "seconds": res["seconds"],
                           "images_seen": res["step"] * cfg.batch_size, "device": device_label("cpu")})


def generator_log() -> list[dict]:
    f = ROOT / "ddpm" / "metrics.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines() if line.strip()] if f.exists() else []


def sample(step: int, n: int, out: Path, seed: int) -> float | None:
    """n class-balanced images of the generator at `step` into `out`; seconds spent now (None: already there)."""
    from leanrobust.proxy.generator import sample_to_npz

    if out.exists():
        return None
    t0 = time.perf_counter()
    sample_to_npz(ROOT / "ddpm", out, n, step=step, seed=seed, batch_size=250, device="cpu", progress=False,
                  **SAMPLER)
    return time.perf_counter() - t0


def measure(name: str, gen: Path, step: int, sample_seconds: float | None, extra: dict | None = None) -> None:
    """One quality row: ARC, conditional W1 (pixels, features) and Frechet with its real-vs-real floor."""
    from leanrobust import load
    from leanrobust.proxy.generator import load_images
    from leanrobust.proxy.quality import frechet_distance, penultimate_features, proxy_quality

    if name in done_rows(TABLE):
        return
    if not CLASSIFIER.exists():
        raise SystemExit(f"quality needs the converged real-data model {CLASSIFIER} (time_to_robustness row "
                         "pgd_at_e15_s0)")
    clf = load(CLASSIFIER)
    real, _ = real_pool()
    rx, ry, _ = load_images(real, "train")
    sx, sy, _ = load_images(gen, "train", num_classes=10)
    t0 = time.perf_counter()
    res = proxy_quality(rx, ry, sx, sy, classifier=clf, seed=0, device="cpu", **QUALITY)
    g = torch.Generator().manual_seed(1)  # Frechet floor: two disjoint real draws of frechet_n images
    idx = torch.randperm(len(rx), generator=g)[:2 * QUALITY["frechet_n"]]
    feats = penultimate_features(clf, device="cpu")
    half = len(idx) // 2
    res["frechet_floor"] = frechet_distance(feats(rx[idx[:half]]), feats(rx[idx[half:]]))
    append_row(TABLE, {"name": name, "file": str(gen), "step": step, "n_generated": len(sy),
                       "sample_seconds": sample_seconds, "quality_seconds": time.perf_counter() - t0,
                       "sampler": SAMPLER, "device": device_label("cpu"), **(extra or {}), **res})
    print(f"quality {name}: {time.perf_counter() - t0:.0f}s", flush=True)


def kept_rungs() -> list[int]:
    log = generator_log()
    last = log[-1]["step"] if log else 0
    return [s for s in range(KEEP_EVERY, GEN_STEPS + 1, KEEP_EVERY) if s <= last]


def stage_ladder() -> None:
    for step in kept_rungs():
        out = ROOT / "ladder" / f"step{step}_{LADDER_N}.npz"
        out.parent.mkdir(parents=True, exist_ok=True)
        secs = sample(step, LADDER_N, out, seed=step)
        measure(f"rung{step}", out, step, secs)


def pool_file() -> Path:
    return ROOT / f"pool_{TIMES}x.npz"


def stage_sample() -> None:
    _, n_real = real_pool()
    if not generator_log() or generator_log()[-1]["step"] < GEN_STEPS:
        raise SystemExit(f"the generator has not reached step {GEN_STEPS}: run (or resume) the generator stage")
    t = sample(GEN_STEPS, TIMES * n_real, pool_file(), seed=0)
    if t is not None:
        (ROOT / "pool_seconds.json").write_text(json.dumps({"seconds": t}))


def stage_quality() -> None:
    if not pool_file().exists():
        raise SystemExit("quality needs the pool: run the sample stage")
    secs_file = ROOT / "pool_seconds.json"
    secs = json.loads(secs_file.read_text())["seconds"] if secs_file.exists() else None
    measure("pool", pool_file(), GEN_STEPS, secs)


def report() -> None:
    rows = done_rows(TABLE)
    log = generator_log()
    lines = ["# Generated pool for the generated-data regime (issue 16): DDPM on full Fashion-MNIST", "",
             "Command: `PYTHONPATH=src:benchmarks python benchmarks/generated_pool.py` (generator config "
             f"configs/synth/fmnist_ddpm.yaml, ~1.1M-parameter class-conditional UNet, batch 64, {GEN_STEPS} steps). "
             "The generator trains on the 58,000 real training images of benchmarks/time_to_robustness.py (its "
             "2,000 held-out images excluded). Sampling: DPM-Solver++ at 10 steps, class-balanced. Device: the "
             "2-core CPU, single thread, shared with 2-4 other benchmark processes (times are wall times under "
             "that load).", "",
             "**Budget stated in advance** (issue 16: a few CPU hours, resumable): about 2 CPU-hours of generator "
             f"training ({GEN_STEPS} steps at ~1.4 s/step on a quiet core), about 3 of sampling (~9 ms per image "
             "per denoising step, 10 steps, 116,000 images) and well under one of quality measures; wall time "
             "grows with the load of the shared cores.", ""]
    if log:
        last = log[-1]
        lines += [f"**Budget.** Generator: {last['step']} of {GEN_STEPS} steps in {last['seconds'] / 3600:.2f} hours "
                  f"of wall time (single thread, under that load; last logged {last['step_seconds']:.2f} s/step); "
                  f"loss {log[0]['loss']:.3f} at step {log[0]['step']} -> {last['loss']:.3f}."]
    pool = rows.get("pool")
    if pool and pool.get("sample_seconds"):
        lines += [f"Sampling the pool ({pool['n_generated']:,} images): {pool['sample_seconds'] / 3600:.2f} hours "
                  f"({pool['n_generated'] / pool['sample_seconds'] * 3600:,.0f} images/hour)."]
    lines += ["", "## Quality", "",
              "ARC area: area under the accuracy-vs-radius curve of real-vs-generated discriminators adversarially "
              "trained at each Linf radius, normalised so 0 = chance, 1 = always told apart (Sehwag et al.). "
              "Conditional W1: class-weighted exact OT (L2 cost) between 500-image per-class draws, 5 draws (95% "
              "CI over draws), in pixels and in the converged real-data model's penultimate features; floor: two "
              "disjoint real draws, what a perfect generator reaches. Frechet: in those features, 10,000 images "
              "per side; floor: two disjoint real sets of 10,000.", ""]
    order = sorted((r for r in rows.values() if "frechet_features" in r), key=lambda r: (r["name"] == "pool", r["step"]))
    table = []
    for r in order:
        wi, wf = r["wasserstein_input"], r["wasserstein_features"]

        def w(d):
            fl = d.get("real_vs_real_floor")
            return (f"{d['mean']:.3f} [{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}]",
                    f"{fl['mean']:.3f}" if fl else "-")

        table.append([r["name"], f"{r['step']}", f"{r['n_generated']:,}",
                      f"{r['robust_discrimination']['area']:.3f}" if "robust_discrimination" in r else "-",
                      *w(wi), *w(wf), f"{r['frechet_features']:.2f}", f"{r['frechet_floor']:.2f}",
                      f"{r['quality_seconds']:.0f}", r["device"]])
    head = ["set", "generator step", "images", "ARC area", "cond. W1 pixels (95% CI)", "floor",
            "cond. W1 features (95% CI)", "floor", "Frechet features", "floor", "quality s", "device"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in table]
    write_table(RESULTS / "generated_pool", lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stages", nargs="+", default=["generator", "ladder", "sample", "quality"],
                    choices=["generator", "ladder", "sample", "quality", "report"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    ROOT.mkdir(parents=True, exist_ok=True)
    stages = {"generator": stage_generator, "ladder": stage_ladder, "sample": stage_sample,
              "quality": stage_quality, "report": lambda: None}
    for s in args.stages:
        stages[s]()
    report()


if __name__ == "__main__":
    main()
