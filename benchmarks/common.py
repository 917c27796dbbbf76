"""What every benchmark table shares.

Rows: resumable benchmark tables, one JSON line per finished row, appended as soon as the row is
done; rows already in the file are skipped on restart, and an interrupted training row resumes
from its run directory's checkpoint. Every row records the device it ran on and (rows written
since the `git` field was added) the short commit of the code that produced it. Rows written by
older code are read through legacy_rows.py.

Report: write_table writes a table's markdown (and its JSON document and figure, where it has them)
into results/, and the plot helpers draw its figure; every table script writes its outputs through it."""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from leanrobust.config import load_config
from leanrobust.figures import save_figure
from leanrobust.io import write_json, write_text
from leanrobust.runs import SUMMARY
from leanrobust.experiment import build_trainer

RESULTS = Path(__file__).parent / "results"


def device_label(device: str = "auto") -> str:
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return f"cpu:{os.cpu_count()} cores ({platform.machine()})"


def git_commit() -> Optional[str]:
    """The short commit of the repository's HEAD (`git rev-parse --short HEAD`), None when unavailable (no
    git, not a checkout). It names the committed code only: uncommitted edits are not reflected."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def row_device(summary: dict, config_device: str, trained_now: bool) -> str:
    """The device a row's run trained on. A summary that records it wins (a run directory reused from an
    earlier session keeps its own device, not this machine's); a run trained by this call gets this
    machine's descriptive label of the summary's device kind (the summary only says e.g. 'cpu' or
    'cuda:0'). Summaries from before the trainer recorded a device: the current label, as before."""
    dev = summary.get("device")
    if dev is None:
        return device_label(config_device)
    if trained_now:
        return device_label("cuda" if str(dev).startswith("cuda") else "cpu")
    return str(dev)


def read_rows(path: Path) -> list[dict]:
    """Every line of a results file, in order (history included); [] when it does not exist."""
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []


def done_rows(path: Path) -> dict[str, dict]:
    """The last line per row name: a rerun's line wins over the earlier ones."""
    return {row["name"]: row for row in read_rows(path)}


def append_row(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def run_row(table: str, name: str, config: str | Path, overrides: list[str], *, runs_dir: Path,
            prepare: Optional[Callable[[Path], tuple[list[str], dict]]] = None, run_name: Optional[str] = None) -> dict:
    """Train + evaluate one row. `prepare(row_dir) -> (extra overrides, info)` runs first (e.g. a
    selection or compression step); its wall time is added to the row's total seconds. run_name: the
    run's config name (default the row's; seeds of one method share it so that `leanrobust speedup`
    groups them)."""
    row_dir = runs_dir / table / name
    row_dir.mkdir(parents=True, exist_ok=True)
    info: dict = {}
    prep_seconds = 0.0
    if prepare is not None:
        t0 = time.perf_counter()
        extra, info = prepare(row_dir)
        prep_seconds = time.perf_counter() - t0
        overrides = overrides + extra
    cfg = load_config(config, overrides + [f"name={run_name or name}"])
    run = row_dir / "run"
    commit = git_commit()  # before training: the code the row runs (a reused summary may be older)
    reused = (run / SUMMARY).exists()
    summary = json.loads((run / SUMMARY).read_text()) if reused else build_trainer(cfg, run).fit()
    return {"name": name, "table": table, "device": row_device(summary, cfg.device, not reused),
            "git": commit, "summary_reused": reused, "overrides": overrides,
            "clean_acc": summary["clean_acc"], "robust_acc": summary["robust_acc"],
            "eval": summary["eval"], "train_seconds": summary["train_seconds"],
            "prepare_seconds": prep_seconds, "total_seconds": summary["train_seconds"] + prep_seconds,
            "grad_evals": summary["grad_evals"], "grad_evals_version": summary.get("grad_evals_version", 1),
            "samples_seen": summary["samples_seen"], "n_train": summary["n_train"], "best_epoch": summary.get("best_epoch"), "epochs": summary.get("epochs"),
            "info": info, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}


def set_aside_finished_run(row_dir: Path) -> Optional[Path]:
    """Move a finished run (summary.json present) out of the way so that the row trains afresh; an
    unfinished run stays and resumes. Returns where it went (row_dir/run.superseded-N), None if nothing moved."""
    run = row_dir / "run"
    if not (run / SUMMARY).exists():
        return None
    n = 1
    while (row_dir / f"run.superseded-{n}").exists():
        n += 1
    dest = row_dir / f"run.superseded-{n}"
    run.rename(dest)
    return dest


def run_table(table: str, rows: list[dict], *, runs_dir: Path = Path("runs/bench"),
              only: Optional[list[str]] = None, rerun: Optional[set[str]] = None) -> list[dict]:
    """rows: dicts with name, config, overrides (list of key=value) and optional prepare. Rows named in
    `rerun` train again although finished (their old run directory set aside); the new line is appended
    after the old one, and done_rows keeps the last line per name, so the table shows the rerun while the
    file keeps the history. A caller passes only the rows still stale, so a restart resumes the rerun."""
    path = RESULTS / f"{table}.jsonl"
    finished = done_rows(path)
    rerun = rerun or set()
    for r in rows:
        if (r["name"] in finished and r["name"] not in rerun) or (only and r["name"] not in only):
            continue
        if r["name"] in rerun:
            set_aside_finished_run(runs_dir / table / r["name"])
        print(f"[{table}] running {r['name']}", flush=True)
        row = run_row(table, r["name"], r["config"], list(r.get("overrides", [])), runs_dir=runs_dir,
                      prepare=r.get("prepare"))
        append_row(path, row)
        finished[row["name"]] = row
    return [finished[r["name"]] for r in rows if r["name"] in finished]


def pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def override(row: dict, key: str, default=None):
    """The value a row's overrides give `key` (the last one wins, as in load_config); `default` when none does."""
    vals = [o.split("=", 1)[1] for o in row.get("overrides", []) if o.startswith(key + "=")]
    return vals[-1] if vals else default


# ----------------------------------------------------------------------------- the report of a table
def write_table(out: Path, markdown: str | list[str], *, data: Optional[dict] = None, fig=None,
                echo: bool = True) -> None:
    """A table's outputs: OUT.md (markdown: the text, or its lines), OUT.json (data: tables whose results
    are one JSON document rather than rows) and OUT.png (fig, saved at 120 dpi and closed), each written
    atomically by leanrobust.io / leanrobust.figures. out: the path without suffix, e.g. RESULTS / TABLE.
    echo: also print the markdown."""
    text = markdown if isinstance(markdown, str) else "\n".join(markdown) + "\n"
    if data is not None:
        write_json(out.parent / f"{out.name}.json", data)
    write_text(out.parent / f"{out.name}.md", text)
    if fig is not None:
        save_figure(fig, out.parent / f"{out.name}.png")
    if echo:
        print(text, end="")


def parse_json_table_args(ap: argparse.ArgumentParser, markdown: Callable[[dict], str]) -> Optional[argparse.Namespace]:
    """The arguments of a table whose results are one JSON document (written by write_table's data), plus
    --markdown-from JSON: given it, only the .md next to that document is rewritten from it
    (markdown(document), nothing measured) and None is returned."""
    ap.add_argument("--markdown-from", type=Path, metavar="JSON", help="only rewrite the .md of a saved .json")
    args = ap.parse_args()
    if args.markdown_from is None:
        return args
    write_table(args.markdown_from.with_suffix(""), markdown(json.loads(args.markdown_from.read_text())), echo=False)
    return None


def subplots(*args, **kwargs):
    """plt.subplots on matplotlib's Agg backend: a table's figure is drawn headless, for write_table."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def plotted_robust(row: dict) -> float:
    """The robust accuracy a table's figure shows: AutoAttack, else PGD-20 (0 when the row has neither)."""
    ra = row["robust_acc"]
    return ra.get("autoattack", ra.get("pgd20", 0))


def plot_clean_vs_robust(ax, rows: list[dict], text: Callable[[dict], str], *, label: Optional[str] = None,
                         line: bool = False) -> None:
    """One series of rows at (clean %, robust %: plotted_robust), each point annotated with text(row);
    joined by a line in the given order when `line`, else a scatter."""
    xs = [100 * r["clean_acc"] for r in rows]
    ys = [100 * plotted_robust(r) for r in rows]
    if line:
        ax.plot(xs, ys, "o-", label=label)
    else:
        ax.scatter(xs, ys, label=label)
    for r, x, y in zip(rows, xs, ys):
        ax.annotate(text(r), (x, y), fontsize=7)
