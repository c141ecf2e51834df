"""Shared benchmark plumbing: timing, machine description, problems, and result files.

Every benchmark writes its figures twice: a Markdown section of ``docs/benchmarks.md`` (between
``<!-- BEGIN name -->`` and ``<!-- END name -->`` markers, so scripts update their own part)
and ``benchmarks/results/<name>.json`` with every number and the environment.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

import numpy as np

from uotsel.settings import UOT

PAPER = UOT()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "benchmarks.md")
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def block(x: Any) -> Any:
    """Wait for JAX arrays inside ``x`` (no-op for numpy results)."""
    import jax

    return jax.block_until_ready(x)


def timed(fn: Callable[[], Any], repeats: int = 20, warmup: int = 2) -> dict[str, float]:
    """First-call time, then the median / min / max of ``repeats`` calls after ``warmup``
    calls (s); ``steady`` holds the last three as a :func:`spread`."""
    start = time.perf_counter()
    block(fn())
    first = time.perf_counter() - start
    for _ in range(warmup):
        block(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        block(fn())
        times.append(time.perf_counter() - start)
    return {
        "first_s": first,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "repeats": repeats,
        "steady": spread(times),
    }


def machine() -> dict[str, Any]:
    """What ran the benchmark: CPU, cores, memory, JAX device, package versions."""
    import jax

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            names = re.findall(r"model name\s*:\s*(.*)", fh.read())
        cpu = names[0] if names else cpu
    except OSError:
        pass
    mem_gb = None
    try:
        with open("/proc/meminfo") as fh:
            mem_gb = round(int(re.search(r"MemTotal:\s*(\d+)", fh.read()).group(1)) / 2**20, 1)
    except (OSError, AttributeError):
        pass
    versions = {}
    for pkg in ("uotsel", "jax", "jaxlib", "numpy", "pot", "ott-jax", "scikit-learn", "faiss-cpu"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    dev = jax.devices()[0]
    return {
        **threads(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": mem_gb,
        "python": platform.python_version(),
        "jax_backend": jax.default_backend(),
        "jax_device": getattr(dev, "device_kind", str(dev)),
        "versions": versions,
        "date": time.strftime("%Y-%m-%d"),
    }


def threads() -> dict[str, Any]:
    """What decides the speed besides the CPU: numpy's BLAS, thread settings, JAX flags, and
    the load average when the benchmark started (other work on the machine)."""
    blas = "unknown"
    try:
        config = np.show_config(mode="dicts")
        blas_info = config.get("Build Dependencies", {}).get("blas", {})
        blas = f"{blas_info.get('name', '?')} {blas_info.get('version', '')}".strip()
    except (TypeError, AttributeError):
        pass
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS")
    env = {name: os.environ[name] for name in names if name in os.environ}
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    import jax

    return {
        "blas": blas,
        "env": env,
        "jax_x64": bool(jax.config.jax_enable_x64),
        "load_average": load,
    }


def machine_line(info: dict[str, Any]) -> str:
    v = info["versions"]
    env = ", ".join(f"{k}={val}" for k, val in info.get("env", {}).items())
    env = env or "no thread or XLA flags set"
    return (
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB; JAX "
        f"{v.get('jax')} on {info['jax_backend']} ({info['jax_device']}); numpy "
        f"{v.get('numpy')} ({info.get('blas', '?')} BLAS), POT {v.get('pot', '-')}, ott-jax "
        f"{v.get('ott-jax', '-')}; {env}; load average {info.get('load_average')} at the "
        f"start; {info['date']}."
    )


def spread(values: list[float]) -> dict[str, float]:
    """Minimum, median and maximum of repeated measurements."""
    return {
        "min": float(min(values)),
        "median": float(statistics.median(values)),
        "max": float(max(values)),
        "runs": len(values),
    }


def ratio(a: dict[str, float], b: dict[str, float]) -> str:
    """``a / b`` of two :func:`spread` medians, to one significant figure, or two when both
    spreads ((max - min) / median) are under 10 %."""
    r = a["median"] / b["median"]
    rel = max((x["max"] - x["min"]) / x["median"] for x in (a, b))
    digits = 2 if rel < 0.1 else 1
    text = f"{r:.{digits}g}"
    if "e" in text:  # large ratios: plain integers
        text = f"{float(text):.0f}"
    return text


def span_ms(x: dict[str, float]) -> str:
    """``median (min-max)`` in milliseconds, three significant digits (whole ms from 100)."""

    def fmt(seconds: float) -> str:
        ms_ = seconds * 1e3
        return f"{ms_:.0f}" if ms_ >= 100 else f"{ms_:.3g}"

    return f"{fmt(x['median'])} ({fmt(x['min'])}-{fmt(x['max'])})"


def write_results(name: str, markdown: str, payload: dict[str, Any]) -> None:
    """Replace section ``name`` of docs/benchmarks.md and write results/<name>.json."""
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"{name}.json"), "w") as fh:
        json.dump(payload, fh, indent=1, default=float)
        fh.write("\n")
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    text = open(DOC).read() if os.path.exists(DOC) else "# Benchmarks\n"
    section = f"{begin}\n{markdown.strip()}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    with open(DOC, "w") as fh:
        fh.write(text)


def table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(x: Any) -> str:
        if isinstance(x, float):
            return f"{x:.3g}"
        return str(x)

    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        return int(re.search(rf"{field}:\s*(\d+)", fh.read()).group(1)) / 1024


def reset_peak_rss() -> float:
    """Reset this process's peak resident memory to the current one (Linux); returns it (MB)."""
    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """Peak resident memory of this process since the last reset (MB)."""
    return _status_mb("VmHWM")


def run_isolated(module: str, *args: str) -> dict[str, Any]:
    """Run ``python -m module args`` in a fresh process; it prints one JSON line last."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- problems -----------------------------------------------------------------------------


def imagenet_clusters(
    n: int, seed: int = 0, backbone: str = "resnet18_supervised", spread: float = 0.35
) -> np.ndarray:
    """``n`` synthetic cluster centroids around the embedded ImageNet class means: each class
    mean plus isotropic noise of ``spread`` times the typical class-mean norm / sqrt(D)."""
    from uotsel import embedded

    means = embedded.load(backbone, "imagenet").means.astype(np.float64)
    rng = np.random.default_rng(seed)
    base = means[rng.integers(0, means.shape[0], size=n)]
    scale = spread * np.median(np.linalg.norm(means, axis=1)) / np.sqrt(means.shape[1])
    return (base + scale * rng.normal(size=base.shape)).astype(np.float32)


def target_means(dataset: str = "cub", backbone: str = "resnet18_supervised") -> np.ndarray:
    from uotsel import embedded

    return embedded.load(backbone, dataset).means.astype(np.float32)


def cosine64(source: np.ndarray, target: np.ndarray, eps_c: float = PAPER.eps_c) -> np.ndarray:
    s = source.astype(np.float64)
    t = target.astype(np.float64)
    s /= np.linalg.norm(s, axis=1, keepdims=True)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    return (1.0 - s @ t.T) / eps_c
