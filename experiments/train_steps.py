"""The training step ``segformer_jax.train`` runs, built for a measurement.

The sweeps (``sweep_measure``), the training benchmark and the memory report all time or
compile ``segformer_jax.train.jit_train_step``: the same update, optimiser, mesh, shardings
and donation as a real run, so that what they report is the program training runs (and a
sweep's compilation cache serves it from the point's own training). Here, once: the model,
optimiser, mesh and state from a run config, a batch laid out on the mesh, and the timing.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import segformer_jax
from experiments.harness import NUM_LABELS, Timing, time_calls
from segformer_jax import SegformerConfig
from segformer_jax.constants import IGNORE_INDEX


@dataclasses.dataclass
class TrainStep:
    model: Any
    tx: Any
    mesh: Any
    state: Any           # arrays, or ShapeDtypeStructs carrying their shardings (abstract)
    state_sharding: Any
    step: Any            # the jitted step: (state, batch) -> (state, {"loss", "grad_norm"})


def build(config: ml_collections.ConfigDict, seg_config: Any,
          pretrained: Mapping[str, Any] | None = None, abstract: bool = False) -> TrainStep:
    """``train``'s step for ``config`` (a ``run_config`` config: seed, mesh, model.dtype and
    remat, optimizer, accumulate_steps, loss_reduction, task) and the model ``seg_config``.

    ``abstract``: the state as shapes only (what compiling needs, without the memory of a
    large model replicated over many devices), with the shardings ``create_state`` gives.
    """
    from segformer_jax import run_config, sharding
    from segformer_jax.optim import make_optimizer
    from segformer_jax.train import create_state, jit_train_step, model_for_run, state_layout

    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    model = model_for_run(config, seg_config)
    tx = make_optimizer(run_config.recipe(config), config.accumulate_steps)
    if abstract:
        state, state_sharding = state_layout(seg_config, tx, config.seed, mesh,
                                             config.mesh.fsdp_min_size, config.task,
                                             run_config.uses_ema(config))
    else:
        state, state_sharding = create_state(seg_config, tx, config.seed, mesh, pretrained,
                                             config.mesh.fsdp_min_size, config.task,
                                             run_config.uses_ema(config))
    step = jit_train_step(model, tx, config, seg_config, mesh, state_sharding)
    return TrainStep(model, tx, mesh, state, state_sharding, step)


def device_batch(images: np.ndarray, labels: np.ndarray, mesh: Any) -> dict[str, jax.Array]:
    """A global batch on ``mesh`` as ``train`` lays it out (this process's rows)."""
    from segformer_jax import sharding
    layout = sharding.batch_sharding(mesh)
    rows = sharding.process_rows(layout, len(images))
    return sharding.global_batch({"image": images[rows.start:rows.stop],
                                  "label": labels[rows.start:rows.stop]}, layout)


def abstract_batch(rows: int, height: int, width: int, channels: int, mesh: Any,
                   per_pixel: bool = True) -> dict[str, Any]:
    """The shapes of a global batch of ``rows`` images on ``mesh`` (for compiling only):
    label maps, or (``per_pixel=False``, classification) one label per image."""
    from segformer_jax import sharding
    layout = sharding.batch_sharding(mesh)
    label_shape = (rows, height, width) if per_pixel else (rows,)
    return {"image": jax.ShapeDtypeStruct((rows, height, width, channels), jnp.float32,
                                          sharding=layout),
            "label": jax.ShapeDtypeStruct(label_shape, jnp.int32, sharding=layout)}


@dataclasses.dataclass
class Compiled:
    lower_s: float       # trace + lower to StableHLO
    compile_s: float     # XLA compile (or a hit in the compilation cache)
    first_step_s: float  # the first run of the compiled step
    first_loss: float
    compiled: Any
    one_step: Callable[[], dict[str, Any]]  # runs one more step, waits for its outputs


@dataclasses.dataclass
class Timed:
    lower_s: float
    compile_s: float
    first_step_s: float
    first_loss: float
    timing: Timing       # the steps after the first
    compiled: Any


def compile_step(train_step: TrainStep, batch: Mapping[str, jax.Array]) -> Compiled:
    """Compiles the step and runs it once on the device-resident ``batch``; each further
    ``one_step()`` donates the state to the next step (``train_step.state`` follows it)."""
    start = time.perf_counter()
    lowered = train_step.step.lower(train_step.state, batch)
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start

    def one_step() -> dict[str, Any]:
        train_step.state, out = compiled(train_step.state, batch)  # the donated one is gone
        return jax.block_until_ready(out)

    start = time.perf_counter()
    first = one_step()
    first_step_s = time.perf_counter() - start
    return Compiled(lower_s, compile_s, first_step_s, float(first["loss"]), compiled, one_step)


def time_steps(train_step: TrainStep, batch: Mapping[str, jax.Array], warmup: int,
               repeats: int) -> Timed:
    """Compiles the step, runs it once, then ``warmup`` untimed and ``repeats`` timed steps
    on the same device-resident batch, the state donated from each step to the next."""
    c = compile_step(train_step, batch)
    timing = time_calls(c.one_step, warmup, repeats)
    return Timed(c.lower_s, c.compile_s, c.first_step_s, c.first_loss, timing, c.compiled)


def random_batch(batch: int, height: int, width: int, channels: int = 3,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """float32 NHWC images ~ N(0, 1) and int32 (B, H, W) labels: 16x16-pixel blocks of random
    classes 0..NUM_LABELS-1, about 10 % of the blocks 255 (ignored)."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, height, width, channels), dtype=np.float32)
    blocks = rng.integers(0, NUM_LABELS, (batch, -(-height // 16), -(-width // 16)))
    blocks[rng.random(blocks.shape) < 0.1] = IGNORE_INDEX
    labels = blocks.repeat(16, axis=1).repeat(16, axis=2)[:, :height, :width]
    return images, np.ascontiguousarray(labels, dtype=np.int32)


def jax_train_step(config: SegformerConfig, variables: dict, images: np.ndarray,
                   labels: np.ndarray) -> Compiled:
    """Compiles ``segformer_jax.train``'s step for one device-resident batch and runs it once,
    from ``variables`` (the default run config: seed 0, the NVlabs recipe, float32)."""
    from segformer_jax.run_config import default_config
    step = build(default_config(), config, pretrained=variables)
    return compile_step(step, device_batch(images, labels, step.mesh))


def jax_eval_loss(config: SegformerConfig, variables: dict, images: np.ndarray,
                  labels: np.ndarray) -> float:
    """Our loss in eval mode (running BN statistics, no dropout / drop-path)."""
    from segformer_jax.losses import segmentation_loss

    model = segformer_jax.SegformerForSemanticSegmentation(config)
    logits = jax.jit(model.apply)(variables, jnp.asarray(images))
    return float(segmentation_loss(logits, jnp.asarray(labels), IGNORE_INDEX, "valid"))


CLASSIFY_CLASSES = 1000  # ImageNet-1k


def classify_recipe_config(variant: str, batch: int) -> Any:
    """The run config of ``configs/imagenet.py:VARIANT`` at global batch ``batch``."""
    from segformer_jax.run_config import default_config, use_imagenet_recipe
    config = default_config()
    use_imagenet_recipe(config, variant, batch=batch)
    return config


def classify_random_batch(batch: int, height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, height, width, 3), dtype=np.float32)
    return images, rng.integers(0, CLASSIFY_CLASSES, batch).astype(np.int32)


def jax_classify_step(run: Any, config: Any, variables: dict, images: np.ndarray,
                      labels: np.ndarray) -> Compiled:
    """Compiles the recipe's step for one device-resident batch and runs it once."""
    step = build(run, config, pretrained=variables)
    return compile_step(step, device_batch(images, labels, step.mesh))


def jax_classify_eval_loss(config: Any, variables: dict, images: np.ndarray, labels: np.ndarray) -> float:
    import optax

    from segformer_jax.models.segformer import SegformerForImageClassification
    logits = jax.jit(SegformerForImageClassification(config).apply)(variables, jnp.asarray(images))
    return float(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(labels)).mean())
