"""Pictures of runs: loss terms, learning rates and accuracy against epochs, several runs
overlaid (the arms of an experiment). matplotlib comes with the ``plot`` extra.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

from uotsel.io import atomic_writer
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
    names = list(names) if names else [os.path.basename(os.path.normpath(d)) for d in run_dirs]
    fig, (ax_loss, ax_lr, ax_acc) = plt.subplots(1, 3, figsize=(15, 4.5), layout="constrained")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (run_dir, name) in enumerate(zip(run_dirs, names, strict=True)):
        colour = colours[i % len(colours)]
        train, evals = metrics.read(run_dir, "train"), metrics.read(run_dir, "eval")
        if not train:
            raise ValueError(f"run: {run_dir} has no training records yet")
        epochs = [r["epoch"] for r in train]
        for term in LOSS_TERMS:
            if term in train[0]:
                label = f"{name}: {term}"
                values = [r[term] for r in train]
                ax_loss.plot(epochs, values, STYLES[term], color=colour, label=label)
        ax_lr.plot(
            epochs, [r["lr_backbone"] for r in train], "-", color=colour, label=f"{name}: backbone"
        )
        ax_lr.plot(
            epochs, [r["lr_head"] for r in train], "--", color=colour, label=f"{name}: heads"
        )
        for key, style in (("test_top1", "-o"), ("val_top1", "--s")):
            points = [(r["epoch"], r[key]) for r in evals if key in r]
            if points:
                xs, ys = zip(*points, strict=True)
                ax_acc.plot(
                    xs,
                    ys,
                    style,
                    color=colour,
                    markersize=4,
                    label=f"{name}: {key.replace('_top1', '')}",
                )
    ax_loss.set(title="training loss (means between records)", xlabel="epoch", ylabel="loss")
    ax_lr.set(title="learning rate", xlabel="epoch", ylabel="learning rate", yscale="log")
    ax_acc.set(title="top-1 accuracy", xlabel="epoch", ylabel="top-1")
    for ax in (ax_loss, ax_lr, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    picture = io.BytesIO()
    fig.savefig(picture, format="png", dpi=110)
    plt.close(fig)
    try:
        with atomic_writer(out, "wb") as fh:
            fh.write(picture.getvalue())
    except OSError as err:
        raise ValueError(f"out: cannot write {out}: {err.strerror or err}") from None
