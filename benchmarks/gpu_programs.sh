#!/usr/bin/env bash
# Compile the solver's programs for a GPU on a machine without one and record what they hold
# (`benchmarks/gpu_programs.py`): makes .venv-gpu-programs/ with JAX, its CUDA plugin (about
# 3 GB of CUDA libraries from pip; no driver or device needed), ott-jax (the peer) and numpy, at
# the versions of the Python that runs this script (or the newest), then runs the benchmark for
# each target.
# Run from anywhere: `bash benchmarks/gpu_programs.sh [--target h100|h200]`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
ENV=.venv-gpu-programs
version() { "$PYTHON" -c "from importlib import metadata; print(metadata.version('$1'))" 2>/dev/null || true; }
jax=$(version jax)
ott=$(version ott-jax)
if [ ! -x "$ENV/bin/python" ]; then
    "$PYTHON" -m venv "$ENV"
fi
"$ENV/bin/python" -m pip install -q "jax${jax:+==$jax}" "jax-cuda12-plugin[with-cuda]${jax:+==$jax}" \
    "ott-jax${ott:+==$ott}" numpy
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(--target h100 --target h200)
fi
for ((i = 0; i < ${#targets[@]}; i += 2)); do
    PYTHONPATH=$PWD "$ENV/bin/python" -m benchmarks.gpu_programs "${targets[i]}" "${targets[i + 1]}"
done
