"""How good is a proxy (generated) data set for robust training (Sehwag et al. 2022): ARC-style robust
real-vs-generated discrimination, the conditional Wasserstein distance E_y W(D|y, D~|y) that bounds the
robustness transfer gap (exact OT with POT), and a Frechet feature distance for contrast."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..attacks import pgd
from ..data import to_float
from ..evaluate import is_correct, robust_correct
from ..models import build_model, last_linear
from .filtering import GENERATED, REAL

RADII = (0.0, 0.025, 0.05, 0.1)


def _check_pair(real: torch.Tensor, synth: torch.Tensor) -> None:
    if real.shape[1:] != synth.shape[1:]:
        raise ValueError(f"real images are {tuple(real.shape[1:])} but generated ones {tuple(synth.shape[1:])}")


# ----------------------------------------------------------------------------- (a) robust discrimination
def discriminator(channels: int, size: int, width: float = 0.5) -> nn.Module:
    """SmallCNN without dropout, 2 outputs (0 = real, 1 = generated), inputs in [0,1] (0.5/0.5 inside)."""
    return build_model("smallcnn", 2, channels, [0.5] * channels, [0.5] * channels, width=width, input_size=size,
                       dropout=0.0)


def train_discriminator(real: torch.Tensor, synth: torch.Tensor, *, eps: float, norm: str = "linf",
                        epochs: int = 3, steps: int = 5, batch_size: int = 64, lr: float = 1e-3,
                        width: float = 0.5, seed: int = 0, device="cpu", model: nn.Module | None = None,
                        bar=None) -> nn.Module:
    """PGD adversarial training (clean training when eps = 0) of a real-vs-generated SmallCNN (Adam),
    starting from `model` when given (warm start), else from a fresh `discriminator`. bar: a tqdm bar
    advanced by the images of each batch."""
    _check_pair(real, synth)
    torch.manual_seed(seed)
    model = (model or discriminator(real.shape[1], real.shape[-1], width)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x = torch.cat([real, synth])
    y = torch.cat([torch.full((len(real),), REAL), torch.full((len(synth),), GENERATED)])
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(batch_size):
            xb, yb = to_float(x[idx]).to(device), y[idx].to(device)
            model.train()
            if eps > 0:
                xb = pgd(model, xb, yb, eps, steps=steps, norm=norm)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if bar is not None:
                bar.update(len(idx))
    return model.eval()


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm: str = "linf",
                    steps: int = 10, batch_size: int = 500, device="cpu", bar=None) -> float:
    """Share of points classified correctly both clean and under PGD-`steps` at eps (bar: advanced per batch)."""
    correct = 0
    for i in range(0, len(y), batch_size):
        xb, yb = to_float(x[i:i + batch_size]).to(device), y[i:i + batch_size].to(device)
        ok = robust_correct(model, xb, yb, eps, steps=steps, norm=norm)[1] if eps > 0 else is_correct(model, xb, yb)
        correct += ok.sum().item()
        if bar is not None:
            bar.update(len(yb))
    return correct / max(len(y), 1)


def normalised_area(radii: Sequence[float], accuracy: Sequence[float]) -> float:
    """Area between the discrimination-accuracy curve and chance, relative to the perfect discriminator:
    A = int_{r0}^{rmax} max(acc(r) - 0.5, 0) dr / (0.5 (rmax - r0)), trapezoidal rule over the radii.
    1: perfectly told apart at every radius; 0: at chance at every radius (a single radius: 2 acc - 1)."""
    r = np.asarray(radii, float)
    a = np.clip(np.asarray(accuracy, float) - 0.5, 0, None)
    if len(r) == 1 or r[-1] == r[0]:
        return float(a.mean() / 0.5)
    return float(np.sum((a[1:] + a[:-1]) / 2 * np.diff(r)) / (0.5 * (r[-1] - r[0])))


def robust_discrimination(real: torch.Tensor, synth: torch.Tensor, *, radii: Sequence[float] = RADII,
                          n: int = 2000, test_fraction: float = 0.25, norm: str = "linf", epochs: int = 3,
                          steps: int = 5, eval_steps: int = 10, width: float = 0.5, batch_size: int = 64,
                          lr: float = 1e-3, warm_start: bool = True, seed: int = 0, device="cpu",
                          progress: Callable[[str], None] | None = None, progress_bar: bool = False) -> dict:
    """ARC-style curve: for each radius r (in the given, increasing order), a discriminator adversarially
    trained at r on min(n, |real|, |synth|) images per side, less the test share (the same seeded draw
    for every radius), is tested under PGD-`eval_steps` at r on the held-out images. With warm_start
    the discriminator of radius r starts from the one of the previous radius: a curriculum that keeps
    PGD training of a small net on little data from collapsing to a constant (chance) prediction, which
    training from scratch at r >= 0.025 often did on Fashion-MNIST. Returns radii, accuracy, area (see
    `normalised_area`) and sizes. progress_bar: one tqdm bar (stderr) over the images trained on and tested."""
    _check_pair(real, synth)
    r = np.asarray(radii, float)
    if r.ndim != 1 or r.size == 0 or not np.isfinite(r).all() or (r < 0).any() or (np.diff(r) <= 0).any():
        raise ValueError(f"radii must be finite, >= 0 and strictly increasing (the curriculum and the area "
                         f"assume it), got {list(radii)}")
    m = min(n, len(real), len(synth))
    g = torch.Generator().manual_seed(seed)
    real, synth = real[torch.randperm(len(real), generator=g)[:m]], synth[torch.randperm(len(synth), generator=g)[:m]]
    n_test = max(1, round(test_fraction * m))
    if m - n_test < 1:
        raise ValueError(f"robust discrimination needs at least 2 images per side, got {m}")
    y_test = torch.cat([torch.full((n_test,), REAL), torch.full((n_test,), GENERATED)])
    x_test = torch.cat([real[:n_test], synth[:n_test]])
    acc, model = [], None
    bar = tqdm(total=len(radii) * (2 * (m - n_test) * epochs + 2 * n_test), desc="robust discrimination", unit="img",
               disable=not progress_bar, dynamic_ncols=True)
    for r in radii:
        bar.set_postfix(eps=f"{r:g}")
        model = train_discriminator(real[n_test:], synth[n_test:], eps=float(r), norm=norm, epochs=epochs,
                                    steps=steps, batch_size=batch_size, lr=lr, width=width, seed=seed, device=device,
                                    model=model if warm_start else None, bar=bar)
        torch.manual_seed(seed)
        acc.append(robust_accuracy(model, x_test, y_test, float(r), norm=norm, steps=eval_steps, device=device, bar=bar))
        if progress:
            progress(f"robust discrimination eps={r:g}: test accuracy {acc[-1]:.3f}")
    bar.close()
    return {"radii": [float(r) for r in radii], "accuracy": acc, "area": normalised_area(radii, acc),
            "norm": norm, "n_train_per_side": m - n_test, "n_test_per_side": n_test, "epochs": epochs,
            "train_pgd_steps": steps, "eval_pgd_steps": eval_steps, "warm_start": warm_start,
            "area_definition": "int max(acc-0.5,0) dr / (0.5 (r_max - r_min)), trapezoidal; 1 = always told "
                               "apart, 0 = chance at every radius"}


# ----------------------------------------------------------------------------- features
def penultimate_features(model: nn.Module, *, batch_size: int = 500, device="cpu") -> Callable:
    """x (uint8 or [0,1]) -> (N, d) float64 numpy: the input of the model's last nn.Linear (eval mode)."""
    head = last_linear(model)
    model = model.to(device).eval()

    @torch.no_grad()
    def features(x: torch.Tensor, bar=None) -> np.ndarray:
        out = []
        hook = head.register_forward_hook(lambda m, inp, o: out.append(inp[0].detach().flatten(1).double().cpu()))
        try:
            for i in range(0, len(x), batch_size):
                model(to_float(x[i:i + batch_size]).to(device))
                if bar is not None:
                    bar.update(len(x[i:i + batch_size]))
        finally:
            hook.remove()
        return torch.cat(out).numpy() if out else np.zeros((0, head.in_features))

    return features


def random_features(channels: int, size: int, seed: int = 0, **kw) -> Callable:
    """Penultimate features (200-d) of a randomly initialised SmallCNN (a fixed seed), when no
    trained classifier is given. Its zero-initialised head does not matter: features come before it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_model("smallcnn", 10, channels, [0.5] * channels, [0.5] * channels, input_size=size)
    return penultimate_features(net, **kw)


def pixels(x: torch.Tensor) -> np.ndarray:
    """Input space: flattened images in [0,1], float64."""
    return to_float(x).flatten(1).double().numpy()


# ----------------------------------------------------------------------------- (b) conditional Wasserstein
def wasserstein(a: np.ndarray, b: np.ndarray) -> float:
    """Exact W1 between two equal-weight empirical sets with L2 ground cost (POT's network simplex)."""
    import ot  # POT: heavy (about 2 s to import), needed only here

    cost = ot.dist(a, b, metric="euclidean")
    return float(ot.emd2(np.full(len(a), 1 / len(a)), np.full(len(b), 1 / len(b)), cost, numItermax=10_000_000))


def conditional_wasserstein(real_x: torch.Tensor, real_y: torch.Tensor, syn_x: torch.Tensor, syn_y: torch.Tensor,
                            *, m: int = 500, repeats: int = 5, embed: Callable = pixels, seed: int = 0,
                            baseline: bool = True, progress_bar: bool = False, desc: str = "conditional W1") -> dict:
    """E_y W1(D|y, D~|y), y ~ the real label distribution, with exact OT per class on subsamples.

    For each class c and draw r: m_c = min(m, n_c(real), n_c(generated)) images drawn without
    replacement from each side, embedded by `embed` (pixels in [0,1], or features), W1 with L2 cost.
    The estimate of draw r is sum_c p(c) W_{c,r}; reported: mean over the R draws, sd, and the interval
    mean +- 1.96 sd / sqrt(R) (it covers subsampling variation, not the finite-m bias). Two finite samples
    of one distribution are not at distance 0, so `baseline` also estimates W between two disjoint real
    draws of the same m_c (when every class has 2 m_c real images): the floor an ideal generator reaches.
    Classes absent from the generated set are listed in `missing_classes` and left out (p renormalised).
    progress_bar: a tqdm bar (stderr) over the class x draw OT problems."""
    _check_pair(real_x, syn_x)
    rng = np.random.default_rng(seed)
    ry, sy = real_y.cpu().numpy(), syn_y.cpu().numpy()
    classes, counts = np.unique(ry, return_counts=True)
    present = np.isin(classes, sy)
    missing = classes[~present].tolist()
    classes, p = classes[present], counts[present] / counts[present].sum()
    if not len(classes):
        raise ValueError("no class occurs in both the real and the generated set")
    est, floor, per_class, sizes = np.zeros(repeats), np.zeros(repeats), {}, {}
    have_floor = baseline
    bar = tqdm(total=len(classes) * repeats, desc=desc, unit="OT", disable=not progress_bar, dynamic_ncols=True)
    for c, pc in zip(classes, p):
        ri, si = np.flatnonzero(ry == c), np.flatnonzero(sy == c)
        mc = min(m, len(ri), len(si))
        sizes[int(c)] = mc
        have_floor &= len(ri) >= 2 * mc
        w = []
        for r in range(repeats):
            a, b = rng.choice(ri, mc, replace=False), rng.choice(si, mc, replace=False)
            w.append(wasserstein(embed(real_x[torch.from_numpy(a)]), embed(syn_x[torch.from_numpy(b)])))
            if have_floor:
                a2 = rng.choice(np.setdiff1d(ri, a), mc, replace=False)
                floor[r] += pc * wasserstein(embed(real_x[torch.from_numpy(a)]), embed(real_x[torch.from_numpy(a2)]))
            bar.update()
        est += pc * np.asarray(w)
        per_class[int(c)] = float(np.mean(w))
    bar.close()

    def stats(v):
        mean, sd = float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
        half = 1.96 * sd / math.sqrt(len(v))
        return {"mean": mean, "sd": sd, "ci95": [mean - half, mean + half]}

    return {**stats(est), "repeats": repeats, "m": m, "m_per_class": sizes, "per_class": per_class,
            "missing_classes": missing, "ground_cost": "L2", "real_vs_real_floor": stats(floor) if have_floor else None}


# ----------------------------------------------------------------------------- (c) Frechet distance
def frechet_distance(fa: np.ndarray, fb: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2}) of Gaussians fitted to two feature sets.
    The trace of the matrix square root is computed as Tr (S_a^{1/2} S_b S_a^{1/2})^{1/2} (the same
    number: the two matrices are similar) from symmetric eigendecompositions, which stays real and
    stable for the singular covariances of few samples in many dimensions (scipy.linalg.sqrtm of
    S_a S_b warns and may turn complex there)."""
    from scipy import linalg  # heavy (about 0.3 s to import), needed only here

    mu_a, mu_b = fa.mean(0), fb.mean(0)
    sa, sb = np.atleast_2d(np.cov(fa, rowvar=False)), np.atleast_2d(np.cov(fb, rowvar=False))
    w, v = linalg.eigh(sa)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root_a @ sb @ root_a
    tr_root = np.sqrt(np.clip(linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    d = float(((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * tr_root)
    return max(d, 0.0)


# ----------------------------------------------------------------------------- all together
def proxy_quality(real_x: torch.Tensor, real_y: torch.Tensor, syn_x: torch.Tensor, syn_y: torch.Tensor, *,
                  classifier: nn.Module | None = None, radii: Sequence[float] = RADII, n: int = 2000,
                  epochs: int = 3, steps: int = 5, m: int = 500, repeats: int = 5, frechet_n: int = 10000,
                  arc: bool = True, seed: int = 0, device="cpu", progress: Callable[[str], None] | None = None,
                  progress_bar: bool = False) -> dict:
    """(a) robust discrimination, (b) conditional W1 in input and feature space, (c) Frechet distance of
    features (on up to frechet_n images per side). Features: penultimate layer of `classifier`, or of a
    random-init SmallCNN if None. Returns a JSON-ready dict. progress: messages; progress_bar: tqdm
    bars (stderr) for each stage."""
    _check_pair(real_x, syn_x)
    if classifier is not None:
        feats, feat_name = penultimate_features(classifier, device=device), "classifier penultimate"
    else:
        feats, feat_name = random_features(real_x.shape[1], real_x.shape[-1], seed, device=device), \
            "random-init SmallCNN penultimate"
    out = {"n_real": len(real_y), "n_generated": len(syn_y), "feature_space": feat_name}
    if arc:
        out["robust_discrimination"] = robust_discrimination(real_x, syn_x, radii=radii, n=n, epochs=epochs,
                                                             steps=steps, seed=seed, device=device, progress=progress,
                                                             progress_bar=progress_bar)
    if progress:
        progress("conditional Wasserstein (input space)")
    out["wasserstein_input"] = conditional_wasserstein(real_x, real_y, syn_x, syn_y, m=m, repeats=repeats,
                                                       embed=pixels, seed=seed, progress_bar=progress_bar,
                                                       desc="conditional W1 (input)")
    if progress:
        progress("conditional Wasserstein (feature space)")
    out["wasserstein_features"] = conditional_wasserstein(real_x, real_y, syn_x, syn_y, m=m, repeats=repeats,
                                                          embed=feats, seed=seed, progress_bar=progress_bar,
                                                          desc="conditional W1 (features)")
    g = torch.Generator().manual_seed(seed)
    ra = torch.randperm(len(real_x), generator=g)[:frechet_n]
    sa = torch.randperm(len(syn_x), generator=g)[:frechet_n]
    with tqdm(total=len(ra) + len(sa), desc="frechet features", unit="img", disable=not progress_bar,
              dynamic_ncols=True) as bar:
        out["frechet_features"] = frechet_distance(feats(real_x[ra], bar=bar), feats(syn_x[sa], bar=bar))
    out["frechet_n"] = [len(ra), len(sa)]
    return out
