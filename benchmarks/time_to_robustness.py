"""Time to robustness on full Fashion-MNIST (issue 15): does a data-side method reach the robust accuracy
of full-data adversarial training with less compute? Every row is one training run that logs its learning
curve (held-out PGD-20 robust accuracy on 2000 fixed training images after every epoch, against the
cumulative grad evals of training + scoring + selection); the verdict compares the compute each row needs
to first reach a target (the full-data baseline's best held-out robust accuracy minus 1 point).

Rows are grouped in stages, run in this order (each stage's rows are resumable):
  plateau    full-data PGD-AT at the chosen epoch count and at twice it (is the baseline converged?)
  schedules  full data on shorter schedules (2, 3, 4, 6, 10 epochs): the baseline pruning must beat
  baseline   full-data PGD-AT and TRADES, 3 seeds
  random     random pruning at 30 / 50 / 70% kept (50%: 3 seeds)
  li         adaptive loss / GRAD-MATCH re-selection every R epochs, and Bullet-Train, with TRADES and MART
  margin     prune lowest / highest DeepFool margin and PUMA at 30 / 50 / 70% kept, Linf margins of the
             converged full-data model (its DeepFool passes count toward each row's cost; its own training
             is a one-off cost, reported apart, as the paper assumes a pretrained robust model)
  reweight   GAIR-AT, GAIR-TRADES, MAIL-AT (the published command's bias -0.5, slope 10)
  compression MFC (L2 covering; generalized loss at eps + eta, and at the plain eps), DM (2000 iterations,
             batch_real 256) and random at 10 (3 seeds) and 50 images per class, equal SGD steps, under Linf
             eps 0.1 and L2 eps 1.5 (the metric of MFC's bound)
  generated  the generated-data regime (issue 16), TRADES on the 58,000 real images + the 116,000-image pool of
             benchmarks/generated_pool.py (generated share 0.7 per batch, ceil(58,000 / 128) batches per epoch:
             the real-only rows' SGD steps): unpruned (3 seeds, and shorter schedules: the frontier); PUMA, prune
             highest margin without the radius change and random at 50% (3 seeds) / 70% kept, margins over the
             enlarged pool from the converged unpruned model; the stacked recipe (configs/recipes/
             fmnist_stacked_trades.yaml, 3 seeds). Against trades_e15 (real only, the same steps) it is also the
             proxy-distribution claim at equal steps on the full set

A row: one JSON line in results/time_to_robustness.jsonl with its test accuracies (clean, PGD-20, CW-20 on
all 10000 test points), its whole curve, its cost and its device; its weights are copied to
results/time_to_robustness_models/NAME.safetensors so a later session can run AutoAttack on them.
Workers claim rows through a claim file in the row's run directory, so several can run side by side
(one per core, --threads 1) and an interrupted row resumes from its checkpoint.

    python benchmarks/time_to_robustness.py --stage plateau [--stage baseline ...] [--only NAME ...]
    python benchmarks/time_to_robustness.py --list          # rows and their state
    python benchmarks/time_to_robustness.py --report-only   # rewrite results/time_to_robustness.md
    python benchmarks/time_to_robustness.py --gpu ...       # the CIFAR-10 size (PreActResNet-18, 100 epochs,
                                                            # re-selection every 20): time_to_robustness_cifar10.*
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from common import RESULTS, append_row, done_rows, run_row

from leanrobust.runs import METRICS, WEIGHTS

RUNS = Path("runs/bench")
SEEDS = (0, 1, 2)
FRACTIONS = (0.3, 0.5, 0.7)
GEN_POOL = RUNS / "generated_pool" / "pool_2x.npz"  # written by benchmarks/generated_pool.py
GEN_FRACTIONS = (0.5, 0.7)  # PUMA prunes 20-50% of the enlarged pool
RECIPE = Path(__file__).parent.parent / "configs" / "recipes" / "fmnist_stacked_trades.yaml"
# the recipe's own settings, as overrides of the base config (a test checks they give the recipe's config)
RECIPE_OVERRIDES = ("objective.name=bullet_trades", "selection.method=puma", "selection.fraction=0.5",
                    "selection.every=5", "selection.start_epoch=1", "selection.params={q: 0.1, floor: 0.0, scale: 1.0}")


@dataclass(frozen=True)
class Protocol:
    """One size of the protocol: its base config, full schedule (epochs), Li et al.'s re-selection interval
    R (every), the shorter full-data schedules, and its words for the results file."""

    table: str
    base: Path
    epochs: int
    every: int
    schedules: tuple[int, ...]
    regime: str
    title: str
    flag: str = ""  # the command-line flag that selects this size
    gen_pool: Path | None = None  # the generated pool of the generated-data regime (None: no such rows)

    @property
    def rows_file(self) -> Path:
        return RESULTS / f"{self.table}.jsonl"

    @property
    def models(self) -> Path:
        return RESULTS / f"{self.table}_models"

    def margin_model(self, regime: str = "real") -> str:
        """Margins come from the converged full-data model, as in PUMA (real + generated: its TRADES model)."""
        return f"gen_trades_e{self.epochs}_s0" if regime == "gen" else f"pgd_at_e{self.epochs}_s0"

    def gen_overrides(self) -> tuple[str, ...]:
        """The generated-data regime: the real pool + the generated pool, TRADES (as PUMA and Wang et al.)."""
        return (f"data.generated={self.gen_pool}", "objective.name=trades")


CONFIGS = Path(__file__).parent / "configs"
CPU = Protocol("time_to_robustness", CONFIGS / "time_to_robustness.yaml", epochs=15, every=5,
               schedules=(2, 3, 4, 6, 10),  # R = 5 of 15: re-selection a third of training, as R = 20 of 60-100
               regime="Half-width SmallCNN (TRADES' MNIST net), SGD lr 0.05 cosine, batch 128, {epochs} epochs; "
                      "PGD-10 training at Linf eps 0.1 (step 0.25 eps); all 58,000 Fashion-MNIST training images "
                      "outside the held-out set", title="full Fashion-MNIST, Linf eps 0.1", gen_pool=GEN_POOL)
GPU = Protocol("time_to_robustness_cifar10", CONFIGS / "time_to_robustness_cifar10.yaml", epochs=100, every=20,
               schedules=(10, 20, 30, 50),  # R = 20 as in the CORDS defaults Li et al. build on
               regime="PreActResNet-18, SGD lr 0.1 piecewise (x0.1 at 50% and 75%), batch 128, {epochs} epochs; "
                      "PGD-10 training at Linf eps 8/255 (step 2/255); all 48,000 CIFAR-10 training images outside "
                      "the held-out set (GPU)", title="CIFAR-10, Linf 8/255", flag="--gpu ")


def row(p: Protocol, name: str, group: str, stage: str, seed: int = 0, overrides: tuple[str, ...] = ()) -> dict:
    """A row: its run is named `group` (so seeds of one method share a name for `leanrobust speedup`)."""
    return {"name": name, "group": group, "stage": stage, "seed": seed, "config": p.base,
            "overrides": [f"seed={seed}", f"optim.epochs={p.epochs}", *overrides]}


def rows(p: Protocol = CPU) -> list[dict]:
    E = p.epochs
    out = [row(p, f"pgd_at_e{E}_s{s}", f"pgd_at_e{E}", "baseline" if s else "plateau", s) for s in SEEDS]
    out.append(row(p, f"pgd_at_e{2 * E}_s0", f"pgd_at_e{2 * E}", "plateau", 0, (f"optim.epochs={2 * E}",)))
    out += [row(p, f"pgd_at_e{e}_s0", f"pgd_at_e{e}", "schedules", 0, (f"optim.epochs={e}",)) for e in p.schedules]
    out += [row(p, f"trades_e{E}_s{s}", f"trades_e{E}", "baseline", s, ("objective.name=trades",)) for s in SEEDS]
    for f in FRACTIONS:
        k = round(100 * f)
        out += [row(p, f"random_{k}_s{s}", f"random_{k}", "random", s,
                    ("selection.method=random", f"selection.fraction={f}")) for s in (SEEDS if k == 50 else (0,))]
    li = {"loss": ("selection.method=loss",), "gradmatch": ("selection.method=gradmatch",),
          "gradmatch_bullet": ("selection.method=gradmatch",)}
    for objective in ("trades", "mart"):
        for method, ov in li.items():
            obj = f"bullet_{objective}" if method.endswith("bullet") and objective == "trades" else objective
            if method.endswith("bullet") and objective == "mart":
                continue  # Bullet-Train is defined for PGD-AT and TRADES in this project
            for f in FRACTIONS:
                k = round(100 * f)
                out.append(row(p, f"{method}_{objective}_{k}_s0", f"{method}_{objective}_{k}", "li", 0,
                               (f"objective.name={obj}", *ov, f"selection.fraction={f}", f"selection.every={p.every}")))
        if objective == "mart":
            out.append(row(p, f"mart_e{E}_s0", f"mart_e{E}", "li", 0, ("objective.name=mart",)))
    for f in FRACTIONS:
        k = round(100 * f)
        out += [{**row(p, f"{m}_{k}_s0", f"{m}_{k}", "margin", 0), "prepare": (m, f)}
                for m in ("prune_low_margin", "prune_high_margin", "puma")]
    for name, ov in {"gair_at": ("objective.name=gair_at",), "gair_trades": ("objective.name=gair_trades",),
                     "mail_at": ("objective.name=mail_at",  # MAIL-AT's published command; weights not normalised
                                 "objective.params={bias: -0.5, slope: 10.0, normalize: false}")}.items():
        out.append(row(p, f"{name}_s0", name, "reweight", 0, ov))
    return out + compression_rows(p) + generated_rows(p)


def generated_rows(p: Protocol) -> list[dict]:
    """The generated-data regime (issue 16): unpruned TRADES on real + generated (3 seeds, and the shorter
    schedules that draw its frontier), the margin methods and random pruning on the enlarged pool, the recipe."""
    if p.gen_pool is None:
        return []
    E, gen = p.epochs, p.gen_overrides()
    out = [row(p, f"gen_trades_e{E}_s{s}", f"gen_trades_e{E}", "generated", s, gen) for s in SEEDS]
    out += [row(p, f"gen_trades_e{e}_s0", f"gen_trades_e{e}", "generated", 0, (*gen, f"optim.epochs={e}"))
            for e in p.schedules if e >= 4]
    for f in GEN_FRACTIONS:
        k, seeds = round(100 * f), (SEEDS if f == 0.5 else (0,))
        out += [{**row(p, f"gen_{m}_{k}_s{s}", f"gen_{m}_{k}", "generated", s, gen), "prepare": (m, f, "gen")}
                for m in ("puma", "prune_high_margin") for s in (seeds if m == "puma" else (0,))]
        out += [row(p, f"gen_random_{k}_s{s}", f"gen_random_{k}", "generated", s,
                    (*gen, "selection.method=random", f"selection.fraction={f}")) for s in seeds]
    out += [row(p, f"gen_recipe_s{s}", "gen_recipe", "generated", s, (*gen, *RECIPE_OVERRIDES)) for s in SEEDS]
    return out


DEEPFOOL = {"deepfool_candidates": 3}  # the 3 top classes rank margins like all 10 (Spearman 0.99), 3x faster


def margins(p: Protocol, regime: str = "real") -> dict:
    """DeepFool (Linf) margins of every training-pool sample under the converged full-data model, with the
    passes they cost (counted by a PassCounter: each row that uses them pays them) and clean correctness.
    regime 'gen': over the enlarged pool (real + generated), under the converged real + generated model.
    Cached in the runs folder; recomputed from the committed weights when missing."""
    import numpy as np
    import torch

    from leanrobust import load
    from leanrobust.accounting import PassCounter
    from leanrobust.data.build import build_training_data
    from leanrobust.io import write_npz
    from leanrobust.selection.scores import compute_scores, correctness

    cache = RUNS / p.table / ("margins_gen.npz" if regime == "gen" else "margins.npz")
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    weights = p.models / f"{p.margin_model(regime)}.safetensors"
    if not weights.exists():
        raise SystemExit(f"the margin rows need {weights}: run the row {p.margin_model(regime)} first")
    cfg = margin_config(p, regime)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    pool = build_training_data(cfg.data, cfg.seed).pool  # no train_subset: the same pool for every seed
    model = load(weights, device="cuda" if torch.cuda.is_available() else "cpu")
    counter = PassCounter()
    counter.attach(model)
    t0 = time.perf_counter()
    scores = compute_scores(model, pool.images, pool.labels, "margin", eps=cfg.objective.eps,
                            norm=cfg.objective.norm, steps=cfg.objective.steps, batch_size=256, **DEEPFOOL)
    seconds = time.perf_counter() - t0
    correct = correctness(model, pool.images, pool.labels).numpy()
    out = {"margin": np.asarray(scores, np.float32), "labels": pool.labels.cpu().numpy(), "correct": correct,
           "grad_evals": np.array(counter.grad_evals + counter.forward_evals), "seconds": np.array(seconds)}
    write_npz(cache, **out)
    return out


def margin_config(p: Protocol, regime: str):
    """The config whose pool the margins cover: the base config, with the generated pool in regime 'gen'."""
    from leanrobust.config import load_config

    return load_config(p.base, list(p.gen_overrides()) if regime == "gen" else None)


def prepare_margin(p: Protocol, method: str, fraction: float, regime: str = "real"):
    """A row's `prepare`: the static selection of one margin method at one kept share, written in the row's
    folder; its info carries the scoring cost (added to the row's compute) and the share of kept samples
    the scoring model misclassifies (and, in regime 'gen', the generated share of what is kept)."""
    def prepare(row_dir: Path) -> tuple[list[str], dict]:
        import numpy as np

        from leanrobust.data.build import build_training_data
        from leanrobust.data.fingerprint import run_fingerprint
        from leanrobust.selection.pruning import select_by_score
        from leanrobust.selection.puma import puma_selection

        m = margins(p, regime)
        cfg = margin_config(p, regime)
        eps = cfg.objective.eps
        data = build_training_data(cfg.data, cfg.seed)
        fingerprint = run_fingerprint(cfg, data.pool)  # checked by the row's run
        if method == "puma":
            sel = puma_selection(m["margin"], m["labels"], fraction=fraction, eps=eps)
        else:
            sel = select_by_score(m["margin"], m["labels"], fraction=fraction, eps=eps,
                                  prune="lowest" if method == "prune_low_margin" else "highest")
        path = row_dir / "selection.npz"
        sel.save(path, fingerprint=fingerprint)
        kept = sel.indices.numpy()
        gen_share = {"generated_kept_share": float((kept >= data.n_real).mean()),
                     "generated_pool_share": float(1 - data.n_real / len(data.pool))} if regime == "gen" else {}
        return [f"data.selection={path}"], {
            **gen_share, "scoring_grad_evals": int(m["grad_evals"]), "scoring_seconds": float(m["seconds"]),
            "scoring_model": p.margin_model(regime), "misclassified_kept_share": float(1 - m["correct"][kept].mean()),
            "misclassified_pool_share": float(1 - m["correct"].mean()),
            "lowered_eps": int((sel.eps < eps).sum()), "kept": int(len(kept)),
            "median_margin_kept": float(np.median(m["margin"][kept]))}

    return prepare


# ----- compression: MFC against DM and random at equal size -------------------------------------------
# The MFC paper's regime: a few real centres per class, adversarial training on them alone. Every row trains
# the same number of SGD steps (batch 64), so a size's rows cost the same; what differs is the compression
# (its seconds are reported, its passes are not SGD passes). Threat models: Linf eps 0.1 (the protocol's) and
# L2 eps 1.5, the metric MFC's bound is written for (its covering metric is L2). Compressions are made once
# (seed 0: MFC is deterministic, DM and random are one draw each, the seeds vary the training) and trained
# with 3 seeds at 10 images per class, 1 at 50.
COMPRESS_STEPS = 1600  # SGD steps of batch 64 per row: ~100k samples, many passes over the kept images
COMPRESS_CURVE_POINTS = 8  # held-out PGD-20 points along a row's training
COMPRESS_THREATS = {"linf": 0.1, "l2": 1.5}
COMPRESS_SEEDS = {10: SEEDS, 50: (0,)}
# DM: at least 2000 iterations with batch_real 256 (issue 15; the reference runs 20000) where it fits: at 10
# ipc about an hour here; at 50 ipc 2000 iterations take about 6 hours of this CPU, so the CPU size has no DM
# row there (the GPU size does).
DM_ITERATIONS = {10: 2000}
# method -> (compress method, options, threat models). mfc_gen: centres attacked at eps + eta (the generalized
# loss, the bound's form; a vacuous covering is still trained, with force, so the table shows what the bound
# costs); mfc_plain: the same centres and coverage weights at the plain eps. Both are L2 coverings (the authors'
# metric); an L2 radius also bounds the Linf distance, so the Linf rows keep a valid (if loose) bound.
COMPRESS_METHODS = {"mfc_gen": ("mfc", {"metric": "l2", "force": True}, ("l2",)),
                    "mfc_plain": ("mfc", {"metric": "l2", "plain_eps": True}, ("linf", "l2")),
                    "dm": ("dm", {"batch_real": 256}, ("linf", "l2")),
                    "random": ("random", {}, ("linf", "l2"))}


def compression_rows(p: Protocol) -> list[dict]:
    out = []
    for ipc, seeds in COMPRESS_SEEDS.items():
        for method, (kind, _, threats) in COMPRESS_METHODS.items():
            if kind == "dm" and ipc not in DM_ITERATIONS:
                continue
            for norm in threats:
                for s in seeds:
                    group = f"{method}_{norm}_ipc{ipc}"
                    out.append({**row(p, f"{group}_s{s}", group, "compression", s, (
                        f"objective.norm={norm}", f"objective.eps={COMPRESS_THREATS[norm]}", "optim.batch_size=64",
                        *(("data.weighting=sample",) if kind == "mfc" else ()))),
                        "prepare": (method, ipc, norm)})
    return out


def compression_epochs(k: int, steps: int = COMPRESS_STEPS) -> int:
    """Epochs of ceil(k / 64) batches that make `steps` SGD steps (at least that many)."""
    return max(1, math.ceil(steps / math.ceil(k / 64)))


def prepare_compression(p: Protocol, method: str, ipc: int, norm: str):
    """A row's `prepare`: the compressed pool or selection (made once per method, size and threat model, in
    runs/bench/<table>/compressed/), its report in the row's info, and the epochs that make COMPRESS_STEPS
    steps on the k images it keeps; curve points every 1/COMPRESS_CURVE_POINTS of training."""
    def prepare(row_dir: Path) -> tuple[list[str], dict]:
        from leanrobust.selection.compress import compress

        kind, kw, _ = COMPRESS_METHODS[method]
        # DM's images do not depend on the threat model (one condensation serves both); a Selection carries
        # each sample's eps, so coverings and random subsets are made per threat model
        out = RUNS / p.table / "compressed" / (f"dm_ipc{ipc}.npz" if kind == "dm" else f"{method}_{norm}_ipc{ipc}.npz")
        report_file = out.with_suffix(".json")
        if not report_file.exists():
            extra = {"iterations": DM_ITERATIONS[ipc]} if kind == "dm" else {}
            compress(p.base, kind, ipc=ipc, out=out, overrides=[f"objective.norm={norm}",
                                                                f"objective.eps={COMPRESS_THREATS[norm]}"],
                     **kw, **extra)
        rep = json.loads(report_file.read_text())
        k = int(rep["k"])
        epochs = compression_epochs(k)
        every = max(1, (epochs * math.ceil(k / 64) * 64 * (1 + 10)) // COMPRESS_CURVE_POINTS)  # PGD-10: 11 passes
        info = {"k": k, "compress_seconds": rep.get("seconds"), "compress_method": kind, "threat": norm,
                "eps": COMPRESS_THREATS[norm], "steps": epochs * math.ceil(k / 64), **{
                    key: rep[key] for key in ("iterations", "vacuous", "generalized_radius", "nn_median",
                                              "common_radius", "generalized_loss") if key in rep}}
        if "classes" in rep:
            info["eta_mean"] = sum(c["eta"] for c in rep["classes"]) / len(rep["classes"])
        key = "data.pool" if kind == "dm" else "data.selection"
        return [f"{key}={out}", f"optim.epochs={epochs}", f"validation.every_grad_evals={every}",
                f"validation.every_epochs={epochs}"], info

    return prepare


STAGES = ("plateau", "schedules", "baseline", "random", "li", "margin", "reweight", "compression", "generated")


# ----- workers ---------------------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim(row_dir: Path) -> bool:
    """Take the row unless a live worker holds it (a dead worker's claim is taken over: the row resumes)."""
    row_dir.mkdir(parents=True, exist_ok=True)
    f = row_dir / "claim"
    while True:
        try:
            fd = os.open(f, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(f.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _alive(pid):
                return False
            f.unlink(missing_ok=True)
            continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return True


def curve(run_dir: Path) -> list[dict]:
    """The run's learning curve, compact: one point per validation, in order of compute."""
    keys = ("epoch", "grad_evals", "forward_evals", "train_seconds", "val_clean", "val_robust", "val_n",
            "val_grad_evals", "val_seconds")
    pts = []
    for line in (run_dir / METRICS).read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if "val_robust" in r:
            pts.append({k: r[k] for k in keys if k in r})
    return pts


def run(p: Protocol, selected: list[dict], device: str | None = None) -> None:
    for r in selected:
        if r["name"] in done_rows(p.rows_file):
            continue
        row_dir = RUNS / p.table / r["name"]
        if not claim(row_dir):
            print(f"[{p.table}] {r['name']}: another worker has it", flush=True)
            continue
        try:
            if r["name"] in done_rows(p.rows_file):  # finished by another worker meanwhile
                continue
            print(f"[{p.table}] running {r['name']} ({time.strftime('%H:%M:%S')})", flush=True)
            prep = None
            if r.get("prepare"):
                prep = (prepare_compression if r["stage"] == "compression" else prepare_margin)(p, *r["prepare"])
            ov = list(r["overrides"]) + ([f"device={device}"] if device else [])
            out = run_row(p.table, r["name"], r["config"], ov, runs_dir=RUNS, run_name=r["group"], prepare=prep)
            run_dir = row_dir / "run"
            p.models.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run_dir / WEIGHTS, p.models / f"{r['name']}.safetensors")
            append_row(p.rows_file, {**out, "group": r["group"], "stage": r["stage"], "seed": r["seed"],
                                     "curve": curve(run_dir)})
            print(f"[{p.table}] done {r['name']} ({time.strftime('%H:%M:%S')})", flush=True)
        finally:
            (row_dir / "claim").unlink(missing_ok=True)


def autoattack_stage(p: Protocol, names: list[str], n: int, version: str, device: str | None) -> None:
    """Standard (or fast: APGD-CE + APGD-T, an upper bound) AutoAttack on the first n test points of each named
    row's committed weights; resumable per batch through a state file in the row's folder; one line per
    finished (row, n, version) in results/<table>_aa.jsonl."""
    import torch

    from common import device_label, git_commit
    from leanrobust import load
    from leanrobust.config import load_config
    from leanrobust.data.build import load_test_set
    from leanrobust.evaluate import evaluate_model

    out = RESULTS / f"{p.table}_aa.jsonl"
    cfg = load_config(p.base)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    images, labels = load_test_set(cfg.data)
    for name in names:
        key = f"{name}@{n}:{version}"
        prev = done_rows(out).get(key)
        if prev and "pgd20" in prev:
            continue
        row_dir = RUNS / p.table / name
        if not claim(row_dir / "aa"):
            continue
        try:
            model = load(p.models / f"{name}.safetensors", device=dev)
            t0 = time.perf_counter()
            # PGD-20 on the same points gives the PGD-vs-AutoAttack gap (a masking check); a row from before
            # it was recorded gets it on a rerun, its finished AutoAttack read back from the state file
            res = evaluate_model(model, images, labels, eps=cfg.objective.eps, norm=cfg.objective.norm,
                                 attacks=["pgd20", "autoattack"], n=n, autoattack_version=version, device=dev,
                                 state_dir=row_dir / "aa", progress=False)
            append_row(out, {"name": key, "row": name, "n": n, "version": version,
                             "autoattack": res["robust_acc"]["autoattack"], "pgd20": res["robust_acc"]["pgd20"],
                             "clean_acc": res["clean_acc"], "masking": res["masking"],
                             "seconds": prev["seconds"] if prev else time.perf_counter() - t0,
                             "device": device_label(dev), "git": git_commit(),
                             "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
            print(f"[{p.table}] AutoAttack {key}: {100 * res['robust_acc']['autoattack']:.2f}%", flush=True)
        finally:
            (row_dir / "aa" / "claim").unlink(missing_ok=True)


def select_rows(all_rows: list[dict], stages: list[str] | None, only: list[str] | None) -> list[dict]:
    """The rows to run: those of the given stages, narrowed to the named rows when --only is given too (a
    name alone selects its row whatever its stage). An unknown name is an error, not an empty run."""
    unknown = sorted(set(only or ()) - {r["name"] for r in all_rows})
    if unknown:
        raise SystemExit(f"unknown rows: {', '.join(unknown)} (--list shows them)")
    return [r for r in all_rows if (stages or only) and (not stages or r["stage"] in stages)
            and (not only or r["name"] in only)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stage", action="append", choices=STAGES, help="run these stages (default: none)")
    ap.add_argument("--only", nargs="*", help="run only these rows (with --stage: only those of its rows)")
    ap.add_argument("--list", action="store_true", help="list the rows and their state")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--gpu", action="store_true", help="the CIFAR-10 size of the protocol (PreActResNet-18)")
    ap.add_argument("--device", help="override the config's device (e.g. cuda:1)")
    ap.add_argument("--autoattack", nargs="+", metavar="ROW", help="AutoAttack these finished rows' weights")
    ap.add_argument("--aa-n", type=int, default=1000, help="test points for --autoattack (first n of the fixed order)")
    ap.add_argument("--aa-version", choices=["standard", "fast"], default="standard")
    a = ap.parse_args()
    p = GPU if a.gpu else CPU
    all_rows = rows(p)
    if a.list:
        done = done_rows(p.rows_file)
        for r in all_rows:
            state = "done" if r["name"] in done else ("claimed" if (RUNS / p.table / r["name"] / "claim").exists()
                                                      else "-")
            print(f"{r['stage']:<10} {r['name']:<28} {state}")
        return
    if a.autoattack:
        autoattack_stage(p, a.autoattack, a.aa_n, a.aa_version, a.device)
    elif not a.report_only:
        run(p, select_rows(all_rows, a.stage, a.only), a.device)
    from time_to_robustness_report import write_report  # the analysis: curves, speed-ups, verdicts

    write_report(all_rows, p)


if __name__ == "__main__":
    main()
