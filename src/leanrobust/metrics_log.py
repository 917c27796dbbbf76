"""A run's per-epoch metrics: metrics.jsonl (the record), metrics.csv (the same rows for spreadsheets, rebuilt
from the jsonl whenever they could differ) and, with `logging.tensorboard: true`, TensorBoard scalars."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from .io import write_text
from .runs import METRICS, METRICS_CSV

TENSORBOARD = "tensorboard"
INSTALL_HINT = "pip install leanrobust[tensorboard]"


def summary_writer_class():
    """torch's SummaryWriter; ImportError with the install command when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ImportError(f"logging.tensorboard: true needs the tensorboard package ({e}); install it with "
                          f"`{INSTALL_HINT}`, or set logging.tensorboard: false") from None
    return SummaryWriter


def require_tensorboard() -> None:
    """Fail at start-up, not after the first epoch, when TensorBoard logging cannot work (a RuntimeError the
    command line reports in one line)."""
    try:
        summary_writer_class()
    except ImportError as e:
        raise RuntimeError(str(e)) from None


def read_rows(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl; a torn line (a write a crash interrupted) is skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def csv_cell(v) -> str:
    """A metrics value as a CSV cell: strings as they are, None and missing keys empty, anything else as JSON."""
    return "" if v is None else v if isinstance(v, str) else json.dumps(v)


def _csv_lines(columns: list[str], rows: list[dict], header: bool) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(columns)
    for r in rows:
        w.writerow([csv_cell(r.get(c)) for c in columns])
    return buf.getvalue()


class MetricsLog:
    """Appends metric rows to RUN/metrics.jsonl and RUN/metrics.csv (columns: every key, in order of first
    appearance; a row with a new key rewrites the CSV) and, when asked, to a TensorBoard writer in RUN/tensorboard."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = False):
        self.dir = Path(run_dir)
        self.tensorboard = tensorboard
        self.columns: list[str] = []
        self.writer = None

    @property
    def jsonl(self) -> Path:
        return self.dir / METRICS

    @property
    def csv(self) -> Path:
        return self.dir / METRICS_CSV

    def open(self, epoch: int) -> None:
        """Start (or resume after `epoch` completed epochs, the jsonl already truncated to them): the CSV is
        rebuilt from the jsonl, and TensorBoard events of later epochs are purged (written again)."""
        self._rewrite(read_rows(self.jsonl))
        if self.tensorboard and self.writer is None:
            self.writer = summary_writer_class()(log_dir=str(self.dir / TENSORBOARD), purge_step=int(epoch) + 1)

    def _rewrite(self, rows: list[dict]) -> None:
        self.columns = list(dict.fromkeys(k for r in rows for k in r))
        write_text(self.csv, _csv_lines(self.columns, rows, header=True) if self.columns else "")

    def append(self, row: dict) -> None:
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        if set(row) <= set(self.columns) and self.csv.is_file():
            with open(self.csv, "a", newline="") as f:
                f.write(_csv_lines(self.columns, [row], header=False))
        else:  # a new column: the header changes, so the whole file is written again
            self._rewrite(read_rows(self.jsonl))
        if self.writer is not None and row.get("point") != "mid":  # per-epoch scalars, step = the epoch
            step = int(row["epoch"])
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self.writer.add_scalar(k, v, global_step=step)
            self.writer.flush()

    def reset(self) -> None:
        """A fresh run: no rows yet."""
        for p in (self.jsonl, self.csv):
            if p.exists():
                p.unlink()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
