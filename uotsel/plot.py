"""Pictures of a selection file (``uotsel plot``); matplotlib is imported only when drawing.

:func:`check_record` checks the fields a picture needs; :func:`write_png` draws the panels of
``docs/cli.md`` (``uotsel plot``) into a binary file object.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["TOP_UNITS", "check_record", "require_matplotlib", "write_png"]

TOP_UNITS = 20  # units named in the bar chart
_NAME_CHARS = 32  # longest unit label drawn
_DECADES = 2.0  # a positive quantity spanning more than this many decades gets a log axis


def require_matplotlib(arg: str) -> None:
    """Raise a one-line ``ValueError`` starting with ``arg`` when matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError:
        raise ValueError(f"{arg}: drawing needs matplotlib: pip install 'uotsel[plot]'") from None


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError
    if value is None:
        return math.nan
    if value in ("inf", "-inf"):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    raise TypeError


def _numbers(record: dict[str, Any], key: str, size: int, path: str, arg: str) -> np.ndarray:
    values = record.get(key)
    if not isinstance(values, list) or len(values) != size:
        raise ValueError(f"{arg}: {path} has no list {key!r} of {size} numbers")
    try:
        return np.asarray([_number(v) for v in values], np.float64)
    except TypeError:
        raise ValueError(f"{arg}: {path} has a value in {key!r} that is not a number") from None


def check_record(record: dict[str, Any], path: str, arg: str) -> dict[str, Any]:
    """The arrays a picture needs from a record that
    :func:`uotsel.selection_file.read_selection` returned.

    Returns a dict with ``ranking``, ``selected``, ``groups`` (lists of ids), ``values`` (the
    score of every unit, by id), ``log`` (True when ``values`` are ``log_scores``), ``names``
    (a label per selected unit) and ``mass``, ``mass_total`` (None when absent).

    Raises:
      ValueError: one line starting with ``arg`` for inconsistent or missing fields.
    """
    ranking = np.asarray(record["ranking"], np.int64)
    k = ranking.size
    if k == 0 or np.unique(ranking).size != k or ranking.max() >= k:
        raise ValueError(f"{arg}: {path} has a 'ranking' that is not a permutation of unit ids")
    selected = np.asarray(record["selected"], np.int64)
    if (
        selected.size == 0
        or selected.size > k
        or not np.array_equal(selected, ranking[: selected.size])
    ):
        raise ValueError(f"{arg}: {path} has a 'selected' list that does not start 'ranking'")
    groups = [np.asarray(g, np.int64) for g in record["groups"]]
    if groups and not np.array_equal(np.concatenate(groups), ranking):
        raise ValueError(f"{arg}: {path} has 'groups' that do not split 'ranking'")
    log = record.get("log_scores") is not None
    values = _numbers(record, "log_scores" if log else "scores", k, path, arg)
    if not np.isfinite(values).any():
        raise ValueError(f"{arg}: {path} has no finite score")
    names: list[str] = [str(int(i)) for i in selected]
    for key in ("selected_names", "selected_wnids"):
        labels = record.get(key)
        if labels is not None and (
            not isinstance(labels, list)
            or len(labels) != selected.size
            or not all(isinstance(x, str) for x in labels)
        ):
            raise ValueError(f"{arg}: {path} has a {key!r} list that does not match 'selected'")
    if record.get("selected_names") is not None:
        names = [_short(name) for name in record["selected_names"]]
    mass = mass_total = None
    if record.get("target_mass") is not None:
        total = record.get("target_mass_total")
        m = len(total) if isinstance(total, list) else -1
        mass = _numbers(record, "target_mass", m, path, arg)
        mass_total = _numbers(record, "target_mass_total", m, path, arg)
        if m == 0 or not (np.isfinite(mass).all() and np.isfinite(mass_total).all()):
            raise ValueError(f"{arg}: {path} has target masses that are not finite numbers")
    return dict(
        ranking=ranking,
        selected=selected,
        groups=groups,
        values=values,
        log=log,
        names=names,
        mass=mass,
        mass_total=mass_total,
        strategy=str(record.get("strategy", "")),
    )


def _short(name: str) -> str:
    """A unit label: the first of comma-separated synonyms, at most ``_NAME_CHARS`` long."""
    first = name.split(",")[0].strip() or name.strip()
    return first if len(first) <= _NAME_CHARS else first[: _NAME_CHARS - 1] + "\u2026"


def _spans_decades(values: np.ndarray) -> bool:
    finite = values[np.isfinite(values)]
    return bool(
        finite.size and finite.min() > 0 and np.log10(finite.max() / finite.min()) > _DECADES
    )


def _score_axis(data: dict[str, Any]) -> tuple[np.ndarray, str, bool]:
    """The plotted score of every unit (by id), its label and whether its axis is logarithmic."""
    values = data["values"]
    if data["log"]:
        mass = np.exp(values)
        if np.all(mass[np.isfinite(values)] > 1e-300):
            return mass, "mass sent, P 1 (log scale)", True
        return values, "log P 1", False
    if _spans_decades(values):
        return values, "score (log scale)", True
    return values, "score", False


def write_png(fh: Any, data: dict[str, Any], title: str = "") -> None:
    """Draw the panels of a selection (``data`` from :func:`check_record`) as a PNG into the
    binary file object ``fh``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with_mass = data["mass"] is not None
    fig = Figure(figsize=(14, 10 if with_mass else 9.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 2, width_ratios=(1.15, 1))
    scores_ax = fig.add_subplot(grid[0, :])
    top_ax = fig.add_subplot(grid[1, 0] if with_mass else grid[1, :])
    mass_ax = fig.add_subplot(grid[1, 1]) if with_mass else None
    if title:
        fig.suptitle(f"Selection {title}", fontsize=13)

    values, label, log_axis = _score_axis(data)
    _draw_scores(scores_ax, data, values[data["ranking"]], label, log_axis)
    _draw_top(top_ax, data, values[data["selected"]], label, log_axis)
    if mass_ax is not None:
        _draw_mass(mass_ax, data)
    fig.savefig(fh, format="png")


def _draw_scores(
    ax: Any, data: dict[str, Any], sorted_values: np.ndarray, label: str, log: bool
) -> None:
    k = sorted_values.size
    top_k = data["selected"].size
    ranks = np.arange(1, k + 1)
    edges = np.cumsum([0] + [g.size for g in data["groups"]])
    for i in range(len(data["groups"])):
        if i % 2 == 0:
            ax.axvspan(edges[i] + 0.5, edges[i + 1] + 0.5, color="0.93", lw=0)
    ax.plot(ranks, sorted_values, color="tab:blue", lw=1.6, label="all units, best first")
    if log:
        ax.set_yscale("log")
    ax.axvline(top_k + 0.5, color="tab:red", lw=1.4, ls="--", label=f"top-K cut-off (K = {top_k})")
    ax.set_xlim(0.5, k + 0.5)
    ax.set_xlabel("rank of the source unit")
    ax.set_ylabel(label)
    groups = len(data["groups"])
    ax.set_title(
        f"Scores of all {k} source units ({data['strategy'] or 'selection'}), "
        f"in {groups} score groups (shaded bands)"
        if groups
        else f"Scores of all {k} source units",
        fontsize=11,
        pad=16,
    )
    if 0 < groups <= 20:
        for i in range(groups):
            ax.text(
                (edges[i] + edges[i + 1] + 1) / 2,
                1.01,
                f"G{i + 1}",
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=8,
                color="0.35",
            )
    ax.legend(loc="upper right", fontsize=9)


def _draw_top(ax: Any, data: dict[str, Any], values: np.ndarray, label: str, log: bool) -> None:
    n = min(TOP_UNITS, values.size)
    shown = values[:n]
    names = data["names"][:n]
    rows = np.arange(n)
    finite = np.isfinite(shown)
    if np.all(shown[finite] > 0):
        ax.barh(rows, np.where(finite, shown, 0), color="tab:blue", height=0.7)
        if log and _spans_decades(shown):
            ax.set_xscale("log")
    else:
        ax.scatter(shown, rows, color="tab:blue", s=18, zorder=3)
        ax.grid(axis="x", color="0.9")
    ax.set_yticks(rows, names, fontsize=8.5)
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xlabel(label.replace(" (log scale)", ""))
    ax.set_title(f"Top {n} selected units", fontsize=11)


def _draw_mass(ax: Any, data: dict[str, Any]) -> None:
    mass, total = data["mass"], data["mass_total"]
    order = np.argsort(-mass, kind="stable")
    x = np.arange(1, mass.size + 1)
    width = 1.0 if mass.size > 40 else 0.8
    ax.bar(x, total[order], width=width, color="0.8", label="from all source units")
    ax.bar(x, mass[order], width=width, color="tab:orange", label="from the selected units")
    if _spans_decades(np.concatenate([mass, total])) and (mass > 0).all():
        ax.set_yscale("log")
    ax.set_xlim(0.5, mass.size + 0.5)
    ax.set_xlabel("target class (sorted by mass from the selected units)")
    ax.set_ylabel("mass received, P\u1d40 1")
    share = mass.sum() / total.sum() if total.sum() > 0 else math.nan
    ax.set_title(f"Mass received by each of the {mass.size} target classes", fontsize=11)
    ax.legend(
        loc="lower left",
        fontsize=9,
        title=f"selected units: {share:.1%} of all mass received",
        title_fontsize=9,
    )
