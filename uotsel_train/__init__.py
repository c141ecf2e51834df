"""uotsel_train: Flax fine-tuning that mixes uotsel's selected pre-training data into training.

Installed with ``pip install uotsel[train]`` (flax, optax, orbax-checkpoint,
tensorflow-datasets). The selection library ``uotsel`` never imports this package.

- :mod:`uotsel_train.models`: torchvision-compatible Flax ResNets (18, 34, 50, and a tiny one
  for tests), MoCo-v2's projection head, and the fine-tuning classifier with target and
  source heads.
- :mod:`uotsel_train.convert`: torchvision and MoCo-v2 checkpoints to Flax variables
  (``uotsel-train convert``).
- :mod:`uotsel_train.data`: image folders, TFDS data sets, in-memory arrays, the paper's
  train / eval transforms, batches decoded in worker threads.
- :mod:`uotsel_train.augment`: the weak and strong (RandAugment + cutout) views of eq. 7.
- :mod:`uotsel_train.streams`: selected samples, reduced target sets, resumable epoch order.
- :mod:`uotsel_train.parallel`: the data-parallel mesh over all devices and processes.
- :mod:`uotsel_train.feed`: batches made ahead of time in a background thread.
- :mod:`uotsel_train.extract`: per-class mean features for ``uotsel select``
  (``uotsel-train extract``).
- :mod:`uotsel_train.optim`, :mod:`uotsel_train.objectives`, :mod:`uotsel_train.step`: the
  paper's optimiser (Nesterov SGD, coupled weight decay, 10x heads, x0.1 at epochs 60 and 80),
  the vanilla / labelled (eq. 6) / unlabelled (eq. 7) objectives and a pure train step.
- :mod:`uotsel_train.loop`: the fine-tuning loop with orbax checkpoints, exact resume, NaN
  stop, bfloat16 option and evaluation (top-1 and mean per-class accuracy).
- :mod:`uotsel_train.presets`: the paper's three released settings.
- :mod:`uotsel_train.synthetic`, :mod:`uotsel_train.demo`: generated images and the CPU
  demonstration (``uotsel-train demo``).
"""

__version__ = "0.1.0"
