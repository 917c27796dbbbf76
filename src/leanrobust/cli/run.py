"""The commands on runs: train, resume, eval, report, export and `config show`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from .common import KNOWN_ERRORS, echo_outputs, fail


def register(app: typer.Typer) -> None:
    """Add train, resume, eval, report, export and the `config` group to the leanrobust app."""
    app.command()(train)
    app.command()(resume)
    app.command("eval")(eval_)
    app.command()(report)
    app.command()(export)
    config_app = typer.Typer(no_args_is_help=True, help="Inspect experiment configs.")
    app.add_typer(config_app, name="config")
    config_app.command("show")(config_show)


def train(config: Path = typer.Argument(..., help="YAML experiment file"),
          set_: Optional[List[str]] = typer.Option(None, "--set", help="override, e.g. --set optim.epochs=2"),
          out: Optional[Path] = typer.Option(None, "--out", help="run directory (default runs/<name>)"),
          dry_run: bool = typer.Option(False, "--dry-run/--no-dry-run", help="validate the config, build the data "
                                       "and the model, time two batches and print the cost of one epoch; then exit "
                                       "without writing anything"),
          ) -> None:
    """Train a model, evaluate it on the test set and write a run directory."""
    from ..config import load_config
    from ..runs import CHECKPOINT, SUMMARY
    from ..experiment import build_trainer

    try:
        cfg = load_config(config, set_ or [])
        run_dir = out or Path("runs") / cfg.name
        if dry_run:
            from ..api import dry_run as _dry_run

            _print_dry_run(_dry_run(cfg, run_dir), run_dir)
            return
        if (run_dir / SUMMARY).exists():
            raise ValueError(f"{run_dir} already holds a finished run; choose another --out")
        if (run_dir / CHECKPOINT).exists():
            raise ValueError(f"{run_dir} holds an unfinished run; continue it with `leanrobust resume {run_dir}`")
        summary = build_trainer(cfg, run_dir).fit()
    except KNOWN_ERRORS as e:
        fail(e)
    _print_summary(summary, run_dir)


def resume(run_dir: Path = typer.Argument(..., help="run directory of an interrupted run")) -> None:
    """Continue an interrupted run from its last checkpoint."""
    from ..experiment import resume as _resume

    try:
        summary = _resume(run_dir)
    except KNOWN_ERRORS as e:
        fail(e)
    _print_summary(summary, run_dir)


def eval_file_name(res: dict, attacks: list[str], aa_version: str, seed: int) -> str:
    """One file per distinct evaluation (threat model, points, attacks, AutoAttack version, seed), so that a
    later `eval` with other attacks adds a file instead of replacing an earlier result."""
    tag = "+".join(a if a != "autoattack" else f"autoattack-{aa_version}" for a in attacks) or "clean"
    return f"eval_{res['norm']}_{res['eps']:g}_{res['n']}_{tag}_seed{seed}.json"


def eval_(run_dir: Optional[Path] = typer.Argument(None, help="run directory, a model.safetensors or exported "
                                                              "file, or the weights of --model"),
          attacks: str = typer.Option("pgd20,cw20,pgd20x10,autoattack",
                                      help="comma list: pgdK, cwK, pgdKxS (CE on logits x S), autoattack"),
          n: Optional[int] = typer.Option(None, "--n", min=1, help="test points (default: all)"),
          eps: Optional[float] = typer.Option(None, help="radius (default: the run's)"),
          norm: Optional[str] = typer.Option(None, help="linf or l2 (default: the run's)"),
          aa_version: str = typer.Option("standard", help="AutoAttack: standard or fast (APGD-CE + APGD-T)"),
          config: Optional[Path] = typer.Option(None, help="config for the data (default: the run's config.yaml)"),
          batch_size: int = typer.Option(500, min=1),
          device: str = typer.Option("auto"),
          seed: int = typer.Option(0, min=0, max=2**32 - 1),
          as_json: bool = typer.Option(False, "--json/--no-json", help="print JSON only"),
          model: Optional[str] = typer.Option(None, "--model", help="your own network: a factory pkg.module:fn "
                                              "(or path/to/file.py:fn) returning an nn.Module that takes [0,1] "
                                              "inputs; RUN_DIR is then its safetensors weights (optional)"),
          dataset: Optional[str] = typer.Option(None, "--dataset", help="test set: fashion_mnist, mnist, cifar10, "
                                                "cifar100 (default: the run's or the exported file's)"),
          data_root: Optional[str] = typer.Option(None, "--data-root", help="folder holding the dataset"),
          ) -> None:
    """Evaluate a trained model, or any model (--model), under clean and robust accuracy per attack.
    Under torchrun the test points are split over the ranks and rank 0 writes the merged result."""
    from .. import distributed
    from ..api import eval_target
    from ..evaluate import evaluate_model, parse_attacks
    from ..io import write_json
    from ..runs import resolve_device

    try:
        attack_list = parse_attacks(attacks)
        dev = resolve_device(device)
        distributed.init(dev)
        target = eval_target(run_dir, model=model, dataset=dataset, data_root=data_root, config=config, eps=eps,
                             norm=norm, device=dev)
        res = evaluate_model(target.model, target.images, target.labels, eps=target.eps, norm=target.norm,
                             attacks=attack_list, n=n, autoattack_version=aa_version, batch_size=batch_size,
                             device=dev, seed=seed, state_dir=target.state_dir, progress=not as_json)
        res = {"dataset": target.dataset, **res}
        if target.state_dir is not None and distributed.is_main():
            write_json(target.state_dir / eval_file_name(res, attack_list, aa_version, seed), res)
    except KNOWN_ERRORS as e:
        fail(e)
    if not distributed.is_main():
        return
    if as_json:
        typer.echo(json.dumps(res, indent=2))
    else:
        _print_accuracies(res)


def report(paths: List[Path] = typer.Argument(..., help="run directories, or folders holding them"),
           attack: Optional[str] = typer.Option(None, help="rank by this attack (default: AutoAttack if every run has "
                                                           "it, else the strongest attack every run has)"),
           out: Path = typer.Option(Path("runs/report"), "--out", help="folder for report.md, report.json, report.png"),
           as_json: bool = typer.Option(False, "--json/--no-json", help="print JSON only"),
           ) -> None:
    """Compare finished runs: a table and the accuracy-robustness trade-off plot."""
    from ..report import build_report, to_markdown, write_report

    try:
        rep = build_report(list(paths), attack=attack)
        files = write_report(rep, out)
    except KNOWN_ERRORS as e:
        fail(e)
    echo_outputs(rep.to_dict(), to_markdown(rep), files, as_json)


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
        from ..masking import attack_label

        gaps = list(masking.get("gaps", {}).values())
        typer.echo("masking check: no flag (" + ", ".join(
            f"{attack_label(g['reference'])} - {attack_label(g['attack'], g.get('autoattack_version', 'standard'))} "
            f"{100 * g['gap']:+.1f} <= {100 * g['threshold']:.1f} points" for g in gaps) + ")" if gaps else
            "masking check: nothing to compare (needs pgdK and one of cwK, pgdKxS, autoattack)")


def _print_dry_run(d: dict, run_dir: Path) -> None:
    typer.echo(f"config valid; would write {run_dir}")
    typer.echo(f"data: {d['dataset']} {'x'.join(map(str, d['image_shape']))}, {d['classes']} classes; pool "
               f"{d['n_pool']:,} ({d['n_real']:,} real, {d['n_generated']:,} generated), training on {d['n_train']:,}, "
               f"validation {d['n_val']:,}, test {d['n_test']:,}")
    if d["selection"] != "none":
        typer.echo(f"selection.method {d['selection']}: the training set changes when it selects; "
                   "the estimates below are for the whole pool")
    typer.echo(f"model: {d['model']}, {d['parameters']:,} parameters, on {d['device']}")
    typer.echo(f"one epoch: {d['batches_per_epoch']:,} batches of {d['batch_size']}, ~{d['grad_evals_per_epoch']:,} "
               f"grad evals ({d['grad_evals_per_sample']:g} per sample), ~{d['epoch_seconds_estimate']:.0f} s "
               f"({d['seconds_per_batch']:.3f} s per batch, measured); {d['epochs']} epochs ~"
               f"{d['run_seconds_estimate'] / 60:.1f} min before validation and evaluation")


def _print_summary(summary: Optional[dict], run_dir: Path) -> None:
    from ..distributed import is_main

    if not is_main():  # torchrun: rank 0 speaks for the run
        return
    if summary is None:
        typer.echo(f"stopped early; continue with `leanrobust resume {run_dir}`")
        return
    typer.echo(f"run directory: {run_dir}")
    _print_accuracies({**summary, **summary["eval"]})
    typer.echo(f"train time {summary['train_seconds']:.1f}s, {summary['grad_evals']:,} grad evals, "
               f"{summary['samples_seen']:,} samples seen")


def export(run_dir: Path = typer.Argument(..., help="a finished run directory"),
           out: Path = typer.Argument(..., metavar="OUT.safetensors", help="file to write"),
           ) -> None:
    """Write a finished run as one safetensors file with its metadata (architecture, normalisation, dataset,
    threat model, evaluation results), readable by `leanrobust.load` and `leanrobust eval OUT`."""
    from ..api import export as _export, model_info

    try:
        path = _export(run_dir, out)
        info = model_info(path)
    except KNOWN_ERRORS as e:
        fail(e)
    tm, ev = info["threat_model"], info["eval"]
    robust = ", ".join(f"{k} {100 * v['acc']:.2f}% (n={v['n']})" for k, v in ev["robust_acc"].items())
    typer.echo(f"wrote {path}: {info['model']['name']} on {info['dataset']['name']}, {tm['norm']} eps={tm['eps']:g}; "
               f"clean {100 * ev['clean_acc']:.2f}% (n={ev['n']}){'; ' + robust if robust else ''}")


def config_show(config: Optional[Path] = typer.Argument(None, help="YAML experiment file (none: the defaults)"),
                set_: Optional[List[str]] = typer.Option(None, "--set", help="override, e.g. --set optim.epochs=2"),
                ) -> None:
    """Print the resolved config: every setting, defaults included, after --set overrides."""
    from ..config import dump_config, load_config

    try:
        cfg = load_config(config, set_ or [])
    except KNOWN_ERRORS as e:
        fail(e)
    typer.echo(dump_config(cfg), nl=False)
