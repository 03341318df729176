"""A trained segmentation model as a function of an image: what ``predict``, ``serve`` and
the tiled mode share.

``Segmenter(config, variables, size, mode, crop, stride)`` takes a uint8 RGB image (or a
K-band array) of any size to class ids at its own resolution, as ``predict`` describes:
the image rescaled into ``(4 × size, size)`` with sides rounded up to a multiple of 32,
normalised as ``SegformerImageProcessor`` does (or with a K-band model's statistics), then
one forward pass (``whole``), overlapping windows (``slide``), or the windows swept in
stripes in bounded memory (``tiled``, :mod:`segformer_jax.tiles`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from segformer_jax.checkpoint import normalisation_of
from segformer_jax.config import SegformerConfig
from segformer_jax.constants import MEAN_RGB, SIZE_DIVISOR, STD_RGB
from segformer_jax.data.transforms import normalize, resize_image
from segformer_jax.errors import InputError
from segformer_jax.evaluators import logits_to_mask
from segformer_jax.inference import Inference, aligned_test_size, check_windows
from segformer_jax.models.segformer import SegformerForSemanticSegmentation
from segformer_jax.processing import SegformerImageProcessor
from segformer_jax.tiles import STRIPE, tiled_masks


def band_statistics(checkpoint: str | os.PathLike, num_channels: int
                    ) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """The checkpoint's per-band normalisation (``checkpoint.normalisation_of``); ``(None,
    None)`` for ImageNet's RGB one, which the image processor applies."""
    mean, std = normalisation_of(checkpoint, num_channels)
    if (mean, std) == (MEAN_RGB, STD_RGB):
        return None, None
    return mean, std


def inference_size(height: int, width: int, size: int) -> tuple[int, int]:
    """The test size of an image: rescaled into ``(4 × size, size)``, sides up to a multiple
    of 32; for ``size`` 512 exactly ``evaluate``'s ADE20K preset ``(2048, 512)``."""
    return aligned_test_size(height, width, (4 * size, size), SIZE_DIVISOR)


class Segmenter:
    """Image (uint8 RGB, any size) -> class ids at its resolution; see the module doc.

    ``mode``: ``"auto"`` (whole, or slide when a side exceeds ``2 × size`` at test scale or a
    crop is given), ``"whole"`` or ``"slide"``. ``crop`` defaults to ``size`` and ``stride``
    to ``crop * 3 // 4``.
    """

    def __init__(self, config: SegformerConfig, variables: Mapping[str, Any], size: int = 512,
                 mode: str = "auto", crop: int | None = None, stride: int | None = None,
                 batch_windows: int = 1, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None):
        if mode not in ("auto", "whole", "slide", "tiled"):
            raise InputError(f"mode must be auto, whole, slide or tiled; got {mode!r}")
        if size < 1 or (crop is not None and crop < 1) or (stride is not None and stride < 1):
            raise InputError("size, crop and stride must be positive")
        if mode == "whole" and (crop is not None or stride is not None):
            raise InputError("crop and stride are for sliding-window inference; not with "
                             "mode 'whole'")
        if mode != "whole":   # before any work: a gap between windows would divide by zero
            check_windows(crop or size, stride or max(1, (crop or size) * 3 // 4))
        self.config, self.size, self.mode = config, int(size), mode
        self.crop = int(crop) if crop is not None else None
        self.stride = int(stride) if stride is not None else None
        self.batch_windows = int(batch_windows)
        self.variables = jax.device_put(dict(variables))
        self.inference = Inference(SegformerForSemanticSegmentation(config).apply)
        self.processor = SegformerImageProcessor()
        # Other statistics than ImageNet's RGB ones (a K-band model's data.mean/std): the
        # evaluation transform's resize and per-band normalisation instead of the processor.
        self.stats = None if mean is None else (tuple(mean), tuple(std))

    def plan(self, height: int, width: int) -> tuple[tuple[int, int], str, int, int]:
        """``(test size, "whole" | "slide", crop, stride)`` for an image of this size."""
        scaled = inference_size(height, width, self.size)
        slide = self.mode == "slide" or (self.mode == "auto" and (
            self.crop is not None or self.stride is not None or max(scaled) > 2 * self.size))
        crop = self.crop or self.size
        stride = self.stride or max(1, crop * 3 // 4)
        return scaled, "slide" if slide else "whole", crop, stride

    def logits(self, rgb: np.ndarray) -> tuple[Any, str]:
        """Logits at test scale (1, h, w, K) on the device, and the mode used."""
        scaled, mode, crop, stride = self.plan(*rgb.shape[:2])
        if self.stats is None:
            pixels = self.processor(rgb, size={"height": scaled[0], "width": scaled[1]})["pixel_values"]
        else:
            pixels = normalize({"image": resize_image(rgb, scaled)}, *self.stats)["image"][None]
        if mode == "whole":
            return self.inference.whole(self.variables, pixels), mode
        return self.inference.slide(self.variables, pixels, crop, stride,
                                     batch_windows=self.batch_windows), mode

    def prepare(self, crop: np.ndarray) -> np.ndarray:
        """One window of an image as stored -> float32 normalised, at its own size."""
        if self.stats is None:
            return self.processor(crop, do_resize=False)["pixel_values"][0]
        return normalize({"image": crop}, *self.stats)["image"]

    def tiled(self, image: Any, progress: Any = None, stripe: int | None = None
              ) -> Iterator[tuple[int, int, np.ndarray]]:
        """Class ids of a large (H, W, bands) image at its own resolution, in ``(y0, x0,
        ids)`` blocks, in bounded memory (``tiles.tiled_masks``: the windows of ``slide``;
        ``stripe`` pixels wide, the memory knob)."""
        crop = self.crop or self.size
        stride = self.stride or max(1, crop * 3 // 4)
        return tiled_masks(lambda x: self.inference.windows(self.variables, x), image, crop, stride,
                           self.prepare, batch_windows=self.batch_windows, progress=progress,
                           stripe=stripe or STRIPE)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """int32 (H, W) class ids of a uint8 (H, W, 3) RGB image (or of (H, W, K) bands)."""
        logits, _ = self.logits(rgb)
        return logits_to_mask(logits, rgb.shape[:2])[0]
