"""Randomized smoothing (Cohen et al. 2019): certified L2 robustness of g(x) = argmax_c P(f(x + d) = c),
d ~ N(0, sigma^2 I), by Monte Carlo counts and a one-sided Clopper-Pearson bound; radius sigma Phi^-1(pA_lower).

The noise is added to inputs in [0,1] and NOT clamped back to [0,1], as Cohen et al. do: the smoothed
classifier is defined on all of R^d and the certificate holds for any L2 perturbation of x, including ones
leaving the box. Train the base model with the matching noise (objectives.noise.gaussian_noise)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import torch
from scipy.stats import beta, norm
from torch import nn

from .attacks.common import eval_mode
from .data.augment import to_float

ABSTAIN = -1


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) lower confidence bound on a binomial p from k successes in n trials:
    the alpha quantile of Beta(k, n - k + 1) (0 when k = 0)."""
    if not 0 <= k <= n or n < 1:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    return 0.0 if k == 0 else float(beta.ppf(alpha, k, n - k + 1))


@torch.no_grad()
def noise_counts(model: nn.Module, x: torch.Tensor, num: int, *, sigma: float, num_classes: int,
                 batch_size: int = 1000, generator: torch.Generator | None = None) -> torch.Tensor:
    """Class counts (num_classes,) of the base model's predictions on `num` noisy copies x + sigma N(0, I)
    of one input x (C, H, W), drawn in batches of at most batch_size; no clamping."""
    counts = torch.zeros(num_classes, dtype=torch.long, device=x.device)
    done = 0
    while done < num:
        b = min(batch_size, num - done)
        noise = torch.randn((b, *x.shape), generator=generator, device=x.device, dtype=x.dtype)
        counts += torch.bincount(model(x.unsqueeze(0) + sigma * noise).argmax(1), minlength=num_classes)
        done += b
    return counts


def certify(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, *, sigma: float, n0: int = 100,
            n: int = 10000, alpha: float = 0.001, batch_size: int = 1000, num_classes: int | None = None,
            seed: int = 0, progress: bool = False) -> dict:
    """CERTIFY of Cohen et al. for each image of x (N, C, H, W) in [0,1] (float or uint8).

    The top class cA on n0 noisy samples is the prediction; pA_lower = Clopper-Pearson lower bound of
    the count of cA on n fresh samples; abstain (prediction -1, radius 0) when pA_lower <= 0.5, else
    radius = sigma Phi^-1(pA_lower). Returns lists: prediction, radius, pA_lower, count and, given y,
    label and correct (prediction == label, never for an abstention)."""
    from tqdm.auto import tqdm

    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    dev = next(model.parameters()).device
    x = to_float(x)
    g = torch.Generator(device=dev).manual_seed(seed)
    out = {"prediction": [], "radius": [], "pA_lower": [], "count": []}
    with eval_mode(model), torch.no_grad():
        if num_classes is None:
            num_classes = model(x[:1].to(dev)).shape[1]
        for i in tqdm(range(len(x)), desc=f"certify sigma={sigma:g}", disable=not progress, unit="img"):
            xi = x[i].to(dev)
            c0 = noise_counts(model, xi, n0, sigma=sigma, num_classes=num_classes, batch_size=batch_size, generator=g)
            top = int(c0.argmax())
            k = int(noise_counts(model, xi, n, sigma=sigma, num_classes=num_classes, batch_size=batch_size,
                                 generator=g)[top])
            p = clopper_pearson_lower(k, n, alpha)
            abstain = p <= 0.5
            out["prediction"].append(ABSTAIN if abstain else top)
            out["radius"].append(0.0 if abstain else sigma * float(norm.ppf(p)))
            out["pA_lower"].append(p)
            out["count"].append(k)
    if y is not None:
        out["label"] = [int(v) for v in y]
        out["correct"] = [p == t for p, t in zip(out["prediction"], out["label"])]
    return out


def certified_accuracy(results: dict, radii: Sequence[float]) -> dict[float, float]:
    """{r: share of points predicted correctly (no abstention) with certified radius >= r}."""
    if "correct" not in results:
        raise ValueError("certified_accuracy needs labels: call certify with y")
    rad, ok = results["radius"], results["correct"]
    total = max(len(rad), 1)
    return {float(r): sum(c and (rd >= r) for rd, c in zip(rad, ok)) / total for r in radii}


def certify_run(run_dir: str | Path, *, sigma: float, n0: int = 100, n: int = 10000, alpha: float = 0.001,
                num: int = 500, radii: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0), batch_size: int = 1000,
                seed: int = 0, device: str = "auto", progress: bool = True) -> dict:
    """Certify the first `num` points of a run's test set (its fixed shuffled order), write
    RUN/certify_<sigma>.json and, if RUN/summary.json exists, add this sigma under its "certified"
    map (its top-level certified_acc {radius: acc} and "certify" hold the latest call).
    acr: average certified radius (0 for wrong or abstained points, Zhai et al. 2020)."""
    import json

    from . import load
    from .config import load_config
    from .data.build import load_test_set
    from .io import write_json
    from .runs import CONFIG, SUMMARY, resolve_device

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).exists():
        raise FileNotFoundError(f"{run_dir}: no {CONFIG}; is this a leanrobust run directory?")
    cfg = load_config(run_dir / CONFIG, lenient=True)
    dev = resolve_device(device)
    model = load(run_dir, device=str(dev))
    images, labels = load_test_set(cfg.data)
    images, labels = images[:num], labels[:num]
    t0 = time.perf_counter()
    res = certify(model, images, labels, sigma=sigma, n0=n0, n=n, alpha=alpha, batch_size=batch_size, seed=seed,
                  progress=progress)
    seconds = time.perf_counter() - t0
    acc = {f"{r:g}": a for r, a in certified_accuracy(res, radii).items()}
    report = {"sigma": sigma, "n0": n0, "n": n, "alpha": alpha, "num": len(labels), "seed": seed, "seconds": seconds,
              "certified_acc": acc, "abstain_rate": sum(p == ABSTAIN for p in res["prediction"]) / max(len(labels), 1),
              "acr": sum(r for r, c in zip(res["radius"], res["correct"]) if c) / max(len(labels), 1),
              "noise": "Gaussian on inputs in [0,1], not clamped (Cohen et al. 2019)",
              "rows": [dict(zip(res, vals)) for vals in zip(*res.values())]}
    write_json(run_dir / f"certify_{sigma:g}.json", report)
    if (run_dir / SUMMARY).exists():
        summary = json.loads((run_dir / SUMMARY).read_text())
        if "certify" in summary and "certified" not in summary:  # a summary from before "certified"
            old = summary["certify"]
            summary["certified"] = {f"{old['sigma']:g}": {**old, "certified_acc": summary.get("certified_acc")}}
        summary["certified_acc"] = acc  # the latest call's; every sigma's stays under "certified"
        summary["certify"] = {k: report[k] for k in ("sigma", "n0", "n", "alpha", "num", "abstain_rate")}
        summary.setdefault("certified", {})[f"{sigma:g}"] = {**summary["certify"], "certified_acc": acc,
                                                            "acr": report["acr"]}
        write_json(run_dir / SUMMARY, summary)
    return report
