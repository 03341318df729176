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
    lam_mixup = (jax.random.beta(k_mixup, settings.mixup_alpha, settings.mixup_alpha)
                 if settings.mixup_alpha > 0 else jnp.float32(1))
    lam_cutmix = (jax.random.beta(k_cutmix, settings.cutmix_alpha, settings.cutmix_alpha)
                  if settings.cutmix_alpha > 0 else jnp.float32(1))
    lam = jnp.where(use_cutmix, lam_cutmix, lam_mixup).astype(jnp.float32)
    return MixDraws(mixed, use_cutmix, lam, jax.random.randint(k_y, (), 0, height),
                    jax.random.randint(k_x, (), 0, width))


def cutmix_box(lam: jax.Array, centre_y: jax.Array, centre_x: jax.Array, height: int,
               width: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(top, bottom, left, right) of timm's ``rand_bbox``: a box of ``int(H·sqrt(1-lam))`` ×
    ``int(W·sqrt(1-lam))`` with ``side // 2`` before the centre, clipped to the image.
    (timm 1.x; 0.3.2, which PVT v2 pinned, made odd sides a pixel shorter.)"""
    ratio = jnp.sqrt(1.0 - lam)
    cut_h = jnp.floor(height * ratio).astype(jnp.int32)
    cut_w = jnp.floor(width * ratio).astype(jnp.int32)
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
