"""Segments a generated image with a SegFormer: the smallest end-to-end run of the library.

    python -m segformer_jax.demo [--checkpoint HUB_DIR] [--variant b0] [--size 512x683]

Without ``--checkpoint`` the weights are random (nothing is downloaded here), so the mask is
meaningless; the point is the path image -> normalised pixels -> logits -> mask, its shapes
and its speed. With a Hub directory (e.g. a local copy of
nvidia/segformer-b0-finetuned-ade-512-512) it prints the classes it finds.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np

from segformer_jax import constants
from segformer_jax.config import SegformerConfig
from segformer_jax.errors import CheckpointError, ConfigError
from segformer_jax.hub import from_pretrained
from segformer_jax.models.ops import resize_bilinear
from segformer_jax.models.segformer import SegformerForSemanticSegmentation, init_variables

# float32, as they always were here: a float64 mean would move the pixels in the last bits.
IMAGENET_MEAN = np.array(constants.IMAGENET_MEAN, np.float32)
IMAGENET_STD = np.array(constants.IMAGENET_STD, np.float32)


def generated_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """An RGB uint8 picture of a few coloured discs and bars on a gradient."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    image = np.stack([xx / width, yy / height, np.full_like(xx, 0.5, dtype=float)], -1) * 255
    for _ in range(6):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(0.05, 0.25) * min(height, width)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
    return image.astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segformer_jax.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="Hub directory or weight file (default: random b0)")
    parser.add_argument("--variant", default="b0", help="b0…b5 when no checkpoint is given")
    parser.add_argument("--size", default="512x683", help="HxW of the generated image")
    args = parser.parse_args(argv)
    try:
        height, width = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size must look like 512x683, got {args.size!r}")
    try:
        if args.checkpoint:
            config, variables = from_pretrained(args.checkpoint, task="semantic_segmentation")
        else:
            config = SegformerConfig.from_variant(args.variant, num_labels=150)
            variables = init_variables(config)
    except (CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    image = generated_image(height, width)
    pixels = ((image / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)[None]
    model = SegformerForSemanticSegmentation(config)

    @jax.jit
    def segment(variables, pixels):
        logits = model.apply(variables, pixels)
        return resize_bilinear(logits, pixels.shape[1:3]).argmax(-1)

    start = time.perf_counter()
    mask = np.asarray(segment(variables, pixels))
    first = time.perf_counter() - start
    start = time.perf_counter()
    mask = np.asarray(segment(variables, pixels))
    again = time.perf_counter() - start
    ids, counts = np.unique(mask, return_counts=True)
    top = sorted(zip(counts, ids), reverse=True)[:5]
    print(f"SegFormer hidden_sizes={list(config.hidden_sizes)} depths={list(config.depths)}, "
          f"{sum(x.size for x in jax.tree.leaves(variables['params'])) / 1e6:.2f} M parameters"
          + ("" if args.checkpoint else " (random weights)"))
    print(f"image {height}x{width} -> mask {mask.shape[1:]}, {len(ids)} classes; "
          f"compile+run {first:.1f} s, run {again * 1000:.0f} ms on {jax.devices()[0].device_kind}")
    for count, i in top:
        print(f"  {config.id2label[int(i)]:>24s}: {100 * count / mask.size:5.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
