"""The 19 image corruptions of ImageNet-C (Hendrycks & Dietterich, ICLR 2019) as the
``imagecorruptions`` package (Michaelis et al., 2019) computes them, each image a pure
function of its random state.

``corrupt(image, name, severity, rng)`` -> uint8 (H, W, 3), equal to the package's
``corrupt(image, severity, corruption_name=name)`` when numpy's global random state starts
where ``rng`` does (tests/test_corruptions.py: every corruption and severity on scikit-image's
photographs, byte for byte). ``image_rng(seed, index, name, severity)`` is the random state of
one corrupted image, so a robustness table is reproducible and resumable and every image can
be corrupted in any thread in any order.

Why not call the package: it draws from numpy's *global* random state (one stream shared by
every thread of an input pipeline, so an image's corruption would depend on the others'
timing), and as released (1.1.2) it no longer runs on current libraries: it imports
``pkg_resources`` (gone from setuptools 81), uses ``np.float_`` (gone from numpy 2) in fog
and scikit-image's ``multichannel=`` (gone from 0.19) in three blurs, and its impulse noise
is drawn by scikit-image from an unseeded generator. Here every draw comes from the one
``np.random.RandomState`` given, in the package's order, with the same legacy (MT19937)
algorithms, so the draws are the package's. The frost textures are the package's own image
files, read from where it is installed (``pip install 'segformer_jax[robustness]'``).

Labels are never corrupted: the geometric corruptions (elastic transform, zoom blur) move
image content and leave the label map as it is, as the package and ImageNet-C do.
"""

from __future__ import annotations

import importlib.util
import io
import math
import pathlib
from collections.abc import Callable

import numpy as np

# imagecorruptions' order (``get_corruption_names('all')``): the 15 ImageNet-C benchmark
# corruptions, then its 4 "validation" ones.
COMMON = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
          "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
          "elastic_transform", "pixelate", "jpeg_compression")
EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL = COMMON + EXTRA
# The SegFormer paper's 16 (Table 5, Cityscapes-C after Kamann & Rother, CVPR 2020): all but
# zoom blur, elastic transform and pixelate; its noise columns average severities 1-3 only.
PAPER = ("motion_blur", "defocus_blur", "glass_blur", "gaussian_blur",
         "gaussian_noise", "impulse_noise", "shot_noise", "speckle_noise",
         "brightness", "contrast", "saturate", "jpeg_compression",
         "snow", "spatter", "fog", "frost")
# ImageNet-C's families (the package's 'noise', 'blur', 'weather', 'digital' subsets), each
# with the validation corruption of its kind.
FAMILIES = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "gaussian_blur"),
    "weather": ("snow", "frost", "fog", "brightness", "spatter"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression", "saturate"),
}
FAMILY = {name: family for family, names in FAMILIES.items() for name in names}
SEVERITIES = (1, 2, 3, 4, 5)
MIN_SIDE = 32   # the package refuses smaller images (its kernels and fractals need room)


def image_rng(seed: int, index: int, name: str, severity: int) -> np.random.RandomState:
    """The random state of image ``index`` under (``name``, ``severity``): a legacy MT19937
    stream (the algorithms the package's draws use) keyed by all four through SeedSequence."""
    key = np.random.SeedSequence([int(seed), int(index), ALL.index(name), int(severity)])
    return np.random.RandomState(np.random.MT19937(key))


# ----------------------------------------------------------------------------- helpers


def _gaussian(x: np.ndarray, sigma, *, mode: str = "nearest", truncate: float = 4.0,
              channels: bool = False) -> np.ndarray:
    """scikit-image's ``filters.gaussian`` (what the package calls), which is this scipy
    filter with the channel axis unblurred."""
    from scipy import ndimage
    if channels:
        sigma = (sigma, sigma, 0)
    return ndimage.gaussian_filter(x, sigma, mode=mode, truncate=truncate)


def _clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """The centre ``1 / factor`` of ``x`` magnified ``factor`` times (linear interpolation);
    at least as large as ``x``."""
    from scipy import ndimage
    h, w = x.shape[:2]
    ch, cw = int(np.ceil(h / float(factor))), int(np.ceil(w / float(factor)))
    top, left = (h - ch) // 2, (w - cw) // 2
    return ndimage.zoom(x[top:top + ch, left:left + cw], (factor, factor, 1), order=1)


def _shift_axis(x: np.ndarray, d: int, axis: int) -> np.ndarray:
    """``x`` moved by ``d`` along ``axis``, the uncovered border filled with the edge values
    (slices, not a gather: a copy at memory speed)."""
    if d == 0:
        return x
    n = x.shape[axis]
    out = np.empty_like(x)

    def at(a: int, b: int) -> tuple[slice, ...]:
        return (slice(None),) * axis + (slice(a, b),)

    if d > 0:
        out[at(d, n)], out[at(0, d)] = x[at(0, n - d)], x[at(0, 1)]
    else:
        out[at(0, n + d)], out[at(n + d, n)] = x[at(-d, n)], x[at(n - 1, n)]
    return out


def _edge_shift(x: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """``x`` moved by (dx, dy) pixels, the uncovered border filled with the edge pixels."""
    return _shift_axis(_shift_axis(x, dx, 1), dy, 0)


def _motion_blur(x: np.ndarray, radius: int, sigma: float, angle: float) -> np.ndarray:
    """A one-sided Gaussian streak of ``2 radius + 1`` taps along ``angle`` (degrees): the
    package's replacement of ImageNet-C's ImageMagick motion blur."""
    width = 2 * radius + 1
    taps = np.exp(-np.arange(width) ** 2 / (2 * sigma ** 2)) / (np.sqrt(2 * np.pi) * sigma)
    taps = taps / np.sum(taps)
    along = (width * np.sin(np.deg2rad(angle)), width * np.cos(np.deg2rad(angle)))
    length = math.hypot(*along)
    out = np.zeros_like(x, dtype=np.float32)
    for i in range(width):
        dy = -math.ceil(i * along[0] / length - 0.5)
        dx = -math.ceil(i * along[1] / length - 0.5)
        if abs(dy) >= x.shape[0] or abs(dx) >= x.shape[1]:
            break  # the streak has left the image
        out = out + taps[i] * _edge_shift(x, dx, dy)
    return out


def _plasma_fractal(size: int, decay: float, rng: np.random.RandomState) -> np.ndarray:
    """A (size, size) diamond-square height map in [0, 1] (``size`` a power of two), the
    noise added at each level shrinking by ``decay``."""
    height = np.empty((size, size), np.float64)
    height[0, 0] = 0
    step, wibble = size, 100.0

    def noisy_mean(total: np.ndarray) -> np.ndarray:
        return total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape)

    while step >= 2:
        half = step // 2
        corners = height[0:size:step, 0:size:step]
        square = corners + np.roll(corners, -1, axis=0)
        square += np.roll(square, -1, axis=1)
        height[half:size:step, half:size:step] = noisy_mean(square)
        centres = height[half:size:step, half:size:step]
        corners = height[0:size:step, 0:size:step]
        height[0:size:step, half:size:step] = noisy_mean(
            (centres + np.roll(centres, 1, axis=0)) + (corners + np.roll(corners, -1, axis=1)))
        height[half:size:step, 0:size:step] = noisy_mean(
            (centres + np.roll(centres, 1, axis=1)) + (corners + np.roll(corners, -1, axis=0)))
        step //= 2
        wibble /= decay
    height -= height.min()
    return height / height.max()


def _disk(radius: int, alias_blur: float) -> np.ndarray:
    """A normalised disk kernel, anti-aliased by a small Gaussian (defocus blur)."""
    import cv2
    span = np.arange(-8, 8 + 1) if radius <= 8 else np.arange(-radius, radius + 1)
    xx, yy = np.meshgrid(span, span)
    disk = np.array(xx ** 2 + yy ** 2 <= radius ** 2, dtype=np.float32)
    disk /= np.sum(disk)
    return cv2.GaussianBlur(disk, ksize=(3, 3) if radius <= 8 else (5, 5), sigmaX=alias_blur)


def _hsv_shift(x: np.ndarray, channel: int, scale: float, offset: float) -> np.ndarray:
    from skimage import color
    hsv = color.rgb2hsv(x)
    hsv[:, :, channel] = np.clip(hsv[:, :, channel] * scale + offset, 0, 1)
    return color.hsv2rgb(hsv)


def frost_dir() -> pathlib.Path:
    """The frost textures: the ``frost/`` folder of the installed ``imagecorruptions`` package
    (found without importing it)."""
    spec = importlib.util.find_spec("imagecorruptions")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the frost corruption reads ImageNet-C's frost textures from the "
                          "imagecorruptions package: pip install 'segformer_jax[robustness]'")
    return pathlib.Path(next(iter(spec.submodule_search_locations))) / "frost"


FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")  # (6 unused)


# ----------------------------------------------------------------------------- corruptions
# Each takes the uint8 (H, W, 3) image, the severity (1..5) and the random state, and returns
# values in [0, 255] (float, or uint8) that ``corrupt`` truncates to uint8 as the package does.


def gaussian_noise(x, severity, rng):
    scale = (.08, .12, .18, .26, .38)[severity - 1]
    x = x / 255.
    return np.clip(x + rng.normal(size=x.shape, scale=scale), 0, 1) * 255


def shot_noise(x, severity, rng):
    photons = (60, 25, 12, 5, 3)[severity - 1]
    x = x / 255.
    return np.clip(rng.poisson(x * photons) / float(photons), 0, 1) * 255


def impulse_noise(x, severity, rng):
    """Salt and pepper on each channel value: scikit-image's ``random_noise(mode='s&p')``."""
    amount = (.03, .06, .09, .17, .27)[severity - 1]
    x = x / 255.
    flipped = rng.random_sample(x.shape) <= amount
    salted = rng.random_sample(x.shape) <= 0.5
    x[flipped & salted] = 1
    x[flipped & ~salted] = 0
    return np.clip(x, 0, 1) * 255


def speckle_noise(x, severity, rng):
    scale = (.15, .2, .35, .45, .6)[severity - 1]
    x = x / 255.
    return np.clip(x + x * rng.normal(size=x.shape, scale=scale), 0, 1) * 255


def gaussian_blur(x, severity, rng):
    sigma = (1, 2, 3, 4, 6)[severity - 1]
    return np.clip(_gaussian(x / 255., sigma, channels=True), 0, 1) * 255


def glass_blur(x, severity, rng):
    """Blur, then pixels locally scrambled, then blur again.

    The scramble is ImageNet-C's loop over pixels (bottom-right to top-left, ``iterations``
    times) that means to swap each pixel with a random neighbour but, numpy rows being views,
    copies the neighbour onto it; kept as it is (the benchmark's images are made so). It runs
    on a list of source indices, one Python step per pixel, instead of on pixel values.
    """
    sigma, delta, iterations = ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2),
                                (1.5, 4, 2))[severity - 1]
    x = np.uint8(_gaussian(x / 255., sigma, channels=True) * 255)
    h, w = x.shape[:2]
    rows, cols = np.arange(h - delta, delta, -1), np.arange(w - delta, delta, -1)
    here = (rows[:, None] * w + cols[None, :]).ravel()
    source = list(range(h * w))
    for _ in range(iterations):
        offsets = rng.randint(-delta, delta, size=(here.size, 2))  # (dx, dy) per pixel
        there = (here + offsets[:, 1] * w + offsets[:, 0]).tolist()
        for p, q in zip(here.tolist(), there):
            source[p] = source[q]
    x = x.reshape(h * w, -1)[source].reshape(h, w, -1)
    return np.clip(_gaussian(x / 255., sigma, channels=True), 0, 1) * 255


def defocus_blur(x, severity, rng):
    import cv2
    radius, alias_blur = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))[severity - 1]
    x = x / 255.
    kernel = _disk(radius, alias_blur)
    out = np.stack([cv2.filter2D(x[:, :, d], -1, kernel) for d in range(3)], axis=-1)
    return np.clip(out, 0, 1) * 255


def motion_blur(x, severity, rng):
    radius, sigma = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))[severity - 1]
    return np.clip(_motion_blur(x, radius, sigma, rng.uniform(-45, 45)), 0, 255)


def zoom_blur(x, severity, rng):
    factors = (np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01), np.arange(1, 1.21, 0.02),
               np.arange(1, 1.26, 0.02), np.arange(1, 1.31, 0.03))[severity - 1]
    x = (x / 255.).astype(np.float32)
    h, w = x.shape[:2]
    out = np.zeros_like(x)
    for factor in factors:
        out += _clipped_zoom(x, factor)[:h, :w]
    return np.clip((x + out) / (len(factors) + 1), 0, 1) * 255


def snow(x, severity, rng):
    import cv2
    mean, std, zoom, threshold, radius, sigma, keep = (
        (0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
        (0.55, 0.3, 4, 0.9, 12, 8, 0.7), (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
        (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55))[severity - 1]
    x = np.array(x, dtype=np.float32) / 255.
    h, w = x.shape[:2]
    flakes = rng.normal(size=(h, w), loc=mean, scale=std)
    flakes = _clipped_zoom(flakes[..., np.newaxis], zoom)
    flakes[flakes < threshold] = 0
    flakes = _motion_blur(np.clip(flakes.squeeze(), 0, 1), radius, sigma, rng.uniform(-135, -45))
    flakes = (np.round(flakes * 255).astype(np.uint8) / 255.)[:h, :w, np.newaxis]
    gray = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).reshape(h, w, 1)
    x = keep * x + (1 - keep) * np.maximum(x, gray * 1.5 + 0.5)
    return np.clip(x + flakes + np.rot90(flakes, k=2), 0, 1) * 255


def frost(x, severity, rng):
    """A random crop of one of ImageNet-C's frost photographs, blended over the image."""
    import cv2
    keep, amount = ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))[severity - 1]
    path = frost_dir() / FROST_FILES[rng.randint(5)]
    texture = cv2.imread(str(path))
    if texture is None:
        raise OSError(f"{path}: cannot read the frost texture")
    th, tw = texture.shape[:2]
    h, w = x.shape[:2]
    factor = max(1, h / th if th < h else 1, w / tw if tw < w else 1) * 1.1
    texture = cv2.resize(texture, dsize=(int(np.ceil(tw * factor)), int(np.ceil(th * factor))),
                         interpolation=cv2.INTER_CUBIC)
    top = rng.randint(0, texture.shape[0] - h)
    left = rng.randint(0, texture.shape[1] - w)
    texture = texture[top:top + h, left:left + w][..., [2, 1, 0]]
    return np.clip(keep * np.array(x) + amount * texture, 0, 255)


def fog(x, severity, rng):
    strength, decay = ((1.5, 2), (2., 2), (2.5, 1.7), (2.5, 1.5), (3., 1.4))[severity - 1]
    h, w = x.shape[:2]
    size = 1 << (max(x.shape) - 1).bit_length()
    x = x / 255.
    peak = x.max()
    x += strength * _plasma_fractal(size, decay, rng)[:h, :w][..., np.newaxis]
    return np.clip(x * peak / (peak + strength), 0, 1) * 255


def brightness(x, severity, rng):
    return np.clip(_hsv_shift(x / 255., 2, 1, (.1, .2, .3, .4, .5)[severity - 1]), 0, 1) * 255


def saturate(x, severity, rng):
    scale, offset = ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2))[severity - 1]
    return np.clip(_hsv_shift(x / 255., 1, scale, offset), 0, 1) * 255


def contrast(x, severity, rng):
    factor = (0.4, .3, .2, .1, .05)[severity - 1]
    x = x / 255.
    means = np.mean(x, axis=(0, 1), keepdims=True)
    return np.clip((x - means) * factor + means, 0, 1) * 255


def elastic_transform(x, severity, rng):
    """Pixels moved along a smooth random displacement field (bilinear, reflected edges)."""
    from scipy import ndimage
    x = np.array(x, dtype=np.float32) / 255.
    h, w, c = x.shape
    sigma = np.array((h, w)) * 0.01
    alpha = (250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12)[severity - 1]
    reach = h * 0.005  # both directions scale with the height, as in the package

    def field() -> np.ndarray:
        noise = rng.uniform(-reach, reach, size=(h, w))
        return (_gaussian(noise, sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)

    dx = field()[..., np.newaxis]
    dy = field()[..., np.newaxis]
    cols, rows, chans = np.meshgrid(np.arange(w), np.arange(h), np.arange(c))
    where = np.stack([(rows + dy).ravel(), (cols + dx).ravel(), chans.ravel()])
    moved = ndimage.map_coordinates(x, where, order=1, mode="reflect").reshape(x.shape)
    return np.clip(moved, 0, 1) * 255


def pixelate(x, severity, rng):
    from PIL import Image
    factor = (0.6, 0.5, 0.4, 0.3, 0.25)[severity - 1]
    h, w = x.shape[:2]
    small = Image.fromarray(x).resize((int(w * factor), int(h * factor)), Image.BOX)
    return np.asarray(small.resize((w, h), Image.NEAREST))


def jpeg_compression(x, severity, rng):
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(x).save(buffer, "JPEG", quality=(25, 18, 15, 10, 7)[severity - 1])
    return np.asarray(Image.open(buffer))


def spatter(x, severity, rng):
    """Water drops (severities 1-3) or mud (4-5) on the lens."""
    import cv2
    mean, std, sigma, threshold, intensity, mud = (
        (0.65, 0.3, 4, 0.69, 0.6, 0), (0.65, 0.3, 3, 0.68, 0.6, 0), (0.65, 0.3, 2, 0.68, 0.5, 0),
        (0.65, 0.3, 1, 0.65, 1.5, 1), (0.67, 0.4, 1, 0.65, 1.5, 1))[severity - 1]
    rgb = x
    x = np.array(x, dtype=np.float32) / 255.
    liquid = _gaussian(rng.normal(size=x.shape[:2], loc=mean, scale=std), sigma)
    liquid[liquid < threshold] = 0
    if not mud:
        liquid = (liquid * 255).astype(np.uint8)
        dist = cv2.distanceTransform(255 - cv2.Canny(liquid, 50, 150), cv2.DIST_L2, 5)
        _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
        dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
        dist = cv2.filter2D(dist, cv2.CV_8U, np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]))
        dist = cv2.blur(dist, (3, 3)).astype(np.float32)
        drops = cv2.cvtColor(liquid * dist, cv2.COLOR_GRAY2BGRA)
        drops /= np.max(drops, axis=(0, 1))
        drops *= intensity
        ones = np.ones_like(drops[..., :1])
        water = cv2.cvtColor(np.concatenate([175 / 255. * ones, 238 / 255. * ones, 238 / 255. * ones],
                                            axis=2), cv2.COLOR_BGR2BGRA)  # pale turquoise
        x = cv2.cvtColor(x, cv2.COLOR_BGR2BGRA)
        return cv2.cvtColor(np.clip(x + drops * water, 0, 1), cv2.COLOR_BGRA2BGR) * 255
    mask = _gaussian(np.where(liquid > threshold, 1, 0).astype(np.float32), intensity)
    mask[mask < 0.8] = 0
    ones = np.ones_like(rgb[..., :1])
    mud_colour = np.concatenate([63 / 255. * ones, 42 / 255. * ones, 20 / 255. * ones], axis=2)
    mud_colour *= mask[..., np.newaxis]
    x *= 1 - mask[..., np.newaxis]
    return np.clip(x + mud_colour, 0, 1) * 255


CORRUPTIONS: dict[str, Callable[[np.ndarray, int, np.random.RandomState], np.ndarray]] = {
    name: globals()[name] for name in ALL}


def corrupt(image: np.ndarray, name: str, severity: int, rng: np.random.RandomState) -> np.ndarray:
    """``image`` (uint8 (H, W, 3), both sides >= 32) under corruption ``name`` at
    ``severity`` (1-5), drawing from ``rng``: uint8 (H, W, 3)."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose from {', '.join(ALL)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be 1, 2, 3, 4 or 5; got {severity!r}")
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image; got {image.dtype} {image.shape}")
    if min(image.shape[:2]) < MIN_SIDE:
        raise ValueError(f"corruptions need images of at least {MIN_SIDE}x{MIN_SIDE} pixels; "
                         f"got {image.shape[1]}x{image.shape[0]}")
    return np.uint8(CORRUPTIONS[name](image, severity, rng))
