"""Commands for proxy data and certification: `leanrobust synth train|sample|gaussian|filter|discriminator`,
`leanrobust proxy-quality` and `leanrobust certify` (randomized smoothing)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, List, Optional, TypeVar

import typer

from .common import KNOWN_ERRORS, fail


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what} must be a comma list of numbers, got {text!r}") from None


T = TypeVar("T")


def _or_fail(work: Callable[[], T]) -> T:
    """A command's work; a known error (bad input, missing file) ends the command with `fail`'s one line."""
    try:
        return work()
    except KNOWN_ERRORS as e:
        fail(e)


def register(app: typer.Typer) -> None:
    """Add the `synth` command group, `proxy-quality` and `certify` to the leanrobust app."""
    register_synth(app)
    register_proxy_quality(app)
    register_certify(app)


def register_synth(app: typer.Typer) -> None:
    """The `synth` group: train, sample, gaussian, filter, discriminator (making and filtering proxy data)."""
    synth = typer.Typer(no_args_is_help=True, help="Generated (proxy) training data: train, sample, filter.")
    app.add_typer(synth, name="synth")

    @synth.command("train")
    def synth_train(config: Path = typer.Argument(..., help="generator YAML (e.g. configs/synth/fmnist_ddpm.yaml)"),
                    set_: Optional[List[str]] = typer.Option(None, "--set", help="override, e.g. --set steps=100"),
                    out: Optional[Path] = typer.Option(None, "--out", help="run directory (default: the config's out)"),
                    stop_after: Optional[int] = typer.Option(None, "--stop-after", min=1,
                                                             help="stop after this many steps in total (resumable)"),
                    ) -> None:
        """Train (or resume) a class-conditional diffusion generator on a real training set."""
        from ..proxy.ddpm import GeneratorTrainer
        from ..proxy.generator_config import load_synth_config

        cfg = _or_fail(lambda: load_synth_config(config, set_ or []))
        res = _or_fail(lambda: GeneratorTrainer(cfg, out or cfg.out).fit(stop_after=stop_after))
        typer.echo(f"{res['run_dir']}: step {res['step']}/{cfg.steps}, {res['seconds']:.0f}s of training; "
                   f"checkpoints {', '.join(res['checkpoints'])}")

    @synth.command("sample")
    def synth_sample(run: Path = typer.Argument(..., help="generator run directory (or its .safetensors file)"),
                     n: int = typer.Option(..., "--n", min=1, help="number of images"),
                     out: Path = typer.Option(..., "--out", help="npz to write (shards go to OUT.parts/)"),
                     steps: int = typer.Option(50, "--steps", min=1, help="denoising steps"),
                     scheduler: str = typer.Option("ddim", "--scheduler", help="ddim or dpm (or ddpm)"),
                     per_class: str = typer.Option("balanced", "--per-class",
                                                   help="'balanced' or comma list of counts per class"),
                     guidance: float = typer.Option(1.0, "--guidance", help="classifier-free guidance scale (1: off)"),
                     batch_size: int = typer.Option(256, "--batch-size", min=1, help="images per shard"),
                     seed: int = typer.Option(0, "--seed"),
                     checkpoint: Optional[int] = typer.Option(None, "--checkpoint", help="training step (default latest)"),
                     ema: bool = typer.Option(True, "--ema/--no-ema", help="EMA weights or raw weights"),
                     label_with: Optional[Path] = typer.Option(None, "--label-with",
                                                               help="leanrobust classifier run: pseudo-labels = argmax"),
                     device: str = typer.Option("auto", "--device"),
                     overwrite: bool = typer.Option(False, "--overwrite/--no-overwrite", help="replace an existing OUT"),
                     ) -> None:
        """Sample a labelled npz (image uint8 NxHxWxC, label int64); a rerun resumes from OUT.parts/."""
        from ..proxy.sampling import sample_to_npz

        res = _or_fail(lambda: sample_to_npz(run, out, n, steps=steps, scheduler=scheduler, per_class=per_class,
                                             guidance=guidance, batch_size=batch_size, seed=seed, step=checkpoint,
                                             ema=ema, label_with=label_with, device=device, overwrite=overwrite))
        typer.echo(f"wrote {res['out']}: {res['n']} images ({res['new_batches']} new shards, "
                   f"{res['reused_batches']} resumed)")

    @synth.command("gaussian")
    def synth_gaussian(real: str = typer.Argument(..., help="dataset name or npz (its train split is fitted)"),
                       n: int = typer.Option(..., "--n", min=1),
                       out: Path = typer.Option(..., "--out"),
                       rank: int = typer.Option(0, "--rank", min=0, help="0: diagonal covariance; r: PPCA rank r"),
                       per_class: str = typer.Option("balanced", "--per-class"),
                       seed: int = typer.Option(0, "--seed"),
                       overwrite: bool = typer.Option(False, "--overwrite/--no-overwrite"),
                       ) -> None:
        """Crude per-class Gaussian proxy data (the bottom of the quality ladder)."""
        from ..proxy.gaussian import gaussian_to_npz

        res = _or_fail(lambda: gaussian_to_npz(real, out, n, rank=rank, per_class=per_class, seed=seed,
                                               overwrite=overwrite))
        typer.echo(f"wrote {res['out']}: {res['n']} images")

    @synth.command("filter")
    def synth_filter(src: Path = typer.Argument(..., metavar="IN.npz"),
                     by: str = typer.Option("confidence", "--by", help="confidence (classifier) or realism "
                                            "(discriminator from `synth discriminator`)"),
                     model: Path = typer.Option(..., "--model", help="leanrobust run directory or weights"),
                     keep: float = typer.Option(0.2, "--keep", help="share kept per class"),
                     out: Path = typer.Option(..., "--out"),
                     batch_size: int = typer.Option(500, "--batch-size", min=1),
                     device: str = typer.Option("auto", "--device"),
                     ) -> None:
        """Keep the top share of each class by classifier confidence or discriminator realism."""
        from .. import load
        from ..proxy.filtering import filter_npz
        from ..runs import resolve_device

        try:
            dev = resolve_device(device)
            res = filter_npz(src, out, by=by, model=load(model, device=str(dev)), keep=keep, batch_size=batch_size,
                             device=dev)
        except KNOWN_ERRORS as e:
            fail(e)
        typer.echo(f"wrote {res['out']}: kept {res['kept']} of {res['of']} by {by}")

    @synth.command("discriminator")
    def synth_discriminator(real: str = typer.Argument(..., help="dataset name or npz"),
                            synth_npz: Path = typer.Argument(..., metavar="SYNTH.npz"),
                            out: Path = typer.Option(..., "--out", help="directory for model.safetensors"),
                            eps: float = typer.Option(0.05, "--eps", help="Linf training radius"),
                            n: int = typer.Option(10000, "--n", min=2, help="images per side"),
                            epochs: int = typer.Option(3, "--epochs", min=1, help="adversarial epochs at --eps"),
                            clean_epochs: int = typer.Option(1, "--clean-epochs", min=0,
                                                             help="clean epochs first (warm start against collapse)"),
                            steps: int = typer.Option(5, "--steps", min=1, help="PGD steps in training"),
                            width: float = typer.Option(0.5, "--width"),
                            seed: int = typer.Option(0, "--seed"),
                            device: str = typer.Option("auto", "--device"),
                            ) -> None:
        """Adversarially train a real (0) vs generated (1) SmallCNN for `synth filter --by realism`
        (after --clean-epochs of clean training, as the warm start of `proxy-quality`)."""
        import torch
        from tqdm.auto import tqdm

        from ..io import save_weights
        from ..data.sources import load_images
        from ..proxy.quality import train_discriminator
        from ..runs import WEIGHTS, resolve_device

        try:
            dev = resolve_device(device)
            rx, _, _ = load_images(real, "train")
            sx, _, _ = load_images(synth_npz, "train")
            g = torch.Generator().manual_seed(seed)
            rx, sx = rx[torch.randperm(len(rx), generator=g)[:n]], sx[torch.randperm(len(sx), generator=g)[:n]]
            model = None
            with tqdm(total=(len(rx) + len(sx)) * (clean_epochs + epochs), desc="synth discriminator", unit="img",
                      dynamic_ncols=True) as bar:
                for e, ep in ((0.0, clean_epochs), (eps, epochs)):
                    if ep:
                        bar.set_postfix(eps=f"{e:g}")
                        model = train_discriminator(rx, sx, eps=e, epochs=ep, steps=steps, width=width, seed=seed,
                                                    device=dev, model=model, bar=bar)
            c, s = rx.shape[1], rx.shape[-1]
            spec = {"name": "smallcnn", "num_classes": 2, "in_channels": c, "mean": [0.5] * c, "std": [0.5] * c,
                    "kwargs": {"width": width, "input_size": s, "dropout": 0.0}}
            save_weights(out / WEIGHTS, model, {"leanrobust_model": json.dumps(spec), "classes": "0=real,1=generated",
                                                "eps": str(eps)})
        except KNOWN_ERRORS as e:
            fail(e)
        typer.echo(f"wrote {out / WEIGHTS}")


def register_proxy_quality(app: typer.Typer) -> None:
    """`proxy-quality`: how well a generated set stands in for the real one."""

    @app.command("proxy-quality")
    def proxy_quality_cmd(real: str = typer.Argument(..., help="dataset name (e.g. fashion_mnist) or npz"),
                          synth_npz: Path = typer.Argument(..., metavar="SYNTH.npz"),
                          n: int = typer.Option(2000, "--n", min=2, help="discriminator images per side"),
                          radii: str = typer.Option("0,0.025,0.05,0.1", "--radii", help="Linf radii"),
                          epochs: int = typer.Option(3, "--epochs", min=1, help="discriminator epochs"),
                          steps: int = typer.Option(5, "--steps", min=1, help="PGD steps in discriminator training"),
                          m: int = typer.Option(500, "--m", min=1, help="OT subsample size per class"),
                          repeats: int = typer.Option(5, "--repeats", min=1, help="OT subsample draws"),
                          classifier: Optional[Path] = typer.Option(None, "--classifier",
                                                                    help="run whose penultimate features are used"),
                          split: str = typer.Option("train", "--split", help="split of a named REAL dataset"),
                          arc: bool = typer.Option(True, "--arc/--no-arc", help="robust discrimination curve"),
                          seed: int = typer.Option(0, "--seed"),
                          device: str = typer.Option("auto", "--device"),
                          as_json: bool = typer.Option(False, "--json/--no-json", help="print JSON only"),
                          out: Optional[Path] = typer.Option(None, "--out", help="also write the JSON here"),
                          ) -> None:
        """Proxy-data quality: robust discrimination area, conditional Wasserstein, Frechet distance."""
        from tqdm.auto import tqdm

        from .. import load
        from ..io import write_json
        from ..data.sources import load_images
        from ..proxy.quality import proxy_quality
        from ..runs import resolve_device

        try:
            dev = resolve_device(device)
            rx, ry, k = load_images(real, split)
            sx, sy, _ = load_images(synth_npz, "train", num_classes=k)
            clf = load(classifier, device=str(dev)) if classifier else None
            say = None if as_json else tqdm.write  # messages on stdout without breaking the bars on stderr
            res = proxy_quality(rx, ry, sx, sy, classifier=clf, radii=_floats(radii, "--radii"), n=n, epochs=epochs,
                                steps=steps, m=m, repeats=repeats, arc=arc, seed=seed, device=dev, progress=say,
                                progress_bar=not as_json)
            res.update(real=real, generated=str(synth_npz))
            if out:
                write_json(out, res)
        except KNOWN_ERRORS as e:
            fail(e)
        if as_json:
            typer.echo(json.dumps(res, indent=2))
            return
        if "robust_discrimination" in res:
            d = res["robust_discrimination"]
            curve = ", ".join(f"{r:g}: {a:.3f}" for r, a in zip(d["radii"], d["accuracy"]))
            typer.echo(f"robust discrimination accuracy  {curve}  -> area {d['area']:.3f}")
        for key in ("wasserstein_input", "wasserstein_features"):
            w = res[key]
            floor = w["real_vs_real_floor"]
            typer.echo(f"{key:<22} {w['mean']:.4f}  95% CI [{w['ci95'][0]:.4f}, {w['ci95'][1]:.4f}]  "
                       f"(m={w['m']}, R={w['repeats']}" + (f", real-vs-real floor {floor['mean']:.4f})" if floor else ")"))
        typer.echo(f"frechet_features       {res['frechet_features']:.4f}  ({res['feature_space']})")


def _certify_sigma(run_dir: Path, sigma: Optional[float]) -> float:
    """--sigma, else the noise the run trained with; a warning when the model was not trained with Gaussian noise
    (a smoothed classifier built on a model that never saw noise certifies little)."""
    from ..config import load_config
    from ..objectives.noise import gaussian_noise
    from ..runs import CONFIG

    cfg_path = run_dir / CONFIG
    obj = load_config(cfg_path, lenient=True).objective if cfg_path.is_file() else None
    trained = None
    if obj is not None and obj.name == "gaussian_noise":
        import inspect

        trained = float(obj.params.get("sigma", inspect.signature(gaussian_noise).parameters["sigma"].default))
    if sigma is None:
        if trained is None:
            raise ValueError(f"{run_dir} was not trained with objective gaussian_noise, so it has no sigma to "
                             "certify at: pass --sigma")
        sigma = trained
    if trained is None:
        typer.secho(f"warning: {run_dir} was not trained with Gaussian noise (objective "
                    f"{obj.name if obj else 'unknown'}); its smoothed classifier will certify little. Train with "
                    "objective.name=gaussian_noise for certified robustness", fg=typer.colors.YELLOW, err=True)
    elif sigma != trained:
        typer.secho(f"warning: certifying at sigma {sigma:g}, but {run_dir} trained with sigma {trained:g}",
                    fg=typer.colors.YELLOW, err=True)
    return sigma


def register_certify(app: typer.Typer) -> None:
    """`certify`: randomized-smoothing certification of a run trained with Gaussian noise."""

    @app.command("certify")
    def certify_cmd(run_dir: Path = typer.Argument(..., help="run directory"),
                    sigma: Optional[float] = typer.Option(None, "--sigma", help="noise level (input scale [0,1]); "
                                                          "default: the sigma the run trained with (gaussian_noise)"),
                    n0: int = typer.Option(100, "--n0", min=1, help="noise samples to pick the class"),
                    n: int = typer.Option(10000, "--n", min=1, help="noise samples to bound pA"),
                    alpha: float = typer.Option(0.001, "--alpha", help="failure probability"),
                    num: int = typer.Option(500, "--num", min=1, help="test points (fixed shuffled order)"),
                    radii: str = typer.Option("0,0.25,0.5,0.75,1.0", "--radii", help="L2 radii for certified accuracy"),
                    batch_size: int = typer.Option(1000, "--batch-size", min=1),
                    seed: int = typer.Option(0, "--seed"),
                    device: str = typer.Option("auto", "--device"),
                    ) -> None:
        """Randomized-smoothing certification (Cohen et al.): writes RUN/certify_<sigma>.json."""
        from ..certify import certify_run

        try:
            sigma = _certify_sigma(run_dir, sigma)
            if not 0 < alpha < 1:
                raise ValueError(f"--alpha must be in (0, 1), got {alpha}")
            rep = certify_run(run_dir, sigma=sigma, n0=n0, n=n, alpha=alpha, num=num, radii=_floats(radii, "--radii"),
                              batch_size=batch_size, seed=seed, device=device)
        except KNOWN_ERRORS as e:
            fail(e)
        typer.echo(f"sigma {sigma:g}: certified accuracy " + ", ".join(f"r={r}: {100 * a:.1f}%"
                                                                        for r, a in rep["certified_acc"].items())
                   + f"; abstained {100 * rep['abstain_rate']:.1f}%; {rep['seconds']:.0f}s "
                   f"-> {run_dir / f'certify_{sigma:g}.json'}")
