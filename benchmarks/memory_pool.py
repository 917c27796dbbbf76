"""Peak resident memory of training with a generated pool far larger than memory (issue 17).

Writes a CIFAR-shaped generated pool (32x32x3 uint8, random pixels) as npz shards of 100k images, the way
`synth sample` writes its parts, then per pool size runs one child process that builds the trainer (real
npz set + mapped generated pool), trains one epoch mixing generated images into every batch, and reads
the whole pool once batch by batch (as selection scoring does). The child reports its peak RSS (VmHWM).
One row per pool size goes to results/memory_pool.jsonl (with the machine's load and device label),
and the table to results/memory_pool.md. The pool lives in a temporary folder and is deleted.

Regime of the child: real set 5,000 random 32x32x3 images (val 200), SmallCNN x0.25, PGD-2 at Linf 8/255,
batch 128, half of every batch generated (data.gen_fraction 0.5), one epoch; eval and validation on 100
points without attacks. Rows: pool_{n} for each --sizes n (default 100,000 and 2,000,000).

    python benchmarks/memory_pool.py --sizes 100000 2000000 --tmp /tmp
    python benchmarks/memory_pool.py --report-only    # rewrite the table from results/memory_pool.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import RESULTS, append_row, device_label, done_rows, git_commit, write_table

from leanrobust.io import write_npz

SHARD = 100_000


def write_pool(folder: Path, n: int) -> float:
    """n random CIFAR-shaped images in npz shards of SHARD (uncompressed, atomic, as synth sample)."""
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for i, start in enumerate(range(0, n, SHARD)):
        k = min(SHARD, n - start)
        rng = np.random.default_rng(i)
        write_npz(folder / f"part_{i:05d}.npz", image=rng.integers(0, 256, (k, 32, 32, 3), dtype=np.uint8),
                  label=rng.integers(0, 10, k))
    return time.perf_counter() - t0


def write_real(folder: Path) -> None:
    rng = np.random.default_rng(123)
    for name, k in (("train", 5000), ("test", 500)):
        write_npz(folder / f"real_{name}.npz", image=rng.integers(0, 256, (k, 32, 32, 3), dtype=np.uint8),
                  label=np.arange(k) % 10)


def status() -> dict:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024  # MiB
    return out


def child(args) -> None:
    """Build, train one epoch, scan the pool; print one JSON line of memory and timings."""
    import torch

    from leanrobust.config import validate_config
    from leanrobust.experiment import build_trainer

    torch.set_num_threads(args.threads)
    raw = {"seed": 0, "progress": False, "threads": args.threads,
           "data": {"dataset": "npz", "path": str(args.real / "real_train.npz"),
                    "test_path": str(args.real / "real_test.npz"), "num_classes": 10, "val_size": 200,
                    "generated": str(args.pool), "gen_fraction": 0.5},
           "model": {"name": "smallcnn", "width": 0.25},
           "objective": {"name": "pgd_at", "eps": 8 / 255, "steps": 2},
           "optim": {"epochs": 1, "batch_size": 128, "lr": 0.05},
           "validation": {"n": 100, "steps": 2}, "eval": {"n": 100, "attacks": []}}
    t0 = time.perf_counter()
    tr = build_trainer(validate_config(raw), args.run)
    build_s = time.perf_counter() - t0
    after_build = status()
    t0 = time.perf_counter()
    tr.fit(stop_after_epoch=1)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    images, total = tr.pool.images, 0
    for i in range(0, len(images), 4096):  # every image once, as scoring reads a pool
        total += int(images[i:i + 4096][:, 0, 0, 0].sum())
    scan_s = time.perf_counter() - t0
    print(json.dumps({"n_pool": len(tr.pool), "build_s": build_s, "train_epoch_s": train_s, "scan_s": scan_s,
                      "rss_after_build_mib": after_build["VmRSS"], **{f"{k}_mib": v for k, v in status().items()}}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 2_000_000])
    ap.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--pool", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--real", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--report-only", action="store_true", help="rewrite the table from the rows in the results file")
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.report_only:
        return report(sorted(done_rows(RESULTS / "memory_pool.jsonl").values(), key=lambda r: r["n_generated"]))
    work = Path(tempfile.mkdtemp(prefix="leanrobust-memory-pool-", dir=args.tmp))
    rows = []
    try:
        write_real(work)
        for n in sorted(args.sizes):
            pool = work / f"pool_{n}"
            write_s = write_pool(pool, n)
            size_gb = sum(f.stat().st_size for f in pool.iterdir()) / 1e9
            cmd = [sys.executable, __file__, "--child", "--pool", str(pool), "--real", str(work),
                   "--run", str(work / f"run_{n}"), "--threads", str(args.threads)]
            load = os.getloadavg()[0]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            row = {"name": f"pool_{n}", "n_generated": n, "pool_gb": round(size_gb, 2), "write_s": round(write_s, 1),
                   **res, "load_1min": load, "load_after": os.getloadavg()[0], "device": device_label("cpu"),
                   "git": git_commit(), "date": time.strftime("%Y-%m-%d")}
            append_row(RESULTS / "memory_pool.jsonl", row)
            rows.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(pool)
            shutil.rmtree(work / f"run_{n}", ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(rows)


def report(rows: list[dict]) -> None:
    """results/memory_pool.md from rows (by pool size)."""
    lines = ["# Peak memory with a generated pool read batch by batch (benchmarks/memory_pool.py)", "",
             "CIFAR-shaped (32x32x3 uint8) generated pools as npz shards of 100k images (as `synth sample` writes "
             "them), never loaded: rows are read from the files per batch; "
             "one child process per row: build the trainer, train one epoch (SmallCNN x0.25, PGD-2, batch 128, "
             "half of every batch generated), then read the whole pool batch by batch. Peak RSS is the child's VmHWM.",
             "", "| generated images | pool on disk | peak RSS | RSS at end (anon / file) | build | epoch | full scan "
                 "| load (1 min) | device |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['n_generated']:,} | {r['pool_gb']:.2f} GB | {r['VmHWM_mib']:.0f} MiB | "
                     f"{r['VmRSS_mib']:.0f} MiB ({r['RssAnon_mib']:.0f} / {r['RssFile_mib']:.0f}) | "
                     f"{r['build_s']:.1f} s | "
                     f"{r['train_epoch_s']:.1f} s | {r['scan_s']:.1f} s | {r['load_1min']:.1f} | {r['device']} |")
    if len(rows) >= 2:
        lines += ["", f"Peak RSS difference, {rows[-1]['n_generated']:,} vs {rows[0]['n_generated']:,} images: "
                      f"{rows[-1]['VmHWM_mib'] - rows[0]['VmHWM_mib']:+.0f} MiB (goal: at most +1 GB)."]
    write_table(RESULTS / "memory_pool", lines, echo=False)


if __name__ == "__main__":
    main()
