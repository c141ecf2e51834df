"""Pictures of a selection file (``uotsel plot``); matplotlib is imported only when drawing.

:func:`check_record` checks the fields a picture needs; :func:`figure` draws the panels of
``docs/cli.md`` (``uotsel plot``) and :func:`write_png` writes them into a binary file object.
Every axis of scores or masses follows one rule (:func:`scale_rule`): logarithmic when the
values it shows are positive and span more than two decades, linear otherwise, and its label
says which.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from uotsel import plot_budget
from uotsel.selection_file import is_per_sample

__all__ = [
    "TOP_UNITS",
    "check_record",
    "figure",
    "heading",
    "require_matplotlib",
    "scale_rule",
    "write_png",
]

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
    per_sample = is_per_sample(record)
    _check_selected(selected, ranking, per_sample, path, arg)
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
        about={**{key: record.get(key) for key in _ABOUT}, "top_k": int(selected.size)},
        per_sample=plot_budget.check_samples(record, selected, path, arg) if per_sample else None,
        unit_images=None
        if per_sample
        else plot_budget.check_unit_images(record, selected, k, path, arg),
        sample_scores=None,
    )


def _check_selected(
    selected: np.ndarray, ranking: np.ndarray, per_sample: bool, path: str, arg: str
) -> None:
    """Units taken whole (``/1``) are the first ``len(selected)`` of the ranking; the units
    holding chosen samples (``/2``) appear in the ranking's order, not necessarily first."""
    k = ranking.size
    if selected.size == 0 or selected.size > k:
        raise ValueError(f"{arg}: {path} has a 'selected' list of {selected.size} of {k} units")
    if not per_sample:
        if not np.array_equal(selected, ranking[: selected.size]):
            raise ValueError(f"{arg}: {path} has a 'selected' list that does not start 'ranking'")
        return
    rank = np.empty(k, np.int64)
    rank[ranking] = np.arange(k)
    if selected.max() >= k or np.any(np.diff(rank[selected]) <= 0):
        raise ValueError(
            f"{arg}: {path} has a 'selected' list that is not in the order of 'ranking' (a "
            "per-sample selection lists the units holding chosen samples, best first)"
        )


def _short(name: str) -> str:
    """A unit label: the first of comma-separated synonyms, at most ``_NAME_CHARS`` long."""
    first = name.split(",")[0].strip() or name.strip()
    return first if len(first) <= _NAME_CHARS else first[: _NAME_CHARS - 1] + "\u2026"


STRATEGIES = {
    "uot": "UOT",
    "greedy_ot": "greedy OT",
    "nearest": "nearest-mean",
    "random": "random",
    "label": "label-matching",
}
_ABOUT = ("strategy", "mode", "budget_images", "images_used", "settings", "solver", "inputs")
_MECHANICS = ("threshold", "max_iter", "method", "shard", "init")  # settings left out of titles


def _units(inputs: Any, key: str) -> str:
    """``cub (200 units)`` for an input of a selection record; ``""`` when absent."""
    unit = inputs.get(key) if isinstance(inputs, dict) else None
    if not isinstance(unit, dict) or not isinstance(unit.get("path"), str):
        return ""
    path = unit["path"]
    if path.startswith("embedded:"):
        name = path.rsplit("/", 1)[-1]
    else:
        name = os.path.splitext(os.path.basename(path))[0]
    count = unit.get("units")
    return f"{name} ({count} units)" if isinstance(count, int) else name


def _features(inputs: Any) -> str:
    """``resnet18_supervised features`` for embedded inputs; ``""`` otherwise."""
    unit = inputs.get("source") if isinstance(inputs, dict) else None
    path = unit.get("path") if isinstance(unit, dict) else None
    if isinstance(path, str) and path.startswith("embedded:") and "/" in path:
        return f", {path.removeprefix('embedded:').split('/')[0]} features"
    return ""


def _value(value: Any) -> str:
    if isinstance(value, list):
        return str(value) if len(value) <= 4 else f"({len(value)} values)"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _settings(record: dict[str, Any]) -> str:
    settings = record.get("settings")
    if not isinstance(settings, dict):
        return ""
    shown = [
        f"{key} {_value(value)}"
        for key, value in settings.items()
        if value is not None
        and key not in _MECHANICS
        and not (key == "eps_c" and settings.get("cost") != "cosine")
    ]
    return ", ".join(shown)


def _solver(record: dict[str, Any]) -> str:
    solver = record.get("solver")
    if not isinstance(solver, dict) or "converged" not in solver:
        return ""
    n = solver.get("n_iters")
    if solver["converged"]:
        return f"converged in {n} iterations"
    error = solver.get("error")
    shown = f"{error:.2g}" if isinstance(error, (int, float)) else str(error)
    return f"NOT converged after {n} iterations (error {shown})"


def _size(record: dict[str, Any]) -> str:
    if is_per_sample(record):
        return f"the {record.get('budget_images')} best samples, chosen one by one"
    if isinstance(record.get("budget_images"), int):
        used = record.get("images_used")
        return f"budget {record['budget_images']} images ({used} used)"
    return f"top {record.get('top_k')} units"


def heading(record: dict[str, Any], file_name: str = "") -> str:
    """The two-line title of a selection record: strategy, target, source and features, then
    the number selected, the settings and the solver's stop; ``file_name`` stands in for the
    inputs where the record does not name them."""
    strategy = str(record.get("strategy", ""))
    inputs = record.get("inputs")
    target, source = _units(inputs, "target"), _units(inputs, "source")
    line = f"{STRATEGIES.get(strategy, strategy or 'a')} selection"
    line += f" for target {target}" if target else " (no target)"
    line += f" from {source}" if source else (f" in {file_name}" if file_name else "")
    details = [_size(record), _settings(record), _solver(record)]
    return line + _features(inputs) + "\n" + "; ".join(d for d in details if d)


def scale_rule(values: np.ndarray) -> tuple[bool, str]:
    """Whether an axis showing ``values`` is logarithmic, and the reason to print on it: log
    when the finite values are all positive and the largest is more than ``10 ** 2`` times the
    smallest, linear otherwise."""
    finite = np.asarray(values, np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0 or finite.min() <= 0:
        return False, "linear scale: not all values are positive"
    if np.log10(finite.max() / finite.min()) > _DECADES:
        return True, f"log scale: the values span more than {_DECADES:g} decades"
    return False, f"linear scale: the values span at most {_DECADES:g} decades"


def _score_values(data: dict[str, Any]) -> tuple[np.ndarray, str]:
    """The plotted score of every unit (by id) and what it is."""
    values = data["values"]
    if not data["log"]:
        return values, "score"
    mass = np.exp(values)
    if np.all(mass[np.isfinite(values)] > 1e-300):
        return mass, "mass sent, P 1"
    return values, "ln P 1 (P 1 is below the float range)"


def figure(data: dict[str, Any], file_name: str = "") -> Any:
    """The matplotlib ``Figure`` of a selection (``data`` from :func:`check_record`);
    ``file_name`` stands in for the inputs in the title of a record that does not name them."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with_mass = data["mass"] is not None
    with_budget = data["unit_images"] is not None
    per_sample = data["per_sample"] is not None
    height = (11.0 if per_sample else 10.0 if with_mass else 9.5) + (4.5 if with_budget else 0.0)
    fig = Figure(figsize=(14, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    rows = 3 if with_budget else 2
    heights = (1, 1.4) if per_sample else (1,) * rows
    grid = fig.add_gridspec(rows, 2, width_ratios=(1.15, 1), height_ratios=heights)
    scores_ax = fig.add_subplot(grid[0, :])
    bottom_ax = fig.add_subplot(grid[-1, 0] if with_mass else grid[-1, :])
    fig.suptitle(heading(data["about"], file_name), fontsize=12, wrap=True)
    values, quantity = _score_values(data)
    _draw_scores(scores_ax, data, values[data["ranking"]], quantity)
    if with_budget:
        plot_budget.draw_budget(fig.add_subplot(grid[1, :]), data)
    if per_sample:
        plot_budget.draw_samples(bottom_ax, data, scale_rule)
    else:
        _draw_top(bottom_ax, data, values[data["selected"]], quantity)
    if with_mass:
        _draw_mass(fig.add_subplot(grid[-1, 1]), data)
    return fig


def write_png(fh: Any, data: dict[str, Any], file_name: str = "") -> None:
    """Draw the panels of a selection (``data`` from :func:`check_record`) as a PNG into the
    binary file object ``fh`` (see :func:`figure`)."""
    figure(data, file_name).savefig(fh, format="png")


def _legend_outside(ax: Any, **kwargs: Any) -> None:
    """A legend to the right of ``ax``, off its data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, fontsize=9, **kwargs)


def _draw_scores(ax: Any, data: dict[str, Any], sorted_values: np.ndarray, quantity: str) -> None:
    k, top_k, groups = sorted_values.size, data["selected"].size, len(data["groups"])
    edges = np.cumsum([0] + [g.size for g in data["groups"]])
    for i in range(0, groups, 2):
        ax.axvspan(edges[i] + 0.5, edges[i + 1] + 0.5, color="0.93", lw=0)
    ax.plot(np.arange(1, k + 1), sorted_values, color="tab:blue", lw=1.6, label="all units")
    if data["per_sample"] is None:
        cut = "budget" if data["unit_images"] is not None else "top-K"
        ax.axvline(
            top_k + 0.5, color="tab:red", lw=1.4, ls="--", label=f"{cut} cut-off, K = {top_k}"
        )
    else:
        _mark_holding(ax, data, sorted_values)
    log, rule = scale_rule(sorted_values)
    ax.set_yscale("log" if log else "linear")
    ax.set(xlim=(0.5, k + 0.5), xlabel="rank of the source unit, best first")
    ax.set_ylabel(f"{quantity}\n({rule})")
    shaded = f", shaded: the {groups} score groups" if groups else ""
    ax.set_title(f"Scores of all {k} source units{shaded}", fontsize=11, pad=16 if groups else 6)
    if 0 < groups <= 20:
        for i in range(groups):
            ax.text(
                (edges[i] + edges[i + 1] + 1) / 2,
                1.01,
                f"G{i + 1}",
                ha="center",
                va="bottom",
                fontsize=8,
                color="0.35",
                transform=ax.get_xaxis_transform(),
            )
    _legend_outside(ax)


def _mark_holding(ax: Any, data: dict[str, Any], sorted_values: np.ndarray) -> None:
    """The units holding chosen samples, as points on the ranked scores."""
    rank = np.empty(data["ranking"].size, np.int64)
    rank[data["ranking"]] = np.arange(data["ranking"].size)
    at = rank[data["selected"]]
    ax.plot(
        at + 1,
        sorted_values[at],
        "o",
        color="tab:orange",
        ms=4,
        label=f"the {at.size} units holding\nchosen samples",
    )


def _range(shown: np.ndarray, log: bool) -> tuple[float, float]:
    """Axis limits around the finite ``shown`` values, with room for their printed values."""
    finite = shown[np.isfinite(shown)]
    if finite.size == 0:
        return (0.0, 1.0)
    lo, hi = (
        (np.log10(finite.min()), np.log10(finite.max())) if log else (finite.min(), finite.max())
    )
    width = hi - lo if hi > lo else max(abs(hi), 1.0) * 0.1
    lo, hi = lo - 0.08 * width, hi + 0.22 * width
    return (10**lo, 10**hi) if log else (lo, hi)


def _draw_top(ax: Any, data: dict[str, Any], values: np.ndarray, quantity: str) -> None:
    n = min(TOP_UNITS, values.size)
    shown, rows = values[:n], np.arange(n)
    log, rule = scale_rule(shown)
    ax.set_xscale("log" if log else "linear")
    ax.scatter(shown, rows, color="tab:blue", s=26, zorder=3)
    for row, value in zip(rows, shown, strict=True):
        if np.isfinite(value):
            ax.annotate(
                f"{value:.3g}",
                (value, row),
                xytext=(6, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
                color="0.25",
            )
    ax.set_xlim(*_range(shown, log))
    ax.grid(axis="both", color="0.9")
    ax.set_axisbelow(True)
    ax.set_yticks(rows, data["names"][:n], fontsize=8.5)
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xlabel(f"{quantity}: the range of the {n} shown, not from 0\n({rule})")
    ax.set_title(f"The {n} best units", fontsize=11)


def _draw_mass(ax: Any, data: dict[str, Any]) -> None:
    mass, total = data["mass"], data["mass_total"]
    order = np.argsort(-mass, kind="stable")
    x = np.arange(1, mass.size + 1)
    width = 1.0 if mass.size > 40 else 0.8
    ax.bar(x, total[order], width=width, color="0.8", label="from all\nsource units")
    ax.bar(x, mass[order], width=width, color="tab:orange", label="from the\nselected units")
    log, rule = scale_rule(np.concatenate([mass, total]))
    ax.set_yscale("log" if log else "linear")
    ax.set_xlim(0.5, mass.size + 0.5)
    ax.set_xlabel("target class, by mass from the selected units")
    ax.set_ylabel(f"mass received, P\u1d40 1\n({rule})")
    share = mass.sum() / total.sum() if total.sum() > 0 else math.nan
    ax.set_title(
        f"Mass received by each of the {mass.size} target classes\n"
        f"the selected units send {share:.1%} of all mass received",
        fontsize=11,
    )
    _legend_outside(ax)
