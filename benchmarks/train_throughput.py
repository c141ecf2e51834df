"""Fine-tuning throughput: how fast the host feeds the step, and the step itself.

- *per core*: images a second of decoding alone (PIL, simplejpeg, PIL's reduced-size ``draft``
  decoding of a large photo) and of decoding plus the weak view, the strong view and both
  (eq. 7), in one process;
- *workers*: the input pipeline alone (``uotsel-train input-bench``'s measurement) with 1, 2
  and all cores' worker processes, for eq. 6 (target images, one view) and eq. 7 (half target,
  half pre-training images in two views);
- *host time per batch*: what the training process spends on a ready 256-image batch;
- *training*: the jitted step alone on a batch already on the devices against
  ``uotsel_train.train.fit`` itself (second epoch) fed by ``--workers`` processes, per
  ``--archs`` (``tiny`` is loader-bound).

The images are JPEGs made once in memory (500 x 375, like an average ImageNet photo), decoded
at every use. On a CPU the paper's 256 + 256 does not fit in a benchmark's time, so CPU runs
default to 32 + 32 and the tiny backbone; accelerators default to 256 + 256 and ResNet18/50.

    python -m benchmarks.train_throughput [--archs tiny,resnet18,resnet50] [--batch 256]
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

    def __init__(
        self, count: int, classes: int, seed: int = 0, distinct: int = 32, shape=(500, 375)
    ):
        rng = np.random.default_rng(seed)
        self.blobs = []
        for _ in range(distinct):
            small = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
            img = Image.fromarray(small).resize(shape, Image.BICUBIC)
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=90)
            self.blobs.append(buf.getvalue())
        self.labels = np.arange(count) % classes
        self.classes = [str(c) for c in range(classes)]

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int):
        from uotsel_train import data

        blob = self.blobs[index % len(self.blobs)]
        return data.rgb(Image.open(io.BytesIO(blob))), int(self.labels[index])

    def where(self, index: int) -> str:
        return f"jpeg {index}"


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


def _photo(blob: bytes):
    return Image.open(io.BytesIO(blob))


def per_core(size: int, count: int, rounds: int) -> dict[str, dict]:
    """Images a second on one core (this process): decoding alone (PIL; simplejpeg; PIL's
    reduced-size ``draft`` decoding of a 2000 x 1500 photo against its full decode), and
    decoding plus the weak view, the strong view, and both (eq. 7's pair) as uint8 crops.

    The measurements take turns, ``rounds`` times, so that a change in the machine's speed
    falls on all of them; each entry holds the :func:`benchmarks._common.spread` of its rates
    and of its ratios to the PIL decode of the same round (``per_decode``)."""
    import simplejpeg

    from uotsel_train import augment, data

    src = JpegSource(count, 10, seed=4)
    big = JpegSource(1, 1, seed=5, distinct=4, shape=(2000, 1500)).blobs
    weak = augment.view("weak", size)[2]
    strong = augment.view("strong", size)[2]

    def rgb(i):
        return data.rgb(_photo(src.blobs[i % len(src.blobs)]))

    def draft(blobs, reduce):
        def fn(i):
            img = _photo(blobs[i % len(blobs)])
            if reduce:
                img.draft("RGB", (size, size))
            return data.rgb(img)

        return fn

    def views(*makes):
        def fn(i):
            img = rgb(i)
            return [m(img, np.random.default_rng(i)) for m in makes]

        return fn

    jobs = {
        "decode_pil": (lambda i: rgb(i).load(), count),
        "decode_simplejpeg": (lambda i: simplejpeg.decode_jpeg(src.blobs[i % 32]), count),
        "decode_2000x1500_full": (lambda i: draft(big, False)(i).load(), count // 8),
        "decode_2000x1500_draft": (lambda i: draft(big, True)(i).load(), count // 8),
        "weak": (views(weak), count),
        "strong": (views(strong), count),
        "weak_and_strong": (views(weak, strong), count),
    }
    rates = {name: [] for name in jobs}
    for _ in range(rounds):
        for name, (fn, n) in jobs.items():
            rates[name].append(_rate(fn, n))
    decode = rates["decode_pil"]
    return {
        name: {
            **C.spread(got),
            "per_decode": C.spread([r / d for r, d in zip(got, decode, strict=True)]),
        }
        for name, got in rates.items()
    }


def _rate(fn, n: int) -> float:
    fn(0)
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - start)


def pil_decode_rate(count: int = 300) -> float:
    """One core's PIL decode rate of the pipeline's files (:func:`_inputs`'s JPEGs)."""
    from uotsel_train import data

    blobs = JpegSource(1, 1, seed=1).blobs
    return _rate(lambda i: data.rgb(_photo(blobs[i % len(blobs)])).load(), count)


def _inputs(count: int, objective: str):
    from uotsel_train import input_pipeline

    target = JpegSource(count, 200, seed=1)
    pretrain = JpegSource(count, 1000, seed=2) if objective != "vanilla" else None
    return input_pipeline.Inputs(
        target=target,
        train_indices=np.arange(count),
        val_indices=np.zeros(0, np.int64),
        test=None,
        pretrain=pretrain,
        pretrain_indices=np.arange(count) if pretrain is not None else None,
        num_source_classes=1000,
    )


def _cfg(**settings):
    from uotsel_train import config

    cfg = config.override(config.default(), [f"{k}={v}" for k, v in settings.items()])
    config.validate(cfg, check_files=False)
    return cfg


def loader_rates(workers: int, size: int, batch: int, steps: int, objective: str) -> dict:
    """``uotsel-train input-bench`` on in-memory JPEGs: images a second of the pipeline with
    ``workers`` processes (eq. 6: ``batch`` target images a step; eq. 7: ``batch // 2``
    target + ``batch // 2`` pre-training images in two views)."""
    from uotsel_train import input_bench

    b, s = (batch, 0) if objective == "vanilla" else (batch // 2, batch // 2)
    cfg = _cfg(
        objective=objective,
        batch_size=b,
        source_batch_size=max(s, 1),
        image_size=size,
        workers=workers,
        progress=False,
    )
    return input_bench.measure(cfg, steps, _inputs(b * (steps + 2), objective))


def workers_rates(workers: int, size: int, batch: int, rounds: int) -> dict:
    """:func:`loader_rates` for eq. 6 and eq. 7, ``rounds`` times, each run between two
    measurements of one core's PIL decode rate of the same files: the spread of the rates and
    of eq. 6's ratio to the mean of its two decode rates (``eq6_per_decode``)."""
    eq6, eq7, ratios = [], [], []
    for _ in range(rounds):
        before = pil_decode_rate()
        eq6.append(loader_rates(workers, size, batch, 12, "vanilla")["images_per_s"])
        ratios.append(eq6[-1] / ((before + pil_decode_rate()) / 2))
        eq7.append(loader_rates(workers, size, batch, 12, "unlabelled")["images_per_s"])
    return {"eq6": C.spread(eq6), "eq6_per_decode": C.spread(ratios), "eq7": C.spread(eq7)}


def host_ms_per_batch(workers: int, size: int, batch: int, prefetch: int) -> list[float]:
    """Milliseconds the training process spends on each batch when the workers are ahead:
    the pipeline is given time to fill its buffers, then each ready batch is taken (received
    from the workers' shared memory and placed on the devices)."""
    from uotsel_train import input_pipeline, parallel

    cfg = _cfg(
        objective="vanilla",
        batch_size=batch,
        image_size=size,
        workers=workers,
        prefetch=prefetch,
        progress=False,
    )
    ready = workers * prefetch
    inputs = _inputs(batch * (ready + 2), "vanilla")
    times = []
    with input_pipeline.Pipeline(cfg, inputs, parallel.data_mesh(), 0, ready + 1) as pipe:
        pipe.next()  # started
        time.sleep(4 * ready * batch / 300 + 2)  # every worker's buffer full
        for _ in range(ready - 1):
            start = time.perf_counter()
            out, _ = pipe.next()
            for value in out.values():
                value.block_until_ready()
            times.append((time.perf_counter() - start) * 1e3)
    return times


def _range(x: dict, fmt: str = ".0f") -> str:
    return f"{x['median']:{fmt}} ({x['min']:{fmt}}-{x['max']:{fmt}})"


def _views_table(rates: dict[str, dict]) -> str:
    names = {
        "decode_pil": "decode (PIL, 500 x 375)",
        "decode_simplejpeg": "decode (simplejpeg, 500 x 375)",
        "decode_2000x1500_full": "decode 2000 x 1500 (PIL, full size)",
        "decode_2000x1500_draft": "decode 2000 x 1500 (PIL draft, reduced to >= the crop)",
        "weak": "decode + weak view (crop + flip, uint8)",
        "strong": "decode + strong view (crop, flip, RandAugment, cutout)",
        "weak_and_strong": "decode + both views (eq. 7)",
    }
    rows = [[names[k], _range(v), _range(v["per_decode"], ".2f")] for k, v in rates.items()]
    return C.table(["one core", "images / s", "/ PIL decode (same round)"], rows)


def _workers_table(found: dict) -> str:
    one = found[1]["eq6"]["median"]
    rows = [
        [
            str(workers),
            _range(got["eq6"]),
            _range(got["eq6_per_decode"], ".2f"),
            f"{got['eq6']['median'] / one:.2f}",
            _range(got["eq7"]),
        ]
        for workers, got in found.items()
    ]
    head = [
        "workers",
        "eq. 6 images / s",
        "/ one-core PIL decode (same round)",
        "/ one worker (medians)",
        "eq. 7 images / s (weak + strong)",
    ]
    return C.table(head, rows)


def _markdown(info: dict, args, payload: dict, rows: list, host_workers: int) -> str:
    spread = C.spread(payload["host_ms_per_256"])
    return "\n".join(
        [
            f"## Fine-tuning throughput ({info['jax_backend']}: {info['jax_device']})",
            "",
            C.machine_line(info),
            "",
            "In-memory photo-like JPEGs (500 x 375, quality 90) decoded at every use; crops of "
            f"{args.image_size} px as uint8. Images / s count each image once whatever its "
            "number of views.",
            "",
            f"Per core (one process, no workers; median (min-max) of {args.rounds} rounds in "
            "which the measurements take turns, ratios within a round):",
            "",
            _views_table(payload["per_core"]),
            "",
            f"The input pipeline alone (`input_bench.measure`, {args.loader_batch} images a "
            f"step, 12 steps after a warm-up; median (min-max) of {args.rounds} runs, each between "
            "two measurements of one core's PIL decode of the same files), by worker "
            "processes; eq. 7: half target images (one view), half pre-training images "
            "(weak + strong):",
            "",
            _workers_table(payload["workers"]),
            "",
            "Time the training process spends on a 256-image batch when the workers are ahead "
            f"(received from shared memory and placed on the devices; {host_workers} workers, "
            f"{len(payload['host_ms_per_256'])} batches): median {spread['median']:.1f} ms "
            f"({spread['min']:.1f}-{spread['max']:.1f}).",
            "",
            f"Training (labelled objective, eq. 6), {args.precision}: the step alone on a batch "
            f"already on the device (median of {args.steps} steps after one warm-up) against "
            f"`train.fit` itself (second epoch) fed by {args.workers} worker processes:",
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


def main() -> None:
    import jax

    cpu = jax.default_backend() == "cpu"
    cores = os.cpu_count() or 2
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="tiny" if cpu else "tiny,resnet18,resnet50")
    parser.add_argument("--batch", type=int, default=32 if cpu else 256)
    parser.add_argument("--source-batch", type=int, default=None, help="default: --batch")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=5 if cpu else 20)
    parser.add_argument("--precision", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--workers", type=int, default=max(1, cores - 1), help="for fit")
    parser.add_argument("--loader-batch", type=int, default=64, help="images a loader step")
    parser.add_argument("--rounds", type=int, default=5, help="turns of each measurement")
    parser.add_argument("--device", action="store_true", help="record as the accelerator section")
    args = parser.parse_args()
    source_batch = args.source_batch or args.batch
    info = C.machine()
    size = args.image_size
    payload = {"machine": info, "settings": vars(args), "archs": {}}
    payload["per_core"] = per_core(size, 300, args.rounds)
    print(json.dumps({"per_core": payload["per_core"]}), flush=True)
    found = {
        w: workers_rates(w, size, args.loader_batch, args.rounds) for w in sorted({1, 2, cores})
    }
    for workers, got in found.items():
        print(json.dumps({"workers": workers, **got}), flush=True)
    payload["workers"] = found
    host = host_ms_per_batch(min(2, cores), size, 256, 3)
    payload["host_ms_per_256"] = host
    print(json.dumps({"host_ms_per_256": host}), flush=True)
    rows = []
    for arch in [a for a in args.archs.split(",") if a]:
        dev = on_device(arch, args.batch, source_batch, size, args.steps, args.precision)
        pipe = with_pipeline(
            arch, args.batch, source_batch, size, args.steps, args.precision, args.workers
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
    name = "train_throughput" + ("_device" if args.device or not cpu else "")
    md = _markdown(info, args, payload, rows, min(2, cores))
    C.write_results(name, md, payload)
    print(md)


if __name__ == "__main__":
    main()
