#!/usr/bin/env bash
# Here, after a GPU call of benchmarks/device_rows.sh: merge its device_rows.tgz into this checkout. New
# result lines are appended (a line already present is skipped), weights copied, and the run folders of rows
# cut off by the deadline put in runs/ unless this checkout has its own progress on them. Then regenerate
# the report: PYTHONPATH=src:benchmarks python benchmarks/time_to_robustness.py --report-only
set -euo pipefail
[ $# -eq 1 ] && [ -f "$1" ] || { echo "usage: $0 PATH/device_rows.tgz"; exit 2; }
tgz=$(realpath "$1")
cd "$(dirname "$0")/.."
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
tar xzf "$tgz" -C "$tmp"
for f in "$tmp"/pack/results/*.jsonl; do
  [ -e "$f" ] || continue
  dst=benchmarks/results/$(basename "$f")
  touch "$dst"
  while IFS= read -r line; do
    [ -n "$line" ] && ! grep -qxF -- "$line" "$dst" && { echo "$line" >> "$dst"; echo "added a line to $dst"; }
  done < "$f"
done
mkdir -p benchmarks/results/time_to_robustness_models
cp -n "$tmp"/pack/models/*.safetensors benchmarks/results/time_to_robustness_models/ 2>/dev/null || true
for d in "$tmp"/pack/partial/*/; do
  [ -d "$d" ] || continue
  row=$(basename "$d"); dst=runs/bench/time_to_robustness/$row/run
  if [ -e "$dst/checkpoint.pt" ]; then echo "$row: kept this checkout's own progress"; else
    mkdir -p "$dst" && cp -r "$d". "$dst"/ && echo "$row: resumes from the device's checkpoint"; fi
done
if [ -d "$tmp/pack/prepared" ]; then  # shared preparations (compressed sets, margins) this checkout lacks
  mkdir -p runs/bench/time_to_robustness
  (cd "$tmp/pack/prepared" && find . -type f) | while read -r f; do
    dst=runs/bench/time_to_robustness/$f
    [ -e "$dst" ] || { mkdir -p "$(dirname "$dst")" && cp "$tmp/pack/prepared/$f" "$dst" && echo "prepared: $f"; }
  done
fi
echo "logs: tar xzf $tgz pack/logs"
