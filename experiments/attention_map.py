"""One block's attention map for one pixel, drawn over the image (the README's figure).

    python -m experiments.attention_map --checkpoint workdirs/quickstart [--image FILE]
        [--block 0] [--pixel Y,X] [--size 256] [--out experiments/figures/attention_map.png]

``segformer_jax.apply_with_outputs`` returns every block's attention probabilities, (N,
heads, queries, keys), as transformers does with ``output_attentions=True``. The query
nearest the pixel is picked in the block's stage, its probabilities over the reduced keys
(a coarse grid: the stage's map shrunk by its sequence-reduction ratio) are averaged over
the heads, upsampled to the image and blended over it; the pixel is marked. Without
``--image`` a generated picture of the quickstart's dataset is used.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

import jax
import numpy as np
import PIL.Image
import PIL.ImageDraw

import segformer_jax as sj
from segformer_jax.checkpoint import load_for_inference
from segformer_jax.images import read_image
from segformer_jax.processing import SegformerImageProcessor


def block_stage(config: sj.SegformerConfig, block: int) -> int:
    """The stage of the ``block``-th block, counting over all stages."""
    ends = np.cumsum(config.depths)
    if not 0 <= block < ends[-1]:
        raise SystemExit(f"error: --block must be 0..{ends[-1] - 1} for this model; got {block}")
    return int(np.searchsorted(ends, block, side="right"))


def attention_map(config: sj.SegformerConfig, variables: dict, rgb: np.ndarray, block: int,
                  pixel: tuple[int, int]) -> np.ndarray:
    """The heads' mean attention of the query at ``pixel`` over the image, (H, W) in [0, 1]."""
    pixels = SegformerImageProcessor()(rgb, do_resize=False)["pixel_values"]
    model = sj.SegformerForSemanticSegmentation(config)
    out = jax.jit(lambda v, x: sj.apply_with_outputs(model, v, x))(variables, pixels)
    stage = block_stage(config, block)
    h, w = out.hidden_states[stage].shape[1:3]
    probs = np.asarray(out.attentions[block][0]).mean(0)            # (queries, keys)
    r = config.sr_ratios[stage]
    kh, kw = (h // r, w // r) if r > 1 else (h, w)
    y, x = (min(int(pixel[0] * h / rgb.shape[0]), h - 1), min(int(pixel[1] * w / rgb.shape[1]), w - 1))
    keys = probs[y * w + x].reshape(kh, kw)
    image = PIL.Image.fromarray((255 * keys / max(keys.max(), 1e-12)).astype(np.uint8))
    return np.asarray(image.resize((rgb.shape[1], rgb.shape[0]), PIL.Image.BILINEAR), np.float32) / 255


def draw(rgb: np.ndarray, heat: np.ndarray, pixel: tuple[int, int]) -> PIL.Image.Image:
    """The image beside its grey copy with the map in orange over it (dark: little
    attention), the pixel ringed on both."""
    grey = rgb.astype(np.float32).mean(-1, keepdims=True) * np.ones(3)
    tinted = grey * (0.2 + 0.5 * heat[..., None]) + heat[..., None] * np.array([255.0, 60.0, 0.0]) * 0.6
    tinted = np.clip(tinted, 0, 255).astype(np.uint8)
    canvas = PIL.Image.new("RGB", (2 * rgb.shape[1] + 8, rgb.shape[0]), (255, 255, 255))
    canvas.paste(PIL.Image.fromarray(rgb), (0, 0))
    canvas.paste(PIL.Image.fromarray(tinted), (rgb.shape[1] + 8, 0))
    pen = PIL.ImageDraw.Draw(canvas)
    radius = max(3, rgb.shape[0] // 64)
    for dx in (0, rgb.shape[1] + 8):
        y, x = pixel
        pen.ellipse((x + dx - radius, y - radius, x + dx + radius, y + radius), outline=(255, 255, 0), width=2)
    return canvas


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.attention_map", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="anything checkpoint.load_for_inference reads")
    p.add_argument("--image", default=None)
    p.add_argument("--block", type=int, default=0, help="block index over all stages (default 0)")
    p.add_argument("--pixel", default=None, help="Y,X in the image (default: its centre)")
    p.add_argument("--size", type=int, default=256, help="side of the generated image (default 256)")
    p.add_argument("--out", default="experiments/figures/attention_map.png")
    args = p.parse_args(argv)
    config, variables = load_for_inference(args.checkpoint)
    if args.image:
        rgb = read_image(args.image)
    else:
        from segformer_jax.data.synthetic import generate_example
        rgb, _ = generate_example(3, "validation", size_range=(args.size, args.size))
    pixel = (tuple(int(v) for v in args.pixel.split(",")) if args.pixel
             else (rgb.shape[0] // 2, rgb.shape[1] // 2))
    heat = attention_map(config, variables, rgb, args.block, pixel)
    draw(rgb, heat, pixel).save(args.out)
    stage = block_stage(config, args.block)
    print(f"{args.out}: block {args.block} (stage {stage + 1}, keys reduced {config.sr_ratios[stage]}×), "
          f"pixel {pixel}; the heads' mean attention, {math.prod(heat.shape)} pixels")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
