"""Colours for class ids, mask overlays and legends: pure functions on numpy arrays and PIL.

    colours = palette_for(class_names)             # (K, 3) uint8, fixed for a given K
    blended = overlay(image, mask, colours, 0.5)   # (H, W, 3) uint8
    figure  = overlay_with_legend(image, mask, colours, class_names)

``palette(n)`` starts with Kelly's 20 colours of maximum contrast (his 22 without white and
black, which vanish in an overlay) and continues with golden-angle hues at alternating
saturation and brightness, so class ``k`` has the same colour whatever ``n`` is. Models with
the 19 Cityscapes classes get the official Cityscapes colours (``palette_for``).

Legends list the classes present in a mask, largest area first, as a colour swatch and
``name  12.3%``, drawn with PIL's default font in a white strip to the right of the image
(or below it, for images more than twice as wide as tall).
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

# Kelly (1965), "Twenty-two colors of maximum contrast", without white and black.
KELLY = ((243, 195, 0), (135, 86, 146), (243, 132, 0), (161, 202, 241), (190, 0, 50),
         (194, 178, 128), (132, 132, 130), (0, 136, 86), (230, 143, 172), (0, 103, 165),
         (249, 147, 121), (96, 78, 151), (246, 166, 0), (179, 68, 108), (220, 211, 0),
         (136, 45, 23), (141, 182, 0), (101, 69, 34), (226, 88, 34), (43, 61, 38))

CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                      "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
                      "truck", "bus", "train", "motorcycle", "bicycle")
CITYSCAPES_PALETTE = ((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156),
                      (190, 153, 153), (153, 153, 153), (250, 170, 30), (220, 220, 0),
                      (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
                      (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100),
                      (0, 0, 230), (119, 11, 32))

_GOLDEN = 0.618033988749895
_BACKGROUND = (255, 255, 255)
_TEXT = (0, 0, 0)


def palette(n: int) -> np.ndarray:
    """``n`` distinct, fixed RGB colours: (n, 3) uint8; colour k does not depend on n."""
    if n < 0:
        raise ValueError(f"palette size must be >= 0; got {n}")
    colours = list(KELLY[:n])
    for k in range(len(KELLY), n):
        hue = (k * _GOLDEN) % 1.0
        saturation = (0.75, 0.5, 0.95)[k % 3]
        value = (0.95, 0.7, 0.5)[(k // 3) % 3]
        colours.append(tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue, saturation, value)))
    return np.array(colours, np.uint8).reshape(n, 3)


def palette_for(class_names: Sequence[str]) -> np.ndarray:
    """The Cityscapes colours for the 19 Cityscapes classes, ``palette(len(names))`` otherwise."""
    names = tuple(str(n).strip().lower() for n in class_names)
    if names == CITYSCAPES_CLASSES:
        return np.array(CITYSCAPES_PALETTE, np.uint8)
    return palette(len(names))


def _check(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image, mask = np.asarray(image), np.asarray(mask)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (H, W, 3) RGB; got {image.dtype} {image.shape}")
    if mask.shape != image.shape[:2] or not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"mask must be an integer (H, W) array of the image's size "
                         f"{image.shape[:2]}; got {mask.dtype} {mask.shape}")
    return image, mask


def colorize(mask: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 colours; ids outside the palette are black."""
    mask = np.asarray(mask)
    colours = np.asarray(colours, np.uint8)
    known = (mask >= 0) & (mask < len(colours))
    out = np.zeros((*mask.shape, 3), np.uint8)
    out[known] = colours[mask[known]]
    return out


def overlay(image: np.ndarray, mask: np.ndarray, colours: np.ndarray,
            alpha: float = 0.5) -> np.ndarray:
    """``(1 - alpha) * image + alpha * colour[mask]``, rounded: (H, W, 3) uint8.

    Pixels whose id has no colour (e.g. 255, "ignore") keep the image as it is.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
    image, mask = _check(image, mask)
    known = (mask >= 0) & (mask < len(colours))
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colorize(mask, colours)
    out = image.copy()
    out[known] = np.clip(np.rint(blended[known]), 0, 255).astype(np.uint8)
    return out


def class_areas(mask: np.ndarray, num_classes: int) -> list[tuple[int, float]]:
    """``(id, fraction of pixels)`` of the ids in [0, num_classes) present, largest first."""
    mask = np.asarray(mask).ravel()
    valid = mask[(mask >= 0) & (mask < num_classes)].astype(np.int64)
    if mask.size == 0 or valid.size == 0:
        return []
    counts = np.bincount(valid, minlength=num_classes)
    present = np.flatnonzero(counts)
    order = sorted(present, key=lambda k: (-counts[k], k))
    return [(int(k), counts[k] / mask.size) for k in order]


def default_font_size(height: int, width: int) -> int:
    """Legend text height for an image: ~1/40 of its short side, between 11 and 40 pixels."""
    return int(np.clip(round(min(height, width) / 40), 11, 40))


def _font(size: int) -> PIL.ImageFont.ImageFont:
    try:
        return PIL.ImageFont.load_default(size=size)  # FreeType build: a scalable font
    except (TypeError, ValueError, OSError, ImportError):  # old Pillow / no FreeType: bitmap
        return PIL.ImageFont.load_default()


def legend(entries: Sequence[tuple[Sequence[int], str]], extent: int,
           position: str = "right", font_size: int = 12) -> np.ndarray:
    """A white strip of colour swatches and labels: (h, w, 3) uint8.

    ``entries``: ``(rgb, text)`` pairs, drawn in order. ``position="right"``: the entries
    run down in columns at most ``extent`` pixels tall (the image height), as many columns
    as needed; ``"bottom"``: they fill rows of a grid at most ``extent`` pixels wide (the image
    width). An empty ``entries`` gives an empty (0-sized) strip.
    """
    if position not in ("right", "bottom"):
        raise ValueError(f"legend position must be 'right' or 'bottom'; got {position!r}")
    if not entries:
        return np.zeros((0, 0, 3), np.uint8) if position == "right" else \
            np.zeros((0, max(extent, 0), 3), np.uint8)
    font = _font(font_size)
    pad = max(2, font_size // 3)
    swatch = font_size
    row_h = swatch + pad
    text_w = max(int(np.ceil(font.getlength(text))) for _, text in entries)
    col_w = pad + swatch + pad + text_w + 2 * pad
    n = len(entries)
    if position == "right":
        rows = max(1, (max(extent, row_h + pad) - pad) // row_h)
        cols = -(-n // rows)
        rows = min(rows, n)
        width, height = cols * col_w, pad + rows * row_h
    else:
        cols = max(1, min(n, max(extent, col_w) // col_w))
        rows = -(-n // cols)
        width, height = max(extent, cols * col_w), pad + rows * row_h
    strip = PIL.Image.new("RGB", (width, height), _BACKGROUND)
    draw = PIL.ImageDraw.Draw(strip)
    for i, (colour, text) in enumerate(entries):
        col, row = (i // rows, i % rows) if position == "right" else (i % cols, i // cols)
        x, y = col * col_w + pad, pad + row * row_h
        draw.rectangle([x, y, x + swatch - 1, y + swatch - 1],
                       fill=tuple(int(c) for c in colour), outline=(40, 40, 40))
        if isinstance(font, PIL.ImageFont.FreeTypeFont):
            draw.text((x + swatch + pad, y + swatch / 2), text, fill=_TEXT, font=font, anchor="lm")
        else:  # bitmap fonts take no anchor
            draw.text((x + swatch + pad, y), text, fill=_TEXT, font=font)
    return np.asarray(strip)


def legend_position(height: int, width: int) -> str:
    """``"bottom"`` for images more than twice as wide as tall, ``"right"`` otherwise."""
    return "bottom" if width > 2 * height else "right"


def overlay_with_legend(image: np.ndarray, mask: np.ndarray, colours: np.ndarray,
                        class_names: Sequence[str], alpha: float = 0.5,
                        position: str = "auto", font_size: int | None = None,
                        max_entries: int = 40) -> np.ndarray:
    """``overlay`` plus a legend of the classes present: (H', W', 3) uint8 RGB.

    ``position``: ``"right"``, ``"bottom"``, ``"auto"`` (``legend_position``) or ``"none"``
    (the plain overlay). At most ``max_entries`` classes are listed (largest areas); a last
    entry counts the rest. The canvas is white where neither the image nor the legend is.
    """
    blended = overlay(image, mask, colours, alpha)
    if position == "none":
        return blended
    height, width = blended.shape[:2]
    if position == "auto":
        position = legend_position(height, width)
    areas = class_areas(mask, min(len(colours), len(class_names)))
    entries = [(colours[k], f"{class_names[k]}  {100 * share:.1f}%")
               for k, share in areas[:max_entries]]
    if len(areas) > max_entries:
        entries.append((_BACKGROUND, f"… {len(areas) - max_entries} more classes"))
    strip = legend(entries, height if position == "right" else width, position,
                   font_size or default_font_size(height, width))
    if position == "right":
        canvas_h, canvas_w = max(height, strip.shape[0]), width + strip.shape[1]
        origin = (0, width)
    else:
        canvas_h, canvas_w = height + strip.shape[0], max(width, strip.shape[1])
        origin = (height, 0)
    canvas = np.full((canvas_h, canvas_w, 3), _BACKGROUND, np.uint8)
    canvas[:height, :width] = blended
    canvas[origin[0]:origin[0] + strip.shape[0], origin[1]:origin[1] + strip.shape[1]] = strip
    return canvas


def preview_rgb(bands: np.ndarray) -> np.ndarray:
    """uint8 RGB to draw a K-band image's overlay on: its first three bands (one band: grey),
    each stretched from its 2nd to its 98th percentile."""
    picked = bands[..., :3] if bands.shape[-1] >= 3 else np.repeat(bands[..., :1], 3, axis=-1)
    low, high = np.percentile(picked, (2, 98), axis=(0, 1))
    scaled = (picked.astype(np.float32) - low) / np.maximum(high - low, 1e-6)
    return np.clip(np.rint(scaled * 255), 0, 255).astype(np.uint8)
