"""Segments image files: a class-id mask and a coloured overlay with a legend per image.

    python -m segformer_jax.predict --checkpoint PATH IMAGE... --out DIR
        [--size 512] [--mode auto|whole|slide|tiled] [--crop N] [--stride N]
        [--alpha 0.5] [--legend auto|right|bottom|none]

For every ``IMAGE`` it writes ``DIR/<stem>_mask.png`` (the class id of each pixel at the
image's own resolution; 8-bit, or 16-bit for models with more than 255 classes) and
``DIR/<stem>_overlay.png`` (the image blended with one colour per class, and a legend of the
classes present). Two inputs with the same stem get ``<stem>-1``, ``<stem>-2``, ...

``PATH`` is anything ``checkpoint.load_for_inference`` reads: a Hub directory or weight file,
a ``segformer_jax`` model checkpoint, or a training workdir (its latest checkpoint).

Test-time scale: the rule ``evaluate`` applies to ADE20K (and, at ``--size 1024``, to
Cityscapes' 1024 × 2048 images): the image is rescaled (PIL bilinear, as the processor does)
to fit into ``(4 × size, size)`` (short side ``--size`` unless the long side would pass
``4 × size``), each side rounded up to a multiple of 32 (``inference.aligned_test_size``),
and normalised like ``SegformerImageProcessor`` (ImageNet mean/std). At
that scale one forward pass covers the whole image (``whole``), unless the image is more than
``2 × size`` long (a panorama) or ``--crop`` is given: then overlapping ``crop × crop``
windows are run (``slide``; crop defaults to ``--size``, stride to 3/4 of the crop; a
stride larger than the crop is refused, as it would leave pixels in no window). The
logits are resized back to the original resolution before the argmax.

``--mode tiled`` is for images far larger than a crop (a 10000 × 10000 aerial scene): the
image is run at its own resolution, in ``crop × crop`` windows (``--crop``, default
``--size``; stride 3/4 of it), swept row by row in bounded memory (``tiles.tiled_masks``
states the bound; ``--stripe`` is its knob), with a progress bar; the mask is written as it
is made into ``DIR/<stem>_mask.tif``, a memory-mapped uncompressed TIFF (no overlay). It
equals ``--mode slide`` on an image already at its test size.

``--format cityscapes`` writes what the Cityscapes test server (and cityscapesScripts'
``evalPixelLevelSemanticLabeling``) reads: for each ``CITY_SEQ_FRAME_leftImg8bit.png`` a PNG
of the same name in ``DIR`` holding Cityscapes *label ids* (the model's train ids mapped back
by ``data.cityscapes_labels``), no overlay; the model must have the 19 classes.

K-band models (``model.num_channels``) read multi-band TIFFs, files of K bands and
directories of band files (``images.read_bands``), normalised with the training run's
``data.mean`` / ``data.std`` (``checkpoint.normalisation_of``); the overlay is drawn on the
first three bands, stretched.

Images in any mode PIL reads are accepted (grayscale, palette, RGBA composited onto white,
16-bit scaled to 8 bit); EXIF orientation is applied, so the mask matches the image as
viewers show it. A file that cannot be read is reported by name and skipped; the exit status
is then 1.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import sys
import time
from collections.abc import Sequence

import numpy as np
import PIL.Image

from segformer_jax import host_memory, progress, visualize
from segformer_jax.checkpoint import load_for_inference
from segformer_jax.cli import ArgumentParser, positive_int
from segformer_jax.data import cityscapes_labels
from segformer_jax.errors import InputError, SegformerError
from segformer_jax.evaluators import logits_to_mask, scored_class_names
from segformer_jax.images import read_band_image, read_image, save_mask
from segformer_jax.segmenter import Segmenter, band_statistics
from segformer_jax.tiles import open_image, write_mask_tiff
from segformer_jax.visualize import preview_rgb

MASK_SUFFIX, OVERLAY_SUFFIX = "_mask.png", "_overlay.png"
TILED_MASK_SUFFIX = "_mask.tif"  # --mode tiled: written block by block
CITYSCAPES_NAME = re.compile(r"^.+_\d{6}_\d{6}_leftImg8bit\.png$")


def output_stems(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Each input's file stem; repeats become ``stem-1``, ``stem-2``, ..."""
    seen: dict[str, int] = {}
    taken = set()
    out = []
    for p in paths:
        stem = pathlib.Path(p).stem or "image"
        name, k = stem, seen.get(stem, 0)
        while name in taken:
            k += 1
            name = f"{stem}-{k}"
        seen[stem] = k
        taken.add(name)
        out.append(name)
    return out


# --------------------------------------------------------------------------------------
# Command line


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m segformer_jax.predict", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="Hub directory / weight file, model checkpoint or training workdir")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--size", type=positive_int, default=512,
                        help="test-time short side (default 512; 1024 for Cityscapes models)")
    parser.add_argument("--mode", choices=("auto", "whole", "slide", "tiled"), default="auto",
                        help="whole image, sliding window, or auto (default)")
    parser.add_argument("--crop", type=positive_int, help="sliding-window crop (default --size)")
    parser.add_argument("--stride", type=positive_int,
                        help="sliding-window stride (default 3/4 of the crop)")
    parser.add_argument("--batch-windows", type=positive_int, default=1,
                        help="sliding windows per forward pass (default 1)")
    parser.add_argument("--stripe", type=positive_int, default=None,
                        help="--mode tiled: the width in pixels swept at a time (default 4096; "
                             "memory grows with it)")
    parser.add_argument("--alpha", type=_fraction, default=0.5,
                        help="opacity of the class colours in the overlay (default 0.5)")
    parser.add_argument("--legend", choices=("auto", "right", "bottom", "none"), default="auto",
                        help="where the legend goes (default: right, below for wide images)")
    parser.add_argument("--format", choices=("png", "cityscapes"), default="png",
                        help="png: class-id masks and overlays (default); cityscapes: the test "
                             "server's files, CITY_SEQ_FRAME_leftImg8bit.png holding label ids")
    args = parser.parse_args(argv)
    if args.format == "cityscapes":
        if args.mode == "tiled":
            parser.error("--format cityscapes writes PNGs; not with --mode tiled")
        names = [pathlib.Path(p).name for p in args.images]
        wrong = [n for n in names if not CITYSCAPES_NAME.match(n)]
        if wrong:
            parser.error(f"--format cityscapes: {wrong[0]} is not named as a Cityscapes image "
                         "(CITY_SEQUENCE_FRAME_leftImg8bit.png); the server matches results to "
                         "images by that name")
        if len(set(names)) < len(names):
            parser.error("--format cityscapes: two images have the same file name; the server's "
                         "results are one file per image name")
    if args.mode == "whole" and (args.crop or args.stride):
        parser.error("--crop/--stride are for sliding-window inference, not --mode whole")
    if args.stripe and args.mode != "tiled":
        parser.error("--stripe is for --mode tiled")
    if args.stride and args.mode != "whole":
        crop = args.crop or args.size
        if args.stride > crop:
            parser.error(f"--stride {args.stride} is larger than --crop {crop}"
                         + ("" if args.crop else " (the crop defaults to --size)")
                         + ": the pixels between two sliding windows would be covered by none; "
                         "give a stride of at most the crop (the default is 3/4 of it)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    missing = [p for p in args.images if not os.path.exists(p)]
    if missing:
        print(f"error: {missing[0]}: no such file"
              + (f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""),
              file=sys.stderr)
        return 1
    out = pathlib.Path(args.out)
    try:
        config, variables = load_for_inference(args.checkpoint)
        mean, std = band_statistics(args.checkpoint, config.num_channels)
        segmenter = Segmenter(config, variables, args.size, args.mode, args.crop, args.stride,
                              args.batch_windows, mean, std)
        out.mkdir(parents=True, exist_ok=True)
    except SegformerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {out}: cannot create the output directory ({e.strerror or e})",
              file=sys.stderr)
        return 1

    if args.format == "cityscapes" and config.num_labels != len(cityscapes_labels.TRAIN_ID_TO_LABEL_ID):
        print(f"error: --format cityscapes needs a model of Cityscapes' 19 classes (train ids); "
              f"{args.checkpoint} has {config.num_labels}", file=sys.stderr)
        return 1
    # A binary model's masks hold 0 (background) and 1 (its class): two names.
    names = list(scored_class_names(config.num_labels,
                                    [config.id2label[i] for i in range(config.num_labels)]))
    colours = visualize.palette_for(names)
    failures = 0
    for path, stem in zip(args.images, output_stems(args.images)):
        if args.mode == "tiled":
            failures += _predict_tiled(segmenter, path, out / f"{stem}{TILED_MASK_SUFFIX}", names,
                                       args.stripe)
            continue
        try:
            image = read_image(path) if config.num_channels == 3 else read_band_image(
                path, config.num_channels)
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            failures += 1
            continue
        logits, mode = segmenter.logits(image)
        mask = logits_to_mask(logits, image.shape[:2])[0]
        if args.format == "cityscapes":
            result = out / pathlib.Path(path).name
            try:
                save_mask(result, cityscapes_labels.train_ids_to_label_ids(mask),
                          cityscapes_labels.NUM_LABEL_IDS)
            except OSError as e:
                print(f"error: {out}: cannot write the outputs ({e.strerror or e})", file=sys.stderr)
                return 1
            print(f"{path}: {image.shape[0]}x{image.shape[1]} ({mode}) -> {result.name} (label ids)",
                  flush=True)
            continue
        rgb = image if config.num_channels == 3 else preview_rgb(image)
        figure = visualize.overlay_with_legend(rgb, mask, colours, names, args.alpha, args.legend)
        mask_path, overlay_path = out / f"{stem}{MASK_SUFFIX}", out / f"{stem}{OVERLAY_SUFFIX}"
        try:
            save_mask(mask_path, mask, len(names))
            PIL.Image.fromarray(figure).save(overlay_path)
        except OSError as e:
            print(f"error: {out}: cannot write the outputs ({e.strerror or e})", file=sys.stderr)
            return 1
        top = visualize.class_areas(mask, len(names))[:3]
        summary = ", ".join(f"{names[k]} {100 * s:.0f}%" for k, s in top)
        print(f"{path}: {rgb.shape[0]}x{rgb.shape[1]} ({mode}) -> {mask_path.name}, "
              f"{overlay_path.name}  [{summary}]", flush=True)
    return 1 if failures else 0


def _predict_tiled(segmenter: Segmenter, path: str, mask_path: pathlib.Path,
                   names: Sequence[str], stripe: int | None = None) -> int:
    """``--mode tiled`` of one image: the mask TIFF written block by block; 1 on failure."""
    try:
        image = open_image(path, segmenter.config.num_channels)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    height, width = image.shape[:2]
    start = time.perf_counter()
    blocks = segmenter.tiled(image, progress.bar(f"{pathlib.Path(path).name}: windows"), stripe)
    try:
        write_mask_tiff(mask_path, blocks, height, width,
                        np.uint16 if len(names) > 255 else np.uint8)
    except SegformerError as e:  # pixels the processor refuses: no mask file is left
        print(f"error: {path}: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {mask_path}: cannot write the mask ({e.strerror or e})", file=sys.stderr)
        return 1
    print(f"{path}: {height}x{width} (tiled) -> {mask_path.name}  "
          f"[{time.perf_counter() - start:.1f} s]", flush=True)
    return 0


if __name__ == "__main__":
    host_memory.keep_freed_memory()
    sys.exit(main())
