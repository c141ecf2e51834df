"""Helpers shared by the uotsel_train tests."""

import numpy as np
from PIL import Image

from uotsel_train import data


def image_folder(root, classes, per_class, seed):
    """Writes ``root/c<k>/<i>.png`` (20 x 18 noise with a class signal) and returns ``root``
    as a string."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(20, 18, 3), dtype=np.uint8)
            pixels[..., c % 3] = 40 * c  # a class signal
            Image.fromarray(pixels).save(root / f"c{c}" / f"{i}.png")
    return str(root)


def direct_features(model, variables, source, size, resize):
    """``[N, C]`` backbone features of every image of ``source``, one image at a time (the
    reference the batched extraction is compared with)."""
    return np.stack(
        [
            np.asarray(
                model.apply(
                    variables["backbone"],
                    data.eval_transform(source.load(i)[0], size=size, resize=resize)[None],
                    train=False,
                )
            )[0]
            for i in range(len(source))
        ]
    )
