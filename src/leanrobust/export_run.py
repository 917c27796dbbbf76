"""`export`: a finished run written as one self-describing safetensors file (weights plus the metadata
`model_file` reads back), so the model can be shared, loaded and evaluated without its run directory."""
from __future__ import annotations

import json
from pathlib import Path

from .io import load_weights, read_metadata, save_weights
from .model_file import EXPORT_KEYS, MODEL_KEY, read_spec
from .runs import SUMMARY, WEIGHTS


def export(run_dir: str | Path, out: str | Path) -> Path:
    """Write a finished run as one safetensors file: the selected weights plus metadata (architecture and
    normalisation, dataset, threat model, the evaluations at it, training cost, the resolved config), so
    `leanrobust.load(out)` rebuilds the model and `leanrobust eval out` evaluates it without the run."""
    from .report import read_run  # the report pulls in evaluation and YAML: imported when exporting, not with the package

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir}: not a run directory")
    if not (run_dir / SUMMARY).is_file() or not (run_dir / WEIGHTS).is_file():
        raise ValueError(f"{run_dir}: not a finished run (no {SUMMARY} or {WEIGHTS}); finish it with "
                         f"`leanrobust resume {run_dir}` first")
    file = run_dir / WEIGHTS
    meta = read_metadata(file)
    read_spec(meta, file)
    rec = read_run(run_dir)
    summary = json.loads((run_dir / SUMMARY).read_text())
    cfg = summary.get("config", {})
    data = cfg.get("data", {})
    dataset = {"name": data.get("dataset", "fashion_mnist")}
    if dataset["name"] == "npz":
        dataset.update(path=data.get("path"), test_path=data.get("test_path"), num_classes=data.get("num_classes"))
    evals = {"clean_acc": rec.clean_acc, "n": rec.n,
             "robust_acc": {k: {"acc": acc, "n": n} for k, (acc, n) in rec.robust.items()},
             "masking": rec.masking.get("flag") if isinstance(rec.masking, dict) else None}
    training = {k: summary.get(k) for k in ("train_seconds", "grad_evals", "samples_seen", "n_train", "epochs",
                                             "best_epoch", "device", "torch")}
    training["objective"] = rec.objective
    training["run"] = run_dir.name
    metadata = {MODEL_KEY: meta[MODEL_KEY], "leanrobust_version": meta.get("leanrobust_version", ""),
                EXPORT_KEYS["dataset"]: json.dumps(dataset, sort_keys=True),
                EXPORT_KEYS["threat_model"]: json.dumps({"norm": rec.norm, "eps": rec.eps}, sort_keys=True),
                EXPORT_KEYS["eval"]: json.dumps(evals, sort_keys=True),
                EXPORT_KEYS["training"]: json.dumps(training, sort_keys=True),
                EXPORT_KEYS["config"]: json.dumps(cfg, sort_keys=True)}
    return save_weights(out, load_weights(file), metadata)
