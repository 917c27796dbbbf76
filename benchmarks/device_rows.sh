#!/usr/bin/env bash
# On a lent GPU machine, in one call (issue 15): train time-to-robustness rows side by side on the one GPU
# (the small model leaves it mostly idle, so WORKERS processes share it; each takes the next unclaimed row
# through the rows' claim files), AutoAttack finished rows at the same time, optionally run the test suite
# on CUDA, and pack everything into $OUT/device_rows.tgz before DEADLINE seconds: new result lines, weights,
# logs, and the checkpoints of rows cut off by the deadline (they resume here or in a later call).
#   here:   bash benchmarks/device_prepare.sh        # .whl (wheels) and .data (Fashion-MNIST), carried
#   device: ROWS="pgd_at_e15_s1 ..." AA_ROWS="random_50_s0 ..." WORKERS=12 DEADLINE=480 \
#           bash benchmarks/device_rows.sh           # run tool: carry [".whl", ".data"], timeout_s >= DEADLINE + 60
#   here:   bash benchmarks/device_merge.sh /work/.device/.../device_rows.tgz
# Wall seconds in these rows are GPU seconds under WORKERS-way sharing: compare rows by grad evals.
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
DEADLINE=${DEADLINE:-480} WORKERS=${WORKERS:-12} AA_N=${AA_N:-1000} ROWS=${ROWS:-} AA_ROWS=${AA_ROWS:-}
OUT=${OUT:-$PWD/device_out}
PY=${PYTHON:-python3}
WORK=$(mktemp -d -t device-rows-XXXXXX)  # logs and the pack: outside the checkout
LOGS=$WORK/pack/logs
mkdir -p "$OUT" "$LOGS"
if ! "$PY" -c "import pydantic, platformdirs, pyautoattack" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 2; }
  export PYTHONPATH=/tmp/site
fi
[ -d .data ] && export LEANROBUST_DATA=$PWD/.data
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tee "$LOGS/gpu.txt"

RESULTS=benchmarks/results
declare -A LINES
for t in time_to_robustness time_to_robustness_aa; do LINES[$t]=$(cat "$RESULTS/$t.jsonl" 2>/dev/null | wc -l); done
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }

pids=()
if [ -n "${TESTS:-}" ]; then  # the suite on the GPU machine's CPUs with CUDA visible (modules whose imports are
  timeout "$(left)" "$PY" -m pytest -q -p no:cacheprovider --continue-on-collection-errors \
    > "$LOGS/pytest.log" 2>&1 &  # missing there are reported as collection errors, the rest run)
  pids+=($!)
fi
if [ -n "$AA_ROWS" ]; then  # one process per row: AutoAttack is the slow part of a finished row
  for r in $AA_ROWS; do
    timeout "$(left)" "$PY" benchmarks/time_to_robustness.py --autoattack "$r" --aa-n "$AA_N" --device "$DEVICE" \
      > "$LOGS/aa_$r.log" 2>&1 &
    pids+=($!)
  done
fi
if [ -n "$ROWS" ]; then
  for i in $(seq 1 "$WORKERS"); do
    # shellcheck disable=SC2086  # ROWS is a list of names
    timeout "$(left)" "$PY" benchmarks/time_to_robustness.py --only $ROWS --device "$DEVICE" \
      > "$LOGS/worker_$i.log" 2>&1 &
    pids+=($!)
    sleep 2  # each worker claims the next free row before the next one starts looking
  done
fi
for p in "${pids[@]}"; do wait "$p"; done

mkdir -p "$WORK"/pack/{results,models,partial,prepared}
for t in time_to_robustness time_to_robustness_aa; do
  [ -f "$RESULTS/$t.jsonl" ] && tail -n +"$(( LINES[$t] + 1 ))" "$RESULTS/$t.jsonl" > "$WORK/pack/results/$t.jsonl"
done
PACK=$WORK/pack "$PY" - <<'EOF'
import json, os, shutil
from pathlib import Path
pack = Path(os.environ["PACK"])
new = [json.loads(l)["name"] for l in open(pack / "results/time_to_robustness.jsonl") if l.strip()] \
    if (pack / "results/time_to_robustness.jsonl").exists() else []
for n in new:
    shutil.copy(f"benchmarks/results/time_to_robustness_models/{n}.safetensors", pack / "models")
# rows cut off by the deadline: their run folders (checkpoint, metrics) resume in a later call or here
for ck in Path("runs/bench/time_to_robustness").glob("*/run/checkpoint.pt"):
    row = ck.parent.parent.name
    if row not in new:
        shutil.copytree(ck.parent, (pack / "partial") / row, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".lock", "claim"))
# what the rows prepared once and share (compressed sets, margins): a DM condensation costs an hour on a CPU
shared = Path("runs/bench/time_to_robustness")
for f in [*shared.glob("compressed/*"), *shared.glob("margins*.npz")]:
    ((pack / "prepared") / f.relative_to(shared)).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(f, (pack / "prepared") / f.relative_to(shared))
print("finished rows:", " ".join(new) or "none")
print("cut off:", " ".join(sorted(p.name for p in (pack / "partial").iterdir())) or "none")
EOF
tar czf "$OUT/device_rows.tgz" -C "$WORK" pack
tail -n 3 "$LOGS/pytest.log" 2>/dev/null
echo "packed $(du -h "$OUT/device_rows.tgz" | cut -f1) in $(( $(date +%s) - START )) s"
