"""Pictures of runs (``uotsel-train plot``): test top-1, the target cross-entropy, the
pre-training loss term and, where runs differ in it, the learning rate, against epochs.

Runs are grouped into arms: runs given the same name, or whose folders differ only in a
``seed<N>`` component (``out/seed0/uot``, ``out/seed1/uot``), are seeds of one arm. An arm has
one colour and one legend entry; with several runs its mean over them is drawn bold and each
run thin. Losses are drawn faint as recorded and bold smoothed by an exponential moving average
whose time constant is 1/20 of the epochs shown. matplotlib comes with the ``plot`` extra.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from uotsel.outputs import atomic_writer
from uotsel_train import metrics

__all__ = [
    "SMOOTHING_SHARE",
    "Arm",
    "arms_of",
    "curves",
    "draw",
    "ema",
    "legend_entries",
    "lr_differs",
    "lr_note",
]

SMOOTHING_SHARE = 20  # the smoothing time constant is the epochs shown / this
PRETRAIN_TERMS = {"source_ce": "-", "pseudo_ce": "--"}
EVALS = {"test_top1": "-o", "val_top1": "--s"}
_SEED = re.compile(r"seed[-_]?\d+", re.IGNORECASE)


class Arm(NamedTuple):
    """Runs drawn as one arm: ``name``, and per run its ``train`` and ``eval`` records."""

    name: str
    train: list[list[dict[str, Any]]]
    evals: list[list[dict[str, Any]]]


def _labels(arms: list[Arm]) -> list[str]:
    """The arms' names, with their numbers of runs where these differ."""
    counts = [len(a.train) for a in arms]
    if len(set(counts)) == 1:
        return [a.name for a in arms]
    return [f"{a.name} ({n} run{'s' * (n > 1)})" for a, n in zip(arms, counts, strict=True)]


def _matplotlib() -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ValueError("out: drawing needs matplotlib: pip install 'uotsel[plot]'") from None
    return Figure, FigureCanvasAgg


def _arm_names(run_dirs: Sequence[str]) -> list[str]:
    """Each run's folder relative to the runs' common folder, ``seed<N>`` components removed."""
    paths = [os.path.abspath(d) for d in run_dirs]
    common = os.path.commonpath(paths)
    names = []
    for path in paths:
        parts = os.path.relpath(path, common).split(os.sep)
        kept = [p for p in parts if p != "." and not _SEED.fullmatch(p)]
        names.append("/".join(kept) or os.path.basename(common) or path)
    return names


def arms_of(run_dirs: Sequence[str], names: Sequence[str] | None = None) -> list[Arm]:
    """The arms of ``run_dirs`` in order of first appearance (see the module docstring);
    ``names`` (one per run) replaces the names taken from the folders.

    Raises:
      ValueError: starting with ``run:`` for a folder without readable training records.
    """
    names = list(names) if names else _arm_names(run_dirs)
    grouped: dict[str, Arm] = {}
    for name, run_dir in zip(names, run_dirs, strict=True):
        train, evals = (_latest(metrics.read(run_dir, kind)) for kind in ("train", "eval"))
        if not train:
            raise ValueError(f"run: {run_dir} has no training records yet")
        arm = grouped.setdefault(name, Arm(name, [], []))
        arm.train.append(train)
        arm.evals.append(evals)
    return list(grouped.values())


def _latest(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``records`` in epoch order, where a resumed run wrote an epoch again its latest record."""
    out: list[dict[str, Any]] = []
    for record in records:
        while out and out[-1]["epoch"] >= record["epoch"]:
            out.pop()
        out.append(record)
    return out


def ema(epochs: np.ndarray, values: np.ndarray, tau: float) -> np.ndarray:
    """An exponential moving average of ``values`` recorded at ``epochs`` with time constant
    ``tau`` epochs: each record's weight decays by ``exp(-dt / tau)`` over ``dt`` epochs; it
    starts at the first value, so it has no bias towards 0."""
    out = np.empty(len(values))
    out[0] = values[0]
    for i in range(1, len(values)):
        keep = math.exp(-max(epochs[i] - epochs[i - 1], 0.0) / tau)
        out[i] = keep * out[i - 1] + (1 - keep) * values[i]
    return out


def _xy(records: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray] | None:
    points = [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
    if not points:
        return None
    xs, ys = zip(*points, strict=True)
    return np.asarray(xs, np.float64), np.asarray(ys, np.float64)


def _curves(runs: list[list[dict[str, Any]]], key: str) -> tuple[list, Any]:
    """Each run's ``(epochs, values)`` of ``key`` and their mean over the runs (None unless
    there are several runs recorded at the same epochs)."""
    series = [xy for xy in (_xy(r, key) for r in runs) if xy is not None]
    if len(series) < 2:
        return series, None
    x0 = series[0][0]
    if any(x.shape != x0.shape or not np.allclose(x, x0) for x, _ in series):
        return series, None
    return series, (x0, np.mean([y for _, y in series], axis=0))


def _draw_evals(ax: Any, arm: Arm, label: str, colour: Any, key: str, style: str) -> None:
    series, mean = _curves(arm.evals, key)
    label = label if key == "test_top1" else "_" + label
    for i, (x, y) in enumerate(series):
        first = i == 0 and mean is None
        thin = dict(lw=0.8, ms=3, alpha=0.45) if len(series) > 1 else dict(lw=1.6, ms=5)
        ax.plot(x, y, style, color=colour, label=label if first else "_run", **thin)
    if mean is not None:
        ax.plot(*mean, style, color=colour, lw=2.2, ms=5.5, label=label)


def _draw_loss(
    ax: Any, arm: Arm, label: str, colour: Any, key: str, style: str, tau: float
) -> None:
    series, mean = _curves(arm.train, key)
    for i, (x, y) in enumerate([mean] if mean is not None else series):
        ax.plot(x, y, style, color=colour, lw=0.8, alpha=0.3, label="_raw")
        ax.plot(x, ema(x, y, tau), style, color=colour, lw=1.8, label=label if i == 0 else "_")


def _draw_lr(ax: Any, arm: Arm, label: str, colour: Any) -> None:
    for key, style in (("lr_backbone", "-"), ("lr_head", "--")):
        for i, (x, y) in enumerate(_curves(arm.train, key)[0]):
            shown = label if i == 0 else "_"
            ax.plot(x, y, style, color=colour, lw=1.4, drawstyle="steps-post", label=shown)


def _schedules(arms: list[Arm]) -> list[tuple[np.ndarray, ...]]:
    out = []
    for arm in arms:
        for run in arm.train:
            xs = [_xy(run, k) for k in ("lr_backbone", "lr_head")]
            if all(xy is not None for xy in xs):
                out.append((xs[0][0], xs[0][1], xs[1][1]))
    return out


def _same(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> bool:
    return all(
        x.shape == y.shape and np.allclose(x, y, rtol=1e-6) for x, y in zip(a, b, strict=True)
    )


def lr_differs(arms: list[Arm]) -> bool:
    """Whether the runs' learning rates (backbone and heads, at every record) differ."""
    schedules = _schedules(arms)
    return any(not _same(s, schedules[0]) for s in schedules[1:])


def lr_note(arms: list[Arm]) -> str:
    """One line describing the learning rate that every run shares."""
    schedules = _schedules(arms)
    if not schedules:
        return "no learning rates recorded"
    epochs, backbone, head = schedules[0]
    changes = [i for i in range(1, backbone.size) if not _close(backbone[i], backbone[i - 1])]
    note = f"learning rate, the same in every run: backbone {backbone[0]:.3g}, heads {head[0]:.3g}"
    factors = {f"{backbone[i] / backbone[i - 1]:.3g}" for i in changes}
    after = [str(math.ceil(epochs[i - 1] - 1e-9)) for i in changes]
    if len(factors) == 1:
        return (
            f"{note}, \u00d7{factors.pop()} after epoch{'s' * (len(after) > 1)} {', '.join(after)}"
        )
    steps = [
        f"\u00d7{backbone[i] / backbone[i - 1]:.3g} after epoch {e}"
        for i, e in zip(changes, after, strict=True)
    ]
    return ", ".join([note, *steps])


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6)


def _panels(fig: Any, terms: list[str], with_lr: bool) -> dict[str, Any]:
    keys = ["acc", "target_ce"] + (["pretrain"] if terms else []) + (["lr"] if with_lr else [])
    rows = 1 if len(keys) < 4 else 2
    axes = fig.subplots(rows, len(keys) // rows, squeeze=False).ravel()
    return dict(zip(keys, axes, strict=True))


def _titles(panels: dict[str, Any], arms: list[Arm], terms: list[str]) -> None:
    val = any(_curves(a.evals, "val_top1")[0] for a in arms)
    acc = "test top-1 (circles)" + (", validation top-1 (squares, dashed)" if val else "")
    if any(len(a.train) > 1 for a in arms):
        acc += "\nbold: mean over an arm's runs; thin: each run"
    panels["acc"].set(title=acc, ylabel="top-1")
    panels["target_ce"].set(title="target cross-entropy (training)", ylabel="loss")
    if terms:
        styles = [f"{t} ({'solid' if PRETRAIN_TERMS[t] == '-' else 'dashed'})" for t in terms]
        names = ", ".join(styles) if len(terms) > 1 else terms[0]
        panels["pretrain"].set(title=f"pre-training term: {names}", ylabel="loss")
    if "lr" in panels:
        title = "learning rate: backbone (solid), heads (dashed)"
        panels["lr"].set(title=title, ylabel="learning rate", yscale="log")


def _suptitle(arms: list[Arm], with_lr: bool, tau: float) -> str:
    counts = {len(a.train) for a in arms}
    runs = sum(len(a.train) for a in arms)
    line = f"{runs} run{'s' * (runs > 1)} in {len(arms)} arm{'s' * (len(arms) > 1)}"
    if len(counts) == 1 and runs > len(arms):
        line += f", {counts.pop()} runs each"
    smoothing = (
        f"losses: faint as recorded, bold an exponential moving average with a time constant "
        f"of {tau:.2g} epochs (1/{SMOOTHING_SHARE} of the epochs shown)"
    )
    return "\n".join([line] + ([] if with_lr else [lr_note(arms)]) + [smoothing])


def draw(arms: list[Arm]) -> Any:
    """The figure (a matplotlib ``Figure``) of ``arms`` from :func:`arms_of`."""
    figure_cls, canvas = _matplotlib()
    with_lr = lr_differs(arms)
    terms = [t for t in PRETRAIN_TERMS if any(_curves(a.train, t)[0] for a in arms)]
    n = 2 + bool(terms) + with_lr
    size = (4.4 * n + 3.2, 5.0) if n < 4 else (4.4 * 2 + 3.2, 9.0)
    fig = figure_cls(figsize=size, dpi=110, layout="constrained")
    canvas(fig)
    panels = _panels(fig, terms, with_lr)
    last = max(r[-1]["epoch"] for a in arms for r in a.train)
    tau = last / SMOOTHING_SHARE if last > 0 else 1.0
    for arm, label, colour in zip(arms, _labels(arms), _colours(len(arms)), strict=True):
        for key, style in EVALS.items():
            _draw_evals(panels["acc"], arm, label, colour, key, style)
        _draw_loss(panels["target_ce"], arm, label, colour, "target_ce", "-", tau)
        for term in terms:
            _draw_loss(panels["pretrain"], arm, label, colour, term, PRETRAIN_TERMS[term], tau)
        if with_lr:
            _draw_lr(panels["lr"], arm, label, colour)
    _titles(panels, arms, terms)
    fig.suptitle(_suptitle(arms, with_lr, tau), fontsize=11)
    _finish(fig, panels, last)
    return fig


def _colours(n: int) -> list[str]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def legend_entries(fig: Any) -> tuple[list[Any], list[str]]:
    """The labelled artists of every panel, the first of each label: the figure's legend."""
    seen: dict[str, Any] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    return list(seen.values()), list(seen)


def _finish(fig: Any, panels: dict[str, Any], last: float) -> None:
    for ax in panels.values():
        ax.set_xlabel("epoch")
        ax.set_xlim(0, last * 1.03 if last > 0 else 1)
        ax.grid(alpha=0.3)
        ax.title.set_fontsize(10.5)
    handles, labels = legend_entries(fig)
    fig.legend(handles, labels, loc="outside right upper", title="arm", fontsize="small")


def curves(run_dirs: Sequence[str], out: str, names: Sequence[str] | None = None) -> None:
    """Draw the runs in ``run_dirs`` (grouped into arms, see the module docstring) into
    ``out`` (PNG).

    Raises:
      ValueError: starting with ``run:`` for a folder without readable metrics, ``out:`` when
        matplotlib is missing or the picture cannot be written.
    """
    if not out.lower().endswith(".png"):
        raise ValueError(f"out: the picture is a PNG; name it .png, got {out}")
    _matplotlib()
    picture = io.BytesIO()
    draw(arms_of(run_dirs, names)).savefig(picture, format="png")
    try:
        with atomic_writer(out, "wb") as fh:
            fh.write(picture.getvalue())
    except OSError as err:
        raise ValueError(f"out: cannot write {out}: {err.strerror or err}") from None
