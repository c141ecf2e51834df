"""Fine-tuning throughput: images per second of the labelled (eq. 6) train step.

For each architecture, three figures at ``--image-size`` px with ``--batch`` target +
``--source-batch`` pre-training images per step:

- *on-device batch*: the jitted step alone on a batch already on the devices (compile time
  measured apart, then the median of ``--steps`` steps);
- *with the data pipeline*: ``uotsel_train.train.fit`` itself, JPEG decoding, random resized
  crops and normalisation in the background feeder, transfer and step (the second epoch, so
  compilation is excluded);
- *loader alone*: how many training images per second the host side produces.

The images are JPEGs made once in memory (500 x 375, like an average ImageNet photo), decoded
at every step. On a CPU the paper's 256 + 256 does not fit in a benchmark's time (and ResNet50's
activations at that size exceed a small machine's memory), so CPU runs default to 32 + 32;
accelerators default to 256 + 256.

    python -m benchmarks.train_throughput [--archs resnet18,resnet50] [--batch 256]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time

import numpy as np
from PIL import Image

from benchmarks import _common as C


class JpegSource:
    """``count`` samples cycling over a few in-memory JPEGs; labels ``i % classes``."""

    def __init__(self, count: int, classes: int, seed: int = 0, distinct: int = 32):
        rng = np.random.default_rng(seed)
        self.blobs = []
        for _ in range(distinct):
            small = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
            img = Image.fromarray(small).resize((500, 375), Image.BICUBIC)
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=90)
            self.blobs.append(buf.getvalue())
        self.labels = np.arange(count) % classes
        self.classes = [str(c) for c in range(classes)]

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int):
        blob = self.blobs[index % len(self.blobs)]
        return Image.open(io.BytesIO(blob)).convert("RGB"), int(self.labels[index])


def on_device(arch: str, batch: int, source_batch: int, size: int, steps: int, precision: str):
    import jax

    from uotsel_train import models, objectives, optim, parallel, step, train

    mesh = parallel.data_mesh()
    model = models.FineTuner(arch, 200, 1000, dtype=train.DTYPES[precision])
    variables = model.init(jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32))
    tx = optim.sgd(0.01, 1e-4, 100)
    state = parallel.replicate(mesh, step.init_state(variables, tx))
    rng = np.random.default_rng(0)
    host = {
        "target_images": rng.normal(size=(batch, size, size, 3)).astype(np.float32),
        "target_labels": rng.integers(0, 200, batch).astype(np.int32),
        "source_train_images": rng.normal(size=(source_batch, size, size, 3)).astype(np.float32),
        "source_labels": rng.integers(0, 1000, source_batch).astype(np.int32),
    }
    sizes = {k: v.shape[0] for k, v in host.items()}
    data = parallel.global_batch(mesh, host, sizes)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    train = jax.jit(
        step.train_step(model, tx, "labelled", objectives.Settings(lam=1.0)),
        donate_argnums=0,
        out_shardings=(replicated, replicated),
    )
    start = time.perf_counter()
    compiled = train.lower(state, data).compile()
    compile_s = time.perf_counter() - start
    state, metrics = compiled(state, data)  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = compiled(state, data)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "compile_s": compile_s,
        "step_s": median,
        "images_per_s": (batch + source_batch) / median,
    }


def with_pipeline(
    arch: str, batch: int, source_batch: int, size: int, steps: int, precision: str, workers: int
):
    import jax

    from uotsel_train import config, input_pipeline, metrics, models, train

    target = JpegSource(batch * steps, 200, seed=1)
    pretrain = JpegSource(max(source_batch * steps, 1000), 1000, seed=2)
    settings = {
        "arch": arch,
        "objective": "labelled",
        "lr": 0.003,
        "epochs": 2,
        "milestones": "",
        "batch_size": batch,
        "source_batch_size": source_batch,
        "image_size": size,
        "eval_every": 100,
        "checkpoint_every": 100,
        "precision": precision,
        "workers": workers,
        "progress": False,
    }
    cfg = config.override(config.default(), [f"{k}={v}" for k, v in settings.items()])
    config.validate(cfg, check_files=False)
    inputs = input_pipeline.Inputs(
        target=target,
        train_indices=np.arange(len(target)),
        val_indices=np.zeros(0, np.int64),
        test=None,
        pretrain=pretrain,
        pretrain_indices=np.arange(len(pretrain)),
        num_source_classes=1000,
    )
    backbone = models.backbone(arch).init(jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32))
    with tempfile.TemporaryDirectory() as out:
        train.fit(cfg, inputs, backbone, out, log=lambda line: None)
        last = metrics.read(out, "train")[-1]  # the steps of the last epoch, warm
    return {"images_per_s": last["images_per_s"], "step_s": last["step_s"]}


def loader_alone(count: int, size: int, workers: int) -> float:
    from uotsel_train import data

    source = JpegSource(count, 1000, seed=3)

    def crop(img, i):
        return data.train_transform(img, np.random.default_rng(i), size)

    start = time.perf_counter()
    for _ in data.batches(source, range(count), crop, 64, workers=workers):
        pass
    return count / (time.perf_counter() - start)


def main() -> None:
    import jax

    cpu = jax.default_backend() == "cpu"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="resnet18,resnet50")
    parser.add_argument("--batch", type=int, default=32 if cpu else 256)
    parser.add_argument("--source-batch", type=int, default=None, help="default: --batch")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=5 if cpu else 20)
    parser.add_argument("--precision", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--workers", type=int, default=max(2, (os.cpu_count() or 2)))
    parser.add_argument("--device", action="store_true", help="record as the accelerator section")
    args = parser.parse_args()
    source_batch = args.source_batch or args.batch
    info = C.machine()
    rows, payload = [], {"machine": info, "settings": vars(args), "archs": {}}
    loader = loader_alone(8 * 64, args.image_size, args.workers)
    for arch in args.archs.split(","):
        dev = on_device(arch, args.batch, source_batch, args.image_size, args.steps, args.precision)
        pipe = with_pipeline(
            arch,
            args.batch,
            source_batch,
            args.image_size,
            args.steps,
            args.precision,
            args.workers,
        )
        payload["archs"][arch] = {"on_device": dev, "pipeline": pipe}
        rows.append(
            [
                arch,
                f"{args.batch} + {source_batch}",
                f"{dev['compile_s']:.1f}",
                f"{dev['step_s'] * 1e3:.0f}",
                f"{dev['images_per_s']:.1f}",
                f"{pipe['images_per_s']:.1f}",
                f"{pipe['images_per_s'] / dev['images_per_s']:.2f}",
            ]
        )
        print(json.dumps({arch: payload["archs"][arch]}), flush=True)
    payload["loader_images_per_s"] = loader
    name = "train_throughput" + ("_device" if args.device or not cpu else "")
    md = "\n".join(
        [
            f"## Fine-tuning throughput ({info['jax_backend']}: {info['jax_device']})",
            "",
            C.machine_line(info),
            "",
            f"Labelled objective (eq. 6), {args.image_size} px, {args.precision}, one forward "
            "pass over the concatenated target + pre-training batch, Nesterov SGD with the "
            f"heads at 10x. Step: median of {args.steps} steps after one warm-up, on a batch "
            "already on the device. Pipeline: `train.fit` itself (second epoch), in-memory "
            f"500x375 JPEGs decoded, cropped and normalised by {args.workers} threads in the "
            f"background while the step runs. The loader alone makes {loader:.0f} training "
            "images / s on this host.",
            "",
            C.table(
                [
                    "arch",
                    "batch",
                    "compile s",
                    "step ms",
                    "images / s (on-device batch)",
                    "images / s (with pipeline)",
                    "pipeline / on-device",
                ],
                rows,
            ),
            "",
        ]
    )
    C.write_results(name, md, payload)
    print(md)


if __name__ == "__main__":
    main()
