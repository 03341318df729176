"""The NVlabs SegFormer (mmseg v0.13) data transforms, in numpy + PIL.

An *example* is a dict ``{"image": uint8 (H, W, 3) RGB, "label": uint8 (H, W)}`` (other keys
pass through). Each random transform is a pure function ``f(example, rng, ...) -> example`` of
the example and a ``numpy.random.Generator``: the same generator state gives the same output.
:class:`TrainTransform` chains them in the order of the paper's configs (NVlabs
``local_configs/_base_/datasets/ade20k_repeat.py``, ``cityscapes_1024x1024_repeat.py``)::

    reduce_zero_label (ADE20K) -> random_rescale(img_scale, ratio 0.5..2) ->
    random_crop(crop, cat_max_ratio 0.75) -> random_flip(0.5) -> photometric_distortion ->
    normalize(ImageNet mean/std) -> pad(crop; image 0, label 255)

and :class:`EvalTransform` does the test pipeline: rescale into ``img_scale`` keeping the
aspect ratio (ADE20K: (2048, 512), i.e. short side 512), optionally resize each side up to a
multiple of ``size_divisor`` (NVlabs' ``AlignedResize``), normalise; the label keeps its
original resolution (mIoU is computed there). ``train_transform`` builds the first from a
dataset's settings (``data.presets``); evaluation builds the second from its ``EvalSettings``.

Interpolation follows mmcv's OpenCV calls: images bilinear at half-pixel centres *without*
antialiasing (``cv2.INTER_LINEAR``; PIL's affine transform computes that, to within one grey
level of OpenCV's fixed-point rounding), labels ``cv2.INTER_NEAREST`` (source index
``floor(i * in / out)``). The HSV conversions follow OpenCV's 8-bit ``COLOR_RGB2HSV`` (its
integer division tables; H in 0..179) and ``COLOR_HSV2RGB`` (float32 sectors) algorithms;
they were not compared bit for bit with OpenCV, which is not installed here. Random numbers
are drawn in mmseg's order, from the given generator instead of numpy's global state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import PIL.Image

# Re-exported (the pipeline and tests import them from here): mmseg's img_norm_cfg, in 0..255.
from segformer_jax.constants import IGNORE_INDEX, MEAN_RGB, STD_RGB, round_up
from segformer_jax.data.presets import settings as dataset_settings

Example = dict[str, Any]


def as_example(record: Mapping[str, Any]) -> Example:
    """``{"image", "label"}`` from an example or a TFDS record (``segmentation_mask`` (H, W, 1))."""
    out = dict(record)
    if "label" not in out and "segmentation_mask" in out:
        mask = np.asarray(out.pop("segmentation_mask"))
        out["label"] = mask[..., 0] if mask.ndim == 3 else mask
    image = np.asarray(out["image"])
    if image.ndim != 3:
        raise ValueError(f"example image must be (H, W, bands); got shape {image.shape}")
    out["image"] = image
    if "label" in out and np.ndim(out["label"]) > 0:  # a class id (classification) is a scalar
        label = np.asarray(out["label"])
        if label.shape != image.shape[:2]:
            raise ValueError(f"example label shape {label.shape} != image size {image.shape[:2]}")
        out["label"] = label
    return out


# ----------------------------------------------------------------------------- geometry


def rescale_size(height: int, width: int, scale: float | Sequence[int]) -> tuple[int, int]:
    """mmcv ``rescale_size``: the (H, W) that fits into ``scale`` keeping the aspect ratio.

    A pair ``scale`` is (long edge max, short edge max) in either order: the factor is
    ``min(max(scale) / max(H, W), min(scale) / min(H, W))``; a number is the factor itself.
    Sides are ``int(side * factor + 0.5)``.
    """
    if isinstance(scale, (int, float, np.integer, np.floating)):
        factor = float(scale)
    else:
        a, b = scale
        factor = min(max(a, b) / max(height, width), min(a, b) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, 3) -> (h, w, 3): bilinear at half-pixel centres, no antialiasing.

    Other images (K bands, uint16 or float32) are resized band by band as float32 images
    with the same sampling; they come back float32 (nothing is rounded)."""
    height, width = image.shape[:2]
    out_h, out_w = int(size[0]), int(size[1])
    if (out_h, out_w) == (height, width):
        return image.copy()
    if image.shape[-1] != 3 or image.dtype != np.uint8:
        return np.stack([_resize_plane(image[..., k].astype(np.float32), (out_h, out_w))
                         for k in range(image.shape[-1])], axis=-1)
    return _resize_plane(image, (out_h, out_w))


def _resize_plane(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """PIL's bilinear resize of a uint8 RGB or float32 single-band image (``resize_image``)."""
    height, width = image.shape[:2]
    out_h, out_w = size
    pil = PIL.Image.fromarray(np.ascontiguousarray(image))
    if out_h >= height and out_w >= width:  # upsampling: PIL's resize is plain bilinear, faster
        out = pil.resize((out_w, out_h), PIL.Image.Resampling.BILINEAR)
    else:  # PIL's resize would antialias; its affine transform samples like cv2.INTER_LINEAR
        out = pil.transform((out_w, out_h), PIL.Image.Transform.AFFINE,
                            (width / out_w, 0.0, 0.0, 0.0, height / out_h, 0.0),
                            resample=PIL.Image.Resampling.BILINEAR)
    return np.asarray(out)


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest neighbour as ``cv2.INTER_NEAREST``: row ``i`` comes from ``floor(i * H / h)``."""
    height, width = label.shape[:2]
    rows = np.minimum((np.arange(size[0]) * (height / size[0])).astype(np.int64), height - 1)
    cols = np.minimum((np.arange(size[1]) * (width / size[1])).astype(np.int64), width - 1)
    return label[rows[:, None], cols[None, :]]


def reduce_zero_label(example: Example) -> Example:
    """0 (other) -> 255 (ignore), k -> k - 1; 255 stays 255 (mmseg / transformers semantics)."""
    label = np.asarray(example["label"]).astype(np.uint8)  # copy
    zero = label == 0
    label = label - np.uint8(1)
    label[label == 254] = IGNORE_INDEX
    label[zero] = IGNORE_INDEX
    return {**example, "label": label}


def random_rescale(example: Example, rng: np.random.Generator,
                   img_scale: Sequence[int] = (2048, 512),
                   ratio_range: Sequence[float] = (0.5, 2.0)) -> Example:
    """mmseg ``Resize(img_scale, ratio_range, keep_ratio=True)``.

    ``r ~ U[ratio_range)``; the image is rescaled (``rescale_size``) into
    ``(int(img_scale[0] * r), int(img_scale[1] * r))``: bilinear image, nearest label.
    """
    lo, hi = ratio_range
    ratio = rng.random() * (hi - lo) + lo
    scale = (int(img_scale[0] * ratio), int(img_scale[1] * ratio))
    image = example["image"]
    size = rescale_size(image.shape[0], image.shape[1], scale)
    out = {**example, "image": resize_image(image, size)}
    if "label" in example:
        out["label"] = resize_label(example["label"], size)
    return out


def _crop_box(shape: tuple[int, ...], crop_size: tuple[int, int],
              rng: np.random.Generator) -> tuple[int, int, int, int]:
    margin_h = max(shape[0] - crop_size[0], 0)
    margin_w = max(shape[1] - crop_size[1], 0)
    top = int(rng.integers(0, margin_h + 1))
    left = int(rng.integers(0, margin_w + 1))
    return top, top + crop_size[0], left, left + crop_size[1]


def random_crop(example: Example, rng: np.random.Generator,
                crop_size: Sequence[int] = (512, 512), cat_max_ratio: float = 0.75,
                ignore_index: int = IGNORE_INDEX) -> Example:
    """mmseg ``RandomCrop(crop_size=(h, w), cat_max_ratio)``.

    A crop (clipped to the image) is drawn; while it does not hold at least two classes with
    the largest one under ``cat_max_ratio`` of the labelled (non-``ignore_index``) pixels, it
    is re-drawn, at most 10 times (the last draw is then kept).
    """
    crop = (int(crop_size[0]), int(crop_size[1]))
    box = _crop_box(example["image"].shape, crop, rng)
    label = example.get("label")
    if cat_max_ratio < 1.0 and label is not None:
        for _ in range(10):
            counts = np.bincount(label[box[0]:box[1], box[2]:box[3]].ravel(), minlength=256)
            if ignore_index < counts.size:
                counts[ignore_index] = 0
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            box = _crop_box(example["image"].shape, crop, rng)
    y0, y1, x0, x1 = box
    out = {**example, "image": example["image"][y0:y1, x0:x1]}
    if label is not None:
        out["label"] = label[y0:y1, x0:x1]
    return out


def random_flip(example: Example, rng: np.random.Generator, prob: float = 0.5) -> Example:
    """mmseg ``RandomFlip(prob)``: horizontal flip of image and label together."""
    if not rng.random() < prob:
        return example
    out = {**example, "image": example["image"][:, ::-1]}
    if "label" in example:
        out["label"] = example["label"][:, ::-1]
    return out


def pad(example: Example, size: Sequence[int], pad_val: float = 0,
        seg_pad_val: int = IGNORE_INDEX) -> Example:
    """mmseg ``Pad(size=(h, w))``: pads bottom and right (image ``pad_val``, label 255)."""
    image = example["image"]
    height, width = image.shape[:2]
    extra_h, extra_w = max(int(size[0]) - height, 0), max(int(size[1]) - width, 0)
    if not (extra_h or extra_w):
        return example
    out = {**example, "image": np.pad(image, ((0, extra_h), (0, extra_w), (0, 0)),
                                      constant_values=pad_val)}
    if "label" in example:
        out["label"] = np.pad(example["label"], ((0, extra_h), (0, extra_w)),
                              constant_values=seg_pad_val)
    return out


def normalize(example: Example, mean: Sequence[float] = MEAN_RGB,
              std: Sequence[float] = STD_RGB) -> Example:
    """float32 ``(image - mean) / std`` per band (for RGB in 0..255 units; for other bands
    in the units they are stored in)."""
    bands = np.shape(example["image"])[-1]
    if len(mean) != bands or len(std) != bands:
        raise ValueError(f"normalize: {len(mean)} mean(s) and {len(std)} std(s) for an image of "
                         f"{bands} bands")
    mean_ = np.asarray(mean, np.float32)
    inv_std = (1.0 / np.asarray(std, np.float64)).astype(np.float32)
    image = (np.asarray(example["image"], np.float32) - mean_) * inv_std
    return {**example, "image": image}


# ----------------------------------------------------------------------------- colour

_HSV_SHIFT = 12
_SDIV = np.array([0] + [round((255 << _HSV_SHIFT) / i) for i in range(1, 256)], np.int32)
_HDIV = np.array([0] + [round((180 << _HSV_SHIFT) / (6.0 * i)) for i in range(1, 256)], np.int32)
# OpenCV's HSV2RGB picks, per sector and output channel, one of v, p = v(1 - s),
# q = v(1 - s f), t = v(1 - s(1 - f)); that is v(1 - s w) with w = 0, 1, f, 1 - f, written
# here as w = A + B f (exact in floating point for these four cases).
_PICK = {"r": (0, 2, 1, 1, 3, 0), "g": (3, 0, 0, 2, 1, 1), "b": (1, 1, 3, 0, 0, 2)}
_W_A = {c: np.array([(0, 1, 0, 1)[i] for i in p], np.float32) for c, p in _PICK.items()}
_W_B = {c: np.array([(0, 0, 1, -1)[i] for i in p], np.float32) for c, p in _PICK.items()}


def rgb_to_hsv(image: np.ndarray) -> np.ndarray:
    """uint8 RGB -> uint8 HSV by OpenCV's ``COLOR_RGB2HSV`` algorithm (H 0..179, S, V 0..255)."""
    r, g, b = (image[..., c].astype(np.int32) for c in range(3))
    v = np.maximum(np.maximum(r, g), b)
    diff = v - np.minimum(np.minimum(r, g), b)
    half = 1 << (_HSV_SHIFT - 1)
    out = np.empty(image.shape, np.uint8)
    out[..., 1] = (diff * _SDIV[v] + half) >> _HSV_SHIFT
    h = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * _HDIV[diff] + half) >> _HSV_SHIFT
    out[..., 0] = np.where(h < 0, h + 180, h)
    out[..., 2] = v
    return out


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """uint8 HSV (H 0..179) -> uint8 RGB by OpenCV's ``COLOR_HSV2RGB`` algorithm (float32)."""
    h = hsv[..., 0].astype(np.float32) * np.float32(6.0 / 180.0)
    s = hsv[..., 1].astype(np.float32) * np.float32(1.0 / 255.0)
    v = hsv[..., 2].astype(np.float32) * np.float32(1.0 / 255.0)
    sector = h.astype(np.int32)  # h in [0, 6): truncation is floor
    f = h - sector
    sector[sector >= 6] = 0
    out = np.empty(hsv.shape, np.uint8)
    for channel, name in enumerate("rgb"):
        w = _W_A[name][sector] + _W_B[name][sector] * f
        values = v * (1 - s * w) * np.float32(255.0)  # s = 0 gives v, as OpenCV's special case
        out[..., channel] = np.clip(np.rint(values), 0, 255)
    return out


def _convert(values: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """mmseg's ``convert``: float32 ``x * alpha + beta``, clipped to 0..255, cast to uint8."""
    out = values.astype(np.float32) * np.float32(alpha) + np.float32(beta)
    return np.clip(out, 0, 255).astype(np.uint8)


def photometric_applies(image: np.ndarray) -> bool:
    """The distortion is an 8-bit RGB colour augmentation (its HSV steps need colours): other
    band counts and dtypes skip it (``TrainTransform``)."""
    return image.shape[-1] == 3 and image.dtype == np.uint8


def photometric_distortion(example: Example, rng: np.random.Generator,
                           brightness_delta: int = 32,
                           contrast_range: Sequence[float] = (0.5, 1.5),
                           saturation_range: Sequence[float] = (0.5, 1.5),
                           hue_delta: int = 18) -> Example:
    """mmseg ``PhotoMetricDistortion``; each step with probability 0.5, uint8 after each.

    brightness ``+U(-32, 32)``; contrast ``*U(0.5, 1.5)`` either second or last (coin flip);
    saturation ``*U(0.5, 1.5)`` on HSV's S; hue ``+randint[-18, 18)`` on HSV's H, mod 180.
    """
    image = np.asarray(example["image"], np.uint8)

    def contrast(img: np.ndarray) -> np.ndarray:
        if rng.integers(2):
            return _convert(img, alpha=rng.uniform(*contrast_range))
        return img

    if rng.integers(2):
        image = _convert(image, beta=rng.uniform(-brightness_delta, brightness_delta))
    mode = int(rng.integers(2))
    if mode == 1:
        image = contrast(image)
    if rng.integers(2):
        hsv = rgb_to_hsv(image)
        hsv[..., 1] = _convert(hsv[..., 1], alpha=rng.uniform(*saturation_range))
        image = hsv_to_rgb(hsv)
    if rng.integers(2):
        hsv = rgb_to_hsv(image)
        hsv[..., 0] = (hsv[..., 0].astype(np.int64) + rng.integers(-hue_delta, hue_delta)) % 180
        image = hsv_to_rgb(hsv)
    if mode == 0:
        image = contrast(image)
    return {**example, "image": image}


# ----------------------------------------------------------------------------- pipelines


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    a, b = value
    return int(a), int(b)


@dataclasses.dataclass(frozen=True)
class TrainTransform:
    """The paper's training augmentation; ``transform(example, rng)`` -> float32 image, uint8 label.

    Output: ``image`` float32 (crop_h, crop_w, 3) normalised, ``label`` uint8 (crop_h, crop_w)
    with 255 = ignore (padding, and label 0 when ``reduce_zero_label``). ``img_scale`` is
    mmseg's (long, short) pair; ``crop_size`` is (h, w) or an int.
    """

    img_scale: tuple[int, int] = (2048, 512)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    crop_size: tuple[int, int] | int = (512, 512)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    reduce_zero_label: bool = False
    mean: tuple[float, ...] = MEAN_RGB
    std: tuple[float, ...] = STD_RGB
    ignore_index: int = IGNORE_INDEX

    def __call__(self, example: Mapping[str, Any], rng: np.random.Generator) -> Example:
        crop = _pair(self.crop_size)
        ex = as_example(example)
        if self.reduce_zero_label:
            ex = reduce_zero_label(ex)
        ex = random_rescale(ex, rng, self.img_scale, self.ratio_range)
        ex = random_crop(ex, rng, crop, self.cat_max_ratio, self.ignore_index)
        ex = random_flip(ex, rng, self.flip_prob)
        if self.photometric and photometric_applies(ex["image"]):
            ex = photometric_distortion(ex, rng)
        ex = normalize(ex, self.mean, self.std)
        ex = pad(ex, crop, 0.0, self.ignore_index)
        return ex


@dataclasses.dataclass(frozen=True)
class EvalTransform:
    """The test pipeline: ``transform(example)`` -> float32 resized image, label untouched.

    ``img_scale=None`` keeps the image size. The label is only value-mapped
    (``reduce_zero_label``), never resized; ``original_size`` is the image's (H, W).
    """

    img_scale: tuple[int, int] | None = (2048, 512)
    size_divisor: int | None = None
    reduce_zero_label: bool = False
    mean: tuple[float, ...] = MEAN_RGB
    std: tuple[float, ...] = STD_RGB

    def __call__(self, example: Mapping[str, Any], rng: np.random.Generator | None = None
                 ) -> Example:
        ex = as_example(example)
        if self.reduce_zero_label and "label" in ex:
            ex = reduce_zero_label(ex)
        image = ex["image"]
        height, width = image.shape[:2]
        if self.img_scale is not None:
            image = resize_image(image, rescale_size(height, width, self.img_scale))
        if self.size_divisor:
            h, w = image.shape[:2]
            image = resize_image(image, (round_up(h, self.size_divisor),
                                         round_up(w, self.size_divisor)))
        ex = normalize({**ex, "image": image}, self.mean, self.std)
        ex["original_size"] = (height, width)
        return ex


def train_transform(dataset: str, crop: int | None = None, *, reduce_zero_label: bool,
                    **changes: Any) -> TrainTransform:
    """The training transform of ``dataset`` from its settings (``presets.settings(dataset,
    crop)``: rescale and crop), with ``changes`` to any field.

    ``reduce_zero_label`` has no default: it belongs to the stored split (``SplitData``;
    True for ADE20K), and guessing it wrong trains on "other" as a class without a warning.
    """
    preset = dataset_settings(dataset, crop)
    return TrainTransform(**{"img_scale": preset.img_scale, "crop_size": preset.crop_size,
                             "reduce_zero_label": reduce_zero_label, **changes})

