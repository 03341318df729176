"""One rule for turning a decoded image file into the uint8 RGB array the library works on.

The dataset builders store it, and ``predict`` segments it, so a file gives the same pixels
whether it was trained on or predicted. Only numpy and PIL are imported here.

The processor (``processing.SegformerImageProcessor``) uses it for every PIL mode but ``I``
and ``F``: for those two it follows transformers' array rules instead (see
``processing._to_rgb``), because its job is to give transformers' numbers.
"""

from __future__ import annotations

import numpy as np
import PIL.Image

# PIL's 16-bit grayscale modes (PNG and TIFF files with 16 bits per sample open as these).
SIXTEEN_BIT_MODES: tuple[str, ...] = ("I;16", "I;16L", "I;16B", "I;16N")


def sixteen_to_eight(values: np.ndarray) -> np.ndarray:
    """``round(v * 255 / 65535)`` in integers, so 0 -> 0 and 65535 -> 255 (``v`` in 0..65535).

    Scaling, not saturating as PIL's ``convert("RGB")`` does: that would turn most of a
    16-bit image white.
    """
    return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


def to_rgb(image: PIL.Image.Image) -> np.ndarray:
    """uint8 (H, W, 3) RGB of any PIL image.

    * 16-bit modes (I;16...) are scaled to 8 bit (``sixteen_to_eight``);
    * mode ``I`` (32-bit integers; PIL opens some 16-bit files so) is 8-bit data when its
      maximum is at most 255, else 16-bit data, clipped to 0..65535 and scaled likewise;
    * mode ``F`` (floats) in [0, 1] is scaled by 255, otherwise taken as 0..255; rounded;
    * anything with transparency (RGBA, LA, PA, or a ``transparency`` entry) is composited
      onto white, as transformers' ``convert_to_rgb`` does;
    * every other mode (L, P, 1, CMYK, YCbCr, ...) goes through ``convert("RGB")``.
    """
    if image.mode in SIXTEEN_BIT_MODES or image.mode == "I":
        values = np.asarray(image)
        if image.mode == "I" and values.max(initial=0) <= 255:  # 8-bit data in a 32-bit mode
            return _gray_to_rgb(np.clip(values, 0, 255).astype(np.uint8))
        return _gray_to_rgb(sixteen_to_eight(np.clip(values, 0, 65535)))
    if image.mode == "F":
        values = np.asarray(image)
        scale = 255.0 if values.max(initial=0) <= 1.0 else 1.0
        return _gray_to_rgb(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8))
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(PIL.Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


__all__ = ["SIXTEEN_BIT_MODES", "sixteen_to_eight", "to_rgb"]
