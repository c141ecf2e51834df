"""uotsel_train: Flax fine-tuning that mixes uotsel's selected pre-training data into training.

Installed with ``pip install uotsel[train]`` (flax, optax, orbax-checkpoint, ml_collections,
tensorflow-datasets). The selection library ``uotsel`` never imports this package.

Settings and experiments:

- :mod:`uotsel_train.config`: the settings (one ``ml_collections.ConfigDict``), overrides,
  validation before any work, the saved ``config.json`` that repeats a run.
- :mod:`uotsel_train.configs`: the paper's experiments, one file each.

Training, in the order a run goes through it:

- :mod:`uotsel_train.input_pipeline`: the data a config names, the target subset and the
  validation split, the selected pre-training samples, the run's batches on the mesh.
- :mod:`uotsel_train.loader`: grain data sets of uint8 batches (by step for training, in order
  for evaluation and extraction) made by worker processes; :mod:`uotsel_train.input_bench`:
  the pipeline's images a second without a model.
- :mod:`uotsel_train.selected`: a ``uotsel select`` file read whole and checked against the
  pre-training data.
- :mod:`uotsel_train.streams`: selected samples, reduced target sets.
- :mod:`uotsel_train.augment`: the weak and strong (RandAugment + cutout) views of eq. 7.
- :mod:`uotsel_train.initialise`: a checkpoint's backbone with fresh heads.
- :mod:`uotsel_train.objectives`, :mod:`uotsel_train.losses`: the vanilla / labelled (eq. 6) /
  unlabelled (eq. 7) / Co-Tuning objectives as a registry, and their losses;
  :mod:`uotsel_train.cotuning`: Co-Tuning's category relationship.
- :mod:`uotsel_train.softmax_regression`: the multinomial logistic regression without intercept
  (L-BFGS), its C chosen on held-out images and its one-scalar calibration, for Co-Tuning's
  reverse relationship.
- :mod:`uotsel_train.optim`, :mod:`uotsel_train.step`: the paper's optimiser (Nesterov SGD,
  coupled weight decay, 10x freshly drawn heads, x0.1 at epochs 60 and 80) and a pure train
  step.
- :mod:`uotsel_train.objective_settings`: the objective's settings for a run (Co-Tuning's
  relationship estimated and saved, or read back on resume).
- :mod:`uotsel_train.train`: ``fit`` (one config) and ``run`` (load, then fit);
  :mod:`uotsel_train.run_files`: the run folder's files, written whole or not at all.
- :mod:`uotsel_train.evaluate`, :mod:`uotsel_train.checkpoints`: top-1 and mean per-class
  accuracy; orbax checkpoints with exact resume.
- :mod:`uotsel_train.grid`: the search over lr, weight decay and lambda on a validation split.
- :mod:`uotsel_train.parallel`: the data-parallel mesh over all devices and processes.
- :mod:`uotsel_train.errors`: failures with an exit status of their own (a dead worker).

Models, weights and features:

- :mod:`uotsel_train.models`: torchvision-compatible Flax ResNets (18, 34, 50, and a tiny one
  for tests), MoCo-v2's projection head, the fine-tuning classifier with target and source
  heads, optional per-group BatchNorm statistics.
- :mod:`uotsel_train.convert`: torchvision and MoCo-v2 checkpoints to Flax variables.
- :mod:`uotsel_train.data`: image folders, TFDS data sets, in-memory arrays, the paper's
  train / eval crops as uint8.
- :mod:`uotsel_train.extract`: per-class mean features for ``uotsel select``.
- :mod:`uotsel_train.synthetic`, :mod:`uotsel_train.demo`: generated images and the CPU
  demonstration (``uotsel-train demo``), with :mod:`uotsel_train.demo_runs` (its pre-training
  and fine-tuning runs), :mod:`uotsel_train.demo_report` (its tables, claims and curves) and
  :mod:`uotsel_train.paired` (paired differences, sign test and bootstrap interval).
"""

__version__ = "0.1.0"
