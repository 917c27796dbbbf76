"""`leanrobust compress`: Minimal Finite Covering and its baselines (DM, random, k-centre) on the
training pool that a config describes. mfc/random/kcenter write a Selection (train with
data.selection=FILE); dm writes a new pool npz (train with data.pool=FILE). Both record the fingerprint of the
pool they were made from (data/fingerprint.py), which `train` checks."""
from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer

METHODS = ("mfc", "dm", "random", "kcenter")
OPTION_METHODS = {"--solver": ("mfc",), "--plain-eps": ("mfc",), "--force": ("mfc",), "--iterations": ("dm",),
                  "--batch-real": ("dm",), "--metric": ("mfc", "kcenter"),
                  "--fraction": ("mfc", "random", "kcenter")}  # who reads each option
CLI_HINT = ("lower eta (a larger --ipc or --fraction, a smaller --radius), attack the centres at the plain eps "
            "(--plain-eps), or pass --force to write it anyway")


def compress(config: Optional[Path], method: str, *, ipc: Optional[int] = None, fraction: Optional[float] = None,
             radius: Optional[float] = None, metric: Optional[str] = None, solver: str = "auto",
             plain_eps: bool = False, iterations: int = 1000, batch_real: int = 256, overrides: Optional[List[str]] = None,
             out: Path, device: str = "cpu", force: bool = False, progress: Optional[bool] = None) -> dict:
    """Compress the config's training pool; returns a JSON-able report (also written to OUT.json). The
    covering metric defaults to L2 (MFC's authors); a vacuous MFC covering raises ValueError unless force
    (selection/mfc.py). progress: tqdm bars on stderr (default: the config's `progress`)."""
    from .config import load_config
    from .data.build import build_training_data
    from .data.fingerprint import SOURCE_KEY, fingerprint_array, run_fingerprint, train_hint
    from .io import write_json
    from .selection.dm import dm_condense
    from .selection.kcenter import kcenter_selection
    from .selection.mfc import VacuousCoverError, mfc_selection
    from .selection.random_subset import random_selection

    if method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    cfg = load_config(config, overrides or [])
    eps, norm = cfg.objective.eps, cfg.objective.norm
    if method != "mfc" and radius is not None:
        raise ValueError("--radius is for --method mfc only; use --ipc or --fraction")
    given = {"--solver": solver != "auto", "--plain-eps": plain_eps, "--force": force, "--iterations": iterations != 1000,
             "--batch-real": batch_real != 256, "--metric": metric is not None, "--fraction": fraction is not None}
    unused = [opt for opt, on in given.items() if on and method not in OPTION_METHODS[opt]]
    if unused:  # an option the method would silently ignore
        raise ValueError(f"{', '.join(unused)} not used by --method {method} ("
                         + "; ".join(f"{o} is for {', '.join(OPTION_METHODS[o])}" for o in unused) + ")")
    metric = metric or "l2"
    progress = cfg.progress if progress is None else progress
    data = build_training_data(cfg.data, cfg.seed)
    fingerprint = run_fingerprint(cfg, data.pool)  # the indices written are indices of this pool
    real = data.pool.subset(~data.pool.is_generated)
    images, labels = real.images, real.labels
    t0 = time.perf_counter()
    report: dict = {"method": method, "n_pool": len(real), "eps": eps, "norm": norm}
    if method == "mfc":  # eps + eta is measured in the training norm, so any covering metric keeps the bound
        try:
            sel, rep = mfc_selection(images, labels, eps=eps, radius=radius, ipc=ipc, fraction=fraction, metric=metric,
                                     solver=solver, device=device, norm=norm, force=force or plain_eps,
                                     progress=progress)
        except VacuousCoverError as e:
            raise ValueError(f"{e.reason}; {CLI_HINT}") from None
        if plain_eps:  # the ablation: centres and weights of the covering, attacked at the plain eps
            sel.eps.fill_(eps)
        report.update(rep.to_dict(), generalized_loss=not plain_eps, forced=bool(force and rep.vacuous),
                      diagnosis=rep.diagnosis() + ("; --plain-eps: centres attacked at eps" if plain_eps else ""))
    elif method == "random":
        sel = random_selection(labels, ipc=ipc, fraction=fraction, seed=cfg.seed, eps=eps)
    elif method == "kcenter":
        sel = kcenter_selection(images, labels, ipc=ipc, fraction=fraction, metric=metric, seed=cfg.seed,
                                eps=eps, device=device, progress=progress)
    else:
        if ipc is None:
            raise ValueError("--method dm needs --ipc (synthetic images per class)")
        imgs, labs, history = dm_condense(images, labels, ipc=ipc, iterations=iterations, batch_real=batch_real, seed=cfg.seed,
                                          device=device, progress=progress)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp.npz")
        np.savez(tmp, image=imgs.permute(0, 2, 3, 1).numpy(), label=labs.numpy(),
                 **{SOURCE_KEY: fingerprint_array(fingerprint)})  # checked by a run that trains on this pool
        tmp.replace(out)
        report.update(k=len(labs), iterations=iterations, loss_first=history[0] if history else None,
                      loss_last=history[-1] if history else None, output="pool", use=f"data.pool={out}",
                      train=train_hint(config, out, overrides=overrides, fingerprint=fingerprint, kind="pool"))
    if method != "dm":
        sel.save(out, fingerprint=fingerprint)
        weighted = bool((sel.weight != sel.weight[0]).any())  # a covering: centres drawn by the points they cover
        report.update(k=len(sel), output="selection", use=f"data.selection={out}",
                      train=train_hint(config, out, overrides=overrides, fingerprint=fingerprint,
                                       sample_weighting=weighted))
    report["pool_fingerprint"] = fingerprint
    report["seconds"] = time.perf_counter() - t0
    write_json(out.with_suffix(".json"), report)
    return report


def register(app: typer.Typer) -> None:
    @app.command("compress")
    def compress_cmd(config: Path = typer.Argument(..., help="experiment YAML (data, eps, norm)"),
                     method: str = typer.Option(..., "--method", help="mfc | dm | random | kcenter"),
                     ipc: Optional[int] = typer.Option(None, "--ipc", help="images per class"),
                     fraction: Optional[float] = typer.Option(None, "--fraction", help="share of the pool kept"),
                     radius: Optional[float] = typer.Option(None, "--radius", help="MFC covering radius eta"),
                     metric: Optional[str] = typer.Option(None, help="l2 | l1 | linf covering metric (default l2, "
                                                          "MFC's authors'; eps + eta is measured in the training norm)"),
                     solver: str = typer.Option("auto", help="MFC: auto | greedy | milp | lp_milp"),
                     plain_eps: bool = typer.Option(False, "--plain-eps/--no-plain-eps", help="MFC: attack centres at eps, not eps + eta"),
                     force: bool = typer.Option(False, "--force/--no-force", help="MFC: write a vacuous covering (all centres' "
                                                "balls at eps + eta share an image) instead of refusing it"),
                     iterations: int = typer.Option(1000, help="DM: optimisation steps"),
                     batch_real: int = typer.Option(256, help="DM: real images per class per step"),
                     set_: Optional[List[str]] = typer.Option(None, "--set", help="config override key=value"),
                     out: Path = typer.Option(..., "--out", help="output .npz"),
                     device: str = typer.Option("cpu")) -> None:
        """Compress the training set: an MFC covering or a baseline, as a Selection or a new pool."""
        from .cli_common import KNOWN_ERRORS, fail as _fail

        try:
            rep = compress(config, method, ipc=ipc, fraction=fraction, radius=radius, metric=metric, solver=solver,
                           plain_eps=plain_eps, iterations=iterations, batch_real=batch_real, overrides=set_, out=out,
                           device=device, force=force)
        except KNOWN_ERRORS as e:
            _fail(e)
        if method == "mfc":
            typer.echo(f"mfc: {rep['diagnosis']}")
            if rep["vacuous"] and rep["generalized_loss"]:  # (--plain-eps does not attack at eps + eta)
                typer.secho("warning: vacuous covering written because of --force", fg=typer.colors.YELLOW, err=True)
        typer.echo(f"{method}: kept {rep['k']} of {rep['n_pool']} in {rep['seconds']:.1f}s -> {out}; "
                   f"report {out.with_suffix('.json')}")
        typer.echo(f"train with: {rep['train']}")
