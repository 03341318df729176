"""Test-time inference as the SegFormer paper's code (NVlabs/SegFormer, on mmseg 0.x) runs it.

* ``Inference.whole``: one forward pass; the 1/4-resolution logits are resized (bilinear,
  ``align_corners=False``) to the input size — mmseg's ``test_cfg=dict(mode='whole')``
  (ADE20K, COCO-Stuff).
* ``Inference.slide``: overlapping crops, each one's logits resized to the crop, summed on a
  canvas and divided by how many crops cover each pixel — mmseg's ``mode='slide'``
  (Cityscapes: crop 1024×1024, stride 768×768).
* ``Inference.multiscale_flip``: mmseg's ``MultiScaleFlipAug`` + ``aug_test``: for every scale
  ratio (and the horizontal flip), resize the image, infer, resize the logits back to the
  original size, softmax, un-flip; the softmax probabilities are averaged.
* ``rescale_size`` / ``aligned_test_size``: mmcv's ``imrescale`` size rule and SegFormer's
  ``AlignedResize`` (ADE20K test size: short side 512, then both sides up to a multiple of 32).

``Inference(apply_fn)`` holds the jitted programs of one model: build it once per model
(``apply_fn(variables, images) -> logits`` is the model's apply, images NHWC float32, logits
NHWC at ``ceil(H/4) × ceil(W/4)``) and call its methods; each compiles once per input shape,
crop and stride. Nothing is cached at module level: two models are two objects.

All outputs are float32 NHWC: logits for ``Inference.whole`` / ``Inference.slide`` (mmseg's
``seg_logit`` before its softmax), probabilities for ``Inference.multiscale_flip``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from segformer_jax.constants import round_up
from segformer_jax.data.transforms import rescale_size  # mmcv's imrescale rule, one copy
from segformer_jax.errors import InputError
from segformer_jax.models.ops import form_set, resize_bilinear

ApplyFn = Callable[[Any, jax.Array], jax.Array]


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        pair = (int(value), int(value))
    else:
        pair = tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{name} must be a positive int or (height, width), got {value!r}")
    return pair  # type: ignore[return-value]


def check_windows(crop: int | Sequence[int], stride: int | Sequence[int]) -> None:
    """Refuses a stride larger than the crop (``InputError``, naming both).

    The windows would leave the pixels between them uncovered: their window count is 0 and
    mmseg's division by it gives NaN logits, argmax class 0 (mmseg asserts against it).
    A stride equal to the crop tiles without overlap; smaller overlaps.
    """
    ch, cw = _pair(crop, "crop")
    sh, sw = _pair(stride, "stride")
    if sh > ch or sw > cw:
        raise InputError(f"sliding-window stride {_shown(sh, sw)} is larger than the crop "
                         f"{_shown(ch, cw)} (--stride > --crop): the pixels between two windows "
                         "would be covered by none; give a stride of at most the crop (the "
                         "default is 3/4 of it)")


def _shown(h: int, w: int) -> str:
    return str(h) if h == w else f"{h}x{w}"


def check_covered(count: np.ndarray, crop: Any, stride: Any) -> None:
    """Every pixel must lie in a window before a canvas is divided by ``count``: raises
    ``InputError`` (the first uncovered pixel) instead of dividing by zero."""
    if count.size and count.min() < 1:
        y, x = np.argwhere(count < 1)[0]
        raise InputError(f"sliding windows (crop {crop}, stride {stride}) leave pixel "
                         f"({y}, {x}) of a {count.shape[0]}x{count.shape[1]} image uncovered; "
                         "use a stride of at most the crop")


# ----------------------------------------------------------------------------- whole image


def _whole(apply_fn: ApplyFn, variables: Any, images: jax.Array, form: str | None = None) -> jax.Array:
    logits = apply_fn(variables, images).astype(jnp.float32)
    return resize_bilinear(logits, images.shape[1:3], form)


# ----------------------------------------------------------------------------- sliding window


class Window(NamedTuple):
    """A crop ``images[:, y1:y2, x1:x2]``."""

    y1: int
    x1: int
    y2: int
    x2: int


def slide_windows(height: int, width: int, crop: int | Sequence[int],
                  stride: int | Sequence[int]) -> list[Window]:
    """mmseg's sliding windows, in its order (rows outer, columns inner).

    ``h_grids = max(H - crop_h + stride_h - 1, 0) // stride_h + 1`` (same for w); window
    (i, j) starts at ``(i * stride_h, j * stride_w)`` and is shifted back to end at the image
    border: ``y2 = min(y1 + crop_h, H); y1 = max(y2 - crop_h, 0)``. Every window is
    ``min(crop_h, H) × min(crop_w, W)``: an image smaller than the crop is one window along
    that axis, the image itself. Windows may repeat when clipping maps two onto one place;
    mmseg counts them twice, and so does this.

    >>> sorted({w.x1 for w in slide_windows(1024, 2048, 1024, 768)})
    [0, 768, 1024]
    """
    ch, cw = _pair(crop, "crop")
    sh, sw = _pair(stride, "stride")
    check_windows((ch, cw), (sh, sw))
    h, w = int(height), int(width)
    h_grids = max(h - ch + sh - 1, 0) // sh + 1
    w_grids = max(w - cw + sw - 1, 0) // sw + 1
    windows = []
    for i in range(h_grids):
        for j in range(w_grids):
            y1, x1 = i * sh, j * sw
            y2, x2 = min(y1 + ch, h), min(x1 + cw, w)
            windows.append(Window(max(y2 - ch, 0), max(x2 - cw, 0), y2, x2))
    return windows


def window_count(height: int, width: int, crop: int | Sequence[int],
                 stride: int | Sequence[int]) -> np.ndarray:
    """How many sliding windows cover each pixel: int32 (H, W), mmseg's ``count_mat``.

    ``Inference.slide`` divides its canvas by this; it is >= 1 everywhere for any size
    (``slide_windows`` refuses a stride larger than the crop, which would leave gaps).
    """
    count = np.zeros((int(height), int(width)), dtype=np.int32)
    for win in slide_windows(height, width, crop, stride):
        count[win.y1:win.y2, win.x1:win.x2] += 1
    return count


def _slide(apply_fn: ApplyFn, variables: Any, images: jax.Array, crop: tuple[int, int],
           stride: tuple[int, int], batch_windows: int, mesh: Any = None,
           form: str | None = None) -> jax.Array:
    n, h, w, c = images.shape
    windows = slide_windows(h, w, crop, stride)
    ch, cw = windows[0].y2 - windows[0].y1, windows[0].x2 - windows[0].x1
    # All windows share one shape, so the model is traced once: the crops are stacked and
    # mapped over (lax.map: sequential, memory of batch_windows crops at a time).
    crops = jnp.stack([images[:, win.y1:win.y2, win.x1:win.x2] for win in windows])
    per_step = max(1, min(int(batch_windows), len(windows)))
    steps = math.ceil(len(windows) / per_step)
    padding = steps * per_step - len(windows)
    if padding:  # fill the last step with copies of the first crop; their logits are dropped
        crops = jnp.concatenate([crops, jnp.broadcast_to(crops[:1], (padding, *crops.shape[1:]))])
    crops = crops.reshape(steps, per_step * n, ch, cw, c)

    def infer(x: jax.Array) -> jax.Array:
        if mesh is not None and x.shape[0] % mesh.size == 0:  # the windows over the devices
            x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(mesh.axis_names)))
        return resize_bilinear(apply_fn(variables, x).astype(jnp.float32), (ch, cw), form)

    logits = infer(crops[0])[None] if steps == 1 else jax.lax.map(infer, crops)
    logits = logits.reshape(steps * per_step, n, ch, cw, -1)[:len(windows)]
    canvas = jnp.zeros((n, h, w, logits.shape[-1]), jnp.float32)
    for i, win in enumerate(windows):  # mmseg's order of additions
        canvas = canvas.at[:, win.y1:win.y2, win.x1:win.x2].add(logits[i])
    count = window_count(h, w, crop, stride)
    check_covered(count, crop, stride)  # static (numpy, at trace time): never a NaN canvas
    count = count.astype(np.float32)
    return canvas / jnp.asarray(count)[None, :, :, None]


# ----------------------------------------------------------------------------- test sizes


def aligned_test_size(height: int, width: int, scale: Sequence[int] = (2048, 512),
                      divisor: int = 32) -> tuple[int, int]:
    """SegFormer's ``AlignedResize`` test size: mmcv rescale, then each side up to a multiple.

    First ``rescale_size(H, W, scale)`` (see there: ``factor = min(long_max / long,
    short_max / short)``, ``new = int(x * factor + 0.5)``), then
    ``ceil(side / divisor) * divisor`` for each side. ADE20K's pipeline uses
    ``scale=(2048, 512)``, ``divisor=32``:

    >>> aligned_test_size(512, 683)             # factor 1: only the alignment, 683 → 704
    (512, 704)
    >>> aligned_test_size(375, 500)             # 375×500 → 512×683 → 512×704
    (512, 704)
    """
    h, w = rescale_size(height, width, scale)
    return round_up(h, divisor), round_up(w, divisor)


def augmentation_sizes(height: int, width: int, ratios: Sequence[float] = (1.0,),
                       base_size: Sequence[int] | None = None,
                       size_divisor: int | None = None
                       ) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """The image sizes mmseg's ``MultiScaleFlipAug`` + ``Resize(keep_ratio=True)`` produce.

    For each ratio r the target scale is ``(int(base_long * r), int(base_short * r))`` with
    ``base_size = (long, short)`` as in mmseg configs (``img_scale=(2048, 512)``), or
    ``(int(W * r), int(H * r))`` when ``base_size`` is None (mmseg's ``img_scale=None`` mode);
    the image is then rescaled by ``rescale_size``. With ``size_divisor`` (SegFormer's
    ``AlignedResize``), the rescaled image is resized a second time, to each side rounded up
    to a multiple of the divisor.

    Returns one ``(rescaled (H, W), final (H, W))`` pair per ratio (equal without a divisor).
    """
    sizes = []
    for r in ratios:
        if base_size is None:
            scale = (int(width * r), int(height * r))
        else:
            scale = (int(base_size[0] * r), int(base_size[1] * r))
        rescaled = rescale_size(height, width, scale)
        final = rescaled
        if size_divisor:
            final = (round_up(rescaled[0], size_divisor), round_up(rescaled[1], size_divisor))
        sizes.append((rescaled, final))
    return sizes


# ----------------------------------------------------------------------------- multi-scale, flip


def _augmented_probs(apply_fn: ApplyFn, variables: Any, images: jax.Array,
                     rescaled: tuple[int, int], final: tuple[int, int], flip: bool, mode: str,
                     crop: tuple[int, int] | None, stride: tuple[int, int] | None,
                     batch_windows: int, form: str | None = None) -> jax.Array:
    """One augmentation of mmseg's ``aug_test``: softmax probabilities at the original size."""
    size = images.shape[1:3]
    x = resize_bilinear(resize_bilinear(images, rescaled, form), final, form)  # Resize, then AlignedResize
    if flip:  # RandomFlip comes after Resize in the pipeline
        x = x[:, :, ::-1]
    if mode == "slide":
        logits = _slide(apply_fn, variables, x, crop, stride, batch_windows, form=form)
    else:
        logits = _whole(apply_fn, variables, x, form)
    logits = resize_bilinear(logits, size, form)  # rescale=True: back to ori_shape
    # One channel is a binary model's logit: its probability is the sigmoid (a softmax over
    # one channel would be 1 everywhere).
    probs = jax.nn.sigmoid(logits) if logits.shape[-1] == 1 else jax.nn.softmax(logits, axis=-1)
    return probs[:, :, ::-1] if flip else probs


# ----------------------------------------------------------------------------- one model's programs


class Inference:
    """The jitted test-time programs of one model, built once over its ``apply_fn``.

    ``jax.jit`` of a closure over ``apply_fn``: the programs belong to this object, so a
    second model (or a new object) never shares or evicts them, and one object compiles once
    per input shape (and crop, stride, scale). Build one per model and keep it.

    ``mesh``: sliding windows are spread over its devices, ``batch_windows`` (a multiple of
    the device count) at a time. ``whole`` follows its inputs' shardings: a batch laid out
    over devices runs over them. ``forms``: the resizes' form set (``ops.FORM_SETS``; give
    the model's).
    """

    def __init__(self, apply_fn: ApplyFn, mesh: Any = None, forms: str = "auto"):
        self.apply_fn = apply_fn
        self.mesh = mesh
        form = None if forms == "auto" else form_set(forms)["resize"]  # "auto": at trace time
        self._whole = jax.jit(lambda variables, images: _whole(apply_fn, variables, images, form))
        self._slide = jax.jit(
            lambda variables, images, crop, stride, batch_windows: _slide(
                apply_fn, variables, images, crop, stride, batch_windows, mesh, form),
            static_argnums=(2, 3, 4))
        self._windows = jax.jit(lambda variables, crops: resize_bilinear(
            apply_fn(variables, crops).astype(jnp.float32), crops.shape[1:3], form))
        self._augmented = jax.jit(
            lambda variables, images, *static: _augmented_probs(apply_fn, variables, images,
                                                                *static, form),
            static_argnums=tuple(range(2, 9)))

    def whole(self, variables: Any, images: Any) -> jax.Array:
        """Logits resized to the input size: (N, H, W, 3) images → (N, H, W, K) float32.

        mmseg's ``encode_decode``: ``resize(decode_head(backbone(img)), img.shape[2:],
        mode='bilinear', align_corners=False)``.
        """
        return self._whole(variables, jnp.asarray(images))

    def windows(self, variables: Any, crops: Any) -> jax.Array:
        """Each crop's logits resized to the crop, as ``slide`` computes them: (n, h, w, C)
        crops -> (n, h, w, K) float32 (``tiles.tiled_masks`` sums them on the host)."""
        return self._windows(variables, jnp.asarray(crops))

    def slide(self, variables: Any, images: Any, crop: int | Sequence[int],
              stride: int | Sequence[int], num_classes: int | None = None,
              batch_windows: int = 1) -> jax.Array:
        """mmseg's sliding-window logits: (N, H, W, 3) images → (N, H, W, K) float32.

        Each crop's logits are resized (bilinear, ``align_corners=False``) to the crop size,
        added into a zero canvas at the crop's place, and the canvas is divided by
        ``window_count``. The windows are ``slide_windows(H, W, crop, stride)``; their number
        is static given the shape, so the whole thing is one jitted program.

        Args:
          crop, stride: (height, width) or one int for both (Cityscapes: 1024 and 768).
          num_classes: optional check of K (it is read from the model's output otherwise).
          batch_windows: crops per forward pass (× N images). 1 keeps memory at one crop's
            activations; more uses a large accelerator better.
        """
        check_windows(crop, stride)
        logits = self._slide(variables, jnp.asarray(images), _pair(crop, "crop"),
                             _pair(stride, "stride"), int(batch_windows))
        _check_classes(logits, num_classes)
        return logits

    def multiscale_flip(self, variables: Any, images: Any, *,
                        scales: Sequence[float] = (1.0,), flip: bool = False,
                        base_size: Sequence[int] | None = None,
                        size_divisor: int | None = None, mode: str = "whole",
                        crop: int | Sequence[int] | None = None,
                        stride: int | Sequence[int] | None = None,
                        num_classes: int | None = None,
                        batch_windows: int = 1) -> jax.Array:
        """mmseg's multi-scale + flip test: averaged softmax probabilities, (N, H, W, K) float32.

        For each size of ``augmentation_sizes(H, W, scales, base_size, size_divisor)`` and each
        of (no flip, horizontal flip if ``flip``): resize the image, flip it, run ``whole`` or
        ``slide`` inference, resize the logits back to (H, W), softmax, un-flip. mmseg's
        ``inference`` returns that softmax and ``aug_test`` sums it over the augmentations and
        divides by their number; so does this. ``argmax(-1)`` gives the prediction.

        The paper's ADE20K multi-scale test is ``scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75)``,
        ``base_size=(2048, 512)``, ``size_divisor=32``, ``flip=True``, ``mode="whole"``; its
        Cityscapes one ``base_size=(2048, 1024)``, ``mode="slide"``, ``crop=1024``,
        ``stride=768``.

        Image resizing: mmseg resizes the uint8 image with OpenCV's ``INTER_LINEAR`` before
        normalising; here the (normalised, float) image is resized with ``resize_bilinear``.
        Both sample at half-pixel centres without antialiasing, and normalisation is
        per-channel affine, which commutes with bilinear weights that sum to one; the
        difference is OpenCV's fixed-point arithmetic and rounding to uint8 (< 1 grey level).

        One jitted program per (size, flip); each compiles once per input shape.
        """
        if mode not in ("whole", "slide"):
            raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
        if mode == "slide":
            if crop is None or stride is None:
                raise ValueError("mode='slide' needs crop and stride")
            crop, stride = _pair(crop, "crop"), _pair(stride, "stride")
            check_windows(crop, stride)
        else:
            crop = stride = None
        if not scales:
            raise ValueError("scales is empty")
        images = jnp.asarray(images)
        _, h, w, _ = images.shape
        total, count = None, 0
        for rescaled, final in augmentation_sizes(h, w, tuple(scales), base_size, size_divisor):
            for flipped in ((False, True) if flip else (False,)):
                probs = self._augmented(variables, images, rescaled, final, flipped, mode, crop,
                                        stride, int(batch_windows))
                total = probs if total is None else total + probs
                count += 1
        _check_classes(total, num_classes)
        return total / count


def _check_classes(logits: jax.Array, num_classes: int | None) -> None:
    if num_classes is not None and logits.shape[-1] != num_classes:
        raise ValueError(f"model gives {logits.shape[-1]} classes, expected {num_classes}")
