"""uotsel_train.grid.search: the refusals made before any data, model or folder is touched (the
search itself runs in tests/test_train_experiments.py)."""

import pytest
from train_helpers import memory_cfg

from uotsel_train import grid


@pytest.mark.parametrize(
    "changes, select_on, message",
    [
        ({}, "best", r"^select_on: unknown 'best'; valid: val, test$"),
        ({}, "val", r"^val_fraction: the grid selects on a validation split; set it > 0$"),
        ({"val_fraction": 0.25}, "test", r"^test: selecting on test accuracy needs a test set$"),
    ],
)
def test_search_refuses_a_selection_it_cannot_make(tmp_path, changes, select_on, message):
    out = tmp_path / "grid"
    with pytest.raises(ValueError, match=message):
        grid.search(memory_cfg(**changes), {"lr": [0.1]}, [0], str(out), select_on=select_on)
    assert not out.exists()
