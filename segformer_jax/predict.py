"""Segments image files: a class-id mask and a coloured overlay with a legend per image.

    python -m segformer_jax.predict --checkpoint PATH IMAGE... --out DIR
        [--size 512] [--mode auto|whole|slide] [--crop N] [--stride N]
        [--alpha 0.5] [--legend auto|right|bottom|none]

For every ``IMAGE`` it writes ``DIR/<stem>_mask.png`` (the class id of each pixel at the
image's own resolution; 8-bit, or 16-bit for models with more than 255 classes) and
``DIR/<stem>_overlay.png`` (the image blended with one colour per class, and a legend of the
classes present). Two inputs with the same stem get ``<stem>-1``, ``<stem>-2``, ...

``PATH`` is anything ``load_for_inference`` reads: a Hub directory or weight file, a
``segformer_jax`` model checkpoint, or a training workdir (its latest checkpoint).

Test-time scale: the image is resized (PIL bilinear, as the processor does) so that its short
side is ``--size`` (512 for ADE20K models, 1024 for Cityscapes ones), each side rounded up to
a multiple of 32, and normalised like ``SegformerImageProcessor`` (ImageNet mean/std). At
that scale one forward pass covers the whole image (``whole``), unless the image is more than
``2 × size`` long (a panorama) or ``--crop`` is given: then overlapping ``crop × crop``
windows are run (``slide``; crop defaults to ``--size``, stride to 3/4 of the crop). The
logits are resized back to the original resolution before the argmax.

Images in any mode PIL reads are accepted (grayscale, palette, RGBA composited onto white,
16-bit scaled to 8 bit); EXIF orientation is applied, so the mask matches the image as
viewers show it. A file that cannot be read is reported by name and skipped; the exit status
is then 1.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import pathlib
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from segformer_jax.config import ConfigError, SegformerConfig
from segformer_jax.hub import SEMSEG, CheckpointError

MASK_SUFFIX, OVERLAY_SUFFIX = "_mask.png", "_overlay.png"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")


class PredictError(ValueError):
    """An input image or an option the prediction cannot use; the message names it."""


# --------------------------------------------------------------------------------------
# Checkpoints


def _step_dirs(checkpoints: pathlib.Path) -> list[pathlib.Path]:
    """Finished Orbax step directories (``<int>/state``), oldest first.

    Orbax writes a step into ``<step>.orbax-checkpoint-tmp-*`` and renames it when complete,
    so a directory named by a bare integer is a finished checkpoint.
    """
    steps = [p for p in checkpoints.iterdir()
             if p.is_dir() and re.fullmatch(r"\d+", p.name) and (p / "state").is_dir()]
    return sorted(steps, key=lambda p: int(p.name))


def training_step_dir(path: str | os.PathLike) -> pathlib.Path | None:
    """The checkpoint a training-run path points to, or None if it is not one.

    Accepts the workdir (its latest step), ``workdir/checkpoints`` (the same) or one step
    directory ``workdir/checkpoints/<step>``.
    """
    path = pathlib.Path(path)
    if not path.is_dir():
        return None
    if re.fullmatch(r"\d+", path.name) and (path / "state").is_dir() and (path / "meta").is_dir():
        return path
    if (path / "checkpoints").is_dir():
        checkpoints = path / "checkpoints"
    elif path.name == "checkpoints":
        checkpoints = path
    else:
        return None
    steps = _step_dirs(checkpoints)
    if not steps:
        raise CheckpointError(f"{path}: a training workdir without a finished checkpoint in "
                              f"{checkpoints} (the run has saved none yet)")
    return steps[-1]


def _local_target(metadata_tree: Any) -> Any:
    """Restore target from a checkpoint's metadata: its shapes and dtypes on the local device.

    Restoring with the saved shardings fails when the checkpoint was written on other devices
    (trained on a GPU, read on a CPU); this puts every array on ``jax.devices()[0]``.
    """
    import jax
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def leaf(m: Any) -> Any:
        if hasattr(m, "shape") and hasattr(m, "dtype"):
            return jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device)
        return m

    return jax.tree.map(leaf, metadata_tree,
                        is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))


def load_training_checkpoint(step_dir: str | os.PathLike) -> tuple[SegformerConfig, dict[str, Any]]:
    """``(config, {'params', 'batch_stats'})`` of a ``TrainCheckpoints`` step directory."""
    import orbax.checkpoint as ocp
    step_dir = pathlib.Path(step_dir).absolute()
    try:
        meta = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(step_dir / "meta")
    except Exception as e:  # noqa: BLE001 - orbax raises many types for damaged files
        raise CheckpointError(f"{step_dir / 'meta'}: cannot read the run's record ({e})") from None
    if not isinstance(meta, Mapping) or not isinstance(meta.get("model"), Mapping):
        raise CheckpointError(f"{step_dir / 'meta'}: holds no 'model' config; not written by "
                              "segformer_jax.train")
    config = SegformerConfig.from_dict(meta["model"], source=str(step_dir / "meta"))
    absl = logging.getLogger("absl")  # orbax warns that a step's item has no step metadata
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            tree = checkpointer.metadata(step_dir / "state")
            tree = getattr(getattr(tree, "item_metadata", None), "tree", tree)
            state = checkpointer.restore(step_dir / "state", _local_target(tree))
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{step_dir / 'state'}: cannot be restored "
                              f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    finally:
        absl.setLevel(level)
    if not isinstance(state, Mapping) or not {"params", "batch_stats"} <= set(state):
        raise CheckpointError(f"{step_dir / 'state'}: not a training state (expected params "
                              "and batch_stats)")
    return config, {"params": state["params"], "batch_stats": state["batch_stats"]}


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(str(record.msg))


def _load_hub(path: pathlib.Path) -> tuple[SegformerConfig, dict[str, Any]]:
    from segformer_jax.hub import from_pretrained
    recorder = _Recorder()
    logger = logging.getLogger("segformer_jax.hub")
    level = logger.level
    if logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)
    logger.addHandler(recorder)
    try:
        config, variables = from_pretrained(path, task=SEMSEG)
    finally:
        logger.removeHandler(recorder)
        logger.setLevel(level)
    if any("freshly initialised" in m for m in recorder.messages):
        raise CheckpointError(f"{path}: has no (complete) semantic segmentation head, so its "
                              "predictions would come from random weights; it is an encoder or "
                              "classification checkpoint: fine-tune it first")
    return config, variables


def load_for_inference(path: str | os.PathLike) -> tuple[SegformerConfig, dict[str, Any]]:
    """``(config, variables)`` of a semantic segmentation model from any checkpoint we write.

    ``path`` is one of:

    * a Hub-layout directory (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``,
      or one NVlabs ``*.pth``) or a weight file: read by ``hub.from_pretrained``;
    * a model checkpoint (``config.json`` + ``variables/``): ``checkpoint.load_model``;
    * a training workdir (its latest finished step), its ``checkpoints/`` directory, or one
      step directory ``checkpoints/<step>``: ``params`` + ``batch_stats`` of the state, the
      config from the step's ``meta`` record.

    Raises ``CheckpointError`` (or ``ConfigError``) naming ``path`` otherwise.
    """
    from segformer_jax.checkpoint import is_model_checkpoint, load_model
    from segformer_jax.hub import WEIGHT_FILES
    path = pathlib.Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or directory")
    if path.is_dir() and is_model_checkpoint(path):
        config, variables, task = load_model(path)
        if task != SEMSEG:
            raise CheckpointError(f"{path}: an {task} model, not a semantic segmentation one")
        return config, variables
    if path.is_file() and path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise CheckpointError(f"{path}: not a weight file (expected "
                              f"{', '.join(WEIGHT_SUFFIXES)}) nor a checkpoint directory")
    if path.is_file() or any((path / n).is_file() for n in WEIGHT_FILES):
        return _load_hub(path)
    step_dir = training_step_dir(path)
    if step_dir is not None:
        return load_training_checkpoint(step_dir)
    if len(list(path.glob("*.pth")) + list(path.glob("*.pt"))) == 1:  # an NVlabs checkpoint
        return _load_hub(path)
    raise CheckpointError(
        f"{path}: not a checkpoint; expected a Hub directory (config.json + "
        f"{' or '.join(WEIGHT_FILES)}), a weight file, a segformer_jax model checkpoint "
        "(config.json + variables/) or a training workdir (checkpoints/<step>/); the directory "
        f"holds {sorted(p.name for p in path.iterdir())[:10]}")


# --------------------------------------------------------------------------------------
# Images


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as uint8 (H, W, 3) RGB, EXIF orientation applied.

    Grayscale, palette, CMYK, ... go through ``convert("RGB")``; anything with transparency
    is composited onto white and 16-bit data scaled to 8 bit, as the processor does.
    """
    import PIL.Image
    import PIL.ImageOps
    from segformer_jax.processing import _to_rgb
    try:
        with PIL.Image.open(path) as image:
            image.load()
            image = PIL.ImageOps.exif_transpose(image)
            rgb = np.asarray(_to_rgb(image, 0))
    except FileNotFoundError:
        raise PredictError(f"{path}: no such file") from None
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
        raise PredictError(f"{path}: cannot read it as an image "
                           f"({type(e).__name__}: {e})") from None
    if rgb.dtype != np.uint8:  # PIL modes I and F come back in their own dtype
        values = rgb.astype(np.float64)
        if np.issubdtype(rgb.dtype, np.floating) and values.size and values.max() <= 1.0:
            values = values * 255.0
        rgb = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or 0 in rgb.shape:
        raise PredictError(f"{path}: unsupported image of shape {rgb.shape}")
    return rgb


def scaled_size(height: int, width: int, size: int, divisor: int = 32) -> tuple[int, int]:
    """Short side ``size``, aspect ratio kept (``int(x * f + 0.5)``), sides up to a multiple."""
    factor = size / min(height, width)
    h, w = int(height * factor + 0.5), int(width * factor + 0.5)
    return -(-h // divisor) * divisor, -(-w // divisor) * divisor


# --------------------------------------------------------------------------------------
# Inference


@functools.lru_cache(maxsize=8)
def model_for(config: SegformerConfig) -> Any:
    """One ``SegformerForSemanticSegmentation`` per config.

    The inference functions take ``model.apply`` as a static argument, and bound methods of
    distinct module objects differ: sharing the object keeps one compilation per shape.
    """
    from segformer_jax.models.segformer import SegformerForSemanticSegmentation
    return SegformerForSemanticSegmentation(config)


def logits_to_mask(logits: Any, size: Sequence[int], chunk_elements: int = 1 << 25) -> np.ndarray:
    """argmax of NHWC logits resized (``resize_bilinear``) to ``size``: int32 (N, H, W).

    The resize runs in numpy on the host (no compilation per size). When the resized logits
    would exceed ``chunk_elements`` values (a 12-megapixel photo × 150 classes is 7 GB), it
    goes in bands of rows, with the same arithmetic: the result is identical.
    """
    from segformer_jax.models.ops import _lerp_taps, resize_bilinear
    logits = np.asarray(logits, np.float32)
    n, h, w, k = logits.shape
    out_h, out_w = int(size[0]), int(size[1])
    if n * out_h * out_w * k <= chunk_elements:
        return resize_bilinear(logits, (out_h, out_w)).argmax(-1).astype(np.int32)
    out = np.empty((n, out_h, out_w), np.int32)
    rows = max(1, chunk_elements // (n * out_w * k))
    taps = None if h == out_h else _lerp_taps(h, out_h)
    for r0 in range(0, out_h, rows):
        r1 = min(out_h, r0 + rows)
        if taps is None:
            band = logits[:, r0:r1]
        else:  # _resize_axis along the height, for these output rows only
            lo, hi, frac = (t[r0:r1] for t in taps)
            frac = frac.reshape(1, -1, 1, 1)
            band = logits[:, lo] * (1 - frac) + logits[:, hi] * frac
        out[:, r0:r1] = resize_bilinear(band, (r1 - r0, out_w)).argmax(-1)
    return out


class Segmenter:
    """Image (uint8 RGB, any size) -> class ids at its resolution; see the module doc.

    ``mode``: ``"auto"`` (whole, or slide when a side exceeds ``2 × size`` at test scale or a
    crop is given), ``"whole"`` or ``"slide"``. ``crop`` defaults to ``size`` and ``stride``
    to ``crop * 3 // 4``.
    """

    def __init__(self, config: SegformerConfig, variables: Mapping[str, Any], size: int = 512,
                 mode: str = "auto", crop: int | None = None, stride: int | None = None,
                 batch_windows: int = 1):
        import jax
        from segformer_jax.processing import SegformerImageProcessor
        if mode not in ("auto", "whole", "slide"):
            raise PredictError(f"mode must be auto, whole or slide; got {mode!r}")
        if size < 1 or (crop is not None and crop < 1) or (stride is not None and stride < 1):
            raise PredictError("size, crop and stride must be positive")
        if mode == "whole" and (crop is not None or stride is not None):
            raise PredictError("crop and stride are for sliding-window inference; not with "
                               "mode 'whole'")
        self.config, self.size, self.mode = config, int(size), mode
        self.crop = int(crop) if crop is not None else None
        self.stride = int(stride) if stride is not None else None
        self.batch_windows = int(batch_windows)
        self.variables = jax.device_put(dict(variables))
        self.apply = model_for(config).apply
        self.processor = SegformerImageProcessor()

    def plan(self, height: int, width: int) -> tuple[tuple[int, int], str, int, int]:
        """``(test size, "whole" | "slide", crop, stride)`` for an image of this size."""
        scaled = scaled_size(height, width, self.size)
        slide = self.mode == "slide" or (self.mode == "auto" and (
            self.crop is not None or self.stride is not None or max(scaled) > 2 * self.size))
        crop = self.crop or self.size
        stride = self.stride or max(1, crop * 3 // 4)
        return scaled, "slide" if slide else "whole", crop, stride

    def logits(self, rgb: np.ndarray) -> tuple[Any, str]:
        """Logits at test scale (1, h, w, K) on the device, and the mode used."""
        from segformer_jax.inference import slide_inference, whole_inference
        scaled, mode, crop, stride = self.plan(*rgb.shape[:2])
        pixels = self.processor(rgb, size={"height": scaled[0], "width": scaled[1]})["pixel_values"]
        if mode == "whole":
            return whole_inference(self.apply, self.variables, pixels), mode
        return slide_inference(self.apply, self.variables, pixels, crop, stride,
                               batch_windows=self.batch_windows), mode

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """int32 (H, W) class ids of a uint8 (H, W, 3) RGB image."""
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


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (``error: ...``, exit status 2) instead of usage dumps."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


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
    parser.add_argument("--mode", choices=("auto", "whole", "slide"), default="auto",
                        help="whole image, sliding window, or auto (default)")
    parser.add_argument("--crop", type=positive_int, help="sliding-window crop (default --size)")
    parser.add_argument("--stride", type=positive_int,
                        help="sliding-window stride (default 3/4 of the crop)")
    parser.add_argument("--batch-windows", type=positive_int, default=1,
                        help="sliding windows per forward pass (default 1)")
    parser.add_argument("--alpha", type=_fraction, default=0.5,
                        help="opacity of the class colours in the overlay (default 0.5)")
    parser.add_argument("--legend", choices=("auto", "right", "bottom", "none"), default="auto",
                        help="where the legend goes (default: right, below for wide images)")
    args = parser.parse_args(argv)
    if args.mode == "whole" and (args.crop or args.stride):
        parser.error("--crop/--stride are for sliding-window inference, not --mode whole")
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
        segmenter = Segmenter(config, variables, args.size, args.mode, args.crop, args.stride,
                              args.batch_windows)
        out.mkdir(parents=True, exist_ok=True)
    except (CheckpointError, ConfigError, PredictError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {out}: cannot create the output directory ({e.strerror or e})",
              file=sys.stderr)
        return 1

    import PIL.Image
    from segformer_jax import visualize
    names = [config.id2label[i] for i in range(config.num_labels)]
    colours = visualize.palette_for(names)
    failures = 0
    for path, stem in zip(args.images, output_stems(args.images)):
        try:
            rgb = read_image(path)
        except PredictError as e:
            print(f"error: {e}", file=sys.stderr)
            failures += 1
            continue
        logits, mode = segmenter.logits(rgb)
        mask = logits_to_mask(logits, rgb.shape[:2])[0]
        figure = visualize.overlay_with_legend(rgb, mask, colours, names, args.alpha, args.legend)
        mask_path, overlay_path = out / f"{stem}{MASK_SUFFIX}", out / f"{stem}{OVERLAY_SUFFIX}"
        try:
            save_mask(mask_path, mask, config.num_labels)
            PIL.Image.fromarray(figure).save(overlay_path)
        except OSError as e:
            print(f"error: {out}: cannot write the outputs ({e.strerror or e})", file=sys.stderr)
            return 1
        top = visualize.class_areas(mask, config.num_labels)[:3]
        summary = ", ".join(f"{names[k]} {100 * s:.0f}%" for k, s in top)
        print(f"{path}: {rgb.shape[0]}x{rgb.shape[1]} ({mode}) -> {mask_path.name}, "
              f"{overlay_path.name}  [{summary}]", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
