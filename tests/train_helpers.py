"""Helpers shared by the uotsel_train tests."""

import numpy as np

from uotsel_train import data


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
