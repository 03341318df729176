"""The embedded dataset: procedurally generated shapes on textured backgrounds.

Needs no download and is deterministic: example ``i`` of split ``s`` is a pure function of
(``seed``, ``s``, ``i``). Each class has a shape AND a texture, with colours jittered around
a class hue, at scales from a tenth to half the image, so a small model must learn shape and
texture, not a colour lookup, and the quickstart can show real learning in minutes on a CPU.
"""

from __future__ import annotations

import numpy as np

CLASS_NAMES = ("background", "disc", "box", "triangle", "ring", "stripes")
_HUES = {1: (220, 60, 60), 2: (60, 180, 70), 3: (60, 90, 220), 4: (230, 200, 50), 5: (170, 60, 200)}
_SPLIT_OFFSETS = {"train": 0, "validation": 1 << 20, "test": 2 << 20}


def _texture(kind: int, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A per-class pattern in [0, 1]: dots, checks, diagonal lines, rings, bands."""
    period = rng.uniform(5, 11)
    phase = rng.uniform(0, period)
    if kind == 1:
        return ((np.hypot((yy + phase) % period - period / 2, (xx + phase) % period - period / 2))
                < period / 4).astype(float)
    if kind == 2:
        return (((yy + phase) // period + (xx + phase) // period) % 2).astype(float)
    if kind == 3:
        return (((yy + xx + phase) % period) < period / 2).astype(float)
    if kind == 4:
        return 0.5 + 0.5 * np.sin((yy - xx + phase) / period * 2 * np.pi)
    return (((yy + phase) % period) < period / 2).astype(float)


def _background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth two-colour gradient (float (H, W, 3))."""
    yy, xx = np.mgrid[:height, :width].astype(float)
    c0, c1 = rng.uniform(60, 200, 3), rng.uniform(60, 200, 3)
    t = (np.cos(rng.uniform(0, np.pi)) * yy / height + np.sin(rng.uniform(0, np.pi)) * xx / width)
    t = (t - t.min()) / max(np.ptp(t), 1e-6)
    return c0 * (1 - t[..., None]) + c1 * t[..., None]


def _draw_shape(image: np.ndarray, kind: int, size: float, rng: np.random.Generator) -> np.ndarray:
    """Paints one shape of class ``kind`` (1..5) of radius ``size`` at a random centre into
    ``image`` (float (H, W, 3)); returns its region (bool (H, W))."""
    height, width = image.shape[:2]
    yy, xx = np.mgrid[:height, :width].astype(float)
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    dy, dx = yy - cy, xx - cx
    if kind == 1:
        region = dy ** 2 + dx ** 2 < size ** 2
    elif kind == 2:
        angle = rng.uniform(0, np.pi / 2)
        u, v = dx * np.cos(angle) + dy * np.sin(angle), -dx * np.sin(angle) + dy * np.cos(angle)
        region = (np.abs(u) < size) & (np.abs(v) < size * rng.uniform(0.5, 1.0))
    elif kind == 3:
        region = (dy < size / 2) & (dy > -size) & (np.abs(dx) < (dy + size) * 0.6)
    elif kind == 4:
        r = np.hypot(dy, dx)
        region = (r < size) & (r > size * 0.55)
    else:
        region = (np.abs(dy) < size * 0.35) & (np.abs(dx) < size * 1.2)
    hue = np.clip(np.array(_HUES[kind]) + rng.normal(0, 25, 3), 0, 255)
    pattern = _texture(kind, yy, xx, rng)[..., None]
    image[:] = np.where(region[..., None], hue * (0.6 + 0.4 * pattern), image)
    return region


def _finish(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    image = image + rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def generate_example(index: int, split: str = "train", seed: int = 0,
                     size_range: tuple[int, int] = (96, 160)) -> tuple[np.ndarray, np.ndarray]:
    """Returns (image uint8 (H, W, 3), mask uint8 (H, W)) with values in 0..len(CLASS_NAMES)-1."""
    rng = np.random.default_rng([seed, _SPLIT_OFFSETS[split] + index])
    height, width = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
    image = _background(height, width, rng)  # class 0
    mask = np.zeros((height, width), np.uint8)
    for _ in range(int(rng.integers(2, 6))):
        kind = int(rng.integers(1, len(CLASS_NAMES)))
        region = _draw_shape(image, kind, rng.uniform(0.1, 0.5) * min(height, width), rng)
        mask[region] = kind
    return _finish(image, rng), mask


# The classification set: the five shapes (segmentation classes 1..5), one per image.
CLASSIFICATION_CLASS_NAMES = CLASS_NAMES[1:]
_CLASSIFICATION_OFFSET = 3 << 20  # its images are never the segmentation set's


def generate_classification_example(index: int, split: str = "train", seed: int = 0,
                                    size_range: tuple[int, int] = (64, 96)) -> tuple[np.ndarray, int]:
    """Returns (image uint8 (H, W, 3), label in 0..4): one large shape of class ``label + 1``
    (a quarter to a half of the short side in radius), over up to two small shapes of other
    classes (a tenth to a sixth) drawn first, so that the label is the large shape."""
    rng = np.random.default_rng([seed, _CLASSIFICATION_OFFSET + _SPLIT_OFFSETS[split] + index])
    height, width = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
    label = int(rng.integers(len(CLASSIFICATION_CLASS_NAMES)))
    image = _background(height, width, rng)
    short = min(height, width)
    for _ in range(int(rng.integers(0, 3))):
        other = int(rng.integers(1, len(CLASSIFICATION_CLASS_NAMES)))  # any class but label
        _draw_shape(image, 1 + (label + other) % len(CLASSIFICATION_CLASS_NAMES),
                    rng.uniform(0.1, 1 / 6) * short, rng)
    _draw_shape(image, label + 1, rng.uniform(0.25, 0.5) * short, rng)
    return _finish(image, rng), label
