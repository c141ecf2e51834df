#!/usr/bin/env bash
# Every benchmark's --device mode on the accelerator JAX finds (the first three steps in about
# 6 minutes, all nine in about 19 minutes): each writes its own "... on <device>" section of
# docs/benchmarks.md and benchmarks/results/<name>_device.json.
# Every step has its own time limit, so that one slow step cannot take the others' time.
#
# The accelerator machine is expected to hold Python with JAX (CUDA), flax, optax,
# scikit-learn and matplotlib, and nothing from the internet; the peers it lacks (POT, ott-jax
# and its jaxopt, faiss-cpu, ml_collections, tensorboardX) travel as wheels in .whl/, which
# `bash benchmarks/device_wheels.sh` downloads on a machine with pip access. Run from the
# repository root: `bash benchmarks/device.sh [STEP ...]`.
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
# "solver" names the solver's steps (at most 8 minutes): the Sinkhorn peers at 2000 x 200, the
# batch of 64 problems, a call's cost around its programs and the first calls.
only=" ${*/solver/sinkhorn_peers batched call_overhead first_call} "
# step LIMIT NAME ARGS...: benchmarks.NAME --device ARGS, at most LIMIT seconds; with names
# given on the command line, only those steps run.
step() {
    local limit=$1 name=$2
    shift 2
    if [ "$only" != "  " ] && [[ "$only" != *" $name "* ]]; then
        return
    fi
    echo "== $name $* (at most ${limit} s)"
    if ! timeout "$limit" "$PYTHON" -m "benchmarks.$name" --device "$@"; then
        echo "!! $name failed or ran out of time" >&2
        status=1
    fi
}

# Ordered by what users ask of an accelerator; each step starts new processes, and a JAX
# process on a GPU takes several seconds to start, so the limits are far above the CPU's.
step 105 sinkhorn_peers --only clusters-2000x200 --repeats 5
step 420 train_throughput --archs tiny,resnet18,resnet50 --batch 256 --precision bfloat16
step 150 scaling --repeats 3
step 150 kmeans --iters 10 --sizes 1280000 --ks 2000 --whole-sizes 200000
step 60 batched --repeats 5
step 30 call_overhead --rounds 3 --calls 100
step 60 end_to_end --repeats 3
step 280 first_call --repeats 3
step 200 sharded --devices 1 --repeats 3
exit $status
