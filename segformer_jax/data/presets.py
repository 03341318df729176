"""Each dataset's train and test settings, as the paper's NVlabs configs give them.

One table read by the training configs (``configs/*.py``), by ``evaluate`` (its defaults per
dataset) and by the trainer's validation, so the three cannot drift apart:

    dataset     train rescale (long, short)  crop       test rescale   divisor  test
    ade20k      (2048, 512)                  512²       (2048, 512)    32       whole
                (2048, 640) for B5           640²       (2048, 640)
    cityscapes  (2048, 1024)                 1024²      (2048, 1024)   -        slide 1024 / 768
    coco_stuff  (2048, 512)                  512²       (2048, 512)    32       whole
    synthetic   (256, 128)                   96²        (256, 128)     32       whole
    folder      (2048, 512)                  512²       (2048, 512)    32       whole

The rescale pair is mmcv's ``img_scale`` (the image is scaled to fit inside long × short,
aspect kept); the divisor is SegFormer's ``AlignedResize`` (test sides rounded up to a
multiple of 32). NVlabs: ``local_configs/_base_/datasets/ade20k_repeat.py``,
``cityscapes_1024x1024_repeat.py`` and ``local_configs/segformer/B5/*640x640*``.
"""

from __future__ import annotations

import dataclasses

from segformer_jax.constants import SIZE_DIVISOR


@dataclasses.dataclass(frozen=True)
class DatasetSettings:
    """Train and test settings of one dataset; ``test_scale=None`` keeps the native size."""

    img_scale: tuple[int, int]
    crop_size: tuple[int, int]
    test_scale: tuple[int, int] | None
    size_divisor: int | None = None
    test_mode: str = "whole"
    test_crop: int | None = None
    test_stride: int | None = None


def _short_side(short: int, crop: int | None = None) -> DatasetSettings:
    crop = crop or short
    return DatasetSettings((2048, short), (crop, crop), (2048, short), SIZE_DIVISOR)


SETTINGS: dict[str, DatasetSettings] = {
    "ade20k": _short_side(512),
    "cityscapes": DatasetSettings((2048, 1024), (1024, 1024), (2048, 1024), None,
                                  "slide", 1024, 768),
    # The paper: "we rescale the short side of the image to the training crop size and keep
    # the aspect ratio for ADE20K and COCO-Stuff"; mmseg's coco-stuff164k test scale (2048, 512).
    "coco_stuff": _short_side(512),
    "synthetic": DatasetSettings((256, 128), (96, 96), (256, 128), SIZE_DIVISOR),
    "folder": _short_side(512),
}


def settings(dataset: str, crop: int | None = None) -> DatasetSettings:
    """The settings of ``dataset`` (an unknown name gets the folder's); ``crop`` changes the
    training crop and, for short-side datasets, the short side of both rescales (ADE20K's
    B5 trains at 640², tests at short side 640)."""
    base = SETTINGS.get(dataset, SETTINGS["folder"])
    if crop is None or crop == base.crop_size[0]:
        return base
    if base.test_mode == "slide":  # Cityscapes: the native 1024 x 2048 whatever the crop
        return dataclasses.replace(base, crop_size=(crop, crop))
    return _short_side(crop)
