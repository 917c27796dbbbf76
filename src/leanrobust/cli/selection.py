"""The `leanrobust score` and `leanrobust select` commands: per-sample scores of a config's training
pool written to a scores file (selection/scores_file.py), and a Selection made from such a file by the method
table's select_from_scores (selection/registry.py). Both files carry the pool's fingerprint
(data/fingerprint.py), so `train` refuses a Selection made on another pool."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer

from .common import KNOWN_ERRORS, fail


def _warmup_model(cfg, epochs: int):
    """Train the first `epochs` epochs of cfg on the full pool, in memory, under cfg's own schedule (the
    learning rate and epoch-dependent objectives as in those epochs of the full run, not a schedule
    squeezed into the warm-up). Returns the model training would evaluate (the EMA when cfg keeps one)."""
    from ..train import Trainer  # looked up at call time

    raw = cfg.model_dump()
    raw["optim"]["epochs"] = max(epochs, cfg.optim.epochs)
    raw["selection"] = {}  # the warm-up trains on the full pool: no selection settings at all
    raw["data"]["selection"] = None
    raw["data"]["weighting"] = "loss"
    from ..config import validate_config

    wcfg = validate_config(raw, "warm-up")
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(wcfg, tmp)
        for e in range(epochs):
            trainer.train_epoch(e)
    return trainer.eval_model(), trainer.pool, trainer.device


def register(app: typer.Typer) -> None:
    """Add the `score` and `select` commands to the leanrobust app."""

    @app.command()
    def score(config: Path = typer.Argument(..., help="YAML experiment file (its data section defines the pool)"),
              method: str = typer.Option(..., "--method", help="margin, kappa, loss, el2n, grand, pm, random"),
              out: Path = typer.Option(..., "--out", help="scores .npz to write"),
              model: Optional[Path] = typer.Option(None, "--model", help="run directory or model.safetensors"),
              warmup_epochs: int = typer.Option(0, "--warmup-epochs", min=0,
                                                help="without --model: train this many epochs of the config first"),
              set_: Optional[List[str]] = typer.Option(None, "--set", help="config override, e.g. objective.eps=0.2"),
              param: Optional[List[str]] = typer.Option(None, "--param", help="scorer parameter, e.g. adversarial=true"),
              batch_size: int = typer.Option(256, min=1),
              ) -> None:
        """Score every sample of the config's training pool (real then generated) with a model."""
        from .. import load
        from ..config import apply_overrides, load_config
        from ..data.build import build_training_data
        from ..data.fingerprint import run_fingerprint
        from ..runs import resolve_device
        from ..selection.registry import METHODS
        from ..selection.scores import SCORERS, compute_scores
        from ..selection.scores_file import write_scores

        try:
            cfg = load_config(config, set_ or [])
            if method not in SCORERS:
                raise ValueError(f"unknown score method {method!r}; expected one of: {', '.join(SCORERS)}")
            if method == "forgetting":
                raise ValueError("forgetting events are counted during training; use selection.method "
                                 "'forgetting' in the config instead of `leanrobust score`")
            params = apply_overrides({}, param or [])
            dev = resolve_device(cfg.device)
            net = None
            if model is not None:
                if warmup_epochs:
                    raise ValueError("give either --model or --warmup-epochs, not both")
                net = load(model, device=str(dev))
                pool = build_training_data(cfg.data, cfg.seed).pool
                model_desc = str(model)
            elif warmup_epochs:
                net, pool, dev = _warmup_model(cfg, warmup_epochs)
                model_desc = f"warm-up {warmup_epochs} epochs"
            elif SCORERS[method].model:
                raise ValueError(f"score method {method!r} needs a model: pass --model RUN_DIR or --warmup-epochs E")
            else:
                pool = build_training_data(cfg.data, cfg.seed).pool
                model_desc = None
            fingerprint = run_fingerprint(cfg, pool)
            o = cfg.objective
            scores = compute_scores(net, pool.images, pool.labels, method, eps=o.eps, norm=o.norm, steps=o.steps,
                                    batch_size=batch_size, device=dev, seed=cfg.seed, progress=cfg.progress, **params)
            meta = {"method": method, "eps": o.eps, "norm": o.norm, "steps": o.steps, "params": params,
                    "model": model_desc, "config": str(config), "overrides": list(set_ or []), "seed": cfg.seed,
                    "n": len(pool), "prune": METHODS[method].prune}
            write_scores(out, scores, pool.labels.cpu().numpy(), np.arange(len(pool)),
                         pool.is_generated.cpu().numpy(), meta, fingerprint=fingerprint)
        except KNOWN_ERRORS as e:
            fail(e)
        typer.echo(f"wrote {out}: {len(scores)} {method} scores (mean {float(np.mean(scores)):.4g}, "
                   f"min {float(np.min(scores)):.4g}, max {float(np.max(scores)):.4g})")

    @app.command()
    def select(scores_path: Path = typer.Argument(..., metavar="SCORES.npz", help="file written by `leanrobust score`"),
               fraction: float = typer.Option(..., "--fraction", help="share of the scored samples kept, in (0, 1]"),
               out: Path = typer.Option(..., "--out", help="Selection .npz to write (data.selection of a config)"),
               prune: str = typer.Option("auto", "--prune", help="highest, lowest, or auto: the scores' method's "
                                         "default (margin, kappa: highest; loss, el2n, grand, pm: lowest)"),
               class_balanced: bool = typer.Option(True, "--class-balanced/--global",
                                                   help="keep per class in proportion to class sizes"),
               puma: bool = typer.Option(False, "--puma/--no-puma", help="PUMA: scores are margins; prune the highest and "
                                         "lower eps on the q lowest kept"),
               q: float = typer.Option(0.1, "--q", help="PUMA: share of the kept set with lowered eps"),
               floor: float = typer.Option(0.0, "--floor", help="PUMA: smallest eps"),
               scale: float = typer.Option(1.0, "--scale", help="PUMA: eps_i = clip(scale * margin_i, floor, eps)"),
               eps: Optional[float] = typer.Option(None, "--eps", help="training eps (default: the scores' eps)"),
               ) -> None:
        """Make a Selection (indices, weight, eps) from a scores file."""
        from ..data.fingerprint import train_hint
        from ..selection.registry import METHODS, resolve_prune, select_from_scores
        from ..selection.scores_file import read_scores
        from ..selection_contract import Selection

        try:
            arrays, meta = read_scores(scores_path)
            base_eps = eps if eps is not None else meta.get("eps")
            if base_eps is None:
                raise ValueError(f"{scores_path} records no eps; pass --eps (the training radius)")
            s, y = arrays["scores"], arrays["labels"]
            recorded = meta.get("method")
            if puma:
                method = "puma"
                if recorded not in (None, METHODS[method].scorer):
                    raise ValueError(f"--puma needs margin scores, {scores_path} holds {recorded!r}")
                margin_norm = (meta.get("params") or {}).get("margin_norm")
                if margin_norm and meta.get("norm") and margin_norm != meta["norm"]:
                    raise ValueError(f"--puma: {scores_path} holds {margin_norm} margins but its eps is in "
                                     f"{meta['norm']}; PUMA's radii need margins in the training norm")
            else:  # the scores ranked as they are; the recorded method gives the end pruned under auto
                method = recorded if recorded in METHODS and METHODS[recorded].ranks_scores else None
                unused = [f"--{k}" for k, v, d in (("q", q, 0.1), ("floor", floor, 0.0), ("scale", scale, 1.0)) if v != d]
                if unused:
                    raise ValueError(f"{', '.join(unused)} only apply with --puma")
            prune = resolve_prune(method, prune, setting="--prune", subject="--puma" if puma else
                                  f"{scores_path} records no known scoring method ({recorded!r})")
            sel = select_from_scores(method, s, y, fraction=fraction, prune=prune, class_balanced=class_balanced,
                                     eps=float(base_eps), params={"q": q, "floor": floor, "scale": scale})
            pool_idx = arrays["indices"][sel.indices.numpy()]
            import torch

            order = np.argsort(pool_idx, kind="stable")
            fp = meta.get("pool_fingerprint")  # the scored pool: the Selection's indices are its indices
            final = Selection(torch.from_numpy(pool_idx[order]), sel.weight[order], sel.eps[order],
                              pool_fingerprint=fp)
            final.save(out)
        except KNOWN_ERRORS as e:
            fail(e)
        lowered = int((final.eps < float(base_eps)).sum())
        typer.echo(f"wrote {out}: {len(final)} of {len(s)} samples"
                   + (f", {lowered} with eps < {base_eps:g}" if puma else ""))
        weighted = bool((final.weight != final.weight[0]).any())
        typer.echo("train with: " + train_hint(meta.get("config"), out, overrides=meta.get("overrides") or [],
                                               fingerprint=fp, sample_weighting=weighted))
        if fp is None:
            typer.secho(f"warning: {scores_path} records no pool fingerprint, so neither does {out}: train cannot "
                        "check that it is used on the pool it was scored on", fg=typer.colors.YELLOW, err=True)
