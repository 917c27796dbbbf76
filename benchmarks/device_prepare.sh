#!/usr/bin/env bash
# Here, before a lent GPU call (issue 15): put what benchmarks/device_rows.sh needs on a bare GPU machine into
# two git-ignored folders of the checkout, to be named in the call's `carry`:
#   .whl/   cp312 x86-64 wheels of the dependencies the device image lacks (pydantic, platformdirs,
#           pyautoattack without its 44 MB example model, hypothesis)
#   .data/  Fashion-MNIST's four files (read there through LEANROBUST_DATA)
# The working tree, .whl and .data must stay under the device's 64 MiB: the script prints their sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
for d in .whl .data; do grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >> .git/info/exclude; done
mkdir -p .whl .data/fashion_mnist
download() {  # download DIR NAME...: cp312 manylinux wheels, no dependencies (each is named)
  local dir=$1; shift
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$dir" "$@"
}
download .whl pydantic pydantic-core annotated-types typing-inspection platformdirs hypothesis sortedcontainers
if ! ls .whl/pyautoattack-*.whl >/dev/null 2>&1; then  # the wheel ships a 44 MB example model: repack without it
  tmp=$(mktemp -d)
  download "$tmp" pyautoattack
  wheel=$(basename "$tmp"/pyautoattack-*.whl)
  mkdir "$tmp/x" && (cd "$tmp/x" && unzip -q "../$wheel" && rm -rf pyautoattack/examples \
    && grep -v '^pyautoattack/examples/' pyautoattack-*.dist-info/RECORD > ../RECORD \
    && mv ../RECORD pyautoattack-*.dist-info/RECORD && zip -qr "$ROOT/.whl/$wheel" .)
  rm -rf "$tmp"
fi
cp -n "${FMNIST_DIR:-/usr/share/datasets/fashion-mnist}"/*-ubyte.gz .data/fashion_mnist/
du -sh .whl .data
git ls-files -z | du -ch --files0-from=- | tail -1 | sed 's/total/tracked files/'
