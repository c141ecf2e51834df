"""uotsel_train: Flax fine-tuning that mixes uotsel's selected pre-training data into training.

Installed with ``pip install uotsel[train]`` (flax, optax, tensorflow-datasets). The selection
library ``uotsel`` never imports this package.
"""

__version__ = "0.1.0"
