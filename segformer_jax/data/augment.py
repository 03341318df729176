"""The ImageNet recipe's per-image augmentations (PVT v2 / DeiT, timm's implementations).

Training (``ClassifyTrainTransform``), in timm's ``transforms_imagenet_train`` order:
RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3, bicubic) -> horizontal flip (p 0.5) ->
RandAugment (``randaugment.py``) -> normalise (ImageNet mean/std) -> random erasing (p 0.25,
per-pixel N(0, 1) noise on the normalised image). timm applies its colour jitter only when
no auto-augmentation is given (``transforms_factory.py``), so with RandAugment the recipe's
``color_jitter 0.4`` does nothing, here as there. Test (``ClassifyEvalTransform``): the
short side resized to ``crop / crop_pct`` (256 for 224, bicubic, torchvision's truncation of
the long side), then the centre ``crop``.

Each draw is made from the numpy ``Generator`` the pipeline gives every (seed, step, row)
(timm draws from Python's ``random``); the geometry of each step is timm's exactly, so
given the same draws the output equals timm's (tests, on photographs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import PIL.Image

from segformer_jax.constants import IMAGENET_MEAN, IMAGENET_STD

BICUBIC = PIL.Image.Resampling.BICUBIC


def random_resized_crop_box(rng: np.random.Generator, height: int, width: int,
                            scale: Sequence[float] = (0.08, 1.0),
                            ratio: Sequence[float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, h, w) of timm's ``RandomResizedCropAndInterpolation.get_params``: up to ten
    tries of an area share ~ U(scale) and a log-uniform aspect ratio, the first box that fits
    placed uniformly; else the centre crop at the nearest allowed ratio."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = rng.uniform(*scale) * area
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if w <= width and h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resized_crop(image: PIL.Image.Image, box: tuple[int, int, int, int],
                 size: tuple[int, int]) -> PIL.Image.Image:
    """torchvision's ``resized_crop`` on a PIL image: crop (top, left, h, w), bicubic resize
    to ``size`` = (H, W)."""
    top, left, h, w = box
    return image.crop((left, top, left + w, top + h)).resize((size[1], size[0]), BICUBIC)


def erase_box(rng: np.random.Generator, height: int, width: int, area: Sequence[float] = (0.02, 1 / 3),
              aspect: Sequence[float] = (0.3, 1 / 0.3)) -> tuple[int, int, int, int] | None:
    """(top, left, h, w) of timm's ``RandomErasing`` (one box; ten tries of an area share ~
    U(area) and a log-uniform aspect, the first that fits strictly inside), or None."""
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    for _ in range(10):
        target_area = rng.uniform(*area) * height * width
        ratio = math.exp(rng.uniform(*log_aspect))
        h = int(round(math.sqrt(target_area * ratio)))
        w = int(round(math.sqrt(target_area / ratio)))
        if w < width and h < height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    return None


def normalize(image: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 ``(x / 255 - mean) / std`` (torchvision's ToTensor +
    Normalize, in their arithmetic order)."""
    x = np.asarray(image, np.float32) / np.float32(255)
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


class ClassifyTrainTransform:
    """One training example of the ImageNet recipe: ``(example, rng) -> {"image": float32
    (H, W, 3) normalised, "label": int32}``."""

    def __init__(self, crop_size: Sequence[int] = (224, 224), scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3), hflip: float = 0.5,
                 randaugment: str = "rand-m9-mstd0.5-inc1", random_erase: float = 0.25):
        from segformer_jax.data.randaugment import RandAugment
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.scale, self.ratio, self.hflip = tuple(scale), tuple(ratio), float(hflip)
        self.randaugment = RandAugment.from_string(randaugment) if randaugment else None
        self.random_erase = float(random_erase)

    def __call__(self, example: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        image = PIL.Image.fromarray(np.asarray(example["image"]))
        box = random_resized_crop_box(rng, image.height, image.width, self.scale, self.ratio)
        image = resized_crop(image, box, self.crop_size)
        if rng.random() < self.hflip:
            image = image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
        if self.randaugment is not None:
            image = self.randaugment(image, rng)
        x = normalize(np.asarray(image))
        if self.random_erase > 0 and rng.random() < self.random_erase:
            erased = erase_box(rng, *self.crop_size)
            if erased is not None:
                top, left, h, w = erased
                x[top:top + h, left:left + w] = rng.standard_normal((h, w, 3), np.float32)
        return {"image": x, "label": np.int32(example["label"])}


def resize_short_side(image: PIL.Image.Image, size: int) -> PIL.Image.Image:
    """torchvision ``Resize(size)``: the short side to ``size``, the long side
    ``int(size * long / short)`` (truncated); unchanged when the short side is already it."""
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return image
    new_long = int(size * long / short)
    return image.resize((size, new_long) if w <= h else (new_long, size), BICUBIC)


def center_crop(image: PIL.Image.Image, size: tuple[int, int]) -> PIL.Image.Image:
    """torchvision ``CenterCrop``: top = round((H - h) / 2), left = round((W - w) / 2)."""
    w, h = image.size
    top, left = int(round((h - size[0]) / 2.0)), int(round((w - size[1]) / 2.0))
    return image.crop((left, top, left + size[1], top + size[0]))


class ClassifyEvalTransform:
    """The recipe's test transform, timm's ``transforms_imagenet_eval`` (center mode): each
    side of ``crop`` over ``crop_pct`` (floored) is the size to scale to; when the two are
    equal, the short side goes to it (torchvision ``Resize(n)``), otherwise the image is
    scaled, aspect kept, until it covers both (timm's ``ResizeKeepRatio``, rounding each
    side); bicubic; then the centre ``crop``, normalised. Every output has the one shape
    ``crop``, and none has a border (a non-square crop of a square image is cut from a
    scaled image as wide as the crop, not from a square one)."""

    def __init__(self, crop_size: Sequence[int] = (224, 224), crop_pct: float = 0.875):
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.scale_size = tuple(math.floor(side / crop_pct) for side in self.crop_size)

    def resized(self, image: PIL.Image.Image) -> PIL.Image.Image:
        if self.scale_size[0] == self.scale_size[1]:
            return resize_short_side(image, self.scale_size[0])
        w, h = image.size
        ratio = min(h / self.scale_size[0], w / self.scale_size[1])
        return image.resize((round(w / ratio), round(h / ratio)), BICUBIC)

    def __call__(self, example: Mapping[str, Any]) -> dict[str, Any]:
        image = PIL.Image.fromarray(np.asarray(example["image"]))
        image = center_crop(self.resized(image), self.crop_size)
        return {"image": normalize(np.asarray(image)), "label": np.int32(example["label"])}
