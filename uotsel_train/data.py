"""Host-side image data: sources and the paper's crops, on uint8 pixels.

Sources give ``(PIL image, label)`` by index and say where a sample lives (``where``):

- :class:`ImageFolder`: ``root/<class>/<image>`` (class ids = sorted class folder names), for
  data TFDS lacks (FGVC-Aircraft) or a user's own data;
- :class:`TfdsSource`: a TFDS data set prepared as ``array_record``, read by random access
  without TensorFlow (``tfds.data_source``); :data:`PAPER_DATASETS` names the paper's data sets
  and splits (Caltech101 loses its ``background_google`` class, SUN397 uses the standard
  partition, DTD trains on train + validation);
- :class:`ArraySource`: images already in memory.

Crops follow the paper: training ``RandomResizedCrop(224, scale 0.08-1, ratio 3/4-4/3)`` plus a
horizontal flip; evaluation ``Resize(256 shorter side)`` + ``CenterCrop(224)``. Both return
``[H, W, 3]`` uint8: the normalisation with the ImageNet mean and standard deviation
(:func:`uotsel_train.models.normalise`) and the cast to the compute dtype happen on the device,
inside the compiled step. Batches of them are made by :mod:`uotsel_train.loader`.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "ArraySource",
    "ImageFolder",
    "PAPER_DATASETS",
    "TfdsSource",
    "eval_transform",
    "random_resized_crop",
    "rgb",
    "train_transform",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ArraySource:
    """Images already in memory: ``images`` ``[N, H, W, 3]`` uint8, ``labels`` ``[N]``, class
    ``classes`` names (default: ``"0"``, ``"1"``, ...). Same interface as :class:`ImageFolder`."""

    def __init__(self, images: Any, labels: Any, classes: Sequence[str] | None = None):
        images, labels = np.asarray(images), np.asarray(labels)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"images: expected [N, H, W, 3] uint8, got {images.shape} {images.dtype}"
            )
        if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels: expected {images.shape[0]} integer labels")
        if labels.size and labels.min() < 0:
            raise ValueError("labels: must be >= 0")
        self.images, self.labels = images, labels.astype(np.int64)
        count = int(labels.max()) + 1 if labels.size else 0
        self.classes = list(classes) if classes is not None else [str(c) for c in range(count)]
        if len(self.classes) < count:
            raise ValueError(f"classes: {len(self.classes)} names for labels up to {count - 1}")

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[index]), int(self.labels[index])

    def where(self, index: int) -> str:
        return f"in-memory image {index}"


def rgb(img: Image.Image) -> Image.Image:
    """``img`` decoded, in RGB (converted only when it is in another mode)."""
    img.load()
    return img if img.mode == "RGB" else img.convert("RGB")


class ImageFolder:
    """Images under ``root/<class>/``; classes sorted by name, files sorted within a class.

    Raises:
      ValueError: when ``root`` is missing or holds no class folder with images.
    """

    def __init__(self, root: str):
        if not os.path.isdir(root):
            raise ValueError(f"data: image folder not found: {root}")
        self.root = root
        classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
        paths, labels = [], []
        for label, name in enumerate(classes):
            files = sorted(
                e.name
                for e in os.scandir(os.path.join(root, name))
                if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES)
            )
            paths += [os.path.join(root, name, f) for f in files]
            labels += [label] * len(files)
        if not paths:
            raise ValueError(f"data: no images under {root} (expected root/<class>/<image>)")
        self.classes = classes
        self.paths = paths
        self.labels = np.asarray(labels, np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> tuple[Image.Image, int]:
        with Image.open(self.paths[index]) as img:
            return rgb(img), int(self.labels[index])

    def where(self, index: int) -> str:
        return self.paths[index]


# paper name -> (TFDS name, training split, test split)
PAPER_DATASETS: dict[str, tuple[str, str, str]] = {
    "cub": ("caltech_birds2011", "train", "test"),
    "dogs": ("stanford_dogs", "train", "test"),
    "cars": ("cars196", "train", "test"),
    "pets": ("oxford_iiit_pet", "train", "test"),
    "sun397": ("sun397/standard-part1-120k", "train", "test"),
    "dtd": ("dtd", "train+validation", "test"),
    "caltech101": ("caltech101", "train", "test"),
    "imagenet": ("imagenet2012", "train", "validation"),
}
# Classes the paper leaves out, per TFDS name.
_DROPPED_CLASSES = {"caltech101": ("background_google",)}


class TfdsSource:
    """A TFDS data set prepared as ``array_record`` (random access, no TensorFlow needed).

    Args:
      name: a TFDS name (``"caltech_birds2011"``) or a paper name from
        :data:`PAPER_DATASETS` (``"cub"``; then ``split`` may be ``"train"`` or ``"test"``
        and is mapped to the paper's split).
      split: TFDS split expression.
      data_dir: where the prepared data lives (TFDS's default otherwise).

    ``labels`` are read once by a pass over the records, without decoding the images (images
    are decoded by :meth:`load`); dropped classes are removed and the remaining ids renumbered
    in order. A data set that is not prepared is an error; nothing is downloaded.

    Raises:
      ValueError: when the data set or split is not prepared (one line, before any work).
    """

    def __init__(self, name: str, split: str = "train", data_dir: str | None = None):
        import tensorflow_datasets as tfds

        if name in PAPER_DATASETS:
            tfds_name, train, test = PAPER_DATASETS[name]
            split = {"train": train, "test": test}.get(split, split)
            name = tfds_name

        def open_source(decoders):
            return tfds.data_source(
                name, split=split, data_dir=data_dir, download=False, decoders=decoders
            )

        try:
            # Images stay encoded: the labels are read without decoding every image, and
            # load() decodes with PIL. Nothing is downloaded here.
            self._source = open_source({"image": tfds.decode.SkipDecoding()})
            if len(self._source):
                try:
                    self._source[0]
                except ImportError:  # TFDS's mock data can only serve decoded images
                    self._source = open_source(None)
        except Exception as err:  # TFDS raises many kinds; one line for all
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(
                f"data: TFDS data set {name!r} split {split!r} is not available ({first})"
            ) from None
        names = list(self._source.dataset_info.features["label"].names)
        raw = np.asarray([int(self._source[i]["label"]) for i in range(len(self._source))])
        dropped = [
            names.index(c) for c in _DROPPED_CLASSES.get(name.split("/")[0], ()) if c in names
        ]
        keep = ~np.isin(raw, dropped)
        remap = np.full(len(names), -1, np.int64)
        kept_classes = [i for i in range(len(names)) if i not in dropped]
        remap[kept_classes] = np.arange(len(kept_classes))
        self.name, self.split = name, split
        self.classes = [names[i] for i in kept_classes]
        self._rows = np.flatnonzero(keep)
        self.labels = remap[raw[keep]]

    def __len__(self) -> int:
        return int(self._rows.size)

    def load(self, index: int) -> tuple[Image.Image, int]:
        image = self._source[int(self._rows[index])]["image"]
        if isinstance(image, bytes):
            image = Image.open(io.BytesIO(image))
        else:  # already decoded: [H, W, C] uint8
            image = np.asarray(image)
            image = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        return rgb(image), int(self.labels[index])

    def where(self, index: int) -> str:
        return f"TFDS {self.name} {self.split} record {int(self._rows[index])}"


def eval_transform(img: Image.Image, size: int = 224, resize: int = 256) -> np.ndarray:
    """Resize the shorter side to ``resize`` (bilinear) and centre-crop ``size``:
    ``[size, size, 3]`` uint8."""
    w, h = img.size
    scale = resize / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((new_w, new_h), Image.BILINEAR)
    left = round((new_w - size) / 2.0)
    top = round((new_h - size) / 2.0)
    return np.asarray(img.crop((left, top, left + size, top + size)))


def train_transform(
    img: Image.Image,
    rng: np.random.Generator,
    size: int = 224,
    scale: tuple[float, float] = (0.08, 1.0),
) -> np.ndarray:
    """The paper's training transform: :func:`random_resized_crop` (area ``scale``) and a
    random horizontal flip, ``[size, size, 3]`` uint8."""
    return np.asarray(random_resized_crop(img, rng, size, scale))


def random_resized_crop(
    img: Image.Image,
    rng: np.random.Generator,
    size: int = 224,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Image.Image:
    """Random resized crop (area ``scale``, aspect ``ratio``) to ``size`` and a random
    horizontal flip, as torchvision draws them (10 tries, then a centre crop)."""
    w, h = img.size
    area = w * h
    box = None
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            box = (left, top, left + cw, top + ch)
            break
    if box is None:  # fall back to the largest centre crop within the ratio range
        if w / h < ratio[0]:
            cw, ch = w, round(w / ratio[0])
        elif w / h > ratio[1]:
            cw, ch = round(h * ratio[1]), h
        else:
            cw, ch = w, h
        left, top = (w - cw) // 2, (h - ch) // 2
        box = (left, top, left + cw, top + ch)
    img = img.resize((size, size), Image.BILINEAR, box=box)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return img
