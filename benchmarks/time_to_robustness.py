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

A row: one JSON line in results/time_to_robustness.jsonl with its test accuracies (clean, PGD-20, CW-20 on
all 10000 test points), its whole curve, its cost and its device; its weights are copied to
results/time_to_robustness_models/NAME.safetensors so a later session can run AutoAttack on them.
Workers claim rows through a claim file in the row's run directory, so several can run side by side
(one per core, --threads 1) and an interrupted row resumes from its checkpoint.

    python benchmarks/time_to_robustness.py --stage plateau [--stage baseline ...] [--only NAME ...]
    python benchmarks/time_to_robustness.py --list          # rows and their state
    python benchmarks/time_to_robustness.py --report-only   # rewrite results/time_to_robustness.md
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from common import RESULTS, append_row, done_rows, run_row

BASE = Path(__file__).parent / "configs" / "time_to_robustness.yaml"
TABLE = "time_to_robustness"
ROWS_FILE = RESULTS / f"{TABLE}.jsonl"
MODELS = RESULTS / f"{TABLE}_models"
RUNS = Path("runs/bench")
EPOCHS = 15  # the full schedule (choice and evidence: the regime at the top of the results file)
SEEDS = (0, 1, 2)
FRACTIONS = (0.3, 0.5, 0.7)
EVERY = 5  # Li et al. re-select every R epochs, a sizeable share of training (R / EPOCHS = 1/3)


def row(name: str, group: str, stage: str, seed: int = 0, overrides: tuple[str, ...] = ()) -> dict:
    """A row: its run is named `group` (so seeds of one method share a name for `leanrobust speedup`)."""
    return {"name": name, "group": group, "stage": stage, "seed": seed, "config": BASE,
            "overrides": [f"seed={seed}", *overrides]}


def rows() -> list[dict]:
    out = [row(f"pgd_at_e{EPOCHS}_s{s}", f"pgd_at_e{EPOCHS}", "baseline" if s else "plateau", s) for s in SEEDS]
    out.append(row(f"pgd_at_e{2 * EPOCHS}_s0", f"pgd_at_e{2 * EPOCHS}", "plateau", 0,
                   (f"optim.epochs={2 * EPOCHS}",)))
    out += [row(f"pgd_at_e{e}_s0", f"pgd_at_e{e}", "schedules", 0, (f"optim.epochs={e}",)) for e in (2, 3, 4, 6, 10)]
    out += [row(f"trades_e{EPOCHS}_s{s}", f"trades_e{EPOCHS}", "baseline", s, ("objective.name=trades",))
            for s in SEEDS]
    for f in FRACTIONS:
        k = round(100 * f)
        out += [row(f"random_{k}_s{s}", f"random_{k}", "random", s,
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
                out.append(row(f"{method}_{objective}_{k}_s0", f"{method}_{objective}_{k}", "li", 0,
                               (f"objective.name={obj}", *ov, f"selection.fraction={f}", f"selection.every={EVERY}")))
        if objective == "mart":
            out.append(row(f"mart_e{EPOCHS}_s0", f"mart_e{EPOCHS}", "li", 0, ("objective.name=mart",)))
    for f in FRACTIONS:
        k = round(100 * f)
        out += [{**row(f"{m}_{k}_s0", f"{m}_{k}", "margin", 0), "prepare": ("margin", m, f)}
                for m in ("prune_low_margin", "prune_high_margin", "puma")]
    for name, ov in {"gair_at": ("objective.name=gair_at",), "gair_trades": ("objective.name=gair_trades",),
                     "mail_at": ("objective.name=mail_at", "objective.params={bias: -0.5, slope: 10.0, normalize: false}")}.items():
        out.append(row(f"{name}_s0", name, "reweight", 0, ov))
    return out


MARGIN_MODEL = f"pgd_at_e{EPOCHS}_s0"  # margins come from the converged full-data model, as in PUMA
DEEPFOOL = {"deepfool_candidates": 3}  # the 3 top classes rank margins like all 10 (Spearman 0.99), 3x faster


def margins() -> dict:
    """DeepFool (Linf) margins of every training-pool sample under the converged full-data model, with the
    passes they cost (counted by a PassCounter: each row that uses them pays them) and clean correctness.
    Cached in the runs folder; recomputed from the committed weights when missing."""
    import numpy as np
    import torch

    from leanrobust import load
    from leanrobust.accounting import PassCounter
    from leanrobust.config import load_config
    from leanrobust.data.build import build_training_data
    from leanrobust.selection.scores import compute_scores, correctness

    cache = RUNS / TABLE / "margins.npz"
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    weights = MODELS / f"{MARGIN_MODEL}.safetensors"
    if not weights.exists():
        raise SystemExit(f"the margin stage needs {weights}: run the plateau stage first")
    torch.set_num_threads(1)
    cfg = load_config(BASE)
    pool = build_training_data(cfg.data, cfg.seed).pool  # no train_subset: the same pool for every seed
    model = load(weights)
    counter = PassCounter()
    counter.attach(model)
    t0 = time.perf_counter()
    scores = compute_scores(model, pool.images, pool.labels, "margin", eps=cfg.objective.eps,
                            norm=cfg.objective.norm, steps=cfg.objective.steps, batch_size=256, **DEEPFOOL)
    seconds = time.perf_counter() - t0
    correct = correctness(model, pool.images, pool.labels).numpy()
    out = {"margin": np.asarray(scores, np.float32), "labels": pool.labels.cpu().numpy(), "correct": correct,
           "grad_evals": np.array(counter.grad_evals + counter.forward_evals), "seconds": np.array(seconds)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def prepare_margin(method: str, fraction: float):
    """A row's `prepare`: the static selection of one margin method at one kept share, written in the row's
    folder; its info carries the scoring cost (added to the row's compute) and the share of kept samples
    the scoring model misclassifies."""
    def prepare(row_dir: Path) -> tuple[list[str], dict]:
        import numpy as np

        from leanrobust.selection.pruning import select_by_score
        from leanrobust.selection.puma import puma_selection

        m = margins()
        eps = 0.1
        if method == "puma":
            sel = puma_selection(m["margin"], m["labels"], fraction=fraction, eps=eps)
        else:
            sel = select_by_score(m["margin"], m["labels"], fraction=fraction, eps=eps,
                                  prune="lowest" if method == "prune_low_margin" else "highest")
        path = row_dir / "selection.npz"
        sel.save(path)
        kept = sel.indices.numpy()
        return [f"data.selection={path}"], {
            "scoring_grad_evals": int(m["grad_evals"]), "scoring_seconds": float(m["seconds"]),
            "scoring_model": MARGIN_MODEL, "misclassified_kept_share": float(1 - m["correct"][kept].mean()),
            "misclassified_pool_share": float(1 - m["correct"].mean()),
            "lowered_eps": int((sel.eps < eps).sum()), "kept": int(len(kept)),
            "median_margin_kept": float(np.median(m["margin"][kept]))}

    return prepare


STAGES = ("plateau", "schedules", "baseline", "random", "li", "margin", "reweight")


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
    keys = ("epoch", "grad_evals", "forward_evals", "train_seconds", "val_clean", "val_robust", "val_grad_evals",
            "val_seconds")
    pts = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if "val_robust" in r:
            pts.append({k: r[k] for k in keys if k in r})
    return pts


def run(selected: list[dict]) -> None:
    for r in selected:
        if r["name"] in done_rows(ROWS_FILE):
            continue
        row_dir = RUNS / TABLE / r["name"]
        if not claim(row_dir):
            print(f"[{TABLE}] {r['name']}: another worker has it", flush=True)
            continue
        try:
            if r["name"] in done_rows(ROWS_FILE):  # finished by another worker meanwhile
                continue
            print(f"[{TABLE}] running {r['name']} ({time.strftime('%H:%M:%S')})", flush=True)
            prep = prepare_margin(*r["prepare"][1:]) if r.get("prepare") else None
            out = run_row(TABLE, r["name"], r["config"], list(r["overrides"]), runs_dir=RUNS, run_name=r["group"],
                          prepare=prep)
            run_dir = row_dir / "run"
            MODELS.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run_dir / "model.safetensors", MODELS / f"{r['name']}.safetensors")
            append_row(ROWS_FILE, {**out, "group": r["group"], "stage": r["stage"], "seed": r["seed"],
                                   "curve": curve(run_dir)})
            print(f"[{TABLE}] done {r['name']} ({time.strftime('%H:%M:%S')})", flush=True)
        finally:
            (row_dir / "claim").unlink(missing_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stage", action="append", choices=STAGES, help="run these stages (default: none)")
    ap.add_argument("--only", nargs="*", help="run only these rows")
    ap.add_argument("--list", action="store_true", help="list the rows and their state")
    ap.add_argument("--report-only", action="store_true")
    a = ap.parse_args()
    all_rows = rows()
    if a.list:
        done = done_rows(ROWS_FILE)
        for r in all_rows:
            state = "done" if r["name"] in done else ("claimed" if (RUNS / TABLE / r["name"] / "claim").exists()
                                                      else "-")
            print(f"{r['stage']:<10} {r['name']:<28} {state}")
        return
    if not a.report_only:
        selected = [r for r in all_rows if (a.stage and r["stage"] in a.stage) or (a.only and r["name"] in a.only)]
        run(selected)
    from time_to_robustness_report import write_report  # the analysis: curves, speed-ups, verdicts

    write_report(all_rows)


if __name__ == "__main__":
    main()
