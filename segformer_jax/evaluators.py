"""Evaluation of a model on a split, for ``train`` (validation), ``evaluate`` and the sweeps.

In the spirit of big_vision's ``evaluators/``: a task brings its own evaluator, built once
over a model from the test settings, and called with the variables to score::

    evaluator = SegmentationEvaluator(model, split, settings)
    result = evaluator(variables)           # metrics.summarize's dict, + confusion matrix
    evaluator.scalars(result)               # {"mIoU": ..., "aAcc": ..., "mAcc": ...} to log
    evaluator.table(result)                 # the per-class text table
    evaluator.headline(result)              # "mIoU 68.42 aAcc 84.55"

Semantic segmentation (mmseg's ``test_cfg`` and metrics): each image is resized to its test
size (``data.presets``: mmcv rescale into ``img_scale``, sides up to a multiple of
``size_divisor``), run whole, with sliding windows, or at several scales with flips
(``inference.Inference``), its logits are resized to the label's original size, and the
prediction is counted into one exact int64 confusion matrix over the whole split (summed
over processes when there are several). A binary model (``num_labels == 1``, a sigmoid
logit) predicts the class where its logit is above 0 and is scored on two classes,
background and the class.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from segformer_jax import metrics
from segformer_jax.config import SegformerConfig
from segformer_jax.constants import IGNORE_INDEX, MEAN_RGB, STD_RGB
from segformer_jax.data.presets import settings as dataset_settings
from segformer_jax.errors import EvaluationError
from segformer_jax.inference import Inference
from segformer_jax.models.ops import lerp_taps, resize_bilinear

PRESET = "preset"   # the default of img_scale / size_divisor: the dataset's own


class Evaluator(Protocol):
    """What the trainer needs of a task's evaluator."""

    best_metric: str

    def __call__(self, variables: Any) -> dict[str, Any]: ...

    def scalars(self, result: Mapping[str, Any]) -> dict[str, float]: ...

    def table(self, result: Mapping[str, Any]) -> str: ...

    def headline(self, result: Mapping[str, Any]) -> str: ...


# --------------------------------------------------------------------------------------
# Test settings


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """How each image is run: ``img_scale`` (long, short) or None (native size), the
    alignment, whole or slide (with crop and stride), and the multi-scale / flip test."""

    img_scale: tuple[int, int] | None
    size_divisor: int | None = None
    mode: str = "whole"
    crop: int | None = None
    stride: int | None = None
    scales: tuple[float, ...] | None = None
    flip: bool = False
    mean: tuple[float, ...] = MEAN_RGB  # per band (data.mean; ImageNet's for RGB)
    std: tuple[float, ...] = STD_RGB

    @property
    def multiscale(self) -> bool:
        return self.scales is not None

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["scales"] = list(self.scales) if self.scales is not None else None
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


def eval_settings(dataset: str, mode: str | None = None, crop: int | None = None,
                  stride: int | None = None, img_scale: Any = PRESET,
                  size_divisor: Any = PRESET, scales: Sequence[float] | None = None,
                  flip: bool = False) -> EvalSettings:
    """The dataset's test settings (``data.presets``) with the given values put over them.

    ``crop`` alone means ``mode="slide"``; ``stride`` defaults to 3/4 of the crop.
    ``scales`` and/or ``flip`` select the multi-scale (+ flip) test, each ratio applied to
    ``img_scale``. Inconsistent values raise ``EvaluationError``.
    """
    preset = dataset_settings(dataset)
    if mode is None:
        mode = "slide" if crop is not None else preset.test_mode
    if mode not in ("whole", "slide"):
        raise EvaluationError(f"mode must be 'whole' or 'slide'; got {mode!r}")
    if mode == "whole":
        if crop is not None or stride is not None:
            raise EvaluationError("crop and stride are for sliding-window inference "
                                  "(mode 'slide'), not mode 'whole'")
    else:
        given_crop = crop is not None
        if crop is None:
            crop, stride = preset.test_crop, stride or preset.test_stride
        if crop is None:
            raise EvaluationError(f"sliding-window inference needs a crop size for the "
                                  f"{dataset} dataset (e.g. crop 512, stride 384)")
        stride = stride or max(1, crop * 3 // 4)
        if min(crop, stride) < 1:
            raise EvaluationError(f"crop and stride must be positive; got {crop}, {stride}")
        if stride > crop:  # the pixels between two windows would be divided by a count of 0
            raise EvaluationError(f"--stride {stride} is larger than --crop {crop}"
                                  + ("" if given_crop else f" (the {dataset} preset's)")
                                  + ": the pixels between two sliding windows would be covered "
                                  "by none; give a stride of at most the crop")
    if isinstance(img_scale, str) and img_scale == PRESET:
        img_scale = preset.test_scale
    if isinstance(size_divisor, str) and size_divisor == PRESET:
        size_divisor = preset.size_divisor
    if img_scale is not None:
        img_scale = tuple(int(v) for v in img_scale)
        if len(img_scale) != 2 or min(img_scale) < 1:
            raise EvaluationError(f"img_scale must be two positive sizes; got {img_scale}")
    if scales is not None and (not scales or min(scales) <= 0):
        raise EvaluationError(f"scales must be positive ratios; got {scales}")
    multiscale = bool(scales) or flip
    return EvalSettings(img_scale, int(size_divisor) if size_divisor else None, mode, crop,
                        stride, tuple(scales or (1.0,)) if multiscale else None, bool(flip))


# --------------------------------------------------------------------------------------
# Logits to class ids


def logits_to_mask(logits: Any, size: Sequence[int], chunk_elements: int = 1 << 25) -> np.ndarray:
    """Class ids of NHWC logits resized (``resize_bilinear``) to ``size``: int32 (N, H, W).

    The argmax over classes; for one channel (a binary model's sigmoid logit) the class is 1
    where the logit is above 0. The resize runs in numpy on the host (no compilation per
    size). When the resized logits would exceed ``chunk_elements`` values (a 12-megapixel
    photo × 150 classes is 7 GB), it goes in bands of rows, with the same arithmetic: the
    result is identical.
    """
    logits = np.asarray(logits, np.float32)
    n, h, w, k = logits.shape
    out_h, out_w = int(size[0]), int(size[1])

    def classes(x: Any) -> np.ndarray:
        x = np.asarray(x)
        return (x[..., 0] > 0).astype(np.int32) if k == 1 else x.argmax(-1).astype(np.int32)

    if n * out_h * out_w * k <= chunk_elements:
        return classes(resize_bilinear(logits, (out_h, out_w)))
    out = np.empty((n, out_h, out_w), np.int32)
    rows = max(1, chunk_elements // (n * out_w * k))
    taps = None if h == out_h else lerp_taps(h, out_h)
    for r0 in range(0, out_h, rows):
        r1 = min(out_h, r0 + rows)
        if taps is None:
            band = logits[:, r0:r1]
        else:  # resize_bilinear along the height, for these output rows only
            lo, hi, frac = (t[r0:r1] for t in taps)
            frac = frac.reshape(1, -1, 1, 1)
            band = logits[:, lo] * (1 - frac) + logits[:, hi] * frac
        out[:, r0:r1] = classes(resize_bilinear(band, (r1 - r0, out_w)))
    return out


# --------------------------------------------------------------------------------------
# Counting


def sum_over_processes(counts: np.ndarray) -> np.ndarray:
    """Exact int64 sum of every process's counts (JAX's collectives carry 32-bit ints, so
    the counts travel as two 30-bit halves)."""
    if jax.process_count() == 1:
        return counts
    from jax.experimental import multihost_utils
    counts = np.asarray(counts, np.int64)
    halves = np.stack([counts >> 30, counts & (2 ** 30 - 1)]).astype(np.int32)
    gathered = np.asarray(multihost_utils.process_allgather(halves), np.int64)
    return (gathered[:, 0].sum(0) << 30) + gathered[:, 1].sum(0)


def scored_class_names(num_labels: int, class_names: Sequence[str]) -> tuple[str, ...]:
    """The classes a model of ``num_labels`` outputs is scored on: its own, or for a binary
    model (one sigmoid output) background and the class."""
    names = tuple(class_names)
    if num_labels != 1:
        return names
    if len(names) == 2:
        return names
    return ("background", names[0] if names else "foreground")


def same_shape_groups(examples: Iterable[dict[str, Any]], rows: int,
                      max_pending: int | None = None) -> Iterator[list[dict[str, Any]]]:
    """Examples grouped by image shape into lists of ``rows`` (padding an image changes
    SegFormer's output everywhere, attention being global, so a batch holds one shape).

    A group is yielded when full; when more than ``max_pending`` examples (default 4 ×
    rows) wait, the fullest group goes out partial; at the end every partial group does, in
    the order their shapes first came. Deterministic given the examples' order.
    """
    max_pending = max_pending or 4 * rows
    pending: dict[tuple[int, ...], list[dict[str, Any]]] = {}
    waiting = 0
    for example in examples:
        shape = tuple(example["image"].shape)
        group = pending.setdefault(shape, [])
        group.append(example)
        waiting += 1
        if len(group) == rows:
            waiting -= len(pending.pop(shape))
            yield group
        elif waiting > max_pending:
            fullest = max(pending, key=lambda key: len(pending[key]))
            waiting -= len(pending[fullest])
            yield pending.pop(fullest)
    yield from pending.values()


def _row(array: jax.Array, i: int) -> np.ndarray:
    """Row ``i`` of a batch-sharded array, copied to the host from the device that holds it."""
    for shard in array.addressable_shards:
        start = shard.index[0].start or 0
        stop = shard.index[0].stop or array.shape[0]
        if start <= i < stop:
            data = shard.data if stop - start == 1 else shard.data[i - start:i - start + 1]
            return np.asarray(data)
    raise ValueError(f"row {i} is on no device of this process")


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


# --------------------------------------------------------------------------------------
# The segmentation evaluator


class SegmentationEvaluator:
    """mIoU, aAcc, mAcc and per-class IoU/Acc of a model on a split (mmseg's metrics).

    Built once over ``model`` (its jitted programs live in an ``inference.Inference``), the
    split (``data.SplitData``) and the ``EvalSettings``; calling it with variables scores
    this process's share of the split and sums the confusion matrices over processes.
    ``max_examples`` scores the first examples only; ``progress(done, total)`` is called
    after each one.

    Every device of this process takes part (``devices``, default all local ones; each
    process scores its own share, so no process waits for another's shapes). Whole-image
    inference runs batches of one image per device, all of one test shape
    (``same_shape_groups``); the last batch of a shape is filled with copies of its first
    image, whose predictions are dropped. Each device runs the one-image program, so the
    scores are those of the image-by-image path exactly (tested). Sliding windows are
    spread over the devices, one window per device at a time (at least). The multi-scale
    test runs image by image.
    """

    best_metric = "mIoU"

    def __init__(self, model: Any, split: Any, settings: EvalSettings, *,
                 max_examples: int | None = None, batch_windows: int = 1,
                 progress: Callable[[int, int], None] | None = None,
                 process_index: int = 0, process_count: int = 1,
                 devices: Sequence[Any] | None = None,
                 on_prediction: Callable[[str, np.ndarray], None] | None = None):
        from segformer_jax.data.transforms import EvalTransform
        num_labels = model.config.num_labels
        dataset_classes = split.num_labels
        if not (num_labels == dataset_classes or (num_labels == 1 and dataset_classes in (1, 2))):
            raise EvaluationError(f"the model predicts {num_labels} classes but the "
                                  f"{split.name} dataset has {dataset_classes}")
        self.settings = settings
        self.class_names = scored_class_names(num_labels, split.class_names)
        self.ignore_index = getattr(split, "ignore_index", IGNORE_INDEX)
        self.mesh = Mesh(np.asarray(list(devices or jax.local_devices())), ("data",))
        self.rows = self.mesh.size
        self.inference = Inference(model.apply, self.mesh)
        self.batch_windows = -(-max(int(batch_windows), 1) // self.rows) * self.rows
        self.progress = progress
        self.on_prediction = on_prediction   # (file name, mask at the label's size): writers
        self.process_index, self.process_count = process_index, process_count
        self.source = split.source if max_examples is None else _Head(split.source, max_examples)
        if settings.multiscale:  # the augmentations resize the original image themselves
            self.transform = EvalTransform(img_scale=None, mean=settings.mean, std=settings.std,
                                           reduce_zero_label=split.reduce_zero_label)
        else:
            self.transform = EvalTransform(img_scale=settings.img_scale,
                                           size_divisor=settings.size_divisor,
                                           reduce_zero_label=split.reduce_zero_label,
                                           mean=settings.mean, std=settings.std)

    def logits(self, variables: Any, images: np.ndarray) -> jax.Array:
        """Logits (or multi-scale probabilities) at the image's test size."""
        s = self.settings
        if s.multiscale:
            probs = self.inference.multiscale_flip(
                variables, images, scales=s.scales, flip=s.flip, base_size=s.img_scale,
                size_divisor=s.size_divisor, mode=s.mode, crop=s.crop, stride=s.stride,
                batch_windows=self.batch_windows)
            # A binary model's averaged sigmoid: above 0.5 is the class, as logit > 0 is.
            return probs - 0.5 if probs.shape[-1] == 1 else probs
        if s.mode == "slide":
            return self.inference.slide(variables, images, s.crop, s.stride,
                                        batch_windows=self.batch_windows)
        return self.inference.whole(variables, images)

    def _examples(self, source: Any) -> Iterator[dict[str, Any]]:
        from segformer_jax.data.pipeline import eval_batches
        total = len(source)
        for done, batch in enumerate(eval_batches(source, self.transform, 1,
                                                  process_index=self.process_index,
                                                  process_count=self.process_count), 1):
            yield batch
            if self.progress is not None:
                self.progress(done, total)

    def _predictions(self, variables: Any,
                     source: Any) -> Iterator[tuple[np.ndarray, np.ndarray, str]]:
        """(prediction, label, file name) of each example of ``source``, at the label's size."""
        s = self.settings
        if s.multiscale or s.mode == "slide":
            for example in self._examples(source):
                label = np.asarray(example["label"])
                yield (logits_to_mask(self.logits(variables, example["image"]), label.shape[1:3]),
                       label, str(example["file_name"][0]))
            return
        layout = NamedSharding(self.mesh, PartitionSpec("data"))
        for group in same_shape_groups(self._examples(source), self.rows):
            images = np.concatenate([example["image"] for example in group])
            filler = np.broadcast_to(images[:1], (self.rows - len(group), *images.shape[1:]))
            logits = self.inference.whole(variables, jax.device_put(np.concatenate([images, filler]), layout))
            for i, example in enumerate(group):  # one row per device, fetched one at a time
                label = np.asarray(example["label"])
                yield logits_to_mask(_row(logits, i), label.shape[1:3]), label, str(example["file_name"][0])

    def confusion_matrix(self, variables: Any, source: Any = None) -> np.ndarray:
        """The split's confusion matrix (rows = ground truth), exact int64, all processes.

        ``source`` replaces the split's examples (the same indices, e.g. corrupted images:
        ``robustness.CorruptedSource``), reusing the compiled programs.
        """
        k = len(self.class_names)
        total = metrics.zeros(k)
        variables = jax.device_put(variables, NamedSharding(self.mesh, PartitionSpec()))
        for pred, label, file_name in self._predictions(variables, self.source if source is None else source):
            if self.on_prediction is not None:
                self.on_prediction(file_name, pred[0])
            total = metrics.update(total, metrics.confusion_matrix(pred, label, k, self.ignore_index))
        return sum_over_processes(total)

    def __call__(self, variables: Any, source: Any = None) -> dict[str, Any]:
        """``metrics.summarize``'s dict plus ``confusion_matrix``, ``num_examples`` and
        ``settings`` (the test pipeline used); ``source`` as in ``confusion_matrix``."""
        cm = self.confusion_matrix(variables, source)
        summary = metrics.summarize(cm, self.class_names)
        summary.update(confusion_matrix=cm, num_examples=len(self.source),
                       settings=self.settings.as_dict())
        return summary

    def scalars(self, result: Mapping[str, Any]) -> dict[str, float]:
        return {"mIoU": result["mIoU"], "aAcc": result["aAcc"], "mAcc": result["mAcc"]}

    def table(self, result: Mapping[str, Any]) -> str:
        return metrics.format_table(result)

    def headline(self, result: Mapping[str, Any]) -> str:
        return f"mIoU {100 * result['mIoU']:.2f} aAcc {100 * result['aAcc']:.2f}"


# --------------------------------------------------------------------------------------
# The classification evaluator


class ClassificationEvaluator:
    """Top-1 and top-5 accuracy, and each class's top-1 accuracy, of a classification model
    on a split, with the recipe's test transform (``data.augment.ClassifyEvalTransform``).

    Exact over the split: the counts (per class: examples, top-1 hits, top-5 hits) are
    integers, summed over processes; each process scores its share of the split on all its
    devices, in batches of ``batch_size`` (rounded up to a multiple of the devices; the
    last batch is filled with copies of its first image, whose predictions are dropped).
    Every test image has the one crop shape, so one program serves the whole split.
    """

    best_metric = "top1"

    def __init__(self, model: Any, split: Any, crop_size: Sequence[int] = (224, 224),
                 crop_pct: float = 0.875, *, batch_size: int = 64, max_examples: int | None = None,
                 process_index: int = 0, process_count: int = 1,
                 devices: Sequence[Any] | None = None):
        from segformer_jax.data.augment import ClassifyEvalTransform
        if model.config.num_labels != split.num_labels:
            raise EvaluationError(f"the model predicts {model.config.num_labels} classes but the "
                                  f"{split.name} dataset has {split.num_labels}")
        self.class_names = tuple(split.class_names)
        self.transform = ClassifyEvalTransform(crop_size, crop_pct)
        self.mesh = Mesh(np.asarray(list(devices or jax.local_devices())), ("data",))
        self.rows = -(-max(int(batch_size), 1) // self.mesh.size) * self.mesh.size
        self.source = split.source if max_examples is None else _Head(split.source, max_examples)
        self.process_index, self.process_count = process_index, process_count
        self._apply = jax.jit(lambda v, x: jax.lax.top_k(model.apply(v, x), min(5, len(self.class_names)))[1])

    def counts(self, variables: Any) -> np.ndarray:
        """(3, K) int64 over the whole split: examples, top-1 hits, top-5 hits per class."""
        from segformer_jax.data.pipeline import eval_batches
        k = len(self.class_names)
        counts = np.zeros((3, k), np.int64)
        layout = NamedSharding(self.mesh, PartitionSpec("data"))
        variables = jax.device_put(variables, NamedSharding(self.mesh, PartitionSpec()))
        for batch in eval_batches(self.source, self.transform, self.rows,
                                  process_index=self.process_index,
                                  process_count=self.process_count):
            images, labels = batch["image"], np.asarray(batch["label"], np.int64)
            n = len(images)
            filler = np.broadcast_to(images[:1], (self.rows - n, *images.shape[1:]))
            top = np.asarray(self._apply(variables, jax.device_put(np.concatenate([images, filler]), layout)))[:n]
            np.add.at(counts[0], labels, 1)
            np.add.at(counts[1], labels, (top[:, 0] == labels).astype(np.int64))
            np.add.at(counts[2], labels, (top == labels[:, None]).any(1).astype(np.int64))
        return sum_over_processes(counts)

    def __call__(self, variables: Any) -> dict[str, Any]:
        """``top1``, ``top5`` (shares of the split), ``per_class`` top-1 (NaN for a class with
        no example), ``counts``, ``class_names`` and ``num_examples``."""
        counts = self.counts(variables)
        total = max(int(counts[0].sum()), 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_class = counts[1] / counts[0]
        return {"top1": counts[1].sum() / total, "top5": counts[2].sum() / total,
                "per_class": per_class, "counts": counts, "class_names": self.class_names,
                "num_examples": int(counts[0].sum())}

    def scalars(self, result: Mapping[str, Any]) -> dict[str, float]:
        return {"top1": float(result["top1"]), "top5": float(result["top5"])}

    def table(self, result: Mapping[str, Any]) -> str:
        width = max([len("class")] + [len(n) for n in result["class_names"]])
        lines = [f"{'class':<{width}}  examples  top-1 acc"]
        for name, n, acc in zip(result["class_names"], result["counts"][0], result["per_class"]):
            lines.append(f"{name:<{width}}  {int(n):8d}  {100 * acc:9.2f}")
        lines.append(f"top-1 {100 * result['top1']:.2f}  top-5 {100 * result['top5']:.2f}  "
                     f"({result['num_examples']} images)")
        return "\n".join(lines)

    def headline(self, result: Mapping[str, Any]) -> str:
        return f"top-1 {100 * result['top1']:.2f} top-5 {100 * result['top5']:.2f}"


def evaluate_split(config: SegformerConfig, variables: Mapping[str, Any], split_data: Any,
             mode: str | None = None, *, crop: int | None = None, stride: int | None = None,
             img_scale: Any = PRESET, size_divisor: Any = PRESET,
             scales: Sequence[float] | None = None, flip: bool = False,
             max_examples: int | None = None, batch_windows: int = 1,
             progress: Callable[[int, int], None] | None = None,
             mean: Sequence[float] = MEAN_RGB, std: Sequence[float] = STD_RGB,
             on_prediction: Callable[[str, np.ndarray], None] | None = None) -> dict[str, Any]:
    """Scores of ``variables`` on a ``data.SplitData`` (``SegmentationEvaluator``'s result).

    ``mode`` / ``crop`` / ``stride`` / ``img_scale`` / ``size_divisor`` default to the
    dataset's presets (``eval_settings``); ``mean`` / ``std``: the per-band normalisation;
    ``on_prediction(file_name, mask)`` is given each image's predicted class ids at its
    label's size (the Cityscapes server's files are written from it).
    """
    from segformer_jax.models.segformer import SegformerForSemanticSegmentation
    settings = dataclasses.replace(eval_settings(split_data.name, mode, crop, stride, img_scale,
                                                 size_divisor, scales, flip),
                                   mean=tuple(mean), std=tuple(std))
    evaluator = SegmentationEvaluator(SegformerForSemanticSegmentation(config), split_data,
                                      settings, max_examples=max_examples,
                                      batch_windows=batch_windows, progress=progress,
                                      on_prediction=on_prediction)
    return evaluator(jax.device_put(dict(variables)))


# --------------------------------------------------------------------------------------
# Records


def _number(value: Any) -> Any:
    value = float(value)
    return None if math.isnan(value) else value


def to_json(summary: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """A JSON-ready record of an evaluation; NaN scores become null."""
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
