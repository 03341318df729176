"""Evaluation on every device against image by image on one, in one process.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m experiments.benchmark_eval
    python -m experiments.benchmark_eval --variant b0 --images 64 --mode whole

A random SegFormer (150 classes) is scored twice on the same split of random images with an
ADE20K-like size distribution (heights and widths drawn from the ADE20K validation
range, resized by mmseg's test rule: short side 512 within 2048, both sides up to a
multiple of 32): once by ``SegmentationEvaluator`` on one device (the image-by-image path)
and once on all of this process's devices (batches of one image per device, each batch of
one test shape). It prints both times, the number of distinct test shapes (= compiled
programs, counted from the jitted function's cache) and whether the two confusion
matrices are identical. ``--mode slide`` scores sliding windows instead (crop, stride).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass
class RandomSplit:
    """A ``data.SplitData``-like split of random uint8 images and masks, sizes from a range."""

    sizes: list[tuple[int, int]]
    classes: int
    seed: int = 0
    name: str = "ade20k"
    reduce_zero_label: bool = False
    ignore_index: int = 255

    @property
    def source(self) -> RandomSplit:
        return self

    @property
    def num_labels(self) -> int:
        return self.classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(f"class_{k}" for k in range(self.classes))

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng((self.seed, index))
        h, w = self.sizes[index]
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        mask = rng.integers(0, self.classes, (h, w, 1), dtype=np.uint8)
        return {"image": image, "segmentation_mask": mask, "file_name": f"{index}.png".encode()}


def ade20k_like_sizes(n: int, seed: int = 0) -> list[tuple[int, int]]:
    """(height, width) pairs: the short side 256–683 and an aspect ratio 0.5–2.2, the spread
    of ADE20K's validation images (most are landscape, short side 512 or close to it)."""
    rng = np.random.default_rng(seed)
    short = rng.choice([512, 512, 512, 384, 480, 600, 256, 683], n)
    ratio = rng.choice([1.33, 1.33, 1.5, 1.0, 1.78, 0.75, 2.2, 0.5, 1.25], n)
    long = np.round(short * np.maximum(ratio, 1 / ratio)).astype(int)
    return [(int(s), int(l_)) if r >= 1 else (int(l_), int(s)) for s, l_, r in zip(short, long, ratio)]


def run(config: Any, split: RandomSplit, settings: Any, devices: list[Any]) -> dict[str, Any]:
    from segformer_jax.evaluators import SegmentationEvaluator
    from segformer_jax.models.segformer import SegformerForSemanticSegmentation, init_variables
    model = SegformerForSemanticSegmentation(config)
    variables = init_variables(config, seed=1)
    evaluator = SegmentationEvaluator(model, split, settings, devices=devices)
    start = time.perf_counter()
    cm = evaluator.confusion_matrix(variables)
    seconds = time.perf_counter() - start
    program = evaluator.inference._slide if settings.mode == "slide" else evaluator.inference._whole
    return {"seconds": seconds, "confusion_matrix": cm, "compiles": program._cache_size(),
            "devices": len(devices)}


def compare(config: Any, split: RandomSplit, settings: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    one = run(config, split, settings, jax.local_devices()[:1])
    every = run(config, split, settings, jax.local_devices())
    return one, every


def main(argv: list[str] | None = None) -> None:
    from segformer_jax import SegformerConfig
    from segformer_jax.evaluators import eval_settings, metrics
    p = argparse.ArgumentParser(prog="python -m experiments.benchmark_eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="b0")
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--mode", default="whole", choices=["whole", "slide"])
    p.add_argument("--crop", type=int, default=512)
    p.add_argument("--stride", type=int, default=384)
    args = p.parse_args(argv)
    config = SegformerConfig.from_variant(args.variant, num_labels=150)
    split = RandomSplit(ade20k_like_sizes(args.images), 150)
    if args.mode == "slide":
        settings = eval_settings("ade20k", "slide", args.crop, args.stride)
    else:
        settings = eval_settings("ade20k")
    one, every = compare(config, split, settings)
    print(f"# {jax.devices()[0].platform} x{jax.local_device_count()}, jax {jax.__version__}; "
          f"SegFormer-{args.variant}, {args.images} images, mode {args.mode}")
    for r in (one, every):
        miou = metrics.summarize(r["confusion_matrix"], split.class_names)["mIoU"]
        print(f"{r['devices']} device(s): {r['seconds']:.1f} s, {r['compiles']} compiled programs, "
              f"mIoU {100 * miou:.4f}")
    same = np.array_equal(one["confusion_matrix"], every["confusion_matrix"])
    print(f"confusion matrices identical: {same}; speed-up {one['seconds'] / every['seconds']:.2f}x")


if __name__ == "__main__":
    main()
