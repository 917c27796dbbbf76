"""Result rows written by older code: every patch the table scripts apply to such rows, in one place.

Each entry says which rows it patches and why. Rows rerun under the current code (each table's
--rerun-stale or --rerun) carry the fields and behaviour the entries stand in for; an entry whose rows are
all rerun is dead and goes, with its uses and the report caveats that cite it.

  REVIEW_FIXES, before_review_fixes   selection_fmnist, proxy_fmnist: rows without `git` that finished
                                      before commit 8269fd9 ran the code before its fixes (below)
  old_lr_schedule, old_gair_burn_in,  selection_fmnist: which of those rows ran their method differently
  stale_selection                     (--rerun-stale trains them again)
  old_pass_count                      selection_fmnist: grad evals counted without DeepFool's extra passes
  old_sampler_rows                    proxy_fmnist(_certify): generated-data rows of the old mixing sampler
  certified_is_current                proxy_fmnist_certified: rows from before they named their training
  best_epoch                          rows from before run_row recorded best_epoch / epochs
  row_epochs, epochs_from_assumed_k,  compress_fmnist: rows from before `epochs`, info.epochs_from_k and
  dm_iterations                       info.iterations were recorded
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from common import override

from leanrobust.runs import SUMMARY

# The review fixes (commit, commit time). Since then every row records its commit in `git`. The fixes that
# change what an older row measured:
# - a PGD-20 / CW-20 point counts as robust only if it is also correct clean (before: the attack's end point
#   classified correctly sufficed), so older rows' PGD-20 / CW-20 may be slightly higher;
# - learning-rate schedules run in epochs (before: the horizon was recomputed from the shrunken selected epoch,
#   so a row that trained a full-data warm-up epoch first reached the cosine's floor early);
# - GAIR-AT's begin_epoch counts from 1 as in the reference code (before: from 0, reweighting began an epoch late);
# - a real + generated epoch is ceil(n_real / batch) batches (before: n_real // real_per_batch, 3.3x as many
#   samples in proxy_fmnist).
REVIEW_FIXES = ("8269fd9", "2026-12-02 09:43:18")


def before_review_fixes(row: dict) -> bool:
    """A row trained before REVIEW_FIXES (rows since then record their commit in `git`)."""
    return "git" not in row and row.get("finished", "") < REVIEW_FIXES[1]


# ----------------------------------------------------------------------------- selection_fmnist
def old_lr_schedule(row: dict) -> bool:
    """A row with a full-data warm-up (selection.start_epoch >= 1) trained before REVIEW_FIXES: its cosine
    reached its floor early."""
    return int(override(row, "selection.start_epoch", 0)) >= 1 and before_review_fixes(row)


def old_gair_burn_in(row: dict) -> bool:
    """A GAIR-AT row trained before REVIEW_FIXES, when begin_epoch counted from 0: reweighting began one epoch
    later than in the reference code."""
    return override(row, "objective.name") == "gair_at" and before_review_fixes(row)


def stale_selection(row: dict) -> bool:
    """A selection_fmnist row whose method ran differently from the current code (not only counted
    differently): --rerun-stale trains it again."""
    return old_lr_schedule(row) or old_gair_burn_in(row)


def old_pass_count(row: dict) -> bool:
    """Grad evals counted before DeepFool's extra backward passes were (grad_evals_version 1, the version of
    rows that do not record one): the row's grad evals are low."""
    return row.get("grad_evals_version", 1) < 2


# ----------------------------------------------------------------------------- proxy_fmnist
def old_sampler_rows(rows: dict[str, dict]) -> set[str]:
    """Names of the rows (name -> row, as done_rows reads them) trained with generated data before
    REVIEW_FIXES, under the old mixing sampler (3.3x real_only's samples): --rerun-stale trains them again
    (the rerun's line wins in the table; the old one stays in the file)."""
    return {n for n, r in rows.items() if override(r, "data.generated") is not None and before_review_fixes(r)}


def certified_is_current(cert: dict, train: Optional[dict]) -> bool:
    """A certified row belongs to one training of its model: it records that row's `finished` as `trained`.
    Certified rows from before that field certified the original trainings (training rows without `git`)."""
    if train is None:
        return True
    if "trained" in cert:
        return cert["trained"] == train.get("finished")
    return "git" not in train


# ----------------------------------------------------------------------------- any table of run_row rows
def best_epoch(row: dict, runs_dir: Path = Path("runs/bench")) -> str:
    """The epoch model selection kept, as 'best/epochs' ('-' when unknown). Rows written before run_row
    recorded it: read from the row's run summary, when its run directory is still there."""
    if row.get("best_epoch") is None:
        f = runs_dir / row["table"] / row["name"] / "run" / SUMMARY
        if f.exists():
            s = json.loads(f.read_text())
            row = {**row, "best_epoch": s.get("best_epoch"), "epochs": s.get("epochs")}
    return "-" if row.get("best_epoch") is None else f"{row['best_epoch']}/{row.get('epochs')}"


# ----------------------------------------------------------------------------- compress_fmnist
# DM iterations of the committed dm rows written before the row's info recorded them (read from the pools'
# reports when the table was first generated, see the history of results/compress_fmnist.md)
DM_ITERATIONS = {10: 300, 50: 300, 100: 150, 600: 40}


def row_epochs(row: dict) -> int:
    """The epochs a row trained. Rows written before run_row recorded `epochs`: the row's optim.epochs
    override (the last one wins, as in load_config)."""
    if row.get("epochs"):
        return int(row["epochs"])
    return int(override(row, "optim.epochs"))


def epochs_from_assumed_k(row: dict, ipc: int) -> bool:
    """A compress_fmnist row without info.epochs_from_k (every row written before it) computed its epochs from
    k = 10 x ipc, not from the k images it kept; True when those differ (MFC's coverings keep fewer): the row
    trained fewer steps and samples than the budget meant (k = 63 at 10 ipc: 512 epochs of 1 batch, 32,768
    samples, against 1,024 steps / 51,200 samples for k = 100). The report shows each row's steps and samples."""
    return not row["info"].get("epochs_from_k") and row["n_train"] != 10 * ipc


def dm_iterations(row: dict, ipc: int, pool_report: Path) -> Optional[int]:
    """The Distribution Matching iterations of a dm row. Rows written before their info recorded them: the
    pool's report (pool_report, when still there), else DM_ITERATIONS."""
    if row["info"].get("iterations"):
        return row["info"]["iterations"]
    return json.loads(pool_report.read_text())["iterations"] if pool_report.exists() else DM_ITERATIONS.get(ipc)
