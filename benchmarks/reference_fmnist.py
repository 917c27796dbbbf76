"""Reference result: full Fashion-MNIST, SmallCNN (TRADES' MNIST net), Linf eps 0.1, PGD-AT and
TRADES; clean, PGD-20 and CW-20 on the full test set, standard AutoAttack on the full test set, and
the wall time.

Regime (configs/fmnist_smallcnn_pgdat.yaml, configs/fmnist_smallcnn_trades.yaml): SmallCNN width 1, SGD
lr 0.05 cosine, batch 128, --epochs 10; PGD-10 training at Linf eps 0.1 (TRADES: beta 6); 59,000
training images, 1000 held out for model selection. Eval: clean / PGD-20 / CW-20 on all 10,000 test
points; AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square; seed 0) on all 10,000, in chunks.

Rows:
  pgd_at_e10, trades_e10 (reference_fmnist.jsonl)   train, evaluate clean / PGD-20 / CW-20, and copy the
      weights to results/reference_fmnist_models/NAME.safetensors (committed: the AutoAttack stage of a
      later session evaluates exactly these weights)
  {model}_aa_{start}_{end} (reference_fmnist_aa.jsonl)   standard AutoAttack on test points [start, end)
      of one model, one row per chunk (AutoAttack treats points independently, so the chunks add up to
      the full-test-set evaluation); an interrupted chunk resumes per batch from its state file
  {model} (reference_fmnist_eval.jsonl, --reeval)   clean / PGD-20 / CW-20 of the committed weights
      under the current code; the table prefers them to the training row's numbers
Both stages are resumable, so that CPU sessions of a few hours can finish it (a GPU does it in one);
--aa-minutes stops starting new chunks after that many minutes.

    python benchmarks/reference_fmnist.py                       # both stages, all chunks
    python benchmarks/reference_fmnist.py --aa-minutes 60       # as much AutoAttack as fits an hour
    python benchmarks/reference_fmnist.py --markdown            # rewrite the table only
    python benchmarks/reference_fmnist.py --reeval              # clean/PGD-20/CW-20 of the weights, current code

On a CPU, single-thread workers side by side, one per core, each taking every N-th chunk
(--shard 0/2 --threads 1 and --shard 1/2 --threads 1), finish about 10% more chunks per hour
than one two-thread worker (869 s per 500-point chunk each vs 430-520 s, 2 cores). Each
worker appends only the rows of its own chunks.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch

from common import RESULTS, append_row, device_label, done_rows, git_commit, pct, read_rows, run_table, write_table
from leanrobust import load
from leanrobust.config import load_config
from leanrobust.attacks import autoattack
from leanrobust.data import load_dataset, to_float
from leanrobust.data.build import load_test_set
from leanrobust.evaluate import evaluate_model, predict
from leanrobust.runs import WEIGHTS, resolve_device

CONFIGS = Path(__file__).parents[1] / "configs"
MODELS = RESULTS / "reference_fmnist_models"
RUNS = Path("runs/bench")
N_TEST = 10000
EPS = 0.1
TRAINER_ORDER = "load_test_set"  # reference_fmnist_eval rows: the test points in the trainer's evaluation order


def train_rows(epochs: int, device: str) -> list[dict]:
    ov = [f"optim.epochs={epochs}", "eval.attacks=[pgd20,cw20]", "eval.n=null", f"device={device}", "progress=false"]
    return [{"name": f"pgd_at_e{epochs}", "config": CONFIGS / "fmnist_smallcnn_pgdat.yaml", "overrides": ov},
            {"name": f"trades_e{epochs}", "config": CONFIGS / "fmnist_smallcnn_trades.yaml", "overrides": ov}]


def save_weights(rows: list[dict]) -> None:
    """Copy each trained row's model.safetensors next to the results (once)."""
    MODELS.mkdir(parents=True, exist_ok=True)
    for r in rows:
        dst = MODELS / f"{r['name']}.safetensors"
        src = RUNS / "reference_fmnist" / r["name"] / "run" / WEIGHTS
        if not dst.exists() and src.exists():
            shutil.copyfile(src, dst)


def autoattack_chunks(names: list[str], chunk: int, minutes: float | None, device: str, batch_size: int,
                      shard: tuple[int, int] = (0, 1)) -> None:
    """Standard AutoAttack, Linf eps 0.1, seed 0, one row per (model, chunk of test points);
    shard (k, n): only the chunks whose index is k modulo n (for workers side by side)."""
    path = RESULTS / "reference_fmnist_aa.jsonl"
    images, labels = load_dataset("fashion_mnist", "test")
    dev = resolve_device(device)
    t_start = time.perf_counter()
    for name in names:
        weights = MODELS / f"{name}.safetensors"
        if not weights.exists():
            print(f"[reference_fmnist] no weights for {name} yet ({weights}): train it first", flush=True)
            continue
        model = load(weights, device=str(dev))
        for start in range(0, N_TEST, chunk):
            end = min(start + chunk, N_TEST)
            row_name = f"{name}_aa_{start}_{end}"
            finished = done_rows(path)  # re-read: another worker (e.g. a later --shard) may have finished it
            if row_name in finished or (start // chunk) % shard[1] != shard[0]:
                continue
            if minutes is not None and time.perf_counter() - t_start > 60 * minutes:
                print(f"[reference_fmnist] --aa-minutes {minutes} reached; {row_name} and later chunks left", flush=True)
                return
            print(f"[reference_fmnist] AutoAttack {row_name}", flush=True)
            state = RUNS / "reference_fmnist" / "aa_state" / f"{row_name}.json"
            state.parent.mkdir(parents=True, exist_ok=True)
            x, y = to_float(images[start:end]).to(dev), labels[start:end].to(dev)
            t = time.perf_counter()
            res = autoattack(model, x, y, eps=EPS, norm="linf", version="standard", seed=0,
                             batch_size=batch_size, state_path=state)
            clean = int((predict(model, x, 500, dev) == y.cpu()).sum())
            row = {"name": row_name, "model": name, "start": start, "end": end, "n": end - start,
                   "clean_correct": clean, "robust_correct": int(res.robust.sum()),
                   "seconds": time.perf_counter() - t, "device": device_label(device), "threads": torch.get_num_threads(), "batch_size": batch_size,
                   "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
            append_row(path, row)


def reevaluate(specs: list[dict], device: str) -> None:
    """Clean / PGD-20 / CW-20 of the committed weights on all 10000 test points under the current code
    (a robust point must be correct clean too), with the row's own config (eps, seed, eval batch): one
    row per model in reference_fmnist_eval.jsonl, which the table prefers to the training row's numbers
    (those predate the clean-correct count)."""
    path = RESULTS / "reference_fmnist_eval.jsonl"
    finished = done_rows(path)
    dev = resolve_device(device)
    for spec in specs:
        name = spec["name"]
        weights = MODELS / f"{name}.safetensors"
        # rows without "order" attacked the points in file order, not the trainer's: redo them
        if finished.get(name, {}).get("order") == TRAINER_ORDER or not weights.exists():
            continue
        print(f"[reference_fmnist] re-evaluating {name} (PGD-20, CW-20, all test points)", flush=True)
        cfg = load_config(spec["config"], spec["overrides"])
        # the test set in the trainer's order, so each point gets the random start it got in the training
        # row's evaluation and only the robust count differs
        images, labels = load_test_set(cfg.data)
        ev = evaluate_model(load(weights, device=str(dev)), images, labels, eps=cfg.objective.eps,
                            norm=cfg.objective.norm, attacks=["pgd20", "cw20"], n=None,
                            batch_size=cfg.eval.batch_size, device=dev, seed=cfg.seed, progress=False)
        append_row(path, {"name": name, "clean_acc": ev["clean_acc"], "robust_acc": ev["robust_acc"], "n": ev["n"],
                          "eval_seconds": ev["eval_seconds"], "device": device_label(device), "git": git_commit(),
                          "threads": torch.get_num_threads(), "order": TRAINER_ORDER,
                          "finished": time.strftime("%Y-%m-%d %H:%M:%S")})


def aa_totals(name: str) -> tuple[int, int, float, set]:
    """(points evaluated, robust points, seconds, devices) over the finished chunks of one model."""
    rows = [r for r in done_rows(RESULTS / "reference_fmnist_aa.jsonl").values() if r["model"] == name]
    return (sum(r["n"] for r in rows), sum(r["robust_correct"] for r in rows), sum(r["seconds"] for r in rows),
            {r["device"] for r in rows})


def covered(name: str) -> str:
    """The test-point ranges of one model's finished chunks, merged: '0-9000, 9500-10000'."""
    spans = sorted((r["start"], r["end"]) for r in done_rows(RESULTS / "reference_fmnist_aa.jsonl").values()
                   if r["model"] == name)
    merged: list[list[int]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return ", ".join(f"{a}-{b}" for a, b in merged)


def markdown(rows: list[dict]) -> str:
    lines = ["# Reference: full Fashion-MNIST, SmallCNN, Linf eps 0.1", "",
             "Command: `python benchmarks/reference_fmnist.py [--aa-minutes M]` (training rows in "
             "reference_fmnist.jsonl, AutoAttack chunks in reference_fmnist_aa.jsonl, weights in "
             "reference_fmnist_models/).",
             "Clean / PGD-20 / CW-20 on the full test set (10000 points, the model selected on the validation "
             "split); AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square; seed 0) on the test points "
             "evaluated so far (500-point chunks; the AA points column lists the test-point ranges).", "",
             "| row | device | epochs (best) | clean | PGD-20 | CW-20 | AutoAttack | AA points | train s | eval s | AA s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    reevals = {k: v for k, v in done_rows(RESULTS / "reference_fmnist_eval.jsonl").items() if v.get("order") == TRAINER_ORDER}
    for r in rows:
        re_ev = reevals.get(r["name"])
        ra, ev = (re_ev or r)["robust_acc"], r["eval"]
        clean = (re_ev or r)["clean_acc"]
        n_aa, rob, aa_s, aa_dev = aa_totals(r["name"])
        aa = pct(rob / n_aa) if n_aa else "-"
        note = f"{n_aa}/{N_TEST}" + (f" ({covered(r['name'])})" if 0 < n_aa < N_TEST else "") + ("" if not aa_dev or aa_dev == {r["device"]} else f" ({', '.join(sorted(aa_dev))})")
        lines.append(f"| {r['name']} | {r['device']} | {r.get('epochs')} ({r.get('best_epoch')}) | {pct(clean)} | "
                     f"{pct(ra.get('pgd20'))} | {pct(ra.get('cw20'))} | {aa} | {note} | {r['train_seconds']:.0f} | "
                     f"{ev.get('eval_seconds', 0):.0f} | {aa_s:.0f} |")
    chunks = list(done_rows(RESULTS / "reference_fmnist_aa.jsonl").values())
    for dev in sorted({c["device"] for c in chunks}):
        per_point = [c["seconds"] / c["n"] for c in chunks if c["device"] == dev]
        lines += ["", f"AutoAttack time per test point on {dev}: {min(per_point):.2f}-{max(per_point):.2f} s over "
                      f"{len(per_point)} chunks (wall time, so it moves with the machine's load)."]
    redone = [r for r in rows if r["name"] in reevals]
    if redone:
        lines += ["", "Clean / PGD-20 / CW-20 of " + ", ".join(r["name"] for r in redone) + " come from a re-evaluation "
                  "of the committed weights under the current code (`--reeval`, reference_fmnist_eval.jsonl: "
                  + "; ".join(f"{r['name']} at {reevals[r['name']]['git']} on {reevals[r['name']]['device']}"
                              for r in redone)
                  + "), where a point is robust only if it is also correct clean, as AutoAttack counts. The training "
                  "rows' own numbers, counted before 2026-12-02 without that condition: "
                  + "; ".join(f"{r['name']} {pct(r['clean_acc'])} / {pct(r['robust_acc'].get('pgd20'))} / "
                              f"{pct(r['robust_acc'].get('cw20'))}" for r in redone) + "."]
    spread = [e for e in read_rows(RESULTS / "reference_fmnist_eval.jsonl") if e.get("order") != TRAINER_ORDER]
    if spread:
        lines += ["", "Run-to-run spread of the attacks: an earlier re-evaluation attacked the test points in file "
                  "order, so every point got another random start (same weights, the current robust count): "
                  + "; ".join(f"{e['name']} {pct(e['clean_acc'])} / {pct(e['robust_acc'].get('pgd20'))} / "
                              f"{pct(e['robust_acc'].get('cw20'))}" for e in spread) + "."]
    stale = [r for r in rows if r["name"] not in reevals]
    if stale:
        lines += ["", "PGD-20 / CW-20 of " + ", ".join(r["name"] for r in stale) + " were computed before "
                  "2026-12-02, when a point counted as robust if the attack's end point was classified correctly; "
                  "now (and in AutoAttack) it must also be correct clean. The two differ only on points "
                  "misclassified clean that PGD's random start and ascent land on the correct side, so these "
                  "columns may be a hair high (`--reeval` recomputes them)."]
    if any(aa_totals(r["name"])[0] < N_TEST for r in rows):
        lines += ["", "AutoAttack is not yet on the full test set for every row: the AA column covers only the "
                      "points in the AA points column (rerun the command to add chunks)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--aa-chunk", type=int, default=500, help="test points per AutoAttack row")
    ap.add_argument("--aa-minutes", type=float, default=None, help="start no AutoAttack chunk after this many minutes")
    ap.add_argument("--aa-batch", type=int, default=250)
    ap.add_argument("--skip-train", action="store_true", help="only the AutoAttack stage, on the committed weights")
    ap.add_argument("--markdown", action="store_true", help="only rewrite the table from the committed rows")
    ap.add_argument("--reeval", action="store_true",
                    help="only re-evaluate clean / PGD-20 / CW-20 of the committed weights under the current code")
    ap.add_argument("--models", nargs="+", default=None, help="AutoAttack only these models (default: all)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads for this worker")
    ap.add_argument("--shard", default="0/1", help="K/N: only every N-th AutoAttack chunk, from the K-th")
    args = ap.parse_args()
    k, _, n = args.shard.partition("/")
    if not (k.isdigit() and n.isdigit() and 0 <= int(k) < int(n)):
        raise SystemExit(f"--shard wants K/N with 0 <= K < N, got {args.shard!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = train_rows(args.epochs, args.device)
    if args.markdown or args.skip_train or args.reeval:
        done = done_rows(RESULTS / "reference_fmnist.jsonl")
        trained = [done[r["name"]] for r in rows if r["name"] in done]
    else:
        trained = run_table("reference_fmnist", rows, runs_dir=RUNS)
        save_weights(trained)
    if args.reeval:
        names = {r["name"] for r in trained}
        reevaluate([s for s in rows if s["name"] in names], args.device)
    elif not args.markdown:
        names = [r["name"] for r in trained if args.models is None or r["name"] in args.models]
        unknown = set(args.models or []) - {r["name"] for r in trained}
        if unknown:
            raise SystemExit(f"--models: no trained rows named {sorted(unknown)}; have {[r['name'] for r in trained]}")
        autoattack_chunks(names, args.aa_chunk, args.aa_minutes, args.device, args.aa_batch, (int(k), int(n)))
    write_table(RESULTS / "reference_fmnist", markdown(trained))


if __name__ == "__main__":
    main()
