"""Compare finished runs: one table (markdown + JSON) and the accuracy-robustness trade-off plot
(clean vs robust accuracy, and robust accuracy vs training cost; drawn in report_figure.py), read from
run directories.

Each run contributes its summary.json and any `leanrobust eval` results (eval_*.json) at the
run's own threat model; for every attack the evaluation on the most test points is kept, and each
row carries its gradient-masking flag (masking.py)."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from .evaluate import ATTACK_RE
from .figures import pct, write_outputs
from .masking import masking_flags, merge_masking, short_flag
from .report_figure import caption, make_figure
from .runs import CHECKPOINT, CONFIG, SUMMARY

FAST_AA = "autoattack_fast"  # APGD-CE + APGD-T only: an upper bound on standard AutoAttack's accuracy


@dataclass
class RunRecord:
    """One finished run as the report sees it. robust: attack -> (accuracy, test points); masking:
    masking.merge_masking over its evaluations."""

    name: str
    path: str
    objective: str
    data: str
    norm: str
    eps: float
    n_train: int
    train_seconds: float
    grad_evals: int
    clean_acc: float
    n: int
    robust: dict[str, tuple[float, int]] = field(default_factory=dict)
    device: str = ""
    masking: dict = field(default_factory=dict)

    @property
    def threat_model(self) -> str:
        """'linf eps=0.1': runs are ranked together, but fronts are drawn only within one threat model."""
        return f"{self.norm} eps={self.eps:g}"


@dataclass
class Report:
    """records sorted by robust accuracy under `attack` (best first); front: names of the runs on
    the clean/robust Pareto front; skipped: path -> why it is not in the table."""

    records: list[RunRecord]
    attack: str
    front: list[str]
    skipped: dict[str, str]
    threat_models: list[str]

    def to_dict(self) -> dict:
        return {"attack": self.attack, "front": self.front, "skipped": self.skipped,
                "threat_models": self.threat_models, "runs": [asdict(r) for r in self.records]}


def find_runs(paths: list[str | Path]) -> tuple[list[Path], dict[str, str]]:
    """Run directories among `paths` (each a run directory or a folder of them, one level down):
    (finished runs, {unfinished run: why skipped}). Raises FileNotFoundError naming a path that does
    not exist or holds no run."""
    finished: list[Path] = []
    skipped: dict[str, str] = {}

    def visit(d: Path) -> bool:
        if (d / SUMMARY).is_file():
            finished.append(d)
            return True
        generator = generator_run(d)
        if generator:
            skipped[str(d)] = generator
            return True
        if (d / CHECKPOINT).is_file() or (d / CONFIG).is_file():
            skipped[str(d)] = f"unfinished (no {SUMMARY}): continue it with `leanrobust resume {d}`"
            return True
        return False

    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist")
        if not p.is_dir():
            raise ValueError(f"{p} is not a directory: give run directories or a folder holding them")
        # a list, not a generator: every sub-directory is visited, not only up to the first run
        if not visit(p) and not any([visit(c) for c in sorted(p.iterdir()) if c.is_dir()]):
            raise FileNotFoundError(f"{p} holds no leanrobust run ({SUMMARY}, {CONFIG} or {CHECKPOINT}), "
                                    "nor do its sub-directories")
    unique: dict[Path, Path] = {}
    for d in finished:  # one entry per directory however it was named (relative, absolute, twice)
        unique.setdefault(d.resolve(), d)
    return list(unique.values()), skipped


def generator_run(d: Path) -> Optional[str]:
    """For a `leanrobust synth train` directory (a generator, not a classifier): why it is not in the report
    and the command that continues or uses it; None for any other directory."""
    from .proxy.ddpm import CKPT_DIR, LATEST

    cfg: dict = {}
    if (d / CONFIG).is_file():
        try:
            loaded = yaml.safe_load((d / CONFIG).read_text())
            cfg = loaded if isinstance(loaded, dict) else {}
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            cfg = {}
    if not ((d / LATEST).is_file() or (d / CKPT_DIR).is_dir() or "timesteps" in cfg):
        return None
    try:
        step = int((d / LATEST).read_text().strip().split("_")[1])
    except (OSError, ValueError, IndexError):
        step = 0
    steps = cfg.get("steps")
    if isinstance(steps, int) and step >= steps:
        return (f"a generator run (leanrobust synth train), complete at step {step}; not a classifier: sample "
                f"from it with `leanrobust synth sample {d} --n N --out gen.npz`")
    at = f"at step {step} of {steps}" if isinstance(steps, int) else f"at step {step}"
    return (f"an unfinished generator run (leanrobust synth train) {at}; not a classifier: continue it with "
            f"`leanrobust synth train {d / CONFIG} --out {d}`")


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return obj


def _attack_key(name: str, ev: dict) -> str:
    return FAST_AA if name == "autoattack" and ev.get("autoattack_version") == "fast" else name


def _points(name: str, ev: dict) -> int:
    return int(ev.get("autoattack_n") or ev["n"]) if name == "autoattack" else int(ev["n"])


def describe_data(cfg: dict) -> str:
    """A short description of what the run trained on: subset, selection, pool, generated data."""
    data, sel = cfg.get("data", {}), cfg.get("selection", {})
    parts = []
    if data.get("train_subset"):
        parts.append(f"subset {data['train_subset']}")
    if sel.get("method", "none") != "none":
        dyn = f" every {sel['every']}" if sel.get("every") else ""
        parts.append(f"{sel['method']} {100 * sel.get('fraction', 1.0):.0f}%{dyn}")
    if data.get("selection"):
        parts.append(f"selection {Path(data['selection']).stem}")
    if data.get("pool"):
        parts.append(f"pool {Path(data['pool']).stem}")
    if data.get("generated"):
        parts.append(f"+gen {Path(data['generated']).stem} {100 * data.get('gen_fraction', 0.7):.0f}%")
    return ", ".join(parts) or "full"


def read_run(run_dir: str | Path) -> RunRecord:
    """A finished run's record: summary.json plus the run's eval_*.json at the same threat model
    (the evaluation on the most test points wins, per attack and for clean accuracy)."""
    run_dir = Path(run_dir)
    s = _read_json(run_dir / SUMMARY)
    missing = [k for k in ("clean_acc", "robust_acc", "eval", "config") if k not in s]
    if missing:
        raise ValueError(f"{run_dir / SUMMARY}: missing {missing}; is this a leanrobust summary?")
    cfg = s["config"]
    obj = cfg.get("objective", {})
    norm, eps = obj.get("norm", "linf"), float(obj.get("eps", 0.0))
    ev0 = {**s["eval"], "clean_acc": s["clean_acc"], "robust_acc": s["robust_acc"]}
    evals = [ev0]
    run_data = (cfg.get("data") or {}).get("dataset", "fashion_mnist")  # an eval on another test set is not this run's
    for f in sorted(run_dir.glob("eval_*.json"), key=lambda f: f.stat().st_mtime):
        ev = _read_json(f)
        if not {"n", "clean_acc", "robust_acc"} <= ev.keys():
            raise ValueError(f"{f}: missing n, clean_acc or robust_acc; is this a `leanrobust eval` result?")
        same_threat = ev.get("norm") == norm and math.isclose(float(ev.get("eps", -1)), eps, abs_tol=1e-9)
        if ev.get("dataset", run_data) == run_data and same_threat:
            evals.append(ev)
    clean, n = s["clean_acc"], int(s["eval"].get("n", 0))
    robust: dict[str, tuple[float, int]] = {}
    for ev in evals:
        if int(ev["n"]) >= n:
            clean, n = float(ev["clean_acc"]), int(ev["n"])
        for name, acc in ev.get("robust_acc", {}).items():
            key, pts = _attack_key(name, ev), _points(name, ev)
            if key not in robust or pts >= robust[key][1]:
                robust[key] = (float(acc), pts)
    return RunRecord(name=run_dir.name, path=str(run_dir), objective=obj.get("name", "?"), data=describe_data(cfg),
                     norm=norm, eps=eps, n_train=int(s.get("n_train", 0)), train_seconds=float(s.get("train_seconds", 0)),
                     grad_evals=int(s.get("grad_evals", 0)), clean_acc=float(clean), n=n, robust=robust,
                     device=str(s.get("device", "")), masking=_masking(evals, robust, n))


def _masking(evals: list[dict], robust: dict[str, tuple[float, int]], n: int) -> dict:
    """Each evaluation's own flag (computed from its accuracies when an older file lacks it), and the
    comparisons across evaluations (e.g. PGD-20 in summary.json vs a later AutoAttack); per comparison
    the one on the most test points wins."""
    per_eval = [ev["masking"] if isinstance(ev.get("masking"), dict) else
                masking_flags(ev.get("robust_acc", {}), int(ev["n"]), autoattack_n=ev.get("autoattack_n"),
                              autoattack_version=ev.get("autoattack_version", "standard")) for ev in evals]
    accs = {k: v for k, v in robust.items() if k not in ("autoattack", FAST_AA)}
    aa = robust.get("autoattack") or robust.get(FAST_AA)  # fast AutoAttack only when the standard one is absent
    if aa:
        accs["autoattack"] = aa
    merged = masking_flags({k: a for k, (a, _) in accs.items()}, n, points={k: p for k, (_, p) in accs.items()},
                           autoattack_version="standard" if "autoattack" in robust else "fast")
    return merge_masking(per_eval + [merged])


def _attack_order(name: str) -> tuple:
    """pgdK, cwK, pgdKxS (a diagnostic), fast AutoAttack, AutoAttack, then anything else."""
    m = ATTACK_RE.match(name)
    if m:
        return (2 if m.group(3) else 0 if m.group(1) == "pgd" else 1, int(m.group(2)), int(m.group(3) or 0), name)
    return (3 if name == FAST_AA else 4 if name == "autoattack" else 5, 0, 0, name)


def is_diagnostic(name: str) -> bool:
    """pgdKxS (CE on scaled logits) checks for gradient masking; it never ranks runs unless asked to."""
    m = ATTACK_RE.match(name)
    return bool(m and m.group(3))


def default_attack(records: list[RunRecord]) -> str:
    """Standard AutoAttack when every run has it, then the fast version; otherwise the attack every
    run has with the lowest mean accuracy (the empirically strongest), never a pgdKxS diagnostic."""
    common = set.intersection(*(set(r.robust) for r in records)) if records else set()
    common = {a for a in common if not is_diagnostic(a)}
    if not common:
        raise ValueError("no attack was evaluated on every run; pick one with --attack "
                         f"(evaluated: {sorted(set().union(*(r.robust for r in records)), key=_attack_order)})")
    for aa in ("autoattack", FAST_AA):
        if aa in common:
            return aa
    return min(sorted(common), key=lambda a: sum(r.robust[a][0] for r in records))


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Names whose (clean, robust) no other point matches or beats in both with one strictly better."""
    def dominated(a):
        return any(b[0] >= a[0] and b[1] >= a[1] and b != a for b in points.values())
    return [k for k, v in points.items() if not dominated(v)]


def build_report(paths: list[str | Path], attack: Optional[str] = None) -> Report:
    """Collect the finished runs under `paths` and rank them under `attack` (default: see default_attack)."""
    dirs, skipped = find_runs(paths)
    records = [read_run(d) for d in dirs]
    if not records:
        raise ValueError("no finished run to report: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    names = [r.name for r in records]
    if len(set(names)) < len(names):  # same directory name under different parents: use the path
        for r in records:
            r.name = r.path
    attack = attack or default_attack(records)
    how = "--attacks autoattack --aa-version fast" if attack == FAST_AA else f"--attacks {attack}"
    lacking = [r for r in records if attack not in r.robust]
    if len(lacking) == len(records):
        raise ValueError(f"no run was evaluated with {attack!r}; evaluate with `leanrobust eval RUN {how}`")
    for r in lacking:
        skipped[r.path] = f"not evaluated with {attack} (run `leanrobust eval {r.path} {how}`)"
    ranked = sorted((r for r in records if attack in r.robust), key=lambda r: -r.robust[attack][0])
    threats = sorted({r.threat_model for r in ranked})
    # one front per threat model: a run is not dominated by one attacked with a smaller radius
    front = [name for tm in threats for name in pareto_front(
        {r.name: (r.clean_acc, r.robust[attack][0]) for r in ranked if r.threat_model == tm})]
    return Report(records=ranked, attack=attack, front=front, skipped=skipped, threat_models=threats)


def to_markdown(rep: Report) -> str:
    attacks = sorted(set().union(*(r.robust for r in rep.records)), key=_attack_order)
    lines = [f"# Runs ranked by robust accuracy under {rep.attack}", ""]
    if len(rep.threat_models) > 1:
        lines += [f"**Warning:** the runs have different threat models ({'; '.join(rep.threat_models)}): "
                  "their robust accuracies are not comparable; the front is drawn per threat model.", ""]
    lines += ["Accuracies in %; a number in brackets is the count of test points when it differs from the clean "
              f"column's. front: on the clean / {rep.attack} Pareto front. {FAST_AA}: APGD-CE + APGD-T only (an upper "
              "bound on standard AutoAttack's accuracy). pgdKxS: PGD-K with cross-entropy on the logits times S. "
              "#: the run's number on report.png. "
              "masking: ⚠ with the gap in points where an attack falls far below PGD-CE (likely gradient masking: "
              "PGD-CE overstates robustness; threshold max(3 points, 3 SE) for CW and scaled CE, max(6, 3 SE) "
              "for AutoAttack), empty when no gap is flagged, - when nothing could be compared.", "",
              "| run | objective | data | threat | n_train | clean (n) | " + " | ".join(attacks)
              + " | masking | train s | grad evals | device | front | # |",
              "|---" * (12 + len(attacks)) + "|"]
    for rank, r in enumerate(rep.records, 1):
        cells = []
        for a in attacks:
            if a not in r.robust:
                cells.append("-")
                continue
            acc, pts = r.robust[a]
            cells.append(pct(acc) + ("" if pts == r.n else f" ({pts})"))
        lines.append(f"| {r.name} | {r.objective} | {r.data} | {r.norm} {r.eps:g} | {r.n_train} | "
                     f"{pct(r.clean_acc)} ({r.n}) | " + " | ".join(cells) + f" | {short_flag(r.masking)}"
                     + f" | {r.train_seconds:.0f} | {r.grad_evals:,} | {r.device} | "
                     + f"{'*' if r.name in rep.front else ''} | {rank} |")
    lines += ["", f"Figure (report.png): {caption(rep)}"]
    if rep.skipped:
        lines += ["", "Not in the table:"] + [f"- {k}: {v}" for k, v in rep.skipped.items()]
    return "\n".join(lines) + "\n"


def write_report(rep: Report, out_dir: str | Path) -> dict[str, Path]:
    """report.md, report.json and report.png in out_dir."""
    return write_outputs(out_dir, "report", to_markdown(rep), rep.to_dict(), make_figure(rep))
