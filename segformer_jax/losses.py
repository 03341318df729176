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
That banded form (``"banded"``) is the CPU form set's (``ops.FORM_SETS``). The XLA form
set's (``"xla"``) is the plain one written for GPU and TPU compilers: the logits upsampled
by ``ops.resize_bilinear(form="xla")``, ``logsumexp`` minus the label's logit picked by a
comparison (no gather), differentiated by JAX: no loop, scatter or gather in the program.
Every loss below takes ``forms``, the form set by name ("auto": the backend's).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from segformer_jax.constants import IGNORE_INDEX
from segformer_jax.models import ops

BAND_FLOATS = 1 << 20  # XLA:CPU: ~4 MiB of upsampled logits per band, a few bands in L2/L3
LOSS_FORMS = ("banded", "xla")


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
                            rows: int | None = None, forms: str = "auto") -> jax.Array:
    """Per-pixel softmax cross-entropy of float32 NHWC ``logits`` upsampled (bilinear, as
    ``ops.resize_bilinear``) to the (N, H, W) ``labels``: float32 (N, H, W), 0 where a label
    is outside [0, classes) (the ignore index). ``rows``: output rows per band of the banded
    form (default ``band_rows``); ``forms``: the form set (``ops.FORM_SETS``)."""
    logits, labels = logits.astype(jnp.float32), labels.astype(jnp.int32)
    if ops.form_set(forms)["loss"] == "xla":
        return _plain_cross_entropy(logits, labels)
    n, _, _, classes = logits.shape
    rows = rows or band_rows(n, labels.shape[1], labels.shape[2], classes)
    return _upsampled_cross_entropy(logits, labels, int(rows))


def _plain_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """The XLA form: upsample, ``logsumexp``, and the label's logit picked by comparing
    with the class ids (a gather's transpose would be a scatter-add)."""
    z = ops.resize_bilinear(logits, labels.shape[1:3], form="xla")
    classes = z.shape[-1]
    picked = jnp.sum(jnp.where(labels[..., None] == jnp.arange(classes), z, 0.0), axis=-1)
    return jnp.where(_valid(labels, classes), jax.nn.logsumexp(z, axis=-1) - picked, 0.0)


def _class_weights(class_weight: tuple[float, ...], labels: jax.Array, forms: str) -> jax.Array:
    """Each pixel's class weight (labels in range): a gather in the CPU forms, a comparison
    in the XLA forms (the same numbers: one weight plus zeros)."""
    weights = jnp.asarray(class_weight, jnp.float32)
    if ops.form_set(forms)["loss"] == "xla":
        return jnp.sum(jnp.where(labels[..., None] == jnp.arange(len(class_weight)), weights, 0.0), axis=-1)
    return weights[labels]


def segmentation_loss(logits: jax.Array, labels: jax.Array, ignore_index: int = IGNORE_INDEX,
                      reduction: str = "valid", forms: str = "auto") -> jax.Array:
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
        logits = _upsampled(logits, labels, forms)
        valid = valid & (labels >= 0)
        target = jnp.where(valid, labels, 0).astype(jnp.float32)
        losses = optax.sigmoid_binary_cross_entropy(logits[..., 0], target)
        return jnp.sum(jnp.where(valid, losses, 0.0)) / labels.size
    losses = upsampled_cross_entropy(logits, jnp.where(valid, labels, -1), forms=forms)
    total = jnp.sum(losses)
    if reduction == "all":
        return total / labels.size
    return total / jnp.maximum(jnp.sum(valid), 1)


# --------------------------------------------------------------------------------------
# The losses a user's own data asks for (``config.loss``)
#
# Each takes the model's NHWC logits at 1/4 resolution and the (N, H, W) labels, ignores
# ``ignore_index`` (and any label outside [0, classes)) everywhere, and follows one public
# implementation's semantics, named in its docstring and checked against it in
# tests/test_losses.py. Cross-entropy and OHEM keep the fused upsampled cross-entropy
# above; focal, Dice and Lovász need every class's probability at every pixel, so they
# upsample the logits first (``ops.resize_bilinear``, its hand-written backward).

LOSS_NAMES = ("cross_entropy", "ohem", "focal", "dice", "lovasz")


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """``config.loss`` resolved: ``terms`` are (name, weight) pairs, summed."""

    terms: tuple[tuple[str, float], ...] = (("cross_entropy", 1.0),)
    class_weight: tuple[float, ...] | None = None   # cross-entropy and OHEM
    reduction: str = "valid"                         # cross-entropy: "valid" or "all"
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 100_000
    focal_gamma: float = 2.0
    focal_alpha: float | None = None
    dice_smooth: float = 0.0
    forms: str = "auto"                              # ops.FORM_SETS, the model's


def _valid_pixels(labels: jax.Array, classes: int, ignore_index: int) -> jax.Array:
    """The pixels every loss counts: a label in [0, classes) that is not ``ignore_index``."""
    return (labels != ignore_index) & _valid(labels, classes)


def _upsampled(logits: jax.Array, labels: jax.Array, forms: str = "auto") -> jax.Array:
    return ops.resize_bilinear(logits.astype(jnp.float32), labels.shape[1:3], ops.form_set(forms)["resize"])


def _pixel_cross_entropy(logits: jax.Array, labels: jax.Array, valid: jax.Array,
                         class_weight: tuple[float, ...] | None,
                         forms: str = "auto") -> tuple[jax.Array, jax.Array]:
    """(unweighted, weighted) per-pixel cross-entropy, 0 at invalid pixels."""
    ce = upsampled_cross_entropy(logits, jnp.where(valid, labels, -1), forms=forms)
    if class_weight is None:
        return ce, ce
    return ce, ce * _class_weights(class_weight, jnp.where(valid, labels, 0), forms)


def cross_entropy(logits: jax.Array, labels: jax.Array, ignore_index: int = IGNORE_INDEX,
                  reduction: str = "valid", class_weight: tuple[float, ...] | None = None,
                  forms: str = "auto") -> jax.Array:
    """Softmax cross-entropy, optionally class-weighted: each pixel's loss times its
    class's weight, summed, divided by (reduction="valid") the summed weights of the
    non-ignored pixels, as torch's ``F.cross_entropy(weight=..., ignore_index=...)`` and
    mmseg's ``CrossEntropyLoss(avg_non_ignore=True)``, which without weights is their
    count; or by the number of all pixels ("all", mmseg's default). (mmseg 1.2.2's
    class-weighted path fails when an ignored pixel is present, so torch is the oracle
    there.)"""
    classes = logits.shape[-1]
    valid = _valid_pixels(labels, classes, ignore_index)
    _, weighted = _pixel_cross_entropy(logits, labels, valid, class_weight, forms)
    if reduction == "all":
        return jnp.sum(weighted) / labels.size
    if class_weight is None:
        return jnp.sum(weighted) / jnp.maximum(jnp.sum(valid), 1)
    w = jnp.where(valid, _class_weights(class_weight, jnp.where(valid, labels, 0), forms), 0.0)
    return jnp.sum(weighted) / jnp.maximum(jnp.sum(w), 1e-12)


def ohem_cross_entropy(logits: jax.Array, labels: jax.Array, ignore_index: int = IGNORE_INDEX,
                       thresh: float = 0.7, min_kept: int = 100_000,
                       class_weight: tuple[float, ...] | None = None, forms: str = "auto") -> jax.Array:
    """Online hard example mining, as mmseg's ``OhemCrossEntropy`` (from PIDNet): the
    softmax probability of each valid pixel's label, sorted; the threshold is the larger
    of ``thresh`` and the ``min_kept``-th smallest probability (over the whole batch); the
    mean (weighted) cross-entropy of the pixels whose probability is below it. Where
    mmseg's mean of no pixels is NaN (no valid pixel, or all tied), this is 0."""
    classes = logits.shape[-1]
    valid = _valid_pixels(labels, classes, ignore_index)
    ce, weighted = _pixel_cross_entropy(logits, labels, valid, class_weight, forms)
    prob = jnp.exp(-jax.lax.stop_gradient(ce))             # p(label) = exp(-CE)
    count = jnp.sum(valid)
    ordered = jnp.sort(jnp.where(valid, prob, jnp.inf).ravel())
    kth = ordered[jnp.clip(jnp.minimum(min_kept, count - 1), 0, None)]
    threshold = jnp.maximum(kth, thresh)
    kept = valid & (prob < threshold)
    return jnp.sum(jnp.where(kept, weighted, 0.0)) / jnp.maximum(jnp.sum(kept), 1)


def focal_loss(logits: jax.Array, labels: jax.Array, ignore_index: int = IGNORE_INDEX,
               gamma: float = 2.0, alpha: float | None = None, forms: str = "auto") -> jax.Array:
    """Focal loss (Lin et al. 2017) as segmentation_models_pytorch's ``FocalLoss`` in
    multiclass mode: for each class, the one-vs-rest sigmoid focal loss
    ``(1 - p_t)^gamma * BCE`` (times ``alpha`` / ``1 - alpha`` for positives / negatives
    when given) averaged over the valid pixels; then the mean over classes. (mmseg's
    ``FocalLoss`` is the same sigmoid form.)"""
    z = _upsampled(logits, labels, forms)
    classes = z.shape[-1]
    valid = _valid_pixels(labels, classes, ignore_index)
    target = jax.nn.one_hot(jnp.where(valid, labels, 0), classes, dtype=jnp.float32)
    bce = optax.sigmoid_binary_cross_entropy(z, target)
    loss = (1.0 - jnp.exp(-bce)) ** gamma * bce
    if alpha is not None:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    per_class = jnp.sum(jnp.where(valid[..., None], loss, 0.0), axis=(0, 1, 2))
    return jnp.mean(per_class / jnp.maximum(jnp.sum(valid), 1))


def dice_loss(logits: jax.Array, labels: jax.Array, ignore_index: int = IGNORE_INDEX,
              smooth: float = 0.0, eps: float = 1e-7, forms: str = "auto") -> jax.Array:
    """Soft Dice (Milletari et al. 2016, first powers) as segmentation_models_pytorch's
    ``DiceLoss`` in multiclass mode: softmax probabilities and one-hot labels, both zero at
    ignored pixels, summed over the batch and the pixels per class; ``1 - (2I + s) /
    (P + T + s)`` per class (the denominator at least ``eps``), 0 for a class absent from
    the labels; the mean over classes."""
    z = _upsampled(logits, labels, forms)
    classes = z.shape[-1]
    valid = _valid_pixels(labels, classes, ignore_index)[..., None]
    prob = jnp.where(valid, jax.nn.softmax(z, axis=-1), 0.0)
    target = jnp.where(valid, jax.nn.one_hot(jnp.where(valid[..., 0], labels, 0), classes), 0.0)
    intersection = jnp.sum(prob * target, axis=(0, 1, 2))
    prob_sum, target_sum = jnp.sum(prob, axis=(0, 1, 2)), jnp.sum(target, axis=(0, 1, 2))
    score = (intersection + smooth) / jnp.maximum(
        intersection + 0.5 * (prob_sum - intersection) + 0.5 * (target_sum - intersection)
        + smooth, eps)
    return jnp.mean(jnp.where(target_sum > 0, 1.0 - score, 0.0))


def _lovasz_grad(fg_sorted: jax.Array) -> jax.Array:
    """The Lovász extension's gradient of the Jaccard loss at sorted errors (Berman et al.
    2018, Algorithm 1)."""
    gts = jnp.sum(fg_sorted)
    intersection = gts - jnp.cumsum(fg_sorted)
    union = gts + jnp.cumsum(1.0 - fg_sorted)
    jaccard = 1.0 - intersection / union
    return jnp.concatenate([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def lovasz_softmax(logits: jax.Array, labels: jax.Array,
                   ignore_index: int = IGNORE_INDEX, forms: str = "auto") -> jax.Array:
    """Lovász-softmax (Berman et al. 2018) over the whole batch, as the authors' code and
    segmentation_models_pytorch's ``LovaszLoss`` (multiclass, ``per_image=False``,
    classes "present"): per class present in the labels, the errors ``|fg - p_c|`` of the
    valid pixels sorted in decreasing order, dotted with the Lovász gradient of the
    Jaccard loss; the mean over present classes (0 when none is). Its sort and the gathers
    of the sorted order stay in every form set: they are the loss."""
    z = _upsampled(logits, labels, forms)
    classes = z.shape[-1]
    valid = _valid_pixels(labels, classes, ignore_index).ravel()
    prob = jax.nn.softmax(z, axis=-1).reshape(-1, classes)
    flat = labels.ravel()

    def one_class(c: jax.Array) -> tuple[jax.Array, jax.Array]:
        fg = (valid & (flat == c)).astype(jnp.float32)
        errors = jnp.where(valid, jnp.abs(fg - prob[:, c]), 0.0)
        # Invalid pixels sort last (key -1 < any error); with error and fg 0 they add nothing.
        order = jnp.argsort(-jnp.where(valid, errors, -1.0))
        return jnp.dot(errors[order], _lovasz_grad(fg[order])), jnp.sum(fg) > 0

    losses, present = jax.lax.map(one_class, jnp.arange(classes))
    return jnp.sum(jnp.where(present, losses, 0.0)) / jnp.maximum(jnp.sum(present), 1)


def parse_terms(name: str, weights: tuple[float, ...] = ()) -> tuple[tuple[str, float], ...]:
    """``"cross_entropy"`` or ``"cross_entropy+dice"`` and their weights (default 1 each)."""
    names = tuple(part.strip() for part in name.split("+"))
    unknown = [n for n in names if n not in LOSS_NAMES]
    if unknown or not 1 <= len(names) <= 2:
        raise ValueError(f"loss.name must be one of {', '.join(LOSS_NAMES)} or two of them "
                         f"joined by '+'; got {name!r}")
    weights = tuple(float(w) for w in weights) or (1.0,) * len(names)
    if len(weights) != len(names):
        raise ValueError(f"loss.weights has {len(weights)} value(s) for the {len(names)} "
                         f"term(s) of loss.name={name!r}")
    return tuple(zip(names, weights))


def make_loss(settings: LossSettings, ignore_index: int = IGNORE_INDEX):
    """``(logits, labels) -> scalar``: the weighted sum of ``settings.terms``. One output
    channel (binary segmentation) takes ``segmentation_loss``'s BCE."""
    def one(name: str, logits: jax.Array, labels: jax.Array) -> jax.Array:
        forms = settings.forms
        if name == "cross_entropy":
            return cross_entropy(logits, labels, ignore_index, settings.reduction,
                                 settings.class_weight, forms)
        if name == "ohem":
            return ohem_cross_entropy(logits, labels, ignore_index, settings.ohem_thresh,
                                      settings.ohem_min_kept, settings.class_weight, forms)
        if name == "focal":
            return focal_loss(logits, labels, ignore_index, settings.focal_gamma,
                              settings.focal_alpha, forms)
        if name == "dice":
            return dice_loss(logits, labels, ignore_index, settings.dice_smooth, forms=forms)
        return lovasz_softmax(logits, labels, ignore_index, forms)

    def loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
        if logits.shape[-1] == 1:
            return segmentation_loss(logits, labels, ignore_index, settings.reduction, settings.forms)
        if len(settings.terms) == 1 and settings.terms[0][1] == 1.0:
            return one(settings.terms[0][0], logits, labels)
        return sum(w * one(name, logits, labels) for name, w in settings.terms)

    return loss


def median_frequency_weights(class_pixels: np.ndarray, image_pixels: np.ndarray) -> np.ndarray:
    """Median frequency balancing (Eigen & Fergus 2015): ``freq(c)`` = the pixels of class c
    / the pixels of the images where c appears; weight ``median(freq) / freq(c)``. A class
    that never appears gets weight 0 (it has no pixel to weigh)."""
    class_pixels = np.asarray(class_pixels, np.float64)
    image_pixels = np.asarray(image_pixels, np.float64)
    seen = (class_pixels > 0) & (image_pixels > 0)
    if not seen.any():
        raise ValueError("no labelled pixel: class frequencies are undefined")
    freq = np.where(seen, class_pixels / np.where(seen, image_pixels, 1), 0.0)
    return np.where(seen, np.median(freq[seen]) / np.where(seen, freq, 1), 0.0)
