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
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from segformer_jax import host_memory
from segformer_jax.checkpoint import load_for_inference
from segformer_jax.cli import ArgumentParser, positive_int
from segformer_jax.config import SegformerConfig
from segformer_jax.constants import SIZE_DIVISOR
from segformer_jax.errors import InputError, SegformerError
from segformer_jax.evaluation import logits_to_mask, scored_class_names
from segformer_jax.inference import Inference, aligned_test_size, check_windows

MASK_SUFFIX, OVERLAY_SUFFIX = "_mask.png", "_overlay.png"
TILED_MASK_SUFFIX = "_mask.tif"  # --mode tiled: written block by block


# --------------------------------------------------------------------------------------
# Images


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as uint8 (H, W, 3) RGB, EXIF orientation applied.

    The conversion is the one the dataset builders store images with (``images.to_rgb``:
    transparency composited onto white, 16-bit data scaled to 8 bit), so an image predicted
    here and the same image evaluated from a dataset are the same pixels.
    """
    import PIL.ImageOps

    from segformer_jax.images import open_image, to_rgb
    try:
        with open_image(path, error=InputError) as image:  # past PIL's pixel limit: one line
            rgb = to_rgb(PIL.ImageOps.exif_transpose(image))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
        raise InputError(f"{path}: cannot read it as an image "
                         f"({type(e).__name__}: {e})") from None
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or 0 in rgb.shape:
        raise InputError(f"{path}: unsupported image of shape {rgb.shape}")
    return rgb


def read_band_image(path: str | os.PathLike, num_channels: int) -> np.ndarray:
    """A K-band image (a TIFF, a file of K bands, or a directory of band files:
    ``images.read_bands``) with the model's ``num_channels`` bands."""
    from segformer_jax.images import read_bands
    try:
        bands = read_bands(path)
    except ValueError as e:
        raise InputError(str(e)) from None
    if bands.shape[-1] != num_channels:
        raise InputError(f"{path}: {bands.shape[-1]} band(s); the model takes {num_channels}")
    return bands


def preview_rgb(bands: np.ndarray) -> np.ndarray:
    """uint8 RGB to draw a K-band image's overlay on: its first three bands (one band: grey),
    each stretched from its 2nd to its 98th percentile."""
    picked = bands[..., :3] if bands.shape[-1] >= 3 else np.repeat(bands[..., :1], 3, axis=-1)
    low, high = np.percentile(picked, (2, 98), axis=(0, 1))
    scaled = (picked.astype(np.float32) - low) / np.maximum(high - low, 1e-6)
    return np.clip(np.rint(scaled * 255), 0, 255).astype(np.uint8)


def band_statistics(checkpoint: str | os.PathLike, num_channels: int
                    ) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """The checkpoint's per-band normalisation (``checkpoint.normalisation_of``); ``(None,
    None)`` for ImageNet's RGB one, which the image processor applies."""
    from segformer_jax.checkpoint import normalisation_of
    from segformer_jax.constants import MEAN_RGB, STD_RGB
    mean, std = normalisation_of(checkpoint, num_channels)
    if (mean, std) == (MEAN_RGB, STD_RGB):
        return None, None
    return mean, std


def inference_size(height: int, width: int, size: int) -> tuple[int, int]:
    """The test size of an image: rescaled into ``(4 × size, size)``, sides up to a multiple
    of 32; for ``size`` 512 exactly ``evaluate``'s ADE20K preset ``(2048, 512)``."""
    return aligned_test_size(height, width, (4 * size, size), SIZE_DIVISOR)


# --------------------------------------------------------------------------------------
# Inference


class Segmenter:
    """Image (uint8 RGB, any size) -> class ids at its resolution; see the module doc.

    ``mode``: ``"auto"`` (whole, or slide when a side exceeds ``2 × size`` at test scale or a
    crop is given), ``"whole"`` or ``"slide"``. ``crop`` defaults to ``size`` and ``stride``
    to ``crop * 3 // 4``.
    """

    def __init__(self, config: SegformerConfig, variables: Mapping[str, Any], size: int = 512,
                 mode: str = "auto", crop: int | None = None, stride: int | None = None,
                 batch_windows: int = 1, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None):
        import jax

        from segformer_jax.models.segformer import SegformerForSemanticSegmentation
        from segformer_jax.processing import SegformerImageProcessor
        if mode not in ("auto", "whole", "slide", "tiled"):
            raise InputError(f"mode must be auto, whole, slide or tiled; got {mode!r}")
        if size < 1 or (crop is not None and crop < 1) or (stride is not None and stride < 1):
            raise InputError("size, crop and stride must be positive")
        if mode == "whole" and (crop is not None or stride is not None):
            raise InputError("crop and stride are for sliding-window inference; not with "
                             "mode 'whole'")
        if mode != "whole":   # before any work: a gap between windows would divide by zero
            check_windows(crop or size, stride or max(1, (crop or size) * 3 // 4))
        self.config, self.size, self.mode = config, int(size), mode
        self.crop = int(crop) if crop is not None else None
        self.stride = int(stride) if stride is not None else None
        self.batch_windows = int(batch_windows)
        self.variables = jax.device_put(dict(variables))
        self.inference = Inference(SegformerForSemanticSegmentation(config).apply)
        self.processor = SegformerImageProcessor()
        # Other statistics than ImageNet's RGB ones (a K-band model's data.mean/std): the
        # evaluation transform's resize and per-band normalisation instead of the processor.
        self.stats = None if mean is None else (tuple(mean), tuple(std))

    def plan(self, height: int, width: int) -> tuple[tuple[int, int], str, int, int]:
        """``(test size, "whole" | "slide", crop, stride)`` for an image of this size."""
        scaled = inference_size(height, width, self.size)
        slide = self.mode == "slide" or (self.mode == "auto" and (
            self.crop is not None or self.stride is not None or max(scaled) > 2 * self.size))
        crop = self.crop or self.size
        stride = self.stride or max(1, crop * 3 // 4)
        return scaled, "slide" if slide else "whole", crop, stride

    def logits(self, rgb: np.ndarray) -> tuple[Any, str]:
        """Logits at test scale (1, h, w, K) on the device, and the mode used."""
        scaled, mode, crop, stride = self.plan(*rgb.shape[:2])
        if self.stats is None:
            pixels = self.processor(rgb, size={"height": scaled[0], "width": scaled[1]})["pixel_values"]
        else:
            from segformer_jax.data.transforms import normalize, resize_image
            pixels = normalize({"image": resize_image(rgb, scaled)}, *self.stats)["image"][None]
        if mode == "whole":
            return self.inference.whole(self.variables, pixels), mode
        return self.inference.slide(self.variables, pixels, crop, stride,
                                     batch_windows=self.batch_windows), mode

    def prepare(self, crop: np.ndarray) -> np.ndarray:
        """One window of an image as stored -> float32 normalised, at its own size."""
        if self.stats is None:
            return self.processor(crop, do_resize=False)["pixel_values"][0]
        from segformer_jax.data.transforms import normalize
        return normalize({"image": crop}, *self.stats)["image"]

    def tiled(self, image: Any, progress: Any = None, stripe: int | None = None
              ) -> Iterator[tuple[int, int, np.ndarray]]:
        """Class ids of a large (H, W, bands) image at its own resolution, in ``(y0, x0,
        ids)`` blocks, in bounded memory (``tiles.tiled_masks``: the windows of ``slide``;
        ``stripe`` pixels wide, the memory knob)."""
        from segformer_jax.tiles import STRIPE, tiled_masks
        crop = self.crop or self.size
        stride = self.stride or max(1, crop * 3 // 4)
        return tiled_masks(lambda x: self.inference.windows(self.variables, x), image, crop, stride,
                           self.prepare, batch_windows=self.batch_windows, progress=progress,
                           stripe=stripe or STRIPE)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """int32 (H, W) class ids of a uint8 (H, W, 3) RGB image (or of (H, W, K) bands)."""
        logits, _ = self.logits(rgb)
        return logits_to_mask(logits, rgb.shape[:2])[0]


def save_mask(path: str | os.PathLike, mask: np.ndarray, num_labels: int) -> None:
    """A PNG of class ids: 8-bit, or 16-bit when the model has more than 255 classes."""
    import PIL.Image
    dtype = np.uint16 if num_labels > 255 else np.uint8
    PIL.Image.fromarray(np.asarray(mask).astype(dtype)).save(path)


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
    args = parser.parse_args(argv)
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

    import PIL.Image

    from segformer_jax import visualize
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
    from segformer_jax.tiles import open_image, write_mask_tiff
    try:
        image = open_image(path, segmenter.config.num_channels)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    height, width = image.shape[:2]
    start = time.perf_counter()
    blocks = segmenter.tiled(image, progress_bar(f"{pathlib.Path(path).name}: windows"), stripe)
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


def progress_bar(label: str, width: int = 30) -> Any:
    """``report(done, total)`` drawing ``label [#####-----] 50% 10/20`` on stderr: in place
    on a terminal, every tenth in a log."""
    start = time.perf_counter()
    tty = sys.stderr.isatty()

    def report(done: int, total: int) -> None:
        if not (tty or done == total or done % max(1, total // 10) == 0):
            return
        filled = width * done // max(total, 1)
        rate = done / max(time.perf_counter() - start, 1e-9)
        line = (f"{label} [{'#' * filled}{'-' * (width - filled)}] {100 * done // max(total, 1):3d}% "
                f"{done}/{total} ({rate:.1f}/s)")
        print(("\r" + line) if tty else line, end="\n" if not tty or done == total else "",
              file=sys.stderr, flush=True)

    return report


if __name__ == "__main__":
    host_memory.keep_freed_memory()
    sys.exit(main())
