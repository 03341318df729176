"""Input-pipeline benchmark: images/s of our ADE20K training input at 512² crops (or, with
``--task image_classification``, of the ImageNet recipe's input at 224²).

What it measures: ``segformer_jax.data.pipeline.TrainBatches`` with
``train_transform('ade20k', crop)`` (reduce_zero_label -> random rescale into (2048, 512) x
0.5..2 -> random crop with cat_max_ratio 0.75 -> flip -> photometric distortion -> normalise
-> pad; then collation into float32 / int32 batches), over a synthetic ADE-like source, for
every ``--threads`` (default 1 2) and ``--global-batch`` (default 2 16): batches/s and
images/s, the median (and min / max) over ``--repeats`` runs of ``--images`` images each.

No ADE20K is available, so ``--num-images`` (default 64) photo-like RGB images of typical
ADE20K sizes (512x683, 683x512, 375x500, 768x1024, ...; a mix, not ADE's real distribution)
are generated, smooth colour fields plus texture noise, with label masks of 6-12 classes in
0..150 (0 = "other", ignored after reduce_zero_label) in irregular regions. The records look
like those of our TFDS builders' data sources: ``{"image": uint8 (H, W, 3),
"segmentation_mask": uint8 (H, W, 1), "file_name": bytes}``. Two sources are measured
(``--source``):

* ``arrays``: decoded arrays held in memory: the transform and collation cost alone;
* ``encoded``: the image stored as JPEG bytes (``--jpeg-quality``, ADE20K's images are
  JPEGs, which our builders store unchanged) and the mask as PNG (our builders' mask
  encoding), both decoded with PIL in ``__getitem__``, as TFDS's ``decode_example_np`` does
  when OpenCV is not installed: transform + collation + decoding. The reading of the
  ArrayRecord files themselves is not included.

``--task image_classification``: ``data.augment.ClassifyTrainTransform`` as
``configs/imagenet.py`` sets it (RandomResizedCrop 0.08-1 to ``--crop`` 224, bicubic, flip,
RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25) over ImageNet-sized photo-like
images (500x375, 375x500, 500x333, ...) with one label each; no breakdown.
``--measure-model`` then times the b0 classification step of ``benchmark_classify``.

It also prints a single-thread breakdown per example (decoding, each transform stage) and,
next to the pipeline's rate, the model's training step rate: ``--train-step-ms MS`` (per
step of ``--train-batch`` images, e.g. from benchmark_train.py), or ``--measure-model``
(compiles and times our jitted b0 train step at batch ``--train-batch``, crop size, in this
process; ~1 min of compile on CPU). On CPU the pipeline's threads and XLA share the cores,
so the two rates do not simply add; on an accelerator they run on different hardware.

Run it from the repository root::

    python -m experiments.benchmark_input
    python -m experiments.benchmark_input --threads 1 2 4 8 --train-step-ms 850
    python -m experiments.benchmark_input --num-images 8 --images 8 --repeats 1  # smoke

Time on an otherwise idle machine; the script prints the load average.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import PIL
import PIL.Image

from segformer_jax.data import transforms as T
from segformer_jax.data.pipeline import TrainBatches

# (height, width) of typical ADE20K training images (most have a side of 512 or more).
IMAGENET_SIZES = ((375, 500), (500, 375), (333, 500), (500, 333), (500, 500), (400, 500),
                  (281, 500), (500, 400))  # (height, width) typical of ImageNet-1k's photos
ADE_SIZES = ((512, 683), (683, 512), (375, 500), (500, 375), (768, 1024), (1024, 768),
             (512, 512), (480, 640), (427, 640), (512, 768), (341, 512), (600, 800))
NUM_RAW_CLASSES = 151  # 0 = other, 1..150


# -- command line -----------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.benchmark_input",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="semantic_segmentation",
                   choices=("semantic_segmentation", "image_classification"))
    p.add_argument("--crop", type=int, default=None,
                   help="crop side (default 512; 224 for image_classification)")
    p.add_argument("--num-images", type=int, default=64, help="synthetic images (default 64)")
    p.add_argument("--processes", type=int, nargs="*", default=[1, 2],
                   help="worker processes to measure (pipeline.ProcessBatches; default 1 2; "
                        "none: --processes)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                   help="TrainBatches num_threads values (default 1 2)")
    p.add_argument("--global-batch", type=int, nargs="+", default=[2, 16],
                   help="global batch sizes (default 2 16)")
    p.add_argument("--images", type=int, default=96,
                   help="images per timed run, rounded up to whole batches (default 96)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per setting (default 3)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed batches per setting, through a separate iterator (default 1)")
    p.add_argument("--prefetch", type=int, default=2, help="TrainBatches prefetch (default 2)")
    p.add_argument("--source", choices=("arrays", "encoded", "both"), default="both")
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--breakdown-images", type=int, default=16,
                   help="examples timed stage by stage in one thread (0: skip; default 16)")
    p.add_argument("--train-step-ms", type=float, default=None,
                   help="the model's training step time, for --train-batch images")
    p.add_argument("--train-batch", type=int, default=2,
                   help="images per training step of --train-step-ms / --measure-model")
    p.add_argument("--measure-model", action="store_true",
                   help="time our jitted b0 train step (batch --train-batch, crop x crop)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.crop = args.crop or (224 if args.task == "image_classification" else 512)
    if args.task == "image_classification":
        args.breakdown_images = 0
    if min(args.threads) < 1 or min(args.global_batch) < 1 or args.num_images < 1:
        p.error("--threads, --global-batch and --num-images must be >= 1")
    if args.images < 1 or args.repeats < 1 or args.warmup < 0 or args.train_batch < 1:
        p.error("--images, --repeats and --train-batch must be >= 1, --warmup >= 0")
    return args


# -- the synthetic source ---------------------------------------------------------------

def _smooth(rng: np.random.Generator, height: int, width: int, cells: int,
            channels: int) -> np.ndarray:
    """float32 (H, W, C) noise of about ``cells`` blobs across, bicubically upsampled."""
    side = max(height, width)
    h, w = max(2, round(cells * height / side)), max(2, round(cells * width / side))
    out = np.empty((height, width, channels), np.float32)
    for c in range(channels):
        small = PIL.Image.fromarray(rng.standard_normal((h, w)).astype(np.float32))
        out[..., c] = np.asarray(small.resize((width, height), PIL.Image.Resampling.BICUBIC))
    return out


def photo_like_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """uint8 RGB: large smooth colour fields, finer structure and pixel noise (JPEG-compresses
    to a photo's size rather than to noise's or a flat image's)."""
    image = (128 + 45 * _smooth(rng, height, width, 4, 3) + 20 * _smooth(rng, height, width, 24, 3)
             + 12 * _smooth(rng, height, width, 120, 1)
             + rng.normal(0, 4, (height, width, 1)).astype(np.float32))
    return np.clip(image, 0, 255).astype(np.uint8)


def label_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """uint8 (H, W): 6..12 classes of 0..150 (0 sparingly) in irregular regions: the argmax of
    smooth random fields, one per class."""
    num = int(rng.integers(6, 13))
    classes = rng.choice(np.arange(1, NUM_RAW_CLASSES), size=num, replace=False)
    if rng.random() < 0.7:
        classes[-1] = 0  # some unlabelled pixels ("other")
    fields = _smooth(rng, height, width, 6, num)
    fields[..., :] += np.linspace(1.0, 0.0, num, dtype=np.float32)  # uneven region sizes
    return classes[np.argmax(fields, axis=-1)].astype(np.uint8)


def make_records(num_images: int, seed: int, task: str = "semantic_segmentation"
                 ) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    records = []
    if task == "image_classification":
        for i in range(num_images):
            height, width = IMAGENET_SIZES[i % len(IMAGENET_SIZES)]
            records.append({"image": photo_like_image(rng, height, width),
                            "label": int(rng.integers(0, 1000)),
                            "file_name": f"n0000000_{i}.JPEG".encode()})
        return records
    for i in range(num_images):
        height, width = ADE_SIZES[i % len(ADE_SIZES)]
        records.append({"image": photo_like_image(rng, height, width),
                        "segmentation_mask": label_mask(rng, height, width)[..., None],
                        "file_name": f"ADE_train_{i + 1:08d}.jpg".encode()})
    return records


class ArraySource:
    """Random access to decoded records (what ``__getitem__`` returns is a fresh dict)."""

    def __init__(self, records: Sequence[dict[str, Any]]):
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return dict(self.records[index])


def _encode(array: np.ndarray, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _decode(data: bytes) -> np.ndarray:
    """As ``tfds.features.Image.decode_example_np_with_pil``."""
    with PIL.Image.open(io.BytesIO(data)) as image:
        return np.asarray(image, dtype=np.uint8)


class EncodedSource:
    """Records with a JPEG image and a PNG mask, decoded with PIL in ``__getitem__``."""

    def __init__(self, records: Sequence[dict[str, Any]], jpeg_quality: int = 90):
        self.records = [{**r, "image": _encode(r["image"], "JPEG", quality=jpeg_quality)}
                        for r in records]
        for r in self.records:
            if "segmentation_mask" in r:
                r["segmentation_mask"] = _encode(r["segmentation_mask"][..., 0], "PNG")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        r = dict(self.records[index], image=_decode(self.records[index]["image"]))
        if "segmentation_mask" in r:
            r["segmentation_mask"] = _decode(r["segmentation_mask"])[..., None]
        return r

    def encoded_bytes(self) -> tuple[int, int]:
        return (sum(len(r["image"]) for r in self.records),
                sum(len(r.get("segmentation_mask", b"")) for r in self.records))


# -- timing -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Throughput:
    seconds: tuple[float, ...]   # wall time of each timed run
    batches: int                 # batches per run
    batch_size: int

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def batches_per_s(self) -> float:
        return self.batches / self.median_s

    @property
    def images_per_s(self) -> float:
        return self.batches * self.batch_size / self.median_s


def time_pipeline(source: Any, transform: Callable, global_batch: int, num_threads: int,
                  num_images: int, repeats: int, warmup: int, prefetch: int,
                  seed: int) -> Throughput:
    """Wall time from creating a ``TrainBatches`` to receiving its last batch.

    Each run is a fresh iterator limited to ``num_steps`` batches, so nothing was prepared
    before the clock starts and nothing beyond the last batch is scheduled; the pool is busy
    from the start, so the time is the steady production time plus one batch of ramp-down.
    Runs start at different steps (different images and augmentations).
    """
    batches = math.ceil(num_images / global_batch)
    if warmup:
        with TrainBatches(source, transform, global_batch, seed=seed, num_steps=warmup,
                          num_threads=num_threads, prefetch=prefetch) as it:
            for _ in it:
                pass
    seconds = []
    for r in range(repeats):
        start_step = warmup + r * batches
        start = time.perf_counter()
        it = TrainBatches(source, transform, global_batch, seed=seed, start_step=start_step,
                          num_steps=batches, num_threads=num_threads, prefetch=prefetch)
        count, batch = 0, None
        for batch in it:  # noqa: B007 - the last one is checked below
            count += 1
        seconds.append(time.perf_counter() - start)
        it.close()
        assert count == batches and batch["image"].shape[0] == global_batch
    return Throughput(tuple(seconds), batches, global_batch)


def time_processes(source: Any, transform: Callable, global_batch: int, num_workers: int,
                   num_images: int, repeats: int, warmup: int, prefetch: int,
                   seed: int) -> Throughput:
    """``ProcessBatches`` with ``num_workers`` processes: one iterator for every run, the
    clock started once its first ``warmup`` batches have come (the workers' start-up,
    seconds of imports, is not throughput), then all ``repeats`` runs' batches timed as ONE
    run: the workers make batches ahead of the consumer, each at its own pace (one may queue
    many while the consumer waits for another's), so only the whole span is their rate."""
    from segformer_jax.data.pipeline import ProcessBatches
    batches = math.ceil(num_images / global_batch) * repeats
    with ProcessBatches(source, transform, global_batch, num_workers=num_workers, seed=seed,
                        num_steps=max(warmup, 1) + batches, prefetch=prefetch) as it:
        for _ in range(max(warmup, 1)):
            next(it)
        start = time.perf_counter()
        for _ in range(batches):
            batch = next(it)
        seconds = time.perf_counter() - start
        assert batch["image"].shape[0] == global_batch
    return Throughput((seconds,), batches, global_batch)


def stage_breakdown(source: Any, transform: T.TrainTransform, count: int,
                    seed: int) -> dict[str, float]:
    """Median ms per example of each stage, in the calling thread, in the order of
    ``TrainTransform.__call__`` (re-enacted here with its functions and parameters)."""
    crop = T._pair(transform.crop_size)
    stages: dict[str, list[float]] = {}

    def timed(name: str, fn: Callable[..., Any], *args: Any) -> Any:
        start = time.perf_counter()
        out = fn(*args)
        stages.setdefault(name, []).append(time.perf_counter() - start)
        return out

    for i in range(count):
        index = i % len(source)
        rng = np.random.default_rng([seed, 10**6, i])
        t0 = time.perf_counter()
        ex = timed("read (+ decode)", lambda j: T.as_example(source[j]), index)
        if transform.reduce_zero_label:
            ex = timed("reduce_zero_label", T.reduce_zero_label, ex)
        ex = timed("random_rescale", T.random_rescale, ex, rng, transform.img_scale,
                   transform.ratio_range)
        ex = timed("random_crop", T.random_crop, ex, rng, crop, transform.cat_max_ratio,
                   transform.ignore_index)
        ex = timed("random_flip", T.random_flip, ex, rng, transform.flip_prob)
        if transform.photometric:
            ex = timed("photometric", T.photometric_distortion, ex, rng)
        ex = timed("normalize", T.normalize, ex, transform.mean, transform.std)
        ex = timed("pad", T.pad, ex, crop, 0.0, transform.ignore_index)
        stages.setdefault("total (sum of stages)", []).append(time.perf_counter() - t0)
        rng = np.random.default_rng([seed, 10**6, i])
        example = T.as_example(source[index])
        start = time.perf_counter()
        transform(example, rng)
        stages.setdefault("TrainTransform, no read (check)", []).append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(values) for name, values in stages.items()}


# -- model rate -------------------------------------------------------------------------

def measure_model_step_ms(crop: int, batch: int, task: str = "semantic_segmentation") -> float:
    """Median ms of our jitted b0 train step (random init) at batch ``batch``, crop x crop."""
    import jax

    import segformer_jax
    from experiments import harness, train_steps
    from experiments.harness import time_calls
    if task == "image_classification":
        run = train_steps.classify_recipe_config("b0", batch)
        from segformer_jax.run_config import model_config
        config = model_config(run, train_steps.CLASSIFY_CLASSES)
        images, labels = train_steps.classify_random_batch(batch, crop, crop)
        variables = segformer_jax.init_variables(config, task=task)
        result = train_steps.jax_classify_step(run, config, variables, images, labels)
        timing = time_calls(result.one_step, warmup=2, repeats=5)
        print(f"model          b0 classification step (ImageNet recipe), batch {batch}, "
              f"{crop}x{crop}: {timing}")
        return timing.median_ms
    config = segformer_jax.SegformerConfig.from_variant("b0", num_labels=harness.NUM_LABELS)
    variables = segformer_jax.init_variables(config)
    images, labels = train_steps.random_batch(batch, crop, crop, config.num_channels)
    result = train_steps.jax_train_step(config, variables, images, labels)
    timing = time_calls(result.one_step, warmup=2, repeats=5)
    print(f"model          b0 train step, batch {batch}, {crop}x{crop}, jax "
          f"{jax.default_backend()}: compile {result.lower_s + result.compile_s:.1f} s; "
          f"{timing}")
    return timing.median_ms


# -- report -----------------------------------------------------------------------------

def print_machine(num_threads: Sequence[int]) -> None:
    print("machine")
    print(f"  cpu          {platform.processor() or '?'} / {platform.machine()}, "
          f"os.cpu_count() = {os.cpu_count()}")
    print(f"  numpy        {np.__version__}, Pillow {PIL.__version__}, "
          f"python {platform.python_version()}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    print(f"  load (1 min) {load:.2f}")
    cpus = os.cpu_count() or 1
    if load + max(num_threads) > cpus + 0.5:
        print(f"  WARNING: load {load:.1f} + {max(num_threads)} pipeline threads > {cpus} CPUs: "
              f"the threads compete for cores")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print_machine(args.threads)
    if args.task == "image_classification":
        from segformer_jax.data.augment import ClassifyTrainTransform
        transform = ClassifyTrainTransform(crop_size=(args.crop, args.crop))
        print(f"transform      ClassifyTrainTransform: RandomResizedCrop {transform.scale} to "
              f"{args.crop}², flip, RandAugment rand-m9-mstd0.5-inc1, random erasing "
              f"{transform.random_erase}")
    else:
        transform = T.train_transform("ade20k", args.crop, reduce_zero_label=True)
        print(f"transform      train_transform('ade20k', {args.crop}): img_scale {transform.img_scale}, "
              f"ratio {transform.ratio_range}, crop {transform.crop_size}, cat_max_ratio "
              f"{transform.cat_max_ratio}, photometric {transform.photometric}")

    start = time.perf_counter()
    records = make_records(args.num_images, args.seed, args.task)
    sources: dict[str, Any] = {}
    if args.source in ("arrays", "both"):
        sources["arrays"] = ArraySource(records)
    if args.source in ("encoded", "both"):
        sources["encoded"] = EncodedSource(records, args.jpeg_quality)
    pixels = sum(r["image"].shape[0] * r["image"].shape[1] for r in records)
    print(f"source         {args.num_images} synthetic images, mean {pixels / len(records) / 1e6:.2f}"
          f" Mpixel, made in {time.perf_counter() - start:.1f} s")
    if "encoded" in sources:
        jpeg, png = sources["encoded"].encoded_bytes()
        print(f"               encoded: JPEG q{args.jpeg_quality} images, mean "
              f"{jpeg / len(records) / 1024:.0f} KiB"
              + (f"; PNG masks, mean {png / len(records) / 1024:.1f} KiB" if png else "")
              + " (decoded with PIL per read)")
    print(f"timing         {args.images} images per run (whole batches), {args.repeats} runs, "
          f"{args.warmup} warmup batch(es), prefetch {args.prefetch}")

    if args.breakdown_images:
        print(f"breakdown      ms per example, one thread, median of {args.breakdown_images}:")
        table = {name: stage_breakdown(src, transform, args.breakdown_images, args.seed)
                 for name, src in sources.items()}
        names = list(next(iter(table.values())))
        print("  " + f"{'stage':<30}" + "".join(f"{n:>12}" for n in table))
        for stage in names:
            print("  " + f"{stage:<30}" + "".join(f"{t[stage]:12.2f}" for t in table.values()))

    step_ms = args.train_step_ms
    if args.measure_model:
        step_ms = measure_model_step_ms(args.crop, args.train_batch, args.task)
    model_rate = args.train_batch / (step_ms / 1e3) if step_ms else None

    print("pipeline       source    global batch  workers      batches/s    images/s   "
          "(median run; min..max images/s)" + ("   / model" if model_rate else ""))
    results = []
    workers = [f"t{n}" for n in args.threads] + [f"p{n}" for n in args.processes]
    for name, src in sources.items():
        for global_batch in args.global_batch:
            for worker in workers:
                timer = time_pipeline if worker[0] == "t" else time_processes
                r = timer(src, transform, global_batch, int(worker[1:]), args.images,
                          args.repeats, args.warmup, args.prefetch, args.seed)
                results.append((name, global_batch, worker, r))
                rates = [r.batches * r.batch_size / s for s in r.seconds]
                kind = f"{worker[1:]} {'thread' if worker[0] == 't' else 'proc'}"
                line = (f"               {name:<9} {global_batch:>12d} {kind:>8} "
                        f"{r.batches_per_s:14.2f} {r.images_per_s:11.2f}   "
                        f"({min(rates):.2f}..{max(rates):.2f})")
                if model_rate:
                    line += f"{' ' * 18}{r.images_per_s / model_rate:6.2f}x"
                print(line, flush=True)

    if model_rate:
        print(f"model          {step_ms:.1f} ms per train step of {args.train_batch} images = "
              f"{model_rate:.2f} img/s"
              + (" (measured above)" if args.measure_model else " (--train-step-ms)"))
        print("               '/ model' > 1: the pipeline keeps up with the model on its own "
              "(on CPU both share the cores)")

    best = max(results, key=lambda x: x[3].images_per_s)
    summary = ", ".join(f"{n} bs{b} {t} {r.images_per_s:.1f}" for n, b, t, r in results)
    tail = f"; model {model_rate:.2f} img/s, best/model {best[3].images_per_s / model_rate:.2f}x" \
        if model_rate else ""
    print(f"input {args.crop}x{args.crop} img/s: {summary}{tail}")


if __name__ == "__main__":
    main()
