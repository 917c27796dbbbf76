"""Compute to reach a target held-out robust accuracy, read from each run's learning curve
(metrics.jsonl), and the speed-up of every group of runs (one config `name`, several seeds) over a
baseline group, with a bootstrap confidence interval over seeds (the table here; the figure:
speedup_figure.py).

Compute to target is the cumulative compute at the FIRST curve point whose metric is at or above the
target: no interpolation between points, so the curve's spacing (an epoch, or
validation.every_grad_evals) bounds the resolution. Grad evals count forward+backward sample passes of
training, selection scoring included and validation excluded, and do not depend on machine load; wall
seconds do."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

from .figures import pct, write_outputs
from .runs import CONFIG, METRICS, SUMMARY
from .speedup_figure import make_figure, metric_label, plot

# the figure's names (speedup_figure.py) stay importable from here, as before they moved out
__all__ = ["Curve", "GroupResult", "RunResult", "Speedup", "bootstrap_ratio", "build_speedup", "find_run_dirs",
           "load_curves", "make_figure", "metric_label", "parse_target", "plot", "reach", "read_curve",
           "speedup_from_curves", "to_markdown", "write_speedup"]


@dataclass
class Curve:
    """One run's curve points (rows with grad_evals and the metric), sorted by grad_evals."""

    path: str
    name: str
    seed: int
    finished: bool
    epoch: list[float]
    grad_evals: list[int]
    seconds: list[Optional[float]]
    value: list[float]
    val_n: Optional[int] = None

    @property
    def best(self) -> float:
        return max(self.value)


@dataclass
class RunResult:
    """One run against the target: compute at the first point at or above it (None: not reached)."""

    path: str
    seed: int
    finished: bool
    best: float
    final_grad_evals: int
    grad_evals: Optional[int] = None
    seconds: Optional[float] = None
    epoch: Optional[float] = None

    @property
    def reached(self) -> bool:
        return self.grad_evals is not None


@dataclass
class GroupResult:
    """A config name's seeds: mean compute to target, and speed-up = baseline mean / this mean (> 1: less
    compute than the baseline), in grad evals and in wall seconds, each with a 95% bootstrap CI."""

    name: str
    runs: list[RunResult]
    best_mean: float
    best_sd: Optional[float]
    final_grad_evals: float
    grad_evals: Optional[float] = None
    seconds: Optional[float] = None
    speedup: Optional[float] = None
    speedup_ci: Optional[tuple[float, float]] = None
    speedup_seconds: Optional[float] = None
    speedup_seconds_ci: Optional[tuple[float, float]] = None
    note: str = ""

    @property
    def reached(self) -> int:
        return sum(r.reached for r in self.runs)


@dataclass
class Speedup:
    metric: str
    target: float
    target_how: str
    baseline: str
    groups: list[GroupResult]
    skipped: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    boot: int = 10000
    seed: int = 0
    curves: list[Curve] = field(default_factory=list, repr=False)  # for the plot; not in to_dict

    def to_dict(self) -> dict:
        groups = [{**asdict(g), "reached": g.reached, "runs": [{**asdict(r), "reached": r.reached} for r in g.runs]}
                  for g in self.groups]
        return {"metric": self.metric, "target": self.target, "target_how": self.target_how, "baseline": self.baseline,
                "boot": self.boot, "seed": self.seed, "groups": groups, "skipped": self.skipped,
                "warnings": self.warnings}


def find_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Run directories (holding config.yaml, finished or not) among `paths`: each a run directory or a
    folder of them, one level down; each directory once however it was named."""
    found: dict[Path, Path] = {}
    for p in map(Path, paths):
        if not p.is_dir():
            raise FileNotFoundError(f"{p} is not a directory: give run directories or a folder holding them")
        dirs = [p] if (p / CONFIG).is_file() else [c for c in sorted(p.iterdir()) if (c / CONFIG).is_file()]
        if not dirs:
            raise FileNotFoundError(f"{p} holds no leanrobust run ({CONFIG}), nor do its sub-directories")
        for d in dirs:
            found.setdefault(d.resolve(), d)
    return list(found.values())


def _rows(path: Path) -> list[dict]:
    """metrics.jsonl rows; a torn last line (a write a crash interrupted) is ignored."""
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    rows = []
    for i, ln in enumerate(lines):
        try:
            rows.append(json.loads(ln))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}:{i + 1}: not a JSON row") from None
    return [r for r in rows if isinstance(r, dict)]


def read_curve(run_dir: str | Path, metric: str = "val_robust") -> Curve:
    """A run's name and seed (config.yaml) and its curve points (possibly none) in order of grad_evals."""
    run_dir = Path(run_dir)
    cfg = yaml.safe_load((run_dir / CONFIG).read_text())
    if not isinstance(cfg, dict):
        raise ValueError(f"{run_dir / CONFIG}: not a leanrobust config (expected a mapping)")
    rows = _rows(run_dir / METRICS) if (run_dir / METRICS).is_file() else []
    pts = sorted((r for r in rows if r.get(metric) is not None and r.get("grad_evals") is not None),
                 key=lambda r: r["grad_evals"])  # stable: ties keep the file's order
    ns = {r["val_n"] for r in pts if r.get("val_n") is not None}
    return Curve(path=str(run_dir), name=str(cfg.get("name", "run")), seed=int(cfg.get("seed", 0)),  # schema defaults
                 finished=(run_dir / SUMMARY).is_file(), epoch=[r.get("epoch") for r in pts],
                 grad_evals=[int(r["grad_evals"]) for r in pts], seconds=[r.get("train_seconds") for r in pts],
                 value=[float(r[metric]) for r in pts], val_n=max(ns) if len(ns) == 1 else None)


def load_curves(paths: list[str | Path], metric: str = "val_robust") -> list[Curve]:
    """Every run's curve (possibly empty); two runs with the same name and seed are an error naming both."""
    curves, seen = [], {}
    for d in find_run_dirs(paths):
        c = read_curve(d, metric)
        if (c.name, c.seed) in seen:
            raise ValueError(f"two runs named {c.name!r} with seed {c.seed}: {seen[c.name, c.seed]} and {d}; "
                             "give only one, or tell them apart by name")
        seen[c.name, c.seed] = d
        curves.append(c)
    return curves


def parse_target(t: float) -> float:
    """A fraction (0.69) or, above 1, a percentage (69.0) -> fraction."""
    if not 0 <= t <= 100:
        raise ValueError(f"--target {t}: expected a fraction in [0, 1] or a percentage in (1, 100]")
    return t / 100 if t > 1 else t


def reach(c: Curve, target: float) -> RunResult:
    """Compute at the first curve point at or above target (no interpolation); None if never reached."""
    res = RunResult(path=c.path, seed=c.seed, finished=c.finished, best=c.best, final_grad_evals=c.grad_evals[-1])
    i = next((i for i, v in enumerate(c.value) if v >= target - 1e-9), None)  # float slack
    if i is not None:
        res.grad_evals, res.seconds, res.epoch = c.grad_evals[i], c.seconds[i], c.epoch[i]
    return res


def bootstrap_ratio(base: np.ndarray, group: np.ndarray, boot: int, seed: int) -> Optional[tuple[float, float]]:
    """95% percentile CI of mean(base) / mean(group), resampling each side's seeds independently with
    replacement; None with a single seed on both sides (nothing to resample) or boot == 0."""
    if boot <= 0 or (len(base) == 1 and len(group) == 1):
        return None
    rng = np.random.default_rng(seed)
    b = base[rng.integers(0, len(base), (boot, len(base)))].mean(1)
    g = group[rng.integers(0, len(group), (boot, len(group)))].mean(1)
    lo, hi = np.percentile(b / g, [2.5, 97.5])
    return float(lo), float(hi)


def _ratio(base: list, group: list, boot: int, seed: int):
    """(point ratio of means, CI) when every seed on both sides has a positive value, else (None, None)."""
    if not base or not group or any(v is None or v <= 0 for v in base + group):
        return None, None
    b, g = np.asarray(base, float), np.asarray(group, float)
    return float(b.mean() / g.mean()), bootstrap_ratio(b, g, boot, seed)


def build_speedup(paths: list[str | Path], baseline: str, *, target: Optional[float] = None,
                  drop: Optional[float] = None, metric: str = "val_robust", boot: int = 10000,
                  seed: int = 0) -> Speedup:
    """Every group's compute to target and speed-up over `baseline`, from run directories (see
    speedup_from_curves)."""
    return speedup_from_curves(load_curves(paths, metric), baseline, target=target, drop=drop, metric=metric,
                               boot=boot, seed=seed)


def speedup_from_curves(curves: list[Curve], baseline: str, *, target: Optional[float] = None,
                        drop: Optional[float] = None, metric: str = "val_robust", boot: int = 10000,
                        seed: int = 0) -> Speedup:
    """Every group's compute to target and speed-up over `baseline`. Default target: the mean over the
    baseline's seeds of each seed's best metric, minus `drop` points (default 1; 1 point = 0.01)."""
    names = sorted({c.name for c in curves})
    if not names:
        raise ValueError("no runs found: give run directories or folders holding them")
    skipped = {c.path: f"no curve points in {Path(c.path) / METRICS} (rows with grad_evals and {metric}): "
                       "train with validation.n > 0 to log them" for c in curves if not c.value}
    empty_base = {c.path for c in curves if c.name == baseline and not c.value}
    curves = [c for c in curves if c.value]
    if baseline not in names:
        raise ValueError(f"no group named {baseline!r} (the config `name`); found: {', '.join(names)}")
    base = [c for c in curves if c.name == baseline]
    if not base:
        raise ValueError(f"baseline {baseline!r} has no curve points: "
                         + "; ".join(v for k, v in skipped.items() if k in empty_base))
    label = metric_label(metric)
    if target is not None:
        if drop is not None:
            raise ValueError("--drop sets the default target only; give --target or --drop, not both")
        target, how = parse_target(target), "set with --target"
    else:
        drop = 1.0 if drop is None else drop
        best = float(np.mean([c.best for c in base]))
        target = best - drop / 100
        how = (f"baseline {baseline}'s best {label} {pct(best)}% (mean over {len(base)} seed(s) of each seed's "
               f"maximum) minus {drop:g} point(s)")
    groups: dict[str, list[Curve]] = {}
    for c in sorted(curves, key=lambda c: (c.name != baseline, c.name, c.seed)):
        groups.setdefault(c.name, []).append(c)
    results = [_group(name, [reach(c, target) for c in cs]) for name, cs in groups.items()]
    b = results[0]
    for g in results:
        g.speedup, g.speedup_ci = _ratio([r.grad_evals for r in b.runs], [r.grad_evals for r in g.runs], boot, seed)
        g.speedup_seconds, g.speedup_seconds_ci = _ratio([r.seconds for r in b.runs], [r.seconds for r in g.runs],
                                                         boot, seed)
        if g is b:
            g.speedup_ci = g.speedup_seconds_ci = None  # 1 by definition
    results[1:] = sorted(results[1:], key=lambda g: (g.speedup is None, -(g.speedup or 0), g.name))
    warnings = []
    if b.reached < len(b.runs):
        warnings.append(f"the baseline reached the target with {b.reached}/{len(b.runs)} seeds: no speed-ups")
    ns = sorted({c.val_n for c in curves if c.val_n is not None})
    if len(ns) > 1:
        warnings.append(f"runs validated on different numbers of held-out points ({', '.join(map(str, ns))}): "
                        "their curves are not equally precise")
    return Speedup(metric=metric, target=target, target_how=how, baseline=baseline, groups=results,
                   skipped=skipped, warnings=warnings, boot=boot, seed=seed, curves=curves)


def _group(name: str, runs: list[RunResult]) -> GroupResult:
    """Means over seeds; compute to target only when every seed reached it (a mean over the seeds that
    did would favour the group)."""
    bests = [r.best for r in runs]
    g = GroupResult(name=name, runs=runs, best_mean=float(np.mean(bests)),
                    best_sd=float(np.std(bests, ddof=1)) if len(runs) > 1 else None,
                    final_grad_evals=float(np.mean([r.final_grad_evals for r in runs])))
    notes = []
    if g.reached == len(runs):
        g.grad_evals = float(np.mean([r.grad_evals for r in runs]))
        if all(r.seconds is not None for r in runs):
            g.seconds = float(np.mean([r.seconds for r in runs]))
    elif len(runs) == 1:
        notes.append(f"not reached (best {pct(runs[0].best)}%)")
    else:
        notes.append(f"{g.reached}/{len(runs)} seeds reached")
    if len(runs) == 1:
        notes.append("1 seed")
    unfinished = sum(not r.finished for r in runs)
    if unfinished:
        notes.append(f"{unfinished} unfinished")
    g.note = "; ".join(notes)
    return g


def _ratio_cell(r: Optional[float], ci: Optional[tuple[float, float]], baseline: bool) -> str:
    if r is None:
        return "-"
    if baseline:
        return "1 (baseline)"
    return f"{r:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def to_markdown(s: Speedup) -> str:
    label = metric_label(s.metric)
    lines = [f"# Compute to reach {label} >= {pct(s.target)}%", "",
             f"Target {pct(s.target)}%: {s.target_how}.", "",
             "Compute to target: cumulative compute at the first curve point at or above the target (no "
             "interpolation between points), mean over seeds, only when every seed reached it. Speed-up = "
             "baseline mean / group mean (> 1: less compute than the baseline), in grad evals (forward+backward "
             "sample passes of training incl. selection scoring, excl. validation: independent of machine load) "
             "and in wall seconds (depend on machine load). [CI]: 95% percentile bootstrap over seeds, group and "
             f"baseline resampled independently ({s.boot} resamples, seed {s.seed}). Best: mean ± sd over seeds "
             "of each seed's maximum.", ""]
    lines += [f"**Warning:** {w}." for w in s.warnings] + ([""] if s.warnings else [])
    lines += [f"| group | seeds | best {label} (%) | grad evals to target | speed-up [CI] | seconds to target | "
              "speed-up in seconds [CI] | final grad evals | note |", "|---" * 9 + "|"]
    for g in s.groups:
        is_base = g.name == s.baseline
        best = pct(g.best_mean) + (f" ± {pct(g.best_sd)}" if g.best_sd is not None else "")
        lines.append(f"| {g.name} | {len(g.runs)} | {best} | "
                     f"{'-' if g.grad_evals is None else f'{g.grad_evals:,.0f}'} | "
                     f"{_ratio_cell(g.speedup, g.speedup_ci, is_base)} | "
                     f"{'-' if g.seconds is None else f'{g.seconds:.1f}'} | "
                     f"{_ratio_cell(g.speedup_seconds, g.speedup_seconds_ci, is_base)} | "
                     f"{g.final_grad_evals:,.0f} | {g.note} |")
    lines += ["", "Per run:", ""]
    for g in s.groups:
        for r in g.runs:
            at = (f"reached at {r.grad_evals:,} grad evals"
                  + (f", {r.seconds:.1f} s" if r.seconds is not None else "") + f" (epoch {r.epoch:g})"
                  if r.reached else f"not reached (best {pct(r.best)}%)")
            lines.append(f"- {g.name} seed {r.seed} ({r.path}{'' if r.finished else ', unfinished'}): {at}")
    if s.skipped:
        lines += ["", "Not in the table:"] + [f"- {k}: {v}" for k, v in s.skipped.items()]
    return "\n".join(lines) + "\n"


def write_speedup(s: Speedup, out_dir: str | Path) -> dict[str, Path]:
    """speedup.md, speedup.json and speedup.png in out_dir."""
    return write_outputs(out_dir, "speedup", to_markdown(s), s.to_dict(), make_figure(s))
