"""Mixup and CutMix for classification batches, with label smoothing: timm's ``Mixup`` in
``mode="batch"`` (timm ``data/mixup.py``), computed inside the jitted train step.

One draw per (micro-)batch: with probability ``prob`` the batch is mixed; CutMix is chosen
with probability ``switch_prob`` (when both alphas are positive), else Mixup; lambda ~
Beta(alpha, alpha) of the chosen one. Every row is mixed with its partner in the reversed
batch (row i with row B-1-i):

* Mixup: ``x = lam · x + (1 - lam) · x[::-1]``;
* CutMix: the box of ``int(H·sqrt(1-lam))`` × ``int(W·sqrt(1-lam))`` pixels centred at a uniform
  pixel (clipped at the borders) is copied from the partner, and lam becomes the share of
  the image left (timm's ``correct_lam``);
* targets: ``lam · smooth(y) + (1 - lam) · smooth(y[::-1])`` with the smoothed one-hot
  ``smooth(y) = (1 - s + s/K)`` on class y and ``s/K`` elsewhere.

Why here and not in the input pipeline: partners are rows of the *global* batch, which no
single input process holds, and inside the step the draws are a function of (seed, step)
like every other random number of a run. timm draws per process (per GPU) instead, so its
partners come from the local batch; the distribution of what a row is mixed with is the same.

Nothing here is a loop in the step: lambda's Beta comes from two Gamma variates drawn by
Marsaglia and Tsang's method with a fixed number of proposals at once (``beta``; JAX's own
``jax.random.beta`` is a data-dependent rejection ``while`` loop, serial on an accelerator),
and the CutMix box's ``int(H·sqrt(1-lam))`` is decided exactly, as timm's float64 arithmetic
decides it (``cut_size``; float32 rounds it up for about 7 lambdas in a million).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

MIX_STREAM = 0x6D6978  # "mix": the mixing draws' key is fold_in(fold_in(key(seed), this), step)


@dataclasses.dataclass(frozen=True)
class MixupSettings:
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.1

    @property
    def active(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


class MixDraws(NamedTuple):
    """The random choices of one batch (jax scalars): whether it is mixed, whether by CutMix,
    Beta's lambda, and the CutMix box centre (row, column)."""

    mixed: jax.Array
    use_cutmix: jax.Array
    lam: jax.Array
    centre_y: jax.Array
    centre_x: jax.Array


def draw(key: jax.Array, settings: MixupSettings, height: int, width: int) -> MixDraws:
    """The choices timm's ``_params_per_batch`` and ``rand_bbox`` make, from ``key``."""
    k_apply, k_switch, k_mixup, k_cutmix, k_y, k_x = jax.random.split(key, 6)
    mixed = jax.random.uniform(k_apply) < settings.prob
    if settings.mixup_alpha > 0 and settings.cutmix_alpha > 0:
        use_cutmix = jax.random.uniform(k_switch) < settings.switch_prob
    else:
        use_cutmix = jnp.asarray(settings.cutmix_alpha > 0)
    lam_mixup = (beta(k_mixup, settings.mixup_alpha, settings.mixup_alpha)
                 if settings.mixup_alpha > 0 else jnp.float32(1))
    lam_cutmix = (beta(k_cutmix, settings.cutmix_alpha, settings.cutmix_alpha)
                  if settings.cutmix_alpha > 0 else jnp.float32(1))
    lam = jnp.where(use_cutmix, lam_cutmix, lam_mixup).astype(jnp.float32)
    return MixDraws(mixed, use_cutmix, lam, jax.random.randint(k_y, (), 0, height),
                    jax.random.randint(k_x, (), 0, width))


PROPOSALS = 32  # Marsaglia-Tsang proposals per Gamma draw; all rejected: p < 0.05**32


def gamma(key: jax.Array, shape: float) -> jax.Array:
    """One Gamma(``shape``, 1) variate, float32, without a loop: Marsaglia and Tsang's method
    (ACM TOMS 26(3), 2000) on ``PROPOSALS`` proposals at once, the first accepted one taken
    (a comparison, not a gather); for ``shape`` < 1 the draw of shape + 1 times U^(1/shape).
    Each proposal is accepted with probability above 0.95 for shape + 1 >= 1, so the chance
    that none is (then d, the mode's neighbourhood, is returned) is below 1e-40."""
    boost = shape < 1
    a = shape + 1.0 if boost else shape
    d = a - 1.0 / 3.0
    c = 1.0 / (9.0 * d) ** 0.5
    k_x, k_u, k_boost = jax.random.split(key, 3)
    x = jax.random.normal(k_x, (PROPOSALS,), jnp.float32)
    u = jax.random.uniform(k_u, (PROPOSALS,), jnp.float32)
    v = (1.0 + c * x) ** 3
    safe_v = jnp.where(v > 0, v, 1.0)
    accepted = (v > 0) & (jnp.log(u) < 0.5 * x * x + d - d * safe_v + d * jnp.log(safe_v))
    first = accepted & (jnp.cumsum(accepted.astype(jnp.int32)) == 1)
    g = jnp.where(jnp.any(accepted), jnp.sum(jnp.where(first, d * safe_v, 0.0)), jnp.float32(d))
    if boost:
        g = g * jax.random.uniform(k_boost, (), jnp.float32, minval=jnp.finfo(jnp.float32).tiny) ** (1.0 / shape)
    return g


def beta(key: jax.Array, a: float, b: float) -> jax.Array:
    """One Beta(a, b) variate, float32, without a loop: X / (X + Y) of two ``gamma`` draws."""
    k_a, k_b = jax.random.split(key)
    x, y = gamma(k_a, a), gamma(k_b, b)
    return x / (x + y)


def cut_size(lam: jax.Array, side: int) -> jax.Array:
    """``int(side * sqrt(1 - lam))`` as timm computes it in float64, for a float32 ``lam``
    and ``side`` <= 4096: the float32 estimate c, then c (or c ± 1) checked exactly by the
    sign of side²·(1 - lam) - c² = (side² - c²) - side²·lam, whose product is split into
    twelve-bit halves (Dekker's exact product: every partial product fits float32)."""
    if side > 4096:
        raise ValueError(f"cut_size is exact for sides up to 4096; got {side}")
    lam = jnp.asarray(lam, jnp.float32)
    area = float(side * side)                      # < 2**24: exact in float32
    area_hi = float(int(area) // 4096 * 4096)
    area_lo = area - area_hi
    t = lam * 4097.0                               # Veltkamp's split of lam into 12-bit halves
    lam_hi = t - (t - lam)
    lam_lo = lam - lam_hi
    product = area * lam
    error = ((area_hi * lam_hi - product) + area_hi * lam_lo + area_lo * lam_hi) + area_lo * lam_lo

    def fits(c: jax.Array) -> jax.Array:          # c² <= side²·(1 - lam), exactly
        rest = (area - c.astype(jnp.float32) ** 2) - product
        return rest - error >= 0

    c = jnp.floor(side * jnp.sqrt(1.0 - lam)).astype(jnp.int32)
    c = jnp.where(fits(c), c, c - 1)
    return jnp.where(fits(c + 1), c + 1, c)


def cutmix_box(lam: jax.Array, centre_y: jax.Array, centre_x: jax.Array, height: int,
               width: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(top, bottom, left, right) of timm's ``rand_bbox``: a box of ``int(H·sqrt(1-lam))`` ×
    ``int(W·sqrt(1-lam))`` (``cut_size``: float64's answer) with ``side // 2`` before the
    centre, clipped to the image. (timm 1.x; 0.3.2, which PVT v2 pinned, made odd sides a
    pixel shorter.)"""
    cut_h = cut_size(lam, height)
    cut_w = cut_size(lam, width)
    return (jnp.clip(centre_y - cut_h // 2, 0, height), jnp.clip(centre_y + (cut_h + 1) // 2, 0, height),
            jnp.clip(centre_x - cut_w // 2, 0, width), jnp.clip(centre_x + (cut_w + 1) // 2, 0, width))


def smooth_one_hot(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
    off = smoothing / num_classes
    return jax.nn.one_hot(labels, num_classes) * (1.0 - smoothing) + off


def mix_batch(images: jax.Array, labels: jax.Array, draws: MixDraws, settings: MixupSettings,
              num_classes: int) -> tuple[jax.Array, jax.Array]:
    """(mixed images (B, H, W, C), soft targets (B, K)) for NHWC ``images`` and int ``labels``."""
    _, height, width, _ = images.shape
    partner = images[::-1]
    top, bottom, left, right = cutmix_box(draws.lam, draws.centre_y, draws.centre_x, height, width)
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
    cut_lam = 1.0 - ((bottom - top) * (right - left)).astype(jnp.float32) / (height * width)
    cut = jnp.where(inside[None, :, :, None], partner, images)
    blend = images * draws.lam + partner * (1.0 - draws.lam)
    mixed_images = jnp.where(draws.use_cutmix, cut, blend)
    lam = jnp.where(draws.use_cutmix, cut_lam, draws.lam)
    lam = jnp.where(draws.mixed, lam, 1.0)
    mixed_images = jnp.where(draws.mixed, mixed_images, images)
    target = smooth_one_hot(labels, num_classes, settings.label_smoothing)
    return mixed_images, lam * target + (1.0 - lam) * target[::-1]


def soft_target_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """timm's ``SoftTargetCrossEntropy``: the batch mean of ``Σ_k -t_k log softmax(z)_k``."""
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.mean(jnp.sum(-targets * log_p, axis=-1))
