"""Array operations SegFormer needs, written for XLA rather than taken from a library.

* ``resize_bilinear`` equals PyTorch ``F.interpolate(mode="bilinear", align_corners=False)``
  (no antialiasing) for up- and down-sampling. ``jax.image.resize`` only agrees with it when
  called with ``antialias=False``, and it builds dense weight matrices that are slow on CPU;
  here each axis is two gathers and a lerp with indices computed once in numpy.
* ``depthwise_conv3x3`` is nine shifted multiply-adds: XLA:CPU's grouped convolution is
  about 30× slower than this fused loop.

Each op keeps its alternative forms side by side, all equal to float32 rounding (tested):
the forms tuned for XLA:CPU (gathers, shifted adds) are not what an MXU or tensor cores
want. ``resize_bilinear(..., form="matmul")`` multiplies by two small dense interpolation
matrices; ``depthwise_conv3x3(..., form="conv")`` is ``lax.conv_general_dilated`` with
``feature_group_count``. ``python -m experiments.ops_benchmark`` times every form, forward
and backward, on the backend it runs on; the defaults are the CPU forms.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=256)
def _lerp_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of torch's ``align_corners=False`` bilinear along one axis."""
    # float32 arithmetic, as torch's CPU kernel computes the source coordinates.
    scale = np.float32(in_size) / np.float32(out_size)
    src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    lo = np.minimum(np.floor(src).astype(np.int32), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = (src - lo.astype(np.float32)).astype(np.float32)
    return lo, hi, frac


def _resize_axis(x: jax.Array, axis: int, out_size: int) -> jax.Array:
    in_size = x.shape[axis]
    if in_size == out_size:
        return x
    xp = np if isinstance(x, np.ndarray) else jnp
    lo, hi, frac = _lerp_taps(in_size, out_size)
    shape = [1] * x.ndim
    shape[axis] = out_size
    frac = xp.asarray(frac.reshape(shape), dtype=x.dtype)
    a = xp.take(x, lo, axis=axis)
    b = xp.take(x, hi, axis=axis)
    return a * (1 - frac) + b * frac


@functools.lru_cache(maxsize=256)
def interpolation_matrix(in_size: int, out_size: int) -> np.ndarray:
    """The (out, in) float32 matrix of ``_lerp_taps``: row j holds 1 - frac at lo[j] and
    frac at hi[j] (one 1.0 where they coincide at the border)."""
    lo, hi, frac = _lerp_taps(in_size, out_size)
    matrix = np.zeros((out_size, in_size), np.float32)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, lo), np.float32(1) - frac)
    np.add.at(matrix, (rows, hi), frac)
    return matrix


def _resize_axis_matmul(x: jax.Array, axis: int, out_size: int) -> jax.Array:
    in_size = x.shape[axis]
    if in_size == out_size:
        return x
    matrix = jnp.asarray(interpolation_matrix(in_size, out_size), dtype=x.dtype)
    moved = jnp.moveaxis(x, axis, -1)
    out = jnp.matmul(moved, matrix.T, precision=jax.lax.Precision.HIGHEST)
    return jnp.moveaxis(out, -1, axis)


RESIZE_FORMS = ("gather", "matmul")
CONV_FORMS = ("shifted", "conv")


def resize_bilinear(x: jax.Array, size: tuple[int, int], form: str = "gather") -> jax.Array:
    """Resizes the spatial axes of an NHWC array to ``size`` = (height, width).

    ``form="gather"``: two gathers and a lerp per axis (the default; fast on XLA:CPU).
    ``form="matmul"``: a dense (out, in) interpolation matrix per axis, the form matrix
    units want. A numpy array is resized in numpy (gather form, same arithmetic): evaluation
    resizes logits to each image's original size on the host, where a jitted resize would
    compile once per size.
    """
    if form not in RESIZE_FORMS:
        raise ValueError(f"resize form must be one of {RESIZE_FORMS}; got {form!r}")
    axis_fn = _resize_axis_matmul if form == "matmul" and not isinstance(x, np.ndarray) \
        else _resize_axis
    x = axis_fn(x, 1, int(size[0]))
    return axis_fn(x, 2, int(size[1]))


def depthwise_conv3x3(x: jax.Array, kernel: jax.Array, bias: jax.Array,
                      form: str = "shifted") -> jax.Array:
    """3×3 depthwise convolution, stride 1, zero padding 1, of an NHWC array.

    ``kernel`` has shape (3, 3, C) and is applied as a cross-correlation, like torch's Conv2d.
    ``form="shifted"``: nine shifted multiply-adds (the default; fast on XLA:CPU);
    ``form="conv"``: ``lax.conv_general_dilated`` with one group per channel.
    """
    if form not in CONV_FORMS:
        raise ValueError(f"depthwise conv form must be one of {CONV_FORMS}; got {form!r}")
    if form == "conv":
        channels = x.shape[-1]
        out = jax.lax.conv_general_dilated(
            x, kernel.reshape(3, 3, 1, channels).astype(x.dtype), window_strides=(1, 1),
            padding=((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=channels, precision=jax.lax.Precision.HIGHEST)
        return out + bias
    _, h, w, _ = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = padded[:, 0:h, 0:w, :] * kernel[0, 0]
    for dy in range(3):
        for dx in range(3):
            if dy or dx:
                out = out + padded[:, dy:dy + h, dx:dx + w, :] * kernel[dy, dx]
    return out + bias
