"""Reference result: full Fashion-MNIST, SmallCNN (TRADES' MNIST net), Linf eps 0.1, PGD-AT and
TRADES; clean, PGD-20 and CW-20 on the full test set and AutoAttack (standard) on the first
--aa-n test points; wall time. Resumable: finished rows are kept in
benchmarks/results/reference_fmnist.jsonl and interrupted runs resume from their checkpoint.

    python benchmarks/reference_fmnist.py --epochs 10 --aa-n 10000   # the full protocol (GPU: minutes)
    python benchmarks/reference_fmnist.py --epochs 5 --aa-n 500      # what fits a CPU session
"""
from __future__ import annotations

import argparse
from pathlib import Path

from common import RESULTS, pct, run_table

CONFIGS = Path(__file__).parents[1] / "configs"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--aa-n", type=int, default=10000)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    common = [f"optim.epochs={args.epochs}", f"eval.autoattack_n={args.aa_n}", "eval.n=null",
              f"device={args.device}", "progress=false"]
    tag = f"e{args.epochs}_aa{args.aa_n}"
    rows = [{"name": f"pgd_at_{tag}", "config": CONFIGS / "fmnist_smallcnn_pgdat.yaml", "overrides": common},
            {"name": f"trades_{tag}", "config": CONFIGS / "fmnist_smallcnn_trades.yaml", "overrides": common}]
    done = run_table("reference_fmnist", rows)
    lines = ["# Reference: full Fashion-MNIST, SmallCNN, Linf eps 0.1", "",
             "Command: `python benchmarks/reference_fmnist.py --epochs E --aa-n N` (rows in reference_fmnist.jsonl).",
             "Clean / PGD-20 / CW-20 on the full test set (10k); AutoAttack standard on the first N test points.", "",
             "| row | device | epochs | clean | PGD-20 | CW-20 | AutoAttack (n) | train s | eval s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in done:
        ra, ev = r["robust_acc"], r["eval"]
        lines.append(f"| {r['name']} | {r['device']} | {r['name'].split('_e')[1].split('_')[0]} | {pct(r['clean_acc'])} | "
                     f"{pct(ra.get('pgd20'))} | {pct(ra.get('cw20'))} | {pct(ra.get('autoattack'))} "
                     f"({ev.get('autoattack_n')}) | {r['train_seconds']:.0f} | {ev.get('eval_seconds', 0):.0f} |")
    (RESULTS / "reference_fmnist.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
