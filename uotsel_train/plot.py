"""Pictures of runs: loss terms, learning rates and accuracy against epochs, several runs
overlaid (the arms of an experiment). matplotlib comes with the ``plot`` extra.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

from uotsel.outputs import atomic_writer
from uotsel_train import metrics

__all__ = ["curves"]

LOSS_TERMS = ("loss", "target_ce", "source_ce", "pseudo_ce")
STYLES = {"loss": "-", "target_ce": "--", "source_ce": ":", "pseudo_ce": "-."}


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ValueError("out: drawing needs matplotlib: pip install 'uotsel[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves(run_dirs: Sequence[str], out: str, names: Sequence[str] | None = None) -> None:
    """Draw the runs in ``run_dirs`` into ``out`` (PNG): the loss and its terms, the learning
    rates of backbone and heads (log scale) and the evaluation top-1, against epochs.

    Raises:
      ValueError: starting with ``run:`` for a folder without readable metrics, ``out:`` when
        matplotlib is missing or the picture cannot be written.
    """
    if not out.lower().endswith(".png"):
        raise ValueError(f"out: the picture is a PNG; name it .png, got {out}")
    plt = _pyplot()
    from matplotlib.lines import Line2D

    names = list(names) if names else [os.path.basename(os.path.normpath(d)) for d in run_dirs]
    fig, (ax_loss, ax_lr, ax_acc) = plt.subplots(1, 3, figsize=(15, 4.5), layout="constrained")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    terms_seen, last_epoch = [], 0.0
    for i, run_dir in enumerate(run_dirs):
        colour = colours[i % len(colours)]
        train, evals = metrics.read(run_dir, "train"), metrics.read(run_dir, "eval")
        if not train:
            raise ValueError(f"run: {run_dir} has no training records yet")
        epochs = [r["epoch"] for r in train]
        last_epoch = max(last_epoch, epochs[-1])
        for term in LOSS_TERMS:
            if term in train[0]:
                terms_seen += [term] if term not in terms_seen else []
                ax_loss.plot(epochs, [r[term] for r in train], STYLES[term], color=colour)
        ax_lr.plot(epochs, [r["lr_backbone"] for r in train], "-", color=colour)
        ax_lr.plot(epochs, [r["lr_head"] for r in train], "--", color=colour)
        for key, style in (("test_top1", "-o"), ("val_top1", "--s")):
            points = [(r["epoch"], r[key]) for r in evals if key in r]
            if points:
                xs, ys = zip(*points, strict=True)
                ax_acc.plot(xs, ys, style, color=colour, markersize=5)
    runs = [Line2D([], [], color=colours[i % len(colours)]) for i in range(len(run_dirs))]

    def styles(labels, marks):
        return [Line2D([], [], color="grey", linestyle=m) for m in marks], labels

    handles, labels = styles(terms_seen, [STYLES[t] for t in terms_seen])
    ax_loss.legend(handles, labels, fontsize="small", loc="upper right")
    handles, labels = styles(["backbone", "heads"], ["-", "--"])
    ax_lr.legend(handles, labels, fontsize="small", loc="lower left")
    ax_acc.legend(runs, names, fontsize="small", title="runs (circles: test, squares: val)")
    ax_loss.set(title="training loss (means between records)", xlabel="epoch", ylabel="loss")
    ax_lr.set(title="learning rate", xlabel="epoch", ylabel="learning rate", yscale="log")
    ax_acc.set(title="top-1 accuracy", xlabel="epoch", ylabel="top-1", xlim=(0, last_epoch * 1.05))
    for ax in (ax_loss, ax_lr, ax_acc):
        ax.grid(alpha=0.3)
    picture = io.BytesIO()
    fig.savefig(picture, format="png", dpi=110)
    plt.close(fig)
    try:
        with atomic_writer(out, "wb") as fh:
            fh.write(picture.getvalue())
    except OSError as err:
        raise ValueError(f"out: cannot write {out}: {err.strerror or err}") from None
