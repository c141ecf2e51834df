"""A real TFDS data set in array_record format, written by the test (PNG bytes, so no
TensorFlow is needed to prepare it) and read back through uotsel_train."""

import io

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")
pytest.importorskip("flax")

from PIL import Image  # noqa: E402
from train_helpers import direct_features  # noqa: E402

from uotsel_train import data, extract, loader, streams  # noqa: E402

CLASSES = ["ant", "bee", "cat", "dog"]


class UotselTestImages(tfds.core.GeneratorBasedBuilder):
    """12 small RGB images of odd sizes, 4 classes, one split."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
                    "label": tfds.features.ClassLabel(names=CLASSES),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(12)}

    def _generate_examples(self, n):
        rng = np.random.default_rng(0)
        for i in range(n):
            pixels = rng.integers(0, 256, size=(20 + i, 17 + 2 * i, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="PNG")
            buf.seek(0)
            yield i, {"image": buf, "label": i % 4}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tfds"))
    UotselTestImages(data_dir=root, file_format="array_record").download_and_prepare()
    return root


def test_array_record_source_reads_images_and_labels(prepared):
    src = data.TfdsSource("uotsel_test_images", "train", data_dir=prepared)
    assert len(src) == 12 and src.classes == CLASSES
    assert sorted(src.labels.tolist()) == sorted([i % 4 for i in range(12)])
    for row in range(len(src)):
        img, label = src.load(row)
        # example i is (20 + i) x (17 + 2 i) with label i % 4: labels follow their images
        i = img.size[1] - 20
        assert img.mode == "RGB" and img.size[0] == 17 + 2 * i and label == i % 4
    with pytest.raises(ValueError, match="data: TFDS data set 'uotsel_test_images' split"):
        data.TfdsSource("uotsel_test_images", "test", data_dir=prepared)


@pytest.mark.slow
def test_selected_pretraining_stream_over_array_record(prepared):
    src = data.TfdsSource("uotsel_test_images", "train", data_dir=prepared)
    chosen = streams.selected_samples(src.labels, [1, 3])
    order = loader.stream_order(chosen, seed=0)
    taken = np.asarray([order[p] for p in range(12)])
    assert set(src.labels[taken].tolist()) == {1, 3}
    out = list(  # two worker processes: the source travels to them and reads there
        loader.batches(
            src,
            taken[:6],
            lambda im, i: data.train_transform(im, np.random.default_rng(i), size=16),
            3,
            workers=2,
        )
    )
    assert [b.images.shape for b in out] == [(3, 16, 16, 3)] * 2
    assert set(np.concatenate([b.labels for b in out]).tolist()) <= {1, 3}


@pytest.mark.slow
def test_extraction_over_array_record_matches_direct_computation(prepared):
    import jax
    import jax.numpy as jnp

    from uotsel_train import models

    src = data.TfdsSource("uotsel_test_images", "train", data_dir=prepared)
    model = models.backbone("tiny")
    variables = {"backbone": model.init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)))}
    res = extract.extract(src, variables, "tiny", image_size=32, resize=36, batch_size=5)
    direct = direct_features(model, variables, src, 32, 36)
    for c in range(4):
        np.testing.assert_allclose(
            res.means[c], direct[src.labels == c].mean(0), rtol=1e-5, atol=1e-6
        )
    assert res.counts.tolist() == [3, 3, 3, 3]
