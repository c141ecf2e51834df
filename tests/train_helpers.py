"""Helpers shared by the uotsel_train tests."""

import numpy as np
from PIL import Image

from uotsel_train import config, data


def memory_cfg(**changes):
    """A validated config for the in-memory tiny runs: the tiny backbone, 4 + 2 images of
    16 px, 3 epochs with milestones at 1 and 2, evaluated every epoch, decoded in-process."""
    base = {
        "arch": "tiny",
        "lr": 0.05,
        "epochs": 3,
        "milestones": "1,2",
        "batch_size": 4,
        "source_batch_size": 2,
        "image_size": 16,
        "eval_every": 1,
        "workers": 0,
        "progress": False,
    }
    cfg = config.override(config.default(), [f"{k}={v}" for k, v in {**base, **changes}.items()])
    config.validate(cfg, check_files=False)
    return cfg


def image_folder(root, classes, per_class, seed):
    """Writes ``root/c<k>/<i>.png`` (20 x 18 noise with a class signal) and returns ``root``
    as a string."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(20, 18, 3), dtype=np.uint8)
            pixels[..., c % 3] = (40 * c) % 256  # a class signal
            Image.fromarray(pixels).save(root / f"c{c}" / f"{i}.png")
    return str(root)


MEAN = np.array([0.485, 0.456, 0.406])  # ImageNet, as torchvision's weights expect
STD = np.array([0.229, 0.224, 0.225])


def normalised(pixels):
    """uint8 pixels normalised on the host in float64 (the reference for the device's)."""
    return ((np.asarray(pixels, np.float64) / 255 - MEAN) / STD).astype(np.float32)


def direct_features(model, variables, source, size, resize):
    """``[N, C]`` backbone features of every image of ``source``, one image at a time (the
    reference the batched extraction is compared with)."""
    return np.stack(
        [
            np.asarray(
                model.apply(
                    variables["backbone"],
                    normalised(data.eval_transform(source.load(i)[0], size, resize))[None],
                    train=False,
                )
            )[0]
            for i in range(len(source))
        ]
    )


def tiny_project(root, target_classes=2, target_per_class=4, pretrain_classes=3, per_class=3):
    """A target folder, a pre-training folder, tiny-ResNet weights and a real ``uotsel select``
    file (class means by ``uotsel-train extract``, UOT, top 2) under ``root``.

    Returns ``{"target", "pretrain", "weights", "selection", "means"}`` paths."""
    import jax
    import jax.numpy as jnp

    from uotsel.cli import main as uotsel_main
    from uotsel_train import convert, models
    from uotsel_train.cli import main

    paths = {
        "target": image_folder(root / "target", target_classes, target_per_class, 0),
        "pretrain": image_folder(root / "pretrain", pretrain_classes, per_class, 1),
        "weights": str(root / "w.npz"),
        "selection": str(root / "sel.json"),
        "means": str(root / "pre_means.npz"),
    }
    backbone = models.backbone("tiny").init(jax.random.key(1), jnp.zeros((1, 16, 16, 3)))
    convert.save_variables({"backbone": backbone}, paths["weights"])
    for name, out in (("pretrain", paths["means"]), ("target", str(root / "target_means.npz"))):
        args = ["extract", "--data", paths[name], "--arch", "tiny", "--weights"]
        args += [paths["weights"], "--image-size", "16", "--workers", "0", "--quiet", "--out", out]
        assert main(args) == 0
    args = ["select", "--source", paths["means"], "--target", str(root / "target_means.npz")]
    args += ["--top-k", "2", "--out", paths["selection"]]
    assert uotsel_main(args) == 0
    return paths


def tiny_overrides(paths, **extra):
    """``--config.KEY=VALUE`` arguments for a few-second run of the tiny ResNet."""
    settings = {
        "arch": "tiny",
        "weights": paths["weights"],
        "target": paths["target"],
        "test": paths["target"],
        "pretrain": paths["pretrain"],
        "selection": paths["selection"],
        "epochs": 2,
        "milestones": "1",
        "batch_size": 4,
        "source_batch_size": 2,
        "image_size": 16,
        "eval_every": 1,
        "workers": 0,
        "lr": 0.05,
        **extra,
    }
    return [f"--config.{k}={v}" for k, v in settings.items()]


class KillingSource:
    """An in-memory source whose worker process kills itself (SIGKILL) when it loads sample
    ``victim`` while the file ``armed`` exists: a worker dying as if out of memory."""

    def __init__(self, source, victim, armed):
        self.source, self.victim, self.armed = source, victim, str(armed)
        self.labels, self.classes = source.labels, source.classes

    def __len__(self):
        return len(self.source)

    def load(self, index):
        import os
        import signal

        if index == self.victim and os.path.exists(self.armed):
            os.kill(os.getpid(), signal.SIGKILL)
        return self.source.load(index)

    def where(self, index):
        return self.source.where(index)


def spawned_children():
    """Process ids of this process's live children started by multiprocessing's spawn."""
    import os

    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and (b"spawn_main" in cmd or fields[0] == "Z"):
            found.append(int(entry))
    return found


class RecordingSource:
    """A source that appends every index it loads, one a line, to the file ``log`` (from
    whichever process loads it: grain's worker processes too)."""

    def __init__(self, source, log):
        self.source, self.log = source, str(log)
        self.labels, self.classes = source.labels, source.classes

    def __len__(self):
        return len(self.source)

    def load(self, index):
        import os

        fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{int(index)}\n".encode())
        finally:
            os.close(fd)
        return self.source.load(index)

    def where(self, index):
        return self.source.where(index)


def recorded(log):
    """``[n]`` int64 indices a :class:`RecordingSource` wrote to ``log`` (none when absent)."""
    import os

    if not os.path.exists(log):
        return np.zeros(0, np.int64)
    return np.loadtxt(log, dtype=np.int64, ndmin=1)
