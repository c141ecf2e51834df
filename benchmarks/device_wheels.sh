#!/usr/bin/env bash
# Download, into .whl/, the wheels benchmarks/device.sh installs on an accelerator machine that
# has JAX but cannot reach the internet (CPython 3.12, x86-64 Linux). Run from the repository
# root on a machine with pip access: `bash benchmarks/device_wheels.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
    manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d .whl \
    pot ott-jax jaxopt faiss-cpu ml_collections tensorboardX
ls -l .whl
