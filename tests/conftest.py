import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
# The command line keeps a compilation cache in the user's cache folder; not from the tests.
os.environ["UOTSEL_CACHE_DIR"] = ""

from uotsel import embedded


@pytest.fixture(scope="session")
def paper_features():
    """(source ImageNet means, target CUB means) for both embedded backbones."""
    return {
        b: (embedded.load(b, "imagenet").means, embedded.load(b, "cub").means)
        for b in embedded.BACKBONES
    }


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
