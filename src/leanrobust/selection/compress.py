"""Compression of the training pool that a config describes (`leanrobust compress`): Minimal Finite Covering
and its baselines (DM, random, k-centre). mfc/random/kcenter write a Selection (train with
data.selection=FILE); dm writes a new pool npz (train with data.pool=FILE). Both record the fingerprint of the
pool they were made from (data/fingerprint.py), which `train` checks."""
from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional


from ..config import load_config
from ..data.build import build_training_data
from ..data.fingerprint import SOURCE_KEY, fingerprint_array, run_fingerprint, train_hint
from ..io import write_json, write_npz
from .dm import dm_condense
from .kcenter import kcenter_selection
from .mfc import VacuousCoverError, mfc_selection
from .random_subset import random_selection

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
        state = out.with_name(out.name + ".dm_state.pt")  # an interrupted condensation resumes from it
        imgs, labs, history = dm_condense(images, labels, ipc=ipc, iterations=iterations, batch_real=batch_real, seed=cfg.seed,
                                          device=device, progress=progress, state=state)
        write_npz(out, image=imgs.permute(0, 2, 3, 1).numpy(), label=labs.numpy(),
                  **{SOURCE_KEY: fingerprint_array(fingerprint)})  # checked by a run that trains on this pool
        state.unlink(missing_ok=True)
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
