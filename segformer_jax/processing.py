"""SegformerImageProcessor: images and masks in, NHWC model inputs out; logits back to masks.

It computes what transformers' PIL-backend SegFormer processor (``SegformerImageProcessorPil``,
or ``SegformerImageProcessor`` when torchvision is absent) computes, so that a checkpoint
fine-tuned with transformers sees the same numbers here:

* images are resized to exactly ``size`` (aspect ratio not kept) by PIL ``Image.resize`` on
  8-bit RGB data, rescaled as ``float32(float64(x) * rescale_factor)`` and normalised as
  ``(x - mean) / std`` in float32 — the same operations in the same order, so the values are
  bit-identical to transformers' (they differ only in layout: NHWC here, NCHW there);
* segmentation maps are label-reduced (optional) *before* a NEAREST resize to the same size;
* ``post_process_semantic_segmentation`` upsamples logits like torch
  ``F.interpolate(mode="bilinear", align_corners=False)`` and takes the argmax over classes.

Where transformers refuses an input this processor accepts, the conversion is documented in
``SegformerImageProcessor.__call__``; the deliberate divergences are listed there too. The
processor reads and writes the Hub ``preprocessor_config.json`` with transformers' keys.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import PIL.Image
from flax.core import FrozenDict

from segformer_jax import images as _images  # (``images`` is an argument name here)
from segformer_jax.constants import IMAGENET_MEAN, IMAGENET_STD
from segformer_jax.errors import ProcessingError
from segformer_jax.models.ops import resize_bilinear

CONFIG_NAME = "preprocessor_config.json"
# PIL resampling filters by their enum value (PIL.Image.Resampling), as transformers stores them.
RESAMPLING: dict[int, str] = {0: "NEAREST", 1: "LANCZOS", 2: "BILINEAR", 3: "BICUBIC",
                              4: "BOX", 5: "HAMMING"}
# The ``image_processor_type`` / ``feature_extractor_type`` values of a SegFormer config.
_OWN_TYPES = ("SegformerImageProcessor", "SegformerImageProcessorPil",
              "SegformerImageProcessorFast", "SegformerFeatureExtractor")
_MASK_MODES = ("L", "P", "1", "I") + _images.SIXTEEN_BIT_MODES

ImageLike = Any  # PIL.Image.Image | np.ndarray | jax.Array | a list of them


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not _is_bool(value)


def _size_dict(size: Any) -> FrozenDict:
    """``{"height": H, "width": W}`` from a dict, an int (square) or an (H, W) pair.

    The int and pair forms are what old Hub configs hold (``"size": 512``); transformers
    reads them the same way (``get_size_dict`` with ``default_to_square=True``).
    """
    if isinstance(size, Mapping):
        if set(size) != {"height", "width"}:
            raise ProcessingError(
                f"size must be {{'height': H, 'width': W}} (SegFormer resizes to an exact size); "
                f"got keys {sorted(size)}")
        height, width = size["height"], size["width"]
    elif isinstance(size, (int, np.integer)) and not _is_bool(size):
        height = width = size
    elif isinstance(size, Sequence) and not isinstance(size, str) and len(size) == 2:
        height, width = size
    else:
        raise ProcessingError(f"size must be {{'height': H, 'width': W}}, an int or an (H, W) "
                              f"pair; got {size!r}")
    for value in (height, width):
        if not isinstance(value, (int, np.integer)) or _is_bool(value) or value <= 0:
            raise ProcessingError(f"size must hold positive integers; got {size!r}")
    return FrozenDict(height=int(height), width=int(width))


def _channel_stats(name: str, value: Any) -> tuple[float, float, float]:
    """One number per RGB channel; a single number is broadcast, as transformers does."""
    if _is_real(value):
        value = (value,) * 3
    if (not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 3
            or not all(_is_real(v) and math.isfinite(v) for v in value)):
        raise ProcessingError(f"{name} must be a number or 3 numbers (R, G, B); got {value!r}")
    return tuple(float(v) for v in value)


@dataclasses.dataclass(frozen=True)
class SegformerImageProcessor:
    """Options of the preprocessing; the names and defaults are transformers'.

    Frozen and hashable (``size`` is a flax ``FrozenDict``, the channel statistics tuples), so
    a processor can be a static argument or a dict key; ``replace`` makes a changed copy.
    ``resample`` is a PIL filter number (2 = BILINEAR; ``PIL.Image.Resampling`` works too).
    """

    do_resize: bool = True
    size: Mapping[str, int] = FrozenDict(height=512, width=512)
    resample: int = 2
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = IMAGENET_MEAN
    image_std: tuple[float, ...] = IMAGENET_STD
    do_reduce_labels: bool = False

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        for name in ("do_resize", "do_rescale", "do_normalize", "do_reduce_labels"):
            if not _is_bool(getattr(self, name)):
                raise ProcessingError(f"{name} must be true or false; got {getattr(self, name)!r}")
            set_(name, bool(getattr(self, name)))
        set_("size", _size_dict(self.size))
        if _is_bool(self.resample) or not isinstance(self.resample, (int, np.integer)) \
                or int(self.resample) not in RESAMPLING:
            raise ProcessingError(f"resample must be a PIL filter number {RESAMPLING}; "
                                  f"got {self.resample!r}")
        set_("resample", int(self.resample))
        if not _is_real(self.rescale_factor) or not math.isfinite(self.rescale_factor):
            raise ProcessingError(f"rescale_factor must be a number; got {self.rescale_factor!r}")
        set_("rescale_factor", float(self.rescale_factor))
        set_("image_mean", _channel_stats("image_mean", self.image_mean))
        set_("image_std", _channel_stats("image_std", self.image_std))
        if any(s == 0 for s in self.image_std):
            raise ProcessingError(f"image_std must not contain 0; got {self.image_std!r}")

    def replace(self, **changes: Any) -> SegformerImageProcessor:
        """A copy with ``changes`` (any field); an unknown name is an error, not ignored."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ProcessingError(f"unknown SegformerImageProcessor option(s) {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    # -- preprocessing ------------------------------------------------------------------

    def __call__(self, images: ImageLike, segmentation_maps: ImageLike | None = None,
                 **overrides: Any) -> dict[str, np.ndarray]:
        """``{"pixel_values": (N, H, W, 3) float32[, "labels": (N, H, W) int32]}``.

        ``images``: a PIL image, an (H, W) / (H, W, C) array, an (N, H, W, C) batch, or a
        list of images. ``segmentation_maps``: one per image, a PIL image (modes L, P, 1,
        I;16, I), an integer (H, W) array, an (N, H, W) batch or a list. ``overrides`` change
        an option for this call only, like transformers' keyword arguments.

        Images become RGB first, like transformers with ``do_convert_rgb=True`` (without it
        transformers rejects anything but 3 channels): an image with transparency (RGBA, LA,
        PA, P or RGB with a ``transparency`` entry) is composited onto white; other PIL modes
        (L, P, 1, CMYK, YCbCr, ...) go through ``Image.convert("RGB")``; 1-channel arrays are
        repeated; 4-channel arrays are composited onto white (integers rounded). Deliberate
        divergences from transformers:

        * 16-bit data (PIL I;16 modes, uint16 arrays) is scaled to 8 bit, ``round(v * 255 /
          65535)``; transformers' ``convert("RGB")`` saturates every value above 255 instead.
          PIL modes I and F are read as arrays (integers in [0, 255], or floats in [0, 1]),
          by transformers' array rules: see ``_to_rgb`` for why not ``images.to_rgb``'s.
        * (H, W) arrays are grayscale images (transformers cannot batch them).
        * A mask whose (H, W) differs from its image's is an error, not silently stretched.
        * Labels outside [0, 255] (after reduction) are resized in PIL mode I instead of
          being refused; ``labels`` and ``pixel_values`` are always int32 / float32 arrays.

        Float images follow transformers: integer-valued floats are treated as 0..255 data,
        other floats must lie in [0, 1] and are quantised to 8 bit for the resize and mapped
        back to [0, 1] — then ``do_rescale`` divides by 255 *again*, so pass
        ``do_rescale=False`` for [0, 1] images (a warning says so).
        """
        proc = self.replace(**overrides) if overrides else self
        image_list = _flatten(images, "image", single_ndims=(2, 3), batch_ndim=4)
        warned = False
        pixels = []
        for i, image in enumerate(image_list):
            rgb = _to_rgb(image, i)
            if proc.do_rescale and not warned and np.issubdtype(rgb.dtype, np.floating) \
                    and _looks_unit_range(rgb):
                warnings.warn("float images in [0, 1] are rescaled by rescale_factor again "
                              "(as in transformers); pass do_rescale=False for such images",
                              stacklevel=2)
                warned = True
            pixels.append((rgb.shape[:2], proc._process_image(rgb, i)))
        out = {"pixel_values": _stack([p for _, p in pixels], "images", np.float32)}
        if segmentation_maps is None:
            return out
        mask_list = _flatten(segmentation_maps, "segmentation map", single_ndims=(2,),
                             batch_ndim=3)
        if len(mask_list) != len(image_list):
            raise ProcessingError(f"got {len(mask_list)} segmentation maps for "
                                  f"{len(image_list)} images; pass one per image")
        labels = []
        for i, (mask, (image_hw, _)) in enumerate(zip(mask_list, pixels)):
            array = _mask_array(mask, i)
            if array.shape != image_hw:
                raise ProcessingError(f"segmentation map {i} is {array.shape[0]}x{array.shape[1]} "
                                      f"but its image is {image_hw[0]}x{image_hw[1]} (H x W)")
            labels.append(proc._process_mask(array, i))
        out["labels"] = _stack(labels, "segmentation maps", np.int32)
        return out

    preprocess = __call__

    def _process_image(self, rgb: np.ndarray, index: int) -> np.ndarray:
        """resize → rescale → normalize of one (H, W, 3) image, in transformers' dtypes."""
        x = rgb
        if self.do_resize:
            x, back_to_unit = _to_uint8_for_pil(x, f"image {index}")
            x = np.asarray(PIL.Image.fromarray(x).resize(
                (self.size["width"], self.size["height"]), resample=self.resample))
            if back_to_unit:  # transformers undoes its own ×255 after the PIL round trip
                x = (x.astype(np.float64) * (1 / 255)).astype(np.float32)
        if self.do_rescale:
            # float64 product then float32, transformers' order: bit-identical values.
            x = (x.astype(np.float64) * self.rescale_factor).astype(np.float32)
        if self.do_normalize:
            if not np.issubdtype(x.dtype, np.floating):
                x = x.astype(np.float32)
            mean = np.asarray(self.image_mean, dtype=x.dtype)
            std = np.asarray(self.image_std, dtype=x.dtype)
            x = (x - mean) / std
        return x.astype(np.float32)

    def _process_mask(self, mask: np.ndarray, index: int) -> np.ndarray:
        """reduce_labels → NEAREST resize of one (H, W) label map."""
        m = mask.astype(np.int64)
        if self.do_reduce_labels:
            # transformers: 0 -> 255 (background becomes "ignore"), x -> x - 1, and the
            # 255 that became 254 back to 255. Done on a copy: the caller's array is untouched.
            m = np.where(m == 0, 255, m) - 1
            m[m == 254] = 255
        if self.do_resize:
            wh = (self.size["width"], self.size["height"])
            if m.min() >= 0 and m.max() <= 255:  # transformers' path: an 8-bit PIL image
                m = np.asarray(PIL.Image.fromarray(m.astype(np.uint8)).resize(
                    wh, resample=PIL.Image.Resampling.NEAREST))
            else:
                if m.min() < np.iinfo(np.int32).min or m.max() > np.iinfo(np.int32).max:
                    raise ProcessingError(f"segmentation map {index} has labels outside int32")
                m = np.asarray(PIL.Image.fromarray(m.astype(np.int32)).resize(
                    wh, resample=PIL.Image.Resampling.NEAREST))
        return m.astype(np.int32)

    # -- postprocessing -----------------------------------------------------------------

    def post_process_semantic_segmentation(
            self, logits: Any, target_sizes: Sequence[Sequence[int]] | np.ndarray | None = None,
    ) -> list[np.ndarray]:
        """Class-id maps, one (H, W) int32 array per image, from (N, h, w, K) logits.

        ``logits`` is the model's NHWC output (numpy, jax, or an object with ``.logits``).
        With ``target_sizes`` (one (H, W) per image) each image's logits are first resized
        bilinearly like torch ``F.interpolate(mode="bilinear", align_corners=False)`` — the
        argmax of resized logits, not a resized argmax, as transformers does; without, the
        argmax is taken at the logits' resolution.
        """
        logits = getattr(logits, "logits", logits)
        logits = jnp.asarray(logits)
        if logits.ndim != 4 or min(logits.shape) == 0:
            raise ProcessingError(f"logits must be a non-empty (N, h, w, K) array; "
                                  f"got shape {tuple(logits.shape)}")
        logits = logits.astype(jnp.float32)
        if target_sizes is None:
            return [np.asarray(jnp.argmax(x, axis=-1)).astype(np.int32) for x in logits]
        sizes = list(target_sizes)
        if len(sizes) != logits.shape[0]:
            raise ProcessingError(f"got {len(sizes)} target sizes for a batch of "
                                  f"{logits.shape[0]} logits; pass one (H, W) per image")
        out = []
        for i, size in enumerate(sizes):
            hw = tuple(np.asarray(size).reshape(-1).tolist())
            if len(hw) != 2 or not all(isinstance(v, int) and v > 0 for v in hw):
                raise ProcessingError(f"target size {i} must be (height, width), two positive "
                                      f"integers; got {size!r}")
            resized = resize_bilinear(logits[i:i + 1], hw)[0]
            out.append(np.asarray(jnp.argmax(resized, axis=-1)).astype(np.int32))
        return out

    # -- Hub preprocessor_config.json ----------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "preprocessor config",
                  **overrides: Any) -> SegformerImageProcessor:
        """Reads transformers' keys; unknown keys are ignored, a null value means the default.

        The deprecated ``reduce_labels`` key of older configs (e.g. the NVIDIA ADE20k
        checkpoints) sets ``do_reduce_labels``, as transformers 4 did (transformers 5 ignores
        it). A processor type that is not SegFormer's is refused: its other options (crops,
        aspect-keeping sizes) would be silently dropped here.
        """
        for key in ("image_processor_type", "feature_extractor_type"):
            kind = data.get(key)
            if kind is not None and kind not in _OWN_TYPES:
                raise ProcessingError(f"{source}: {key} is {kind!r}, not a SegFormer processor")
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in fields and v is not None}
        legacy = data.get("reduce_labels")
        if legacy is not None:
            if "do_reduce_labels" in kwargs and kwargs["do_reduce_labels"] != legacy:
                raise ProcessingError(f"{source}: reduce_labels={legacy!r} contradicts "
                                      f"do_reduce_labels={kwargs['do_reduce_labels']!r}")
            kwargs["do_reduce_labels"] = legacy
        unknown = set(overrides) - fields
        if unknown:
            raise ProcessingError(f"unknown SegformerImageProcessor option(s) {sorted(unknown)}")
        kwargs.update(overrides)
        try:
            return cls(**kwargs)
        except ProcessingError as e:
            raise ProcessingError(f"{source}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        """The ``preprocessor_config.json`` content transformers writes for these options."""
        return {
            "do_normalize": self.do_normalize,
            "do_reduce_labels": self.do_reduce_labels,
            "do_rescale": self.do_rescale,
            "do_resize": self.do_resize,
            "image_mean": list(self.image_mean),
            "image_processor_type": "SegformerImageProcessor",
            "image_std": list(self.image_std),
            "resample": self.resample,
            "rescale_factor": self.rescale_factor,
            "size": dict(self.size),
        }

    @classmethod
    def from_json_file(cls, path: str | os.PathLike, **overrides: Any) -> SegformerImageProcessor:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise ProcessingError(f"{path}: no such preprocessor config file") from None
        except IsADirectoryError:
            raise ProcessingError(f"{path}: is a directory, not a preprocessor config file") \
                from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ProcessingError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ProcessingError(f"{path}: expected a JSON object, got {type(data).__name__}")
        return cls.from_dict(data, source=str(path), **overrides)

    def to_json_file(self, path: str | os.PathLike) -> None:
        # sorted keys, indent 2, final newline: byte-identical to transformers' file.
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike,
                        **overrides: Any) -> SegformerImageProcessor:
        """Reads ``path/preprocessor_config.json`` (or ``path`` itself if it is a file).

        Local paths only (the library never downloads): fetch a Hub repo first, e.g. with
        ``huggingface_hub.snapshot_download``.
        """
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_NAME
        return cls.from_json_file(path, **overrides)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Writes ``directory/preprocessor_config.json``; returns its path."""
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise ProcessingError(f"{directory}: exists and is not a directory")
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / CONFIG_NAME
        self.to_json_file(path)
        return path


# -- input normalisation ------------------------------------------------------------------


def _flatten(value: Any, what: str, single_ndims: tuple[int, ...], batch_ndim: int) -> list:
    """A list of single images (PIL or arrays) from one image, a batch array or a list."""
    if isinstance(value, PIL.Image.Image):
        return [value]
    if isinstance(value, (list, tuple)):
        if not value:
            raise ProcessingError(f"got an empty list of {what}s")
        # each item's rank is checked, with its shape in the message, when it is read
        return [item if isinstance(item, PIL.Image.Image) else _as_array(item, f"{what} {i}")
                for i, item in enumerate(value)]
    array = _as_array(value, what)
    if array.ndim in single_ndims:
        return [array]
    if array.ndim == batch_ndim:
        if array.shape[0] == 0:
            raise ProcessingError(f"got an empty batch of {what}s")
        return list(array)
    raise ProcessingError(f"{what} has rank {array.ndim} (shape {array.shape}); expected rank "
                          f"{' or '.join(map(str, single_ndims))}, or {batch_ndim} for a batch")


def _as_array(value: Any, what: str) -> np.ndarray:
    try:
        array = np.asarray(value)
    except Exception as e:  # noqa: BLE001 - whatever numpy cannot read is a bad input
        raise ProcessingError(f"{what}: not an image or array ({type(value).__name__}: {e})") \
            from None
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number)
                                     or array.dtype == np.bool_):
        raise ProcessingError(f"{what}: not an image or numeric array "
                              f"({type(value).__name__}, dtype {array.dtype}); pass PIL images "
                              f"(e.g. PIL.Image.open(path)) or arrays")
    return array


def _to_rgb(image: Any, index: int) -> np.ndarray:
    """(H, W, 3) RGB array of one image: uint8 for PIL (modes I, F aside), else the input dtype.

    PIL images go through ``images.to_rgb``, the conversion the datasets and ``predict``
    use, except modes I and F. Those are read as ``np.asarray(image)`` and follow
    transformers' array rules (integers must lie in [0, 255] to be resized; floats in
    [0, 1] stay floats and are rescaled again, with a warning), because the processor's job
    is transformers' numbers, and transformers' PIL path (``convert("RGB")``) saturates I
    above 255 and rounds F to whole grey levels, which no caller wants. ``images.to_rgb``
    must make *one* uint8 image per file to store or segment, so it guesses the bit depth
    instead (I above 255 as 16-bit data, F in [0, 1] scaled by 255). For I in [0, 255] and
    integer-valued F in [0, 255] all three give the same pixels.
    """
    what = f"image {index}"
    if isinstance(image, PIL.Image.Image):
        if image.mode in ("I", "F"):
            return _array_to_rgb(np.asarray(image), what)
        return _images.to_rgb(image)
    return _array_to_rgb(image, what)


def _array_to_rgb(x: np.ndarray, what: str) -> np.ndarray:
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3 or x.shape[-1] not in (1, 3, 4):
        raise ProcessingError(f"{what}: expected an (H, W) or channels-last (H, W, C) array with "
                              f"C = 1, 3 or 4; got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ProcessingError(f"{what}: empty image of shape {x.shape}")
    if x.dtype == np.bool_ or np.issubdtype(x.dtype, np.complexfloating):
        raise ProcessingError(f"{what}: unsupported dtype {x.dtype}")
    if x.dtype == np.uint16:
        x = _images.sixteen_to_eight(x)
    if x.shape[-1] == 1:
        return np.repeat(x, 3, axis=-1)
    if x.shape[-1] == 4:
        # transformers' array compositing onto white, in the input dtype.
        if np.issubdtype(x.dtype, np.floating):
            if x.min() < 0.0 or x.max() > 1.0:
                raise ProcessingError(f"{what}: a float RGBA array must lie in [0, 1]; got "
                                      f"[{x.min()}, {x.max()}]")
            alpha = x[..., 3:4] / 1.0
            return (alpha * x[..., :3] + (1 - alpha) * 1.0).astype(x.dtype)
        alpha = x[..., 3:4] / 255
        return np.round(alpha * x[..., :3] + (1 - alpha) * 255).astype(x.dtype)
    return x


def _looks_unit_range(x: np.ndarray) -> bool:
    """transformers' test for "float data in [0, 1]" (and not integer-valued)."""
    return not np.allclose(x, x.astype(int)) and bool(np.all(x >= 0) and np.all(x <= 1))


def _to_uint8_for_pil(x: np.ndarray, what: str) -> tuple[np.ndarray, bool]:
    """8-bit data for PIL, and whether it was scaled from [0, 1] (transformers' rules).

    uint8 passes; integer-valued data in [0, 255] is cast; floats in [0, 1] are scaled by
    255 (float64 product, float32, then truncated to uint8); anything else is an error.
    """
    if x.dtype == np.uint8:
        return x, False
    if np.allclose(x, x.astype(int)):
        if x.min() < 0 or x.max() > 255:
            raise ProcessingError(f"{what}: integer-valued data must lie in [0, 255]; got "
                                  f"[{x.min()}, {x.max()}]")
        return x.astype(np.uint8), False
    if x.min() >= 0 and x.max() <= 1:
        return (x.astype(np.float64) * 255).astype(np.float32).astype(np.uint8), True
    raise ProcessingError(f"{what}: float data must lie in [0, 1] (or be integer-valued in "
                          f"[0, 255]); got [{x.min()}, {x.max()}]")


def _mask_array(mask: Any, index: int) -> np.ndarray:
    """(H, W) integer labels of one segmentation map."""
    what = f"segmentation map {index}"
    if isinstance(mask, PIL.Image.Image):
        if mask.mode not in _MASK_MODES:
            raise ProcessingError(f"{what}: PIL mode {mask.mode} is not a label map; use a "
                                  f"single-channel mode ({', '.join(_MASK_MODES)})")
        mask = np.asarray(mask)
    else:
        mask = _as_array(mask, what)
        if mask.ndim == 3 and mask.shape[-1] == 1:
            mask = mask[..., 0]
    if mask.ndim != 2:
        raise ProcessingError(f"{what}: expected an (H, W) label array; got shape {mask.shape}")
    if not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == np.bool_):
        raise ProcessingError(f"{what}: labels must be integers; got dtype {mask.dtype}")
    if mask.size == 0:
        raise ProcessingError(f"{what}: empty map of shape {mask.shape}")
    return mask


def _stack(arrays: list[np.ndarray], what: str, dtype: type) -> np.ndarray:
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ProcessingError(f"the {what} have different sizes {sorted(shapes)} and cannot be "
                              f"batched; keep do_resize=True or process them one at a time")
    return np.stack(arrays).astype(dtype, copy=False)


__all__ = ["SegformerImageProcessor", "ProcessingError", "CONFIG_NAME"]
