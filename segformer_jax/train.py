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


def make_predict(model: SegformerForSemanticSegmentation) -> Callable:
    """Whole-image prediction at the input resolution: argmax of the upsampled logits."""

    @jax.jit
    def predict(variables: dict, images: jax.Array) -> jax.Array:
        from segformer_jax.inference import whole_inference
        return whole_inference(model.apply, variables, images).argmax(-1)

    return predict


def evaluate_split(predict: Callable, variables: dict, examples: Iterator[dict],
                   num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """The split's confusion matrix, accumulated exactly in int64 on the host."""
    from segformer_jax import metrics
    total = metrics.zeros(num_classes)
    for example in examples:
        pred = predict(variables, example["image"])
        total = metrics.update(total, metrics.confusion_matrix(pred, example["label"], num_classes,
                                                               ignore_index))
    return total


# --------------------------------------------------------------------------------------
# Logging


class MetricWriter:
    """Scalars to ``workdir/metrics.jsonl`` and TensorBoard event files (process 0 only)."""

    def __init__(self, workdir: pathlib.Path, enabled: bool = True):
        self.enabled = enabled
        self._jsonl = open(workdir / "metrics.jsonl", "a", encoding="utf-8") if enabled else None
        self._tb = None
        if enabled:
            try:
                from tensorboardX import SummaryWriter
                self._tb = SummaryWriter(str(workdir / "tensorboard"))
            except ImportError:  # TensorBoard files are optional; the JSON lines are not.
                pass

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, float(value), int(step))
            self._tb.flush()

    def close(self) -> None:
        if self._jsonl:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


class Progress:
    """One refreshed line: step, loss, learning rate, images/s and ETA."""

    def __init__(self, total: int, start: int, batch_size: int, enabled: bool = True):
        self.total, self.start, self.batch = total, start, batch_size
        self.enabled = enabled and sys.stdout.isatty()
        self.enabled_lines = enabled
        self.t0 = time.perf_counter()

    def update(self, step: int, loss: float, lr: float, force_line: bool = False) -> str:
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        done = step - self.start
        rate = done * self.batch / elapsed
        eta = (self.total - step) * elapsed / max(done, 1)
        line = (f"step {step:>6d}/{self.total}  loss {loss:.4f}  lr {lr:.2e}  "
                f"{rate:6.1f} img/s  ETA {int(eta) // 60:d}:{int(eta) % 60:02d}")
        if self.enabled and not force_line:
            print("\r" + line, end="", flush=True)
        elif self.enabled_lines:
            print(("\r" if self.enabled else "") + line, flush=True)
        return line


# --------------------------------------------------------------------------------------
# Config


def default_config() -> ml_collections.ConfigDict:
    """The NVlabs recipe (spec §7) with a data section to be filled by a config file."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = ml_collections.ConfigDict({"variant": "b0", "dtype": "float32", "remat": False,
                                         "init": "scratch", "overrides": {}})
    c.data = ml_collections.ConfigDict({"name": "synthetic", "data_dir": "", "manual_dir": "",
                                        "crop_size": (512, 512), "img_scale": (2048, 512),
                                        "ratio_range": (0.5, 2.0), "cat_max_ratio": 0.75,
                                        "reduce_zero_label": False, "eval_split": "validation",
                                        "eval_examples": -1, "num_workers": 2})
    c.optimizer = ml_collections.ConfigDict({"learning_rate": 6e-5, "b1": 0.9, "b2": 0.999,
                                             "weight_decay": 0.01, "head_lr_mult": 10.0,
                                             "warmup_steps": 1500, "warmup_ratio": 1e-6,
                                             "power": 1.0})
    c.batch_size = 16
    c.accumulate_steps = 1
    c.total_steps = 160_000
    c.loss_reduction = "valid"   # "all": mmseg 0.x's mean over every pixel
    c.eval_every = 16_000
    c.checkpoint_every = 4000
    c.keep_checkpoints = 3
    c.log_every = 50
    return c
