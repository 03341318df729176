"""The semantic segmentation loss, as transformers and mmseg compute it.

Logits come at 1/4 resolution and are upsampled (bilinear, ``align_corners=False``) to the
label size before the loss, as in both references.

``upsampled_cross_entropy`` computes that upsampling and the softmax cross-entropy together,
with a hand-written backward pass, a band of output rows at a time. Written the plain way
(resize, ``log_softmax``, pick the label), XLA:CPU materialises the full-resolution
150-class logits, their softmax and gradient (each 2 × 512² × 150 floats, 300 MiB, at
batch 2), and the transposes of the gathers become scatters: 0.8 s of a B0 step. Band by
band the rows stay in cache and the gradient is softmax − one-hot, sent back through the
resize's transposed gathers: 0.3 s, equal to the plain form to float32 rounding (tested).
On accelerators, whose kernels want large arrays, the whole image is one band.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from segformer_jax.constants import IGNORE_INDEX
from segformer_jax.models import ops

BAND_FLOATS = 1 << 20  # XLA:CPU: ~4 MiB of upsampled logits per band, a few bands in L2/L3


def band_rows(batch: int, height: int, width: int, classes: int, backend: str | None = None) -> int:
    """Output rows per band: about ``BAND_FLOATS`` upsampled logits on CPU, all rows elsewhere."""
    if (backend or jax.default_backend()) != "cpu":
        return height
    return int(np.clip(BAND_FLOATS // max(batch * width * classes, 1), 1, height))


def _row_taps(in_h: int, out_h: int, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``ops.lerp_taps`` along the height, cut into bands of ``rows`` (the last band padded)."""
    lo, hi, frac = ops.lerp_taps(in_h, out_h)
    bands = -(-out_h // rows)
    pad = bands * rows - out_h
    return tuple(np.pad(t, (0, pad), mode="edge").reshape(bands, rows) for t in (lo, hi, frac))


def _bands(x: jax.Array, rows: int, fill: float | int) -> jax.Array:
    """(N, H, W) → (bands, N, rows, W), the last band padded with ``fill``."""
    n, h, w = x.shape
    bands = -(-h // rows)
    x = jnp.pad(x, ((0, 0), (0, bands * rows - h), (0, 0)), constant_values=fill)
    return jnp.moveaxis(x.reshape(n, bands, rows, w), 1, 0)


def _band_logits(logits: jax.Array, lo: jax.Array, hi: jax.Array, frac: jax.Array,
                 width: int) -> jax.Array:
    """One band of the upsampled logits: its rows' two taps along the height, then the width."""
    f = frac[None, :, None, None]
    rows = jnp.take(logits, lo, axis=1) * (1 - f) + jnp.take(logits, hi, axis=1) * f
    return ops.resize_axis(rows, 2, width)


def _valid(labels: jax.Array, classes: int) -> jax.Array:
    return (labels >= 0) & (labels < classes)


def _forward(logits: jax.Array, labels: jax.Array, rows: int):
    n, in_h, _, classes = logits.shape
    _, out_h, out_w = labels.shape
    taps = _row_taps(in_h, out_h, rows)

    def band(xs):
        lo, hi, frac, label = xs
        z = _band_logits(logits, lo, hi, frac, out_w)
        top = jnp.max(z, axis=-1, keepdims=True)
        lse = (top + jnp.log(jnp.sum(jnp.exp(z - top), axis=-1, keepdims=True)))[..., 0]
        valid = _valid(label, classes)
        picked = jnp.take_along_axis(z, jnp.where(valid, label, 0)[..., None], axis=-1)[..., 0]
        return jnp.where(valid, lse - picked, 0.0), lse

    losses, lse = jax.lax.map(band, (*taps, _bands(labels, rows, -1)))
    losses = jnp.moveaxis(losses, 0, 1).reshape(n, -1, out_w)[:, :out_h]
    return losses, (logits, labels, lse)


def _backward(rows: int, residuals, g: jax.Array):
    logits, labels, lse = residuals
    _, in_h, in_w, classes = logits.shape
    _, out_h, out_w = labels.shape
    class_ids = jnp.arange(classes, dtype=labels.dtype)

    def band(grad, xs):
        lo, hi, frac, label, band_lse, band_g = xs
        z = _band_logits(logits, lo, hi, frac, out_w)
        scale = jnp.where(_valid(label, classes), band_g, 0.0)[..., None]
        dz = (jnp.exp(z - band_lse[..., None]) - (class_ids == label[..., None])) * scale
        d_rows = ops.resize_axis_transpose(dz, 2, in_w)
        f = frac[None, :, None, None]
        return grad.at[:, lo].add(d_rows * (1 - f)).at[:, hi].add(d_rows * f), None

    xs = (*_row_taps(in_h, out_h, rows), _bands(labels, rows, -1), lse,
          _bands(g.astype(jnp.float32), rows, 0.0))
    grad, _ = jax.lax.scan(band, jnp.zeros_like(logits), xs)
    return grad, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _upsampled_cross_entropy(logits: jax.Array, labels: jax.Array, rows: int) -> jax.Array:
    return _forward(logits, labels, rows)[0]


_upsampled_cross_entropy.defvjp(_forward, _backward)


def upsampled_cross_entropy(logits: jax.Array, labels: jax.Array,
                            rows: int | None = None) -> jax.Array:
    """Per-pixel softmax cross-entropy of float32 NHWC ``logits`` upsampled (bilinear, as
    ``ops.resize_bilinear``) to the (N, H, W) ``labels``: float32 (N, H, W), 0 where a label
    is outside [0, classes) (the ignore index). ``rows``: output rows per band (default
    ``band_rows``)."""
    n, _, _, classes = logits.shape
    rows = rows or band_rows(n, labels.shape[1], labels.shape[2], classes)
    return _upsampled_cross_entropy(logits.astype(jnp.float32), labels.astype(jnp.int32), int(rows))


def segmentation_loss(logits: jax.Array, labels: jax.Array, ignore_index: int = IGNORE_INDEX,
                      reduction: str = "valid") -> jax.Array:
    """Cross-entropy of NHWC ``logits`` against (N, H, W) integer ``labels``.

    reduction="valid": mean over non-ignored pixels (transformers' ``CrossEntropyLoss``).
    reduction="all":   mean over all pixels, ignored ones counting 0 (mmseg 0.x, NVlabs).
    With one label (binary segmentation) it is transformers' BCE-with-logits on the single
    channel, masked by valid pixels and averaged over all pixels.
    """
    if reduction not in ("valid", "all"):
        raise ValueError(f"reduction must be 'valid' or 'all'; got {reduction!r}")
    valid = labels != ignore_index
    if logits.shape[-1] == 1:
        logits = ops.resize_bilinear(logits.astype(jnp.float32), labels.shape[1:3])
        valid = valid & (labels >= 0)
        target = jnp.where(valid, labels, 0).astype(jnp.float32)
        losses = optax.sigmoid_binary_cross_entropy(logits[..., 0], target)
        return jnp.sum(jnp.where(valid, losses, 0.0)) / labels.size
    losses = upsampled_cross_entropy(logits, jnp.where(valid, labels, -1))
    total = jnp.sum(losses)
    if reduction == "all":
        return total / labels.size
    return total / jnp.maximum(jnp.sum(valid), 1)
