"""The NVlabs SegFormer optimiser, from optax: AdamW, poly decay with mmcv's warmup,
10× learning rate on the decode head, no weight decay on norm parameters.

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


def make_optimizer(recipe: Recipe, accumulate_steps: int = 1) -> optax.GradientTransformation:
    """AdamW per group (the 10× lr also scales the head's decay, as in torch/mmcv)."""
    def adamw(lr_mult: float, decay: float) -> optax.GradientTransformation:
        return optax.adamw(poly_with_warmup(recipe, recipe.learning_rate * lr_mult),
                           b1=recipe.b1, b2=recipe.b2, eps=recipe.eps, weight_decay=decay)
    tx = optax.partition({HEAD: adamw(recipe.head_lr_mult, recipe.weight_decay),
                          NORM: adamw(1.0, 0.0),
                          DEFAULT: adamw(1.0, recipe.weight_decay)}, param_groups)
    if accumulate_steps > 1:  # one optimiser step (and schedule step) per k micro-batches
        tx = optax.MultiSteps(tx, every_k_schedule=accumulate_steps)
    return tx
