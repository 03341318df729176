"""RandAugment as timm computes it (``timm/data/auto_augment.py``), for the recipe's
``rand-m9-mstd0.5-inc1``: two operations drawn uniformly with replacement from the 15
"increasing" ones, each applied with probability 0.5 at a magnitude ~ N(9, 0.5) clipped to
[0, 10], with a random sign for the signed ones; PIL does the pixels (bicubic, fill = the
ImageNet mean in uint8, (124, 116, 104)).

Written here rather than imported because timm is a PyTorch library (it imports torch and
torchvision) and this pipeline must not need either; the tests show equality with timm's
ops given the same draws, on photographs. Draws come from the pipeline's numpy
``Generator`` (timm uses Python's ``random`` and numpy's global state).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import numpy as np
import PIL.Image
import PIL.ImageEnhance
import PIL.ImageOps

from segformer_jax.constants import IMAGENET_MEAN

BICUBIC = PIL.Image.Resampling.BICUBIC
FILL = tuple(min(255, round(255 * m)) for m in IMAGENET_MEAN)  # timm's img_mean: (124, 116, 104)
LEVEL_DENOM = 10.0


def _affine(image: PIL.Image.Image, matrix: tuple[float, ...]) -> PIL.Image.Image:
    return image.transform(image.size, PIL.Image.Transform.AFFINE, matrix, resample=BICUBIC,
                           fillcolor=FILL)


def _solarize_add(image: PIL.Image.Image, add: int, thresh: int = 128) -> PIL.Image.Image:
    lut = [min(255, i + add) if i < thresh else i for i in range(256)]
    return image.point(lut * 3)


def _posterize(image: PIL.Image.Image, bits: int) -> PIL.Image.Image:
    """Keeps the top ``bits`` bits. Magnitude 10 (a clipped N(9, 0.5) gives it 2.3 % of the
    time) keeps 0 bits: black, as Pillow computed it when timm wrote this op; Pillow >= 10
    refuses ``bits=0``, and timm then raises."""
    if bits >= 8:
        return image
    if bits <= 0:
        return image.point([0] * 256 * len(image.getbands()))
    return PIL.ImageOps.posterize(image, bits)


def _enhance(kind: Callable) -> Callable:
    return lambda image, factor: kind(image).enhance(factor)


# name: (PIL function of (image, *args), level -> args given the sign, signed?)
OPS: dict[str, tuple[Callable, Callable[[float, float], tuple], bool]] = {
    "AutoContrast": (lambda im: PIL.ImageOps.autocontrast(im), lambda m, s: (), False),
    "Equalize": (lambda im: PIL.ImageOps.equalize(im), lambda m, s: (), False),
    "Invert": (lambda im: PIL.ImageOps.invert(im), lambda m, s: (), False),
    "Rotate": (lambda im, deg: im.rotate(deg, resample=BICUBIC, fillcolor=FILL),
               lambda m, s: (s * m / LEVEL_DENOM * 30.0,), True),
    "PosterizeIncreasing": (_posterize, lambda m, s: (4 - int(m / LEVEL_DENOM * 4),), False),
    "SolarizeIncreasing": (lambda im, t: PIL.ImageOps.solarize(im, t),
                           lambda m, s: (256 - min(256, int(m / LEVEL_DENOM * 256)),), False),
    "SolarizeAdd": (_solarize_add, lambda m, s: (min(128, int(m / LEVEL_DENOM * 110)),), False),
    "ColorIncreasing": (_enhance(PIL.ImageEnhance.Color),
                        lambda m, s: (max(0.1, 1.0 + s * m / LEVEL_DENOM * 0.9),), True),
    "ContrastIncreasing": (_enhance(PIL.ImageEnhance.Contrast),
                           lambda m, s: (max(0.1, 1.0 + s * m / LEVEL_DENOM * 0.9),), True),
    "BrightnessIncreasing": (_enhance(PIL.ImageEnhance.Brightness),
                             lambda m, s: (max(0.1, 1.0 + s * m / LEVEL_DENOM * 0.9),), True),
    "SharpnessIncreasing": (_enhance(PIL.ImageEnhance.Sharpness),
                            lambda m, s: (max(0.1, 1.0 + s * m / LEVEL_DENOM * 0.9),), True),
    "ShearX": (lambda im, f: _affine(im, (1, f, 0, 0, 1, 0)), lambda m, s: (s * m / LEVEL_DENOM * 0.3,), True),
    "ShearY": (lambda im, f: _affine(im, (1, 0, 0, f, 1, 0)), lambda m, s: (s * m / LEVEL_DENOM * 0.3,), True),
    "TranslateXRel": (lambda im, p: _affine(im, (1, 0, p * im.size[0], 0, 1, 0)),
                      lambda m, s: (s * m / LEVEL_DENOM * 0.45,), True),
    "TranslateYRel": (lambda im, p: _affine(im, (1, 0, 0, 0, 1, p * im.size[1])),
                      lambda m, s: (s * m / LEVEL_DENOM * 0.45,), True),
}
INCREASING = tuple(OPS)  # timm's _RAND_INCREASING_TRANSFORMS, in its order


def apply_op(image: PIL.Image.Image, name: str, magnitude: float, negative: bool = False) -> PIL.Image.Image:
    """Operation ``name`` at ``magnitude`` (0..10; ``negative``: the signed ones' minus)."""
    fn, level, _ = OPS[name]
    return fn(image, *level(magnitude, -1.0 if negative else 1.0))


@dataclasses.dataclass(frozen=True)
class RandAugment:
    magnitude: float = 9.0
    magnitude_std: float = 0.5
    num_layers: int = 2
    prob: float = 0.5

    @classmethod
    def from_string(cls, spec: str) -> RandAugment:
        """timm's config string: ``rand`` then ``-m<magnitude>``, ``-mstd<std>``, ``-n<layers>``
        and ``-inc1`` (the only op set here; ``inc0`` is refused)."""
        parts = spec.split("-")
        if parts[0] != "rand":
            raise ValueError(f"RandAugment config {spec!r} must start with 'rand'")
        values: dict[str, float] = {}
        for part in parts[1:]:
            match = re.fullmatch(r"([a-z]+)([0-9.]+)", part)
            if match is None or match.group(1) not in ("m", "mstd", "n", "inc"):
                raise ValueError(f"RandAugment config {spec!r}: cannot read {part!r} (known: m, mstd, n, inc)")
            values[match.group(1)] = float(match.group(2))
        if values.get("inc", 1.0) != 1.0:
            raise ValueError(f"RandAugment config {spec!r}: only the increasing op set (inc1) is implemented")
        return cls(magnitude=values.get("m", 10.0), magnitude_std=values.get("mstd", 0.0),
                   num_layers=int(values.get("n", 2)))

    def draws(self, rng: np.random.Generator) -> list[tuple[str, float, bool] | None]:
        """Per layer: None (skipped) or (op, magnitude, negative), drawn in timm's order:
        the ops first, then per op apply?, magnitude, sign."""
        chosen = rng.integers(0, len(INCREASING), self.num_layers)
        out: list[tuple[str, float, bool] | None] = []
        for index in chosen:
            name = INCREASING[int(index)]
            if self.prob < 1.0 and rng.random() > self.prob:
                out.append(None)
                continue
            magnitude = self.magnitude
            if self.magnitude_std > 0:
                magnitude = rng.normal(magnitude, self.magnitude_std)
            magnitude = max(0.0, min(float(magnitude), LEVEL_DENOM))
            negative = bool(OPS[name][2] and rng.random() > 0.5)
            out.append((name, magnitude, negative))
        return out

    def __call__(self, image: PIL.Image.Image, rng: np.random.Generator) -> PIL.Image.Image:
        for draw in self.draws(rng):
            if draw is not None:
                image = apply_op(image, *draw)
        return image
