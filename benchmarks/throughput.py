"""Images/s of PGD-10 adversarial training of SmallCNN on Fashion-MNIST, side by side in one
run: leanrobust's trainer, a minimal hand-written PyTorch PGD-AT loop (the practical limit) and
the same loop driven by torchattacks' PGD (a peer, installed with `pip install --no-deps
torchattacks`). Contenders are interleaved over several rounds and the median is reported.

Regime: SmallCNN (--width 1.0), one epoch over the first --images Fashion-MNIST training images, SGD
lr 0.05 (momentum 0.9, weight decay 5e-4), batch 128, PGD-10 at Linf eps 0.1 (step 2.5 eps / 10, random
start); --threads 2 torch threads. Rows (one JSON document, results/throughput.json):
  minimal_loop        the canonical Madry PGD-AT loop, written inline
  leanrobust          leanrobust's Trainer, one training epoch (constant LR), no augmentation
  leanrobust_augment  the same with the dataset's augmentation (pad-crop)
  torchattacks_loop   the minimal loop with torchattacks' PGD as the attack (when installed)

    python benchmarks/throughput.py [--images 6400] [--rounds 3] [--width 1.0]
    python benchmarks/throughput.py --markdown-from benchmarks/results/throughput.json
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common import parse_json_table_args, write_table
from leanrobust.config import validate_config
from leanrobust.data import dataset_info, load_dataset, to_float
from leanrobust.models import build_model
from leanrobust.experiment import build_trainer

EPS, STEPS, BATCH, LR = 0.1, 10, 128, 0.05
ALPHA = 2.5 * EPS / STEPS


def make_model(width: float, seed: int = 0):
    info = dataset_info("fashion_mnist")
    torch.manual_seed(seed)
    return build_model("smallcnn", info.num_classes, info.channels, info.mean, info.std, width=width)


def minimal_pgd(model, x, y):
    """The canonical Madry PGD-10 inner loop, written inline."""
    was = model.training
    model.eval()
    delta = torch.empty_like(x).uniform_(-EPS, EPS)
    x_adv = (x + delta).clamp(0, 1)
    for _ in range(STEPS):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        g, = torch.autograd.grad(loss, x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + ALPHA * g.sign(), x - EPS), x + EPS).clamp(0, 1)
    model.train(was)
    return x_adv


def run_loop(model, x_all, y_all, attack) -> float:
    """One epoch over x_all with a plain SGD PGD-AT loop; returns images/s."""
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
    model.train()
    perm = torch.randperm(len(x_all))
    t0 = time.perf_counter()
    for i in range(0, len(x_all), BATCH):
        idx = perm[i:i + BATCH]
        x, y = x_all[idx], y_all[idx]
        x_adv = attack(model, x, y)
        loss = F.cross_entropy(model(x_adv), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return len(x_all) / (time.perf_counter() - t0)


def run_leanrobust(n_images: int, width: float, augment: bool) -> float:
    cfg = validate_config({
        "progress": False, "device": "cpu",
        "data": {"dataset": "fashion_mnist", "train_subset": n_images, "val_size": 100, "augment": augment},
        "model": {"name": "smallcnn", "width": width},
        "objective": {"name": "pgd_at", "eps": EPS, "steps": STEPS},
        "optim": {"epochs": 1, "batch_size": BATCH, "lr": LR, "schedule": "constant"},
    })
    tr = build_trainer(cfg, "/tmp/leanrobust_throughput_unused")
    stats = tr.train_epoch(0)  # the timed region: the training epoch only
    return stats.samples / stats.seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=6400)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "throughput"))
    args = parse_json_table_args(ap, markdown)
    if args is None:
        return
    torch.set_num_threads(args.threads)
    images, labels = load_dataset("fashion_mnist", "train")
    x_all = to_float(images[: args.images])
    y_all = labels[: args.images]
    try:
        import torchattacks
    except ImportError:
        torchattacks = None

    def ta_attack(model, x, y):
        atk = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=True)
        return atk(x, y)

    results: dict[str, list[float]] = {"leanrobust": [], "leanrobust_augment": [], "minimal_loop": []}
    if torchattacks is not None:
        results["torchattacks_loop"] = []
    for r in range(args.rounds):  # interleave, so drift in machine load hits every contender alike
        results["minimal_loop"].append(run_loop(make_model(args.width, r), x_all, y_all, minimal_pgd))
        results["leanrobust"].append(run_leanrobust(args.images, args.width, augment=False))
        results["leanrobust_augment"].append(run_leanrobust(args.images, args.width, augment=True))
        if torchattacks is not None:
            results["torchattacks_loop"].append(run_loop(make_model(args.width, r), x_all, y_all, ta_attack))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f} img/s" for k, v in results.items()), flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    base = med["minimal_loop"]
    out = {
        "benchmark": "PGD-10 adversarial training throughput, SmallCNN, Fashion-MNIST, Linf eps 0.1, batch 128",
        "command": f"python benchmarks/throughput.py --images {args.images} --rounds {args.rounds} --width {args.width}",
        "device": "cpu", "threads": args.threads, "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__, "torchattacks": getattr(torchattacks, "__version__", None),
        "images_per_epoch": args.images, "width": args.width,
        "images_per_s_median": med, "images_per_s_rounds": results,
        "ratio_vs_minimal_loop": {k: v / base for k, v in med.items()},
        "target": "leanrobust >= 0.95x minimal loop",
    }
    write_table(Path(args.out), markdown(out), data=out)


def markdown(out: dict) -> str:
    """The report, from the JSON document main writes."""
    med, base = out["images_per_s_median"], out["images_per_s_median"]["minimal_loop"]
    lines = [f"# {out['benchmark']}", "", f"`{out['command']}` on {out['device']} ({out['threads']} threads), "
             f"torch {out['torch']}, torchattacks {out['torchattacks']}", "",
             "| contender | images/s (median) | ratio vs minimal loop |", "|---|---|---|"]
    return "\n".join(lines + [f"| {k} | {v:.0f} | {v / base:.3f} |" for k, v in med.items()]) + "\n"


if __name__ == "__main__":
    main()
