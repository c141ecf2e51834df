#!/usr/bin/env bash
# Every benchmark's --device mode on the accelerator JAX finds, in about 8 minutes: each writes
# its own "... on <device>" section of docs/benchmarks.md and benchmarks/results/<name>_device.json.
# Every step has its own time limit, so that one slow step cannot take the others' time.
#
# The accelerator machine is expected to hold Python with JAX (CUDA), flax, optax,
# scikit-learn and matplotlib, and nothing from the internet; the peers it lacks (POT, ott-jax
# and its jaxopt, faiss-cpu, ml_collections, tensorboardX) travel as wheels in .whl/, which
# `bash benchmarks/device_wheels.sh` downloads on a machine with pip access. Run from the
# repository root: `bash benchmarks/device.sh`.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/uotsel-site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/uotsel-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
"$PYTHON" -c "import jax; d = jax.devices()[0]; print('JAX', jax.__version__, 'on', d.platform, d.device_kind)"

status=0
step() {
    local limit=$1
    shift
    echo "== $* (at most ${limit} s)"
    if ! timeout "$limit" "$PYTHON" -m "$@"; then
        echo "!! $* failed or ran out of time" >&2
        status=1
    fi
}

step 50 benchmarks.first_call --device --repeats 3
step 90 benchmarks.sinkhorn_peers --device --repeats 10
step 30 benchmarks.batched --device --repeats 10
step 45 benchmarks.end_to_end --device --repeats 3
step 70 benchmarks.scaling --device --repeats 3
step 80 benchmarks.kmeans --device --iters 10 --sizes 200000,1280000 --ks 200,2000 \
    --whole-sizes 200000
step 105 benchmarks.train_throughput --device --archs resnet18,resnet50 --batch 256 \
    --precision bfloat16
exit $status
