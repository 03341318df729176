"""Semantic segmentation metrics as mmseg computes them: aAcc, mIoU, mAcc and per-class scores.

Everything comes from one integer confusion matrix (rows = ground truth, columns = prediction)
over the valid pixels of a whole split. mmseg's ``intersect_and_union`` per image is::

    mask = label != ignore_index
    pred, label = pred[mask], label[mask]
    area_intersect = histc(pred[pred == label])     # = diag(cm)
    area_pred      = histc(pred)                    # = cm.sum(axis=0)
    area_label     = histc(label)                   # = cm.sum(axis=1)
    area_union     = area_pred + area_label - area_intersect

summed over the split, then ``IoU = intersect / union``, ``Acc = intersect / label``,
``aAcc = intersect.sum() / label.sum()``; ``mIoU`` and ``mAcc`` are ``np.nanmean`` of the
per-class values, so a class with an empty union (absent from both the predictions and the
ground truth of the whole split) has IoU NaN and does not count, and a class absent from the
ground truth has Acc NaN and does not count in mAcc (its IoU is 0 if it was predicted).

Exactness: the counts are integers throughout. ``confusion_matrix`` counts a batch in numpy
**int64** on the host and ``update`` adds batches into an int64 matrix, so the counts over a
whole split cannot overflow or round, and the split's mIoU is the same number whether
computed at once or batch by batch. The only floating-point step is the final division
(float64), as in mmseg.

Usage::

    total = metrics.zeros(num_classes)
    for images, labels in split:
        pred = np.argmax(logits_fn(images), axis=-1)
        total = metrics.update(total, metrics.confusion_matrix(pred, labels, num_classes))
    results = metrics.summarize(total, class_names)
    print(metrics.format_table(results))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from segformer_jax.constants import IGNORE_INDEX


def confusion_matrix(pred: Any, label: Any, num_classes: int, ignore_index: int = IGNORE_INDEX,
                     reduce_zero_label: bool = False) -> np.ndarray:
    """Counts of (ground truth, prediction) pairs over the valid pixels of a batch.

    Args:
      pred: integer class predictions, any shape (e.g. (N, H, W) from an argmax).
      label: integer ground truth of the same shape; pixels equal to ``ignore_index`` are
        skipped.
      num_classes: K.
      ignore_index: the label of pixels that are not scored (mmseg's default 255).
      reduce_zero_label: mmseg's option for datasets whose label 0 means "unlabelled"
        (ADE20K): 0 becomes 255, every other label is decremented, and 255 stays 255 —
        applied before ``ignore_index`` is tested, exactly as ``intersect_and_union`` does.

    Returns:
      A numpy int64 (K, K) matrix ``cm`` with ``cm[g, p]`` = number of valid pixels of ground
      truth ``g`` predicted as ``p``. Add batches with ``update``.

    It runs in numpy on the host: evaluation images come at their own sizes, and a jitted
    count would compile once per size. A pixel is counted only when its label is in [0, K)
    and its prediction is in [0, K), so a stray value can never spill into another class's
    bin (``label * K + pred`` with ``pred >= K`` would land in the next row). Labels outside
    [0, K) other than the ignore index do not occur in a well-formed dataset; predictions
    from an argmax are always in range. (mmseg's ``histc`` would still count a pixel with an
    out-of-range prediction in its ground-truth class's area; a (K, K) matrix has no column
    for it, so it is dropped.)
    """
    k = int(num_classes)
    pred, label = np.asarray(pred).astype(np.int64), np.asarray(label).astype(np.int64)
    if pred.shape != label.shape:
        raise ValueError(f"pred {pred.shape} and label {label.shape} shapes differ")
    if reduce_zero_label:
        label = np.where(label == 0, 255, label) - 1
        label = np.where(label == 254, 255, label)
    valid = (label != ignore_index) & (label >= 0) & (label < k) & (pred >= 0) & (pred < k)
    return np.bincount(label[valid] * k + pred[valid], minlength=k * k).reshape(k, k)


def zeros(num_classes: int) -> np.ndarray:
    """An empty split-level confusion matrix: numpy int64 (K, K)."""
    return np.zeros((num_classes, num_classes), dtype=np.int64)


def update(total: np.ndarray, batch_cm: Any) -> np.ndarray:
    """``total + batch_cm`` in numpy int64 (the batch matrix is fetched from the device).

    Pure: returns a new array and leaves ``total`` as it was.
    """
    batch = np.asarray(batch_cm)
    if batch.shape != total.shape:
        raise ValueError(f"confusion matrix shapes differ: {total.shape} vs {batch.shape}")
    if not np.issubdtype(batch.dtype, np.integer):
        raise TypeError(f"confusion matrices hold integer counts, got {batch.dtype}")
    return total.astype(np.int64, copy=False) + batch.astype(np.int64)


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den in float64, NaN where den == 0 (mmseg's 0/0), with no warning."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _nanmean(x: np.ndarray) -> float:
    """np.nanmean without the all-NaN RuntimeWarning (returns NaN then)."""
    x = np.asarray(x, dtype=np.float64)
    keep = ~np.isnan(x)
    return float(x[keep].mean()) if keep.any() else float("nan")


def summarize(cm: Any, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """mmseg's metrics from a split-level confusion matrix (rows = ground truth).

    Returns a dict of fractions in [0, 1] (mmseg prints them ×100 with 2 decimals):
      ``aAcc``: correctly classified valid pixels / valid pixels.
      ``mIoU``, ``mAcc``: NaN-mean over classes of ``IoU`` and ``Acc``.
      ``IoU``, ``Acc``: float64 (K,) arrays; IoU is NaN for a class absent from both the
        predictions and the ground truth, Acc is NaN for a class absent from the ground truth.
      ``class_names``: tuple of K names (``"0"``, ``"1"``, ... when not given).
      ``area_intersect``, ``area_union``, ``area_pred``, ``area_label``: int64 (K,) counts.
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"expected a square confusion matrix, got shape {cm.shape}")
    if not np.issubdtype(cm.dtype, np.integer):
        raise TypeError(f"confusion matrices hold integer counts, got {cm.dtype}")
    cm = cm.astype(np.int64)
    k = cm.shape[0]
    names = tuple(str(i) for i in range(k)) if class_names is None else tuple(class_names)
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for {k} classes")
    intersect = np.diag(cm).copy()
    area_pred = cm.sum(axis=0)
    area_label = cm.sum(axis=1)
    union = area_pred + area_label - intersect
    iou = _divide(intersect, union)
    acc = _divide(intersect, area_label)
    return {
        "aAcc": float(_divide(intersect.sum(), area_label.sum())),
        "mIoU": _nanmean(iou),
        "mAcc": _nanmean(acc),
        "IoU": iou,
        "Acc": acc,
        "class_names": names,
        "area_intersect": intersect,
        "area_union": union,
        "area_pred": area_pred,
        "area_label": area_label,
    }


def format_table(results: dict[str, Any], digits: int = 2) -> str:
    """A per-class text table (IoU and Acc in percent) followed by the summary line.

    ``results`` is what ``summarize`` returns; NaN scores print as ``nan`` like mmseg's table.
    """
    names = results["class_names"]
    pct = lambda v: "nan" if np.isnan(v) else f"{100 * v:.{digits}f}"  # noqa: E731
    width = max([len("Class")] + [len(n) for n in names])
    rows = [f"{'Class':<{width}}  {'IoU':>7}  {'Acc':>7}", "-" * (width + 18)]
    for name, iou, acc in zip(names, results["IoU"], results["Acc"]):
        rows.append(f"{name:<{width}}  {pct(iou):>7}  {pct(acc):>7}")
    rows.append("-" * (width + 18))
    rows.append(f"aAcc {pct(results['aAcc'])}  mIoU {pct(results['mIoU'])}  "
                f"mAcc {pct(results['mAcc'])}")
    return "\n".join(rows)
