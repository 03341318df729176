"""Training: ``python -m segformer_jax.train --config configs/FILE.py[:ARG] --workdir DIR``.

One pure, jitted update function that donates its state; the state is a plain dict
``{'step', 'params', 'batch_stats', 'opt_state'}``. Every batch and every random number is
a function of (seed, step) alone, so a run resumed from a checkpoint at step k replays
exactly what an uninterrupted run would have done after step k.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from segformer_jax.config import ConfigError, SegformerConfig
from segformer_jax.losses import segmentation_loss
from segformer_jax.models.segformer import SegformerForSemanticSegmentation, init_variables
from segformer_jax.optim import Recipe, make_optimizer

State = dict[str, Any]


class TrainingError(RuntimeError):
    """A run that cannot start or continue; the message says why and what was kept."""


# --------------------------------------------------------------------------------------
# Model and optimiser from the config


def model_config(config: ml_collections.ConfigDict, num_labels: int,
                 id2label: Mapping[int, str] | None = None) -> SegformerConfig:
    overrides = dict(config.model.get("overrides", {}) or {})
    return SegformerConfig.from_variant(config.model.variant, num_labels=num_labels,
                                        id2label=id2label, **overrides)


def recipe(config: ml_collections.ConfigDict) -> Recipe:
    o = config.optimizer
    return Recipe(learning_rate=o.learning_rate, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay,
                  head_lr_mult=o.head_lr_mult, total_steps=config.total_steps,
                  warmup_steps=o.warmup_steps, warmup_ratio=o.warmup_ratio, power=o.power)


def initial_state(seg_config: SegformerConfig, tx, seed: int,
                  pretrained: Mapping[str, Any] | None = None) -> State:
    variables = pretrained if pretrained is not None else init_variables(seg_config, seed=seed)
    params = jax.tree.map(jnp.asarray, variables["params"])
    return {"step": jnp.zeros((), jnp.int32), "params": params,
            "batch_stats": jax.tree.map(jnp.asarray, variables["batch_stats"]),
            "opt_state": tx.init(params)}


# --------------------------------------------------------------------------------------
# The steps


def make_train_step(model: SegformerForSemanticSegmentation, tx, seed: int,
                    ignore_index: int, loss_reduction: str) -> Callable[[State, dict], tuple[State, dict]]:
    """The update: forward in train mode, loss on upsampled logits, AdamW, new BN stats."""

    def train_step(state: State, batch: dict) -> tuple[State, dict]:
        dropout_key = jax.random.fold_in(jax.random.key(seed), state["step"])

        def loss_fn(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": state["batch_stats"]}, batch["image"],
                train=True, rngs={"dropout": dropout_key}, mutable=["batch_stats"])
            return segmentation_loss(logits, batch["label"], ignore_index, loss_reduction), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        changes, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = jax.tree.map(jnp.add, state["params"], changes)
        new_state = {"step": state["step"] + 1, "params": params,
                     "batch_stats": updates["batch_stats"], "opt_state": opt_state}
        return new_state, {"loss": loss, "grad_norm": _global_norm(grads)}

    return train_step


def _global_norm(tree: Any) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))
