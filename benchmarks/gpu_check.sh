#!/usr/bin/env bash
# GPU check (issue 17): the test suite on CUDA, a 1-epoch CIFAR-shaped PGD-AT run with AMP (bf16) and
# channels_last, and a 2-GPU torchrun run when 2 GPUs are there. Prints img/s and appends one row,
# labelled with the device, to benchmarks/results/gpu_check.jsonl.
#   bash benchmarks/gpu_check.sh            # PYTHON=... to choose the interpreter; SKIP_TESTS=1 skips pytest
# CIFAR-10 need not be there: the run trains on random CIFAR-shaped images (throughput, not accuracy).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
WORK=$(mktemp -d -t leanrobust-gpu-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
missing=$("$PY" - <<'EOF'
import importlib.util
need = ["torch", "numpy", "scipy", "safetensors", "pydantic", "yaml", "tqdm", "typer", "matplotlib", "platformdirs",
        "pyautoattack", "pytest"]
print(" ".join(n for n in need if importlib.util.find_spec(n) is None))
EOF
)
if [ -n "$missing" ]; then
  echo "missing Python packages: $missing (pip install them, or carry wheels: see the device README)"; exit 2
fi
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])" || exit 2
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")

TESTS=skipped
if [ -z "${SKIP_TESTS:-}" ]; then
  timeout 1800 "$PY" -m pytest -q -x -p no:cacheprovider 2>&1 | tee "$WORK/pytest.log" | tail -5
  [ "${PIPESTATUS[0]}" = 0 ] && TESTS=passed || TESTS="failed: $(tail -1 "$WORK/pytest.log")"
fi

"$PY" - "$WORK" <<'EOF'
import sys, numpy as np
w = sys.argv[1]; rng = np.random.default_rng(0)
for name, n in (("train", 20000), ("test", 1000)):
    np.savez(f"{w}/{name}.npz", image=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), label=np.arange(n) % 10)
open(f"{w}/cfg.yaml", "w").write(f"""name: gpu_check
progress: false
amp: true
channels_last: true
data: {{dataset: npz, path: {w}/train.npz, test_path: {w}/test.npz, num_classes: 10, val_size: 1000}}
model: {{name: preact_resnet18}}
objective: {{name: pgd_at, eps: 0.0314, steps: 10}}
optim: {{epochs: 1, batch_size: 512, lr: 0.1, weight_decay: 5.0e-4}}
validation: {{n: 500, steps: 10}}
eval: {{n: 500, attacks: [pgd20], batch_size: 500}}
""")
EOF
img_s() { "$PY" -c "import json,sys; r=[json.loads(l) for l in open(sys.argv[1])]; print(round(r[-1]['images_per_s'], 1))" "$1/metrics.jsonl" 2>/dev/null || echo null; }
timeout 1200 "$PY" -m leanrobust train "$WORK/cfg.yaml" --out "$WORK/run1" | tail -3
ONE=$(img_s "$WORK/run1"); echo "1 GPU: $ONE img/s (PreActResNet-18, PGD-10 AT, batch 512, bf16, channels_last)"
TWO=null
if [ "$NGPU" -ge 2 ]; then  # the same global batch: 256 per rank
  timeout 1200 "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 -m leanrobust -- train "$WORK/cfg.yaml" \
    --set optim.batch_size=256 --out "$WORK/run2" | tail -3
  TWO=$(img_s "$WORK/run2"); echo "2 GPUs: $TWO img/s"
fi
"$PY" - "$ONE" "$TWO" "$NGPU" "$TESTS" <<'EOF'
import json, os, sys, time, torch
sys.path.insert(0, "benchmarks")
from common import append_row, device_label, git_commit, RESULTS
one, two, ngpu, tests = sys.argv[1:]
row = {"name": "gpu_check", "device": device_label("cuda"), "n_gpus": int(ngpu), "torch": torch.__version__,
       "tests": tests, "img_s_1gpu": json.loads(one), "img_s_2gpu": json.loads(two), "load_1min": os.getloadavg()[0],
       "git": git_commit(), "date": time.strftime("%Y-%m-%d")}
append_row(RESULTS / "gpu_check.jsonl", row)
print(json.dumps(row))
EOF
