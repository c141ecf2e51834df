"""``uotsel-train input-bench`` (uotsel_train.input_bench.measure) on in-memory images."""

import numpy as np
import pytest

pytest.importorskip("grain")

from train_helpers import memory_cfg

from uotsel_train import data, input_bench, input_pipeline, streams


def _inputs(objective):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(17, 20, 18, 3), dtype=np.uint8)
    labels = np.array([0, 1] * 4 + [0, 1, 2] * 3)
    target = data.ArraySource(images[:8], labels[:8], ["a", "b"])
    pretrain = data.ArraySource(images[8:], labels[8:], ["p", "q", "r"])
    needs = objective != "vanilla"
    return input_pipeline.Inputs(
        target=target,
        train_indices=np.arange(len(target)),
        val_indices=np.zeros(0, np.int64),
        test=None,
        pretrain=pretrain if needs else None,
        pretrain_indices=streams.selected_samples(pretrain.labels, [0, 2]) if needs else None,
        num_source_classes=3 if objective == "labelled" else 0,
    )


@pytest.mark.parametrize(
    "objective, images, views", [("vanilla", 4, 4), ("labelled", 6, 6), ("unlabelled", 6, 8)]
)
def test_measure_counts_the_images_and_views_of_a_step(objective, images, views):
    cfg = memory_cfg(objective=objective)  # batch 4 target + 2 pre-training images
    got = input_bench.measure(cfg, 3, _inputs(objective))
    assert set(got) == {
        "images_per_s",
        "steps",
        "workers",
        "prefetch",
        "images_per_step",
        "views_per_step",
        "seconds",
        "replaced",
    }
    assert (got["steps"], got["workers"], got["prefetch"]) == (3, 0, cfg.prefetch)
    assert (got["images_per_step"], got["views_per_step"]) == (images, views)
    assert got["replaced"] == 0
    assert got["seconds"] > 0
    assert got["images_per_s"] == pytest.approx(images * 3 / got["seconds"])
