"""Evaluates a checkpoint on a dataset split: aAcc, mIoU, mAcc and per-class IoU/Acc, as mmseg.

    python -m segformer_jax.evaluate --checkpoint PATH --dataset NAME [--split validation]
        [--data-dir D] [--manual-dir M] [--mode whole|slide] [--crop N --stride N]
        [--scales 0.5,0.75,1.0,1.25,1.5,1.75] [--flip] [--img-scale LONG,SHORT|none]
        [--size-divisor N|none] [--max-examples N] [--batch-windows N] [--json OUT]
        [--data-option KEY=VALUE ...]

``PATH``: a Hub directory or weight file, a model checkpoint or a training workdir (see
``predict.load_for_inference``). ``NAME``: ``synthetic``, ``ade20k``, ``cityscapes`` or
``folder`` (``--manual-dir ROOT``); see ``segformer_jax.data``. The test pipeline of each
follows the paper's NVlabs configs unless overridden:

    ade20k      rescale into (2048, 512) (short side 512), sides up to a multiple of 32,
                whole-image inference; label 0 ("other") ignored (reduce_zero_label)
    cityscapes  rescale into (2048, 1024) (the native 1024 x 2048), sliding window
                crop 1024, stride 768
    synthetic   rescale into (256, 128), multiple of 32, whole (configs/quickstart.py)
    folder      the images' own size, whole

Logits are resized to each label's original size before the argmax; the confusion matrix is
accumulated exactly (int64) over the whole split, so the scores are those of the split, not
means over images. ``--scales`` / ``--flip`` run mmseg's multi-scale (+ flip) test instead:
softmax averaged over the augmentations, each scale ratio applied to the preset's image
scale. ``--crop`` alone switches to sliding-window inference; ``--stride`` defaults to 3/4
of the crop.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from segformer_jax.config import ConfigError, SegformerConfig
from segformer_jax.hub import CheckpointError
from segformer_jax.predict import (ArgumentParser, PredictError, load_for_inference,
                                   logits_to_mask, model_for, positive_int)

PRESET = "preset"   # the default of evaluate()'s img_scale / size_divisor: the dataset's


class EvaluationError(ValueError):
    """A model, dataset and options that cannot be evaluated together; the message says why."""


@dataclasses.dataclass(frozen=True)
class Preset:
    """A dataset's test pipeline: ``img_scale`` (long, short) or None for the native size."""

    img_scale: tuple[int, int] | None
    size_divisor: int | None = None
    mode: str = "whole"
    crop: int | None = None
    stride: int | None = None


PRESETS: dict[str, Preset] = {
    "ade20k": Preset((2048, 512), 32, "whole"),
    "cityscapes": Preset((2048, 1024), None, "slide", 1024, 768),
    "synthetic": Preset((256, 128), 32, "whole"),
    "folder": Preset(None, None, "whole"),
}


class _Head:
    """The first ``n`` examples of a random-access source."""

    def __init__(self, source: Any, n: int):
        self.source, self.n = source, min(int(n), len(source))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < self.n:
            raise IndexError(index)
        return self.source[index]


def resolve(split_name: str, mode: str | None = None, crop: int | None = None,
            stride: int | None = None, img_scale: Any = PRESET,
            size_divisor: Any = PRESET) -> dict[str, Any]:
    """The test settings: the dataset's preset with the given values put over it."""
    preset = PRESETS.get(split_name, PRESETS["folder"])
    if mode is None:
        mode = "slide" if crop is not None else preset.mode
    if mode not in ("whole", "slide"):
        raise EvaluationError(f"mode must be 'whole' or 'slide'; got {mode!r}")
    if mode == "whole":
        if crop is not None or stride is not None:
            raise EvaluationError("crop and stride are for sliding-window inference "
                                  "(mode 'slide'), not mode 'whole'")
    else:
        if crop is None:
            crop, stride = preset.crop, stride or preset.stride
        if crop is None:
            raise EvaluationError(f"sliding-window inference needs a crop size for the "
                                  f"{split_name} dataset (e.g. crop 512, stride 384)")
        stride = stride or max(1, crop * 3 // 4)
        if min(crop, stride) < 1:
            raise EvaluationError(f"crop and stride must be positive; got {crop}, {stride}")
    if isinstance(img_scale, str) and img_scale == PRESET:
        img_scale = preset.img_scale
    if isinstance(size_divisor, str) and size_divisor == PRESET:
        size_divisor = preset.size_divisor
    if img_scale is not None:
        img_scale = tuple(int(v) for v in img_scale)
        if len(img_scale) != 2 or min(img_scale) < 1:
            raise EvaluationError(f"img_scale must be two positive sizes; got {img_scale}")
    return {"mode": mode, "crop": crop, "stride": stride, "img_scale": img_scale,
            "size_divisor": int(size_divisor) if size_divisor else None}


def evaluate(config: SegformerConfig, variables: Mapping[str, Any], split_data: Any,
             mode: str | None = None, *, crop: int | None = None, stride: int | None = None,
             img_scale: Any = PRESET, size_divisor: Any = PRESET,
             scales: Sequence[float] | None = None, flip: bool = False,
             max_examples: int | None = None, batch_windows: int = 1,
             progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Scores of ``variables`` on a ``data.SplitData``: ``metrics.summarize``'s dict and more.

    ``mode`` / ``crop`` / ``stride`` / ``img_scale`` / ``size_divisor`` default to the
    dataset's ``PRESETS`` entry (``img_scale=None``: the native size; ``crop`` alone means
    ``mode="slide"``). ``scales`` and/or ``flip`` run the multi-scale (+ flip) test, each
    ratio applied to ``img_scale``. ``max_examples`` scores the first examples only;
    ``progress(done, total)`` is called after each one.

    Returns ``metrics.summarize(cm, class_names)`` (aAcc, mIoU, mAcc, IoU, Acc, areas, ...)
    plus ``confusion_matrix`` (int64 (K, K), rows = ground truth), ``num_examples`` and
    ``settings`` (the test pipeline used).
    """
    from segformer_jax import metrics
    from segformer_jax.data.pipeline import eval_batches
    from segformer_jax.data.transforms import EvalTransform
    from segformer_jax.inference import (multiscale_flip_inference, slide_inference,
                                         whole_inference)
    from segformer_jax.train import evaluate_split

    settings = resolve(split_data.name, mode, crop, stride, img_scale, size_divisor)
    if config.num_labels != split_data.num_labels:
        raise EvaluationError(f"the model predicts {config.num_labels} classes but the "
                              f"{split_data.name} dataset has {split_data.num_labels}")
    multiscale = bool(scales) or flip
    if scales is not None and (not scales or min(scales) <= 0):
        raise EvaluationError(f"scales must be positive ratios; got {scales}")
    settings.update(scales=list(scales or [1.0]) if multiscale else None, flip=bool(flip))
    apply = model_for(config).apply
    mode, crop, stride = settings["mode"], settings["crop"], settings["stride"]

    if multiscale:  # the augmentations resize the original image themselves
        transform = EvalTransform(img_scale=None, reduce_zero_label=split_data.reduce_zero_label)

        def logits_fn(variables: Any, images: np.ndarray) -> Any:
            return multiscale_flip_inference(
                apply, variables, images, scales=tuple(scales or (1.0,)), flip=flip,
                base_size=settings["img_scale"], size_divisor=settings["size_divisor"],
                mode=mode, crop=crop, stride=stride, batch_windows=batch_windows)
    else:
        transform = EvalTransform(img_scale=settings["img_scale"],
                                  size_divisor=settings["size_divisor"],
                                  reduce_zero_label=split_data.reduce_zero_label)

        def logits_fn(variables: Any, images: np.ndarray) -> Any:
            if mode == "slide":
                return slide_inference(apply, variables, images, crop, stride,
                                       batch_windows=batch_windows)
            return whole_inference(apply, variables, images)

    def predict(variables: Any, images: np.ndarray, label_size: tuple[int, int]) -> np.ndarray:
        return logits_to_mask(logits_fn(variables, images), label_size)

    source = split_data.source
    if max_examples is not None:
        source = _Head(source, max_examples)
    total = len(source)
    done = 0

    def examples():
        nonlocal done
        for batch in eval_batches(source, transform, 1):
            yield {"image": batch["image"], "label": batch["label"]}
            done += 1
            if progress is not None:
                progress(done, total)

    import jax
    cm = evaluate_split(predict, jax.device_put(dict(variables)), examples(),
                        config.num_labels, getattr(split_data, "ignore_index", 255))
    summary = metrics.summarize(cm, split_data.class_names)
    summary.update(confusion_matrix=cm, num_examples=total, settings=settings)
    return summary


# --------------------------------------------------------------------------------------
# Output


def _number(value: Any) -> Any:
    value = float(value)
    return None if math.isnan(value) else value


def to_json(summary: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """A JSON-ready record of ``evaluate``'s summary; NaN scores become null."""
    names = summary["class_names"]
    per_class = {
        name: {"IoU": _number(summary["IoU"][k]), "Acc": _number(summary["Acc"][k]),
               "area_label": int(summary["area_label"][k]),
               "area_pred": int(summary["area_pred"][k])}
        for k, name in enumerate(names)}
    return {**extra, **summary.get("settings", {}),
            "num_examples": int(summary["num_examples"]),
            "aAcc": _number(summary["aAcc"]), "mIoU": _number(summary["mIoU"]),
            "mAcc": _number(summary["mAcc"]), "per_class": per_class,
            "class_names": list(names),
            "confusion_matrix": np.asarray(summary["confusion_matrix"]).tolist()}


# --------------------------------------------------------------------------------------
# Command line


def _scales(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) <= 0 or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected positive ratios like 0.5,1.0,1.5; got {text!r}")
    return values


def _img_scale(text: str) -> Any:
    if text == PRESET:  # argparse passes string defaults through the type, too
        return PRESET
    if text.lower() == "none":
        return None
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected LONG,SHORT (e.g. 2048,512) or none; "
                                         f"got {text!r}")
    return values  # type: ignore[return-value]


def _divisor(text: str) -> Any:
    if text == PRESET:
        return PRESET
    if text.lower() == "none":
        return None
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or none; got {text!r}") \
            from None


def _data_option(text: str) -> tuple[str, Any]:
    import ast
    key, sep, value = text.partition("=")
    if not sep or not key.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        parsed = value.strip()
    return key.strip(), parsed


def parse_args(argv: Sequence[str]):
    from segformer_jax.data import DATASETS
    parser = ArgumentParser(prog="python -m segformer_jax.evaluate", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="Hub directory / weight file, model checkpoint or training workdir")
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--split", default="validation",
                        help="split name, TFDS slicing allowed (default validation)")
    parser.add_argument("--data-dir", help="where built datasets live (TFDS default if unset)")
    parser.add_argument("--manual-dir", help="downloaded archives (ade20k, cityscapes) or the "
                                             "folder dataset's root")
    parser.add_argument("--data-option", action="append", default=[], type=_data_option,
                        metavar="KEY=VALUE", help="dataset builder option, repeatable, e.g. "
                        "num_validation=8 or size_range=(48,64) for synthetic")
    parser.add_argument("--mode", choices=("whole", "slide"), help="default: the preset's")
    parser.add_argument("--crop", type=positive_int, help="sliding-window crop (implies slide)")
    parser.add_argument("--stride", type=positive_int, help="sliding-window stride")
    parser.add_argument("--scales", type=_scales, help="multi-scale test ratios, e.g. "
                                                       "0.5,0.75,1.0,1.25,1.5,1.75")
    parser.add_argument("--flip", action="store_true", help="add horizontally flipped passes")
    parser.add_argument("--img-scale", type=_img_scale, default=PRESET,
                        help="test rescale LONG,SHORT or none (native); default: the preset's")
    parser.add_argument("--size-divisor", type=_divisor, default=PRESET,
                        help="round test sides up to a multiple (or none); default: the preset's")
    parser.add_argument("--max-examples", type=positive_int, help="score only the first N")
    parser.add_argument("--batch-windows", type=positive_int, default=1,
                        help="sliding windows per forward pass (default 1)")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.dataset == "folder" and not args.manual_dir:
        parser.error("--dataset folder needs --manual-dir ROOT (the folder with classes.txt, "
                     "images/ and masks/)")
    if args.mode == "whole" and (args.crop or args.stride):
        parser.error("--crop/--stride are for sliding-window inference, not --mode whole")
    try:
        resolve(args.dataset, args.mode, args.crop, args.stride, args.img_scale,
                args.size_divisor)
    except EvaluationError as e:
        parser.error(str(e))
    for flag in ("manual_dir",):
        value = getattr(args, flag)
        if value and not os.path.exists(os.path.expanduser(value)):
            parser.error(f"--{flag.replace('_', '-')} {value}: no such file or directory")
    return args


def _progress_printer() -> Callable[[int, int], None]:
    start = time.perf_counter()
    tty = sys.stderr.isatty()

    def report(done: int, total: int) -> None:
        step = max(1, total // 10)
        if tty or done % step == 0 or done == total:
            rate = done / max(time.perf_counter() - start, 1e-9)
            line = f"evaluated {done}/{total} images ({rate:.1f} img/s)"
            print(("\r" + line) if tty else line, end="\n" if not tty or done == total else "",
                  file=sys.stderr, flush=True)

    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    from segformer_jax import data, metrics
    DatasetError = data.DatasetError
    try:
        config, variables = load_for_inference(args.checkpoint)
        try:
            split = data.load_split(args.dataset, args.split, data_dir=args.data_dir,
                                    manual_dir=args.manual_dir, **dict(args.data_option))
        except DatasetError:
            raise
        except TypeError as e:  # an option the builder does not take
            raise EvaluationError(f"--data-option: {e}") from None
        except (ValueError, AssertionError) as e:  # TFDS's own complaints about the split
            raise EvaluationError(f"--split {args.split!r}: {str(e).splitlines()[0]}") from None
        start = time.perf_counter()
        summary = evaluate(config, variables, split, args.mode, crop=args.crop,
                           stride=args.stride, img_scale=args.img_scale,
                           size_divisor=args.size_divisor, scales=args.scales, flip=args.flip,
                           max_examples=args.max_examples, batch_windows=args.batch_windows,
                           progress=_progress_printer())
    except (CheckpointError, ConfigError, PredictError, EvaluationError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    s = summary["settings"]
    how = (f"{s['mode']}" + (f" crop {s['crop']} stride {s['stride']}" if s["mode"] == "slide" else "")
           + (f", scales {s['scales']}" if s["scales"] else "") + (", flip" if s["flip"] else ""))
    print(f"{args.dataset} {args.split}: {summary['num_examples']} images, {how}, "
          f"img_scale {s['img_scale'] or 'native'}, size_divisor {s['size_divisor']}; "
          f"{time.perf_counter() - start:.0f} s")
    print(metrics.format_table(summary))
    if args.json:
        record = to_json(summary, checkpoint=str(args.checkpoint), dataset=args.dataset,
                         split=args.split)
        path = pathlib.Path(args.json)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        except OSError as e:
            print(f"error: {path}: cannot write the results ({e.strerror or e})", file=sys.stderr)
            return 1
        print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
