"""Evaluates a checkpoint on a dataset split: aAcc, mIoU, mAcc and per-class IoU/Acc, as mmseg.

    python -m segformer_jax.evaluate --checkpoint PATH --dataset NAME [--split validation]
        [--data-dir D] [--manual-dir M] [--mode whole|slide] [--crop N --stride N]
        [--scales 0.5,0.75,1.0,1.25,1.5,1.75] [--flip] [--img-scale LONG,SHORT|none]
        [--size-divisor N|none] [--max-examples N] [--batch-windows N] [--json OUT]
        [--cityscapes-results DIR] [--data-option KEY=VALUE ...]
        [--corruptions all|paper|common|NAME,... [--severities 1,2,3,4,5|paper] [--out DIR]]

``PATH``: a Hub directory or weight file, a model checkpoint or a training workdir (see
``checkpoint.load_for_inference``). ``NAME``: ``synthetic``, ``ade20k``, ``cityscapes`` or
``folder`` (``--manual-dir ROOT``); see ``segformer_jax.data``. The test pipeline of each
is its entry in ``segformer_jax.data.presets`` (the paper's NVlabs configs: ADE20K short
side 512 aligned to 32, whole; Cityscapes the native 1024 x 2048, sliding windows of 1024
with stride 768) unless overridden.

Logits are resized to each label's original size before the argmax; the confusion matrix is
accumulated exactly (int64) over the whole split, so the scores are those of the split, not
means over images. ``--scales`` / ``--flip`` run mmseg's multi-scale (+ flip) test instead:
softmax averaged over the augmentations, each scale ratio applied to the preset's image
scale. ``--crop`` alone switches to sliding-window inference; ``--stride`` defaults to 3/4
of the crop and may not exceed it (pixels between the windows would be in none).

``--cityscapes-results DIR`` (Cityscapes) also writes each image's prediction as the
evaluation server reads it (label ids, named as the image; ``predict --format cityscapes``'s
files). ``--split test`` needs it: the public test labels are all "unlabeled", so that
split is evaluated only into these files (it is built, on first use, only when asked for).

``--data-option KEY=VALUE`` sets a builder option of the synthetic sets (``num_train``,
``num_validation``, ``seed``, ``size_range``), typed as the option's default (``8``,
``48,64``); an unknown option or a value the builder refuses is one error, before anything
is built.

A classification checkpoint (a pretraining run, or a Hub ``SegformerForImageClassification``)
is scored on a classification dataset (``synthetic_classification``, ``imagenet2012``,
``image_folder``) with the recipe's test transform (short side to ``crop-size / crop-pct``,
bicubic, centre crop ``--crop-size``; default 224 and 0.875, DeiT's): top-1, top-5 and each
class's top-1 accuracy, counted exactly over the split.

``--corruptions`` measures robustness instead (``segformer_jax.robustness``): the clean mIoU
and the mIoU of every (corruption, severity) of ImageNet-C's corruptions, written to
``--out`` (default ``robustness/<checkpoint name>``) as JSON, CSV, Markdown and a plot; an
interrupted evaluation resumes there. ``all`` is the 19 of ``imagecorruptions``, ``paper``
the SegFormer paper's 16 (with ``--severities paper``: its noises at 1-3 only).
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
from collections.abc import Callable, Sequence
from typing import Any

from segformer_jax import host_memory, progress
from segformer_jax.checkpoint import load_checkpoint, normalisation_of
from segformer_jax.cli import ArgumentParser, positive_int
from segformer_jax.constants import CLASSIFY
from segformer_jax.errors import EvaluationError, SegformerError
from segformer_jax.evaluators import PRESET, eval_settings, evaluate_split, to_json

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


def _data_option(text: str) -> tuple[str, str]:
    """``KEY=VALUE``, the value as written: it is typed by the dataset's option
    (``_typed_data_options``) once the dataset is known."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def _builder_options(dataset: str) -> tuple[Callable[..., Any] | None, dict[str, Any]]:
    """The function that checks a dataset's builder options and their defaults (the synthetic
    sets have some; the others none)."""
    import inspect
    if dataset == "synthetic":
        from segformer_jax.data.synthetic_builder import synthetic_config as options
    elif dataset == "synthetic_classification":
        from segformer_jax.data.classification import synthetic_classification_config as options
    else:
        return None, {}
    return options, {name: p.default for name, p in inspect.signature(options).parameters.items()
                     if p.default is not inspect.Parameter.empty}


def _typed_data_options(dataset: str, given: Sequence[tuple[str, str]]) -> list[tuple[str, Any]]:
    """``--data-option`` values typed as the builder's options (``cli.typed_value``) and
    checked by the builder's own rule, before anything is built: an unknown option, a value
    of another type or one the builder refuses raises ``EvaluationError`` naming it."""
    from segformer_jax.cli import typed_value
    if not given:
        return []
    check, defaults = _builder_options(dataset)
    typed = []
    for key, text in given:
        if key not in defaults:
            takes = (f"its options are {', '.join(defaults)}" if defaults
                     else "it takes no options")
            raise EvaluationError(f"--data-option {key}={text}: dataset {dataset!r} has no "
                                  f"option {key!r}; {takes}")
        try:
            typed.append((key, typed_value(text, defaults[key])))
        except ValueError as e:
            raise EvaluationError(f"--data-option {key}={text}: {e} (the default is "
                                  f"{defaults[key]!r})") from None
    try:
        check(**dict(typed))
    except (ValueError, TypeError) as e:  # DatasetError / ConfigError are ValueErrors too
        named = [(key, text) for key, text in given if key in str(e)] or given
        shown = " ".join(f"{key}={text}" for key, text in named)
        raise EvaluationError(f"--data-option {shown}: {e}") from None
    return typed


def _crop_pct(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], e.g. 0.875; got {text!r}")
    return value


def _corruptions(text: str) -> tuple[str, ...]:
    from segformer_jax.robustness import select_corruptions
    try:
        return select_corruptions(text)
    except EvaluationError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _severities(text: str) -> Any:
    from segformer_jax.robustness import select_severities
    try:
        return select_severities(text)
    except EvaluationError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


SEGMENTATION_FLAGS = ("mode", "crop", "stride", "scales", "flip", "corruptions")
CLASSIFICATION_DEFAULTS = {"crop_size": 224, "crop_pct": 0.875, "batch_size": 64}


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
    parser.add_argument("--reduce-zero-label", action="store_true",
                        help="stored label 0 is 'unlabelled' (ignored), k is class k - 1, as "
                             "data.reduce_zero_label=True trains (default: the dataset's own)")
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
                        help="sliding windows per forward pass, rounded up to a multiple of the "
                             "device count (default 1: one window per device)")
    parser.add_argument("--crop-size", type=positive_int, default=CLASSIFICATION_DEFAULTS["crop_size"],
                        help="classification: the centre crop's side (default 224)")
    parser.add_argument("--crop-pct", type=_crop_pct, default=CLASSIFICATION_DEFAULTS["crop_pct"],
                        help="classification: crop / resized short side (default 0.875)")
    parser.add_argument("--batch-size", type=positive_int, default=CLASSIFICATION_DEFAULTS["batch_size"],
                        help="classification: images per forward pass (default 64)")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    parser.add_argument("--cityscapes-results", metavar="DIR",
                        help="also write each image's prediction as the Cityscapes test server "
                             "reads it (label ids, named as the image) into DIR; --split test "
                             "needs it (its public labels are all 'unlabeled')")
    parser.add_argument("--corruptions", type=_corruptions, metavar="NAMES",
                        help="robustness: all, paper, common, a family (noise, blur, weather, "
                             "digital) or names, comma-separated")
    parser.add_argument("--severities", type=_severities, default=(1, 2, 3, 4, 5),
                        help="robustness: severities 1-5, comma-separated, or paper "
                             "(default 1,2,3,4,5)")
    parser.add_argument("--corruption-seed", type=int, default=0,
                        help="robustness: the seed every corrupted image is drawn from (default 0)")
    parser.add_argument("--out", metavar="DIR", help="robustness: where the results go (default "
                                                     "robustness/<checkpoint name>)")
    args = parser.parse_args(argv)
    if not args.corruptions:
        if args.out or args.severities != (1, 2, 3, 4, 5) or args.corruption_seed:
            parser.error("--severities/--corruption-seed/--out go with --corruptions")
    elif args.json:
        parser.error("--json is the plain evaluation's; a robustness evaluation writes "
                     "robustness.json into --out")
    if args.cityscapes_results:
        if args.dataset != "cityscapes":
            parser.error("--cityscapes-results writes the Cityscapes server's files; it goes with "
                         "--dataset cityscapes")
        if args.corruptions:
            parser.error("--cityscapes-results goes with a plain evaluation, not --corruptions")
    elif args.dataset == "cityscapes" and args.split.split("[", 1)[0] == "test":
        parser.error("--split test: Cityscapes' public test labels are all 'unlabeled', so "
                     "there is nothing to score; add --cityscapes-results DIR to write the "
                     "predictions for the evaluation server")
    if args.dataset == "folder" and not args.manual_dir:
        parser.error("--dataset folder needs --manual-dir ROOT (the folder with classes.txt, "
                     "images/ and masks/)")
    if args.mode == "whole" and (args.crop or args.stride):
        parser.error("--crop/--stride are for sliding-window inference, not --mode whole")
    try:
        eval_settings(args.dataset, args.mode, args.crop, args.stride, args.img_scale,
                      args.size_divisor)
        args.data_option = _typed_data_options(args.dataset, args.data_option)
    except EvaluationError as e:
        parser.error(str(e))
    for flag in ("manual_dir",):
        value = getattr(args, flag)
        if value and not os.path.exists(os.path.expanduser(value)):
            parser.error(f"--{flag.replace('_', '-')} {value}: no such file or directory")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    from segformer_jax import data, metrics
    try:
        config, variables, task = load_checkpoint(args.checkpoint)
        _check_task(args, task)
        mean, std = normalisation_of(args.checkpoint, config.num_channels)
        try:
            split = data.load_split(args.dataset, args.split, data_dir=args.data_dir,
                                    manual_dir=args.manual_dir, num_channels=config.num_channels,
                                    **dict(args.data_option))
        except SegformerError:
            raise
        except TypeError as e:  # an option the builder does not take
            raise EvaluationError(f"--data-option: {e}") from None
        except (ValueError, AssertionError) as e:  # TFDS's own complaints about the split
            raise EvaluationError(f"--split {args.split!r}: {str(e).splitlines()[0]}") from None
        if args.reduce_zero_label:
            split = dataclasses.replace(split, reduce_zero_label=True)
        start = time.perf_counter()
        if task == CLASSIFY:
            return _classify(args, config, variables, split, start)
        if args.corruptions:
            return _robustness(args, config, variables, split, start)
        report = progress.reporter(
            lambda done, total, rate: f"evaluated {done}/{total} images ({rate:.1f} img/s)")
        write = _server_writer(args.cityscapes_results) if args.cityscapes_results else None
        summary = evaluate_split(config, variables, split, args.mode, crop=args.crop,
                                 stride=args.stride, img_scale=args.img_scale,
                                 size_divisor=args.size_divisor, scales=args.scales, flip=args.flip,
                                 max_examples=args.max_examples, batch_windows=args.batch_windows,
                                 progress=report, mean=mean, std=std, on_prediction=write)
    except (SegformerError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.cityscapes_results:
        print(f"{summary['num_examples']} predictions written to {args.cityscapes_results} "
              f"(Cityscapes label ids, the server's format)")
    s = summary["settings"]
    how = (f"{s['mode']}" + (f" crop {s['crop']} stride {s['stride']}" if s["mode"] == "slide" else "")
           + (f", scales {s['scales']}" if s["scales"] else "") + (", flip" if s["flip"] else ""))
    print(f"{args.dataset} {args.split}: {summary['num_examples']} images, {how}, "
          f"img_scale {s['img_scale'] or 'native'}, size_divisor {s['size_divisor']}; "
          f"{time.perf_counter() - start:.0f} s")
    if summary["confusion_matrix"].sum():
        print(metrics.format_table(summary))
    else:
        print(f"no labelled pixels in {args.dataset} {args.split}: no scores")
    if args.json:
        return _write_json(args.json, to_json(summary, checkpoint=str(args.checkpoint),
                                              dataset=args.dataset, split=args.split))
    return 0


def _server_writer(directory: str) -> Callable[[str, Any], None]:
    """Writes a prediction (train ids) as the Cityscapes server reads it: an 8-bit PNG of
    label ids named as the image (``<city>_<seq>_<frame>_leftImg8bit.png``), as ``predict
    --format cityscapes`` does."""
    from segformer_jax.data.cityscapes_labels import NUM_LABEL_IDS, train_ids_to_label_ids
    from segformer_jax.images import save_mask
    out = pathlib.Path(directory).expanduser()
    out.mkdir(parents=True, exist_ok=True)

    def write(file_name: str, mask: Any) -> None:
        save_mask(out / pathlib.PurePosixPath(file_name).name, train_ids_to_label_ids(mask), NUM_LABEL_IDS)
    return write


def _check_task(args: argparse.Namespace, task: str) -> None:
    """A classification model takes a classification dataset and none of the segmentation
    test options (and the reverse): refused before any data is read."""
    from segformer_jax.data import task_of_dataset
    if task_of_dataset(args.dataset) != task:
        raise EvaluationError(f"{args.checkpoint}: a model of the {task} task, and --dataset {args.dataset} "
                              f"holds {task_of_dataset(args.dataset)} labels")
    if task == CLASSIFY:
        given = [f for f in SEGMENTATION_FLAGS if getattr(args, f)]
        given += [f for f in ("img_scale", "size_divisor") if getattr(args, f) != PRESET]
        if given:
            raise EvaluationError(f"--{given[0].replace('_', '-')} is a segmentation test option; "
                                  f"{args.checkpoint} is an image classification model")
    else:
        given = [f for f, default in CLASSIFICATION_DEFAULTS.items() if getattr(args, f) != default]
        if given:
            raise EvaluationError(f"--{given[0].replace('_', '-')} is a classification test option; "
                                  f"{args.checkpoint} is a semantic segmentation model")


def _robustness(args: argparse.Namespace, config: Any, variables: Any, split: Any,
                start: float) -> int:
    import jax

    from segformer_jax import robustness
    from segformer_jax.evaluators import SegmentationEvaluator, eval_settings
    from segformer_jax.models.segformer import SegformerForSemanticSegmentation
    robustness.check_labelled(split)
    settings = eval_settings(split.name, args.mode, args.crop, args.stride, args.img_scale,
                             args.size_divisor, args.scales, args.flip)
    label = pathlib.Path(args.checkpoint).expanduser().resolve().name
    out = pathlib.Path(args.out or pathlib.Path("robustness") / label)
    pairs = robustness.plan(args.corruptions, args.severities)
    identity = {"checkpoint": str(pathlib.Path(args.checkpoint).expanduser().resolve()),
                "dataset": args.dataset, "split": args.split,
                "data_options": sorted(map(list, args.data_option)),
                "max_examples": args.max_examples, "settings": settings.as_dict()}
    evaluator = SegmentationEvaluator(
        SegformerForSemanticSegmentation(config), split, settings, max_examples=args.max_examples,
        batch_windows=args.batch_windows, process_index=jax.process_index(),
        process_count=jax.process_count())
    print(f"{args.dataset} {args.split}: {len(evaluator.source)} images, clean and "
          f"{len(pairs)} (corruption, severity) pairs, results in {out}")
    result = robustness.run(evaluator, jax.device_put(dict(variables)), pairs, out,
                            seed=args.corruption_seed, identity=identity, label=label,
                            is_writer=jax.process_index() == 0)
    images = result["num_examples"] * len(result["computed"])
    seconds = time.perf_counter() - start
    print(f"{len(result['computed'])} evaluations of {result['num_examples']} images in {seconds:.0f} s"
          + (f" ({1000 * seconds / images:.0f} s per 1000 images)" if images else ""))
    print(robustness.markdown([result]), end="")
    print(f"results written to {out}")
    return 0


def _classify(args: argparse.Namespace, config: Any, variables: Any, split: Any,
              start: float) -> int:
    import jax
    import numpy as np

    from segformer_jax.evaluators import ClassificationEvaluator
    from segformer_jax.models.segformer import SegformerForImageClassification
    evaluator = ClassificationEvaluator(
        SegformerForImageClassification(config), split, (args.crop_size, args.crop_size),
        args.crop_pct, batch_size=args.batch_size, max_examples=args.max_examples,
        process_index=jax.process_index(), process_count=jax.process_count())
    result = evaluator(variables)
    print(f"{args.dataset} {args.split}: {result['num_examples']} images, short side "
          f"{round(args.crop_size / args.crop_pct)}, centre crop {args.crop_size}; "
          f"{time.perf_counter() - start:.0f} s")
    print(evaluator.table(result))
    if args.json:
        per_class = {name: (None if np.isnan(acc) else float(acc))
                     for name, acc in zip(result["class_names"], result["per_class"])}
        return _write_json(args.json, {
            "checkpoint": str(args.checkpoint), "dataset": args.dataset, "split": args.split,
            "task": CLASSIFY, "num_examples": result["num_examples"],
            "top1": float(result["top1"]), "top5": float(result["top5"]), "per_class_top1": per_class,
            "settings": {"crop_size": args.crop_size, "crop_pct": args.crop_pct}})
    return 0


def _write_json(where: str, record: dict[str, Any]) -> int:
    path = pathlib.Path(where)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    except OSError as e:
        print(f"error: {path}: cannot write the results ({e.strerror or e})", file=sys.stderr)
        return 1
    print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    host_memory.keep_freed_memory()
    sys.exit(main())
