"""The `leanrobust` command line: train, resume, evaluate and report (more commands per method)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Adversarially robust image classifiers with less data and less compute.")


def _fail(e: Exception) -> None:
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


# OSError: an unwritable --out or a full disk; KeyError: malformed metadata in a weights file
KNOWN_ERRORS: tuple = (ValueError, OSError, KeyError, RuntimeError, NotImplementedError)


@app.command()
def train(config: Path = typer.Argument(..., help="YAML experiment file"),
          set_: Optional[List[str]] = typer.Option(None, "--set", help="override, e.g. --set optim.epochs=2"),
          out: Optional[Path] = typer.Option(None, "--out", help="run directory (default runs/<name>)"),
          ) -> None:
    """Train a model, evaluate it on the test set and write a run directory."""
    from .config import load_config
    from .train import SUMMARY, Trainer

    try:
        cfg = load_config(config, set_ or [])
        run_dir = out or Path("runs") / cfg.name
        if (run_dir / SUMMARY).exists():
            raise ValueError(f"{run_dir} already holds a finished run; choose another --out")
        if (run_dir / "checkpoint.pt").exists():
            raise ValueError(f"{run_dir} holds an unfinished run; continue it with `leanrobust resume {run_dir}`")
        summary = Trainer(cfg, run_dir).fit()
    except KNOWN_ERRORS as e:
        _fail(e)
    _print_summary(summary, run_dir)


@app.command()
def resume(run_dir: Path = typer.Argument(..., help="run directory of an interrupted run")) -> None:
    """Continue an interrupted run from its last checkpoint."""
    from .train import resume as _resume

    try:
        summary = _resume(run_dir)
    except KNOWN_ERRORS as e:
        _fail(e)
    _print_summary(summary, run_dir)


def eval_file_name(res: dict, attacks: list[str], aa_version: str, seed: int) -> str:
    """One file per distinct evaluation (threat model, points, attacks, AutoAttack version, seed), so that a
    later `eval` with other attacks adds a file instead of replacing an earlier result."""
    tag = "+".join(a if a != "autoattack" else f"autoattack-{aa_version}" for a in attacks) or "clean"
    return f"eval_{res['norm']}_{res['eps']:g}_{res['n']}_{tag}_seed{seed}.json"


@app.command("eval")
def eval_(run_dir: Path = typer.Argument(..., help="run directory or model.safetensors"),
          attacks: str = typer.Option("pgd20,cw20,pgd20x10,autoattack",
                                      help="comma list: pgdK, cwK, pgdKxS (CE on logits x S), autoattack"),
          n: Optional[int] = typer.Option(None, "--n", min=1, help="test points (default: all)"),
          eps: Optional[float] = typer.Option(None, help="radius (default: the run's)"),
          norm: Optional[str] = typer.Option(None, help="linf or l2 (default: the run's)"),
          aa_version: str = typer.Option("standard", help="AutoAttack: standard or fast (APGD-CE + APGD-T)"),
          config: Optional[Path] = typer.Option(None, help="config for the data (default: the run's config.yaml)"),
          batch_size: int = typer.Option(500),
          device: str = typer.Option("auto"),
          seed: int = typer.Option(0),
          as_json: bool = typer.Option(False, "--json", help="print JSON only"),
          ) -> None:
    """Evaluate a trained model: clean accuracy and robust accuracy per attack."""
    from . import load
    from .config import load_config
    from .data.build import load_test_set
    from .evaluate import evaluate_model, parse_attacks
    from .io import write_json
    from .train import CONFIG, resolve_device

    try:
        attack_list = parse_attacks(attacks)
        cfg_path = config or (run_dir / CONFIG if run_dir.is_dir() else None)
        if cfg_path is None or not Path(cfg_path).exists():
            raise ValueError("cannot find the run's config.yaml: pass --config for the data")
        cfg = load_config(cfg_path, lenient=config is None)  # a run's own config.yaml: as it trained
        dev = resolve_device(device)
        model = load(run_dir, device=str(dev))
        images, labels = load_test_set(cfg.data)
        res = evaluate_model(model, images, labels, eps=eps if eps is not None else cfg.objective.eps,
                             norm=norm or cfg.objective.norm, attacks=attack_list, n=n,
                             autoattack_version=aa_version, batch_size=batch_size, device=dev, seed=seed,
                             state_dir=run_dir if run_dir.is_dir() else None, progress=not as_json)
        if run_dir.is_dir():
            write_json(run_dir / eval_file_name(res, attack_list, aa_version, seed), res)
    except KNOWN_ERRORS as e:
        _fail(e)
    if as_json:
        typer.echo(json.dumps(res, indent=2))
    else:
        _print_accuracies(res)


@app.command()
def report(paths: List[Path] = typer.Argument(..., help="run directories, or folders holding them"),
           attack: Optional[str] = typer.Option(None, help="rank by this attack (default: AutoAttack if every run has "
                                                           "it, else the strongest attack every run has)"),
           out: Path = typer.Option(Path("runs/report"), "--out", help="folder for report.md, report.json, report.png"),
           as_json: bool = typer.Option(False, "--json", help="print JSON only"),
           ) -> None:
    """Compare finished runs: a table and the accuracy-robustness trade-off plot."""
    from .report import build_report, to_markdown, write_report

    try:
        rep = build_report(list(paths), attack=attack)
        files = write_report(rep, out)
    except KNOWN_ERRORS as e:
        _fail(e)
    if as_json:
        typer.echo(json.dumps(rep.to_dict(), indent=2))
        return
    typer.echo(to_markdown(rep))
    typer.echo("wrote " + ", ".join(str(f) for f in files.values()))


def _print_accuracies(res: dict) -> None:
    typer.echo(f"clean accuracy      {100 * res['clean_acc']:6.2f}%  (n={res['n']})")
    for k, v in res["robust_acc"].items():
        extra = f"  (n={res.get('autoattack_n')}, {res.get('autoattack_version')})" if k == "autoattack" else ""
        typer.echo(f"robust {k:<12} {100 * v:6.2f}%{extra}")
    masking = res.get("masking")
    if masking and masking.get("flag"):
        for reason in masking["reasons"]:
            typer.secho(f"WARNING likely gradient masking: {reason}", fg=typer.colors.YELLOW)
    elif masking:
        from .masking import attack_label

        gaps = list(masking.get("gaps", {}).values())
        typer.echo("masking check: no flag (" + ", ".join(
            f"{attack_label(g['reference'])} - {attack_label(g['attack'], g.get('autoattack_version', 'standard'))} "
            f"{100 * g['gap']:+.1f} <= {100 * g['threshold']:.1f} points" for g in gaps) + ")" if gaps else
            "masking check: nothing to compare (needs pgdK and one of cwK, pgdKxS, autoattack)")


def _print_summary(summary: Optional[dict], run_dir: Path) -> None:
    if summary is None:
        typer.echo(f"stopped early; continue with `leanrobust resume {run_dir}`")
        return
    typer.echo(f"run directory: {run_dir}")
    _print_accuracies({**summary, **summary["eval"]})
    typer.echo(f"train time {summary['train_seconds']:.1f}s, {summary['grad_evals']:,} grad evals, "
               f"{summary['samples_seen']:,} samples seen")


def _register_commands() -> None:
    """Method-specific commands live beside their methods, one module per area."""
    from . import cli_compress, cli_proxy, cli_selection, cli_speedup

    cli_selection.register(app)
    cli_compress.register(app)
    cli_proxy.register(app)
    cli_speedup.register(app)


_register_commands()


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
