"""Numbers and rules shared by the data pipeline, the processor, inference and evaluation.

Defined once here so that training, ``predict``, ``evaluate`` and the processor cannot
disagree about them.
"""

from __future__ import annotations

# Label of pixels that are not scored (mmseg's and transformers' default; padding, and
# ADE20K's "other" after reduce_zero_label).
IGNORE_INDEX = 255

# ImageNet channel statistics, as fractions (transformers' processor) and on the 0-255
# scale (mmseg's img_norm_cfg: 123.675 = 0.485 * 255, ...). The two are the same numbers.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
MEAN_RGB: tuple[float, float, float] = (123.675, 116.28, 103.53)
STD_RGB: tuple[float, float, float] = (58.395, 57.12, 57.375)

# The two tasks a model, a dataset and a run config name (transformers' task names). The
# registry of what each needs is ``tasks.py``; every module takes the names from here.
SEMSEG = "semantic_segmentation"
CLASSIFY = "image_classification"
TASK_NAMES: tuple[str, str] = (SEMSEG, CLASSIFY)

# SegFormer's AlignedResize: test sides are rounded up to a multiple of this (the network's
# largest stride), so every stage's feature map is a whole number of pixels.
SIZE_DIVISOR = 32


def round_up(value: int, divisor: int = SIZE_DIVISOR) -> int:
    """``value`` rounded up to a multiple of ``divisor`` (``ceil(value / divisor) * divisor``)."""
    return -(-int(value) // int(divisor)) * int(divisor)
