"""The two optimisers of SegFormer's training, from optax.

* Segmentation (NVlabs SegFormer, the default): AdamW, poly decay with mmcv's warmup, 10×
  learning rate on the decode head, no weight decay on norm parameters.
* ImageNet pretraining of the MiT encoder (``schedule="cosine"``, ``no_decay="1d"``; the
  recipe of PVT v2, whai362/PVT ``classification/main.py``, itself DeiT's,
  facebookresearch/deit ``main.py``): AdamW, timm's ``CosineLRScheduler`` with a linear
  warmup from ``warmup_lr`` (timm ``scheduler/cosine_lr.py``; here stepped per optimiser
  step, where PVT steps it per epoch), no weight decay on any 1-D parameter (biases and norm
  scales: timm ``optim/optim_factory.py``'s ``add_weight_decay``), one learning rate.

mmcv's ``paramwise_cfg.custom_keys = {'head': lr_mult 10, 'norm': decay_mult 0}`` matches
keys as substrings of the parameter name, longest key first, first match wins. So every
``decode_head`` parameter (BatchNorm included) gets lr ×10 *and* decay, every other
parameter whose name contains ``norm`` gets no decay, the rest the base lr and decay.
Our Flax names keep those substrings (``decode_head``, ``layer_norm*``), so the same rule
applied to the '/'-joined parameter path gives the same three groups.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

HEAD, NORM, DEFAULT = "head", "norm", "default"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The optimisation hyper-parameters (NVlabs ``local_configs/segformer/*`` defaults)."""

    learning_rate: float = 6e-5
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01
    head_lr_mult: float = 10.0
    total_steps: int = 160_000
    warmup_steps: int = 1500
    warmup_ratio: float = 1e-6
    power: float = 1.0
    min_lr: float = 0.0
    schedule: str = "poly"      # "poly" (mmcv, with warmup_ratio) | "cosine" (timm, warmup_lr)
    warmup_lr: float = 1e-6     # cosine: the learning rate of step 0 (not scaled with batch)
    no_decay: str = "norm"      # "norm": mmcv's custom_keys groups | "1d": timm's ndim <= 1 rule
    clip_grad_norm: float = 0.0  # > 0: clip the global gradient norm first (PVT v2 b3-b5: 1.0)
    ema_decay: float = 0.0      # > 0: keep an EMA of the weights (timm's ModelEmaV3; e.g. 0.9998)
    ema_warmup: bool = False    # ModelEmaV3's use_warmup: decay 1 - (1 + s)^(-2/3), capped


def poly_with_warmup(recipe: Recipe, base_lr: float | None = None) -> optax.Schedule:
    """mmcv's ``PolyLrUpdaterHook`` with linear warmup, for 0-based step ``t``:

        regular(t) = (base − min) · (1 − t / total)^power + min
        lr(t)      = regular(t) · (1 − (1 − t / warmup) · (1 − ratio))   if t < warmup
                     regular(t)                                          otherwise

    The warmup multiplies the poly curve (``optax.join_schedules`` would restart it).
    """
    base = recipe.learning_rate if base_lr is None else base_lr

    def schedule(step: jax.Array) -> jax.Array:
        t = jnp.asarray(step, jnp.float32)
        # (total − t) / total, not 1 − t/total: steps are exact in float32, so no cancellation.
        remaining = jnp.clip((recipe.total_steps - t) / recipe.total_steps, 0.0, 1.0)
        regular = (base - recipe.min_lr) * remaining ** recipe.power + recipe.min_lr
        if recipe.warmup_steps <= 0:
            return regular
        # 1 − (1 − t/w)(1 − r), rearranged: in float32 the literal form cancels to ~6 %
        # error at t = 0 (1 − 0.999999), this one is exact to an ulp.
        factor = recipe.warmup_ratio + (1.0 - recipe.warmup_ratio) * t / recipe.warmup_steps
        return jnp.where(t < recipe.warmup_steps, regular * factor, regular)

    return schedule


def cosine_with_warmup(recipe: Recipe, base_lr: float | None = None) -> optax.Schedule:
    """timm's ``CosineLRScheduler`` (``t_initial`` = total steps, ``warmup_prefix=False``,
    one cycle), per step ``t``:

        lr(t) = warmup_lr + t · (base − warmup_lr) / warmup                     if t < warmup
                min + ½ (base − min) (1 + cos(π t / total))                     otherwise

    The cosine runs from t = 0, not from the end of the warmup (timm's default), so the
    first step after the warmup is already slightly below ``base``.
    """
    base = recipe.learning_rate if base_lr is None else base_lr

    def schedule(step: jax.Array) -> jax.Array:
        t = jnp.asarray(step, jnp.float32)
        progress = jnp.clip(t / recipe.total_steps, 0.0, 1.0)
        regular = recipe.min_lr + 0.5 * (base - recipe.min_lr) * (1.0 + jnp.cos(jnp.pi * progress))
        if recipe.warmup_steps <= 0:
            return regular
        warm = recipe.warmup_lr + t * ((base - recipe.warmup_lr) / recipe.warmup_steps)
        return jnp.where(t < recipe.warmup_steps, warm, regular)

    return schedule


SCHEDULES = {"poly": poly_with_warmup, "cosine": cosine_with_warmup}


def learning_rate(recipe: Recipe, base_lr: float | None = None) -> optax.Schedule:
    """The recipe's schedule (``recipe.schedule``) at ``base_lr`` (default: its own)."""
    return SCHEDULES[recipe.schedule](recipe, base_lr)


def param_group(path: str) -> str:
    """mmcv custom_keys on a '/'-joined parameter path: 'head', then 'norm', else default."""
    if "head" in path:
        return HEAD
    if "norm" in path:
        return NORM
    return DEFAULT


def param_groups(params: Any) -> Any:
    """A pytree of group labels with the structure of ``params``."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: param_group("/".join(str(getattr(k, "key", k)) for k in path)), params)


def decays(params: Any) -> Any:
    """timm's rule: True (decay) for parameters of two or more dimensions, False for biases,
    norm scales and every other 1-D parameter."""
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def make_optimizer(recipe: Recipe, accumulate_steps: int = 1) -> optax.GradientTransformation:
    """AdamW: per mmcv group (``no_decay="norm"``; the 10× lr also scales the head's decay, as
    in torch/mmcv), or with timm's decay mask (``"1d"``; one learning rate)."""
    if recipe.schedule not in SCHEDULES:
        raise ValueError(f"optimizer.schedule must be one of {sorted(SCHEDULES)}; "
                         f"got {recipe.schedule!r}")

    def adamw(lr_mult: float, decay: float, mask: Any = None) -> optax.GradientTransformation:
        return optax.adamw(learning_rate(recipe, recipe.learning_rate * lr_mult), b1=recipe.b1,
                           b2=recipe.b2, eps=recipe.eps, weight_decay=decay, mask=mask)
    if recipe.no_decay == "norm":
        tx = optax.partition({HEAD: adamw(recipe.head_lr_mult, recipe.weight_decay),
                              NORM: adamw(1.0, 0.0),
                              DEFAULT: adamw(1.0, recipe.weight_decay)}, param_groups)
    elif recipe.no_decay == "1d":
        tx = adamw(1.0, recipe.weight_decay, decays)
    else:
        raise ValueError(f"optimizer.no_decay must be 'norm' or '1d'; got {recipe.no_decay!r}")
    if recipe.clip_grad_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(recipe.clip_grad_norm), tx)
    if accumulate_steps > 1:  # one optimiser step (and schedule step) per k micro-batches
        tx = optax.MultiSteps(tx, every_k_schedule=accumulate_steps)
    return tx


# --------------------------------------------------------------------------------------
# EMA of the weights


def ema_decay(step: jax.Array, recipe: Recipe) -> jax.Array:
    """timm ``ModelEmaV3.get_decay(step)`` (``update_after_step`` 0, ``min_decay`` 0) for
    the update after optimiser step ``step`` (1, 2, ...): 0 at the first (the average starts
    as the weights), then ``ema_decay``; with ``ema_warmup``, ``1 - (1 + s)^(-2/3)`` for
    ``s = step - 1`` (gamma 1, power 2/3, timm's defaults), capped at ``ema_decay``."""
    s = jnp.maximum(jnp.asarray(step) - 1, 0).astype(jnp.float32)
    decay = jnp.float32(recipe.ema_decay)
    if recipe.ema_warmup:
        decay = jnp.clip(1.0 - (1.0 + s) ** jnp.float32(-2.0 / 3.0), 0.0, decay)
    return jnp.where(s <= 0, jnp.float32(0.0), decay)


def ema_update(average: Any, values: Any, decay: jax.Array) -> Any:
    """``average.lerp_(values, 1 - decay)`` on every floating leaf (parameters and BatchNorm
    statistics alike, as ``ModelEmaV3`` without ``exclude_buffers``); other leaves copied."""
    def lerp(a: jax.Array, v: jax.Array) -> jax.Array:
        if not jnp.issubdtype(a.dtype, jnp.floating):
            return v
        return a + (1.0 - decay).astype(a.dtype) * (v.astype(a.dtype) - a)
    return jax.tree.map(lerp, average, values)

