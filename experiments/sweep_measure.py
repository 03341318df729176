"""The measurements of one sweep point: parameters, GFLOPs, images/s and memory.

* ``params``: the number of trainable parameters (the leaves of ``params``).
* ``gflops``: XLA's cost analysis of the compiled inference forward (images -> logits at
  1/4 resolution, eval mode) at ``MEASURE['size']`` (default: the training crop), per image.
  XLA counts 2 FLOPs per multiply-accumulate plus element-wise work, on our graph; the
  paper's "GFLOPs" are multiply-accumulates of the unfolded network (benchmark_inference.py).
* ``infer_images_per_s``: that forward, jitted, batch ``MEASURE['batch']``: the median of
  ``repeats`` timed calls after ``warmup`` untimed ones.
* ``train_images_per_s``: ``segformer_jax.train.jit_train_step`` (the program ``train()``
  runs, same optimiser, mesh, micro-batch and crop; ``experiments.train_steps``) on one
  device-resident random batch, the state donated: the median of ``train_repeats`` timed
  steps after ``1 + train_warmup`` untimed.
* ``train_memory_bytes``: ``experiments.xla_stats.program_bytes`` of that compiled step:
  arguments + temporaries + outputs that do not alias a donated argument, i.e. what the
  device must hold at the peak of a step. ``peak_rss_bytes``: the process's resident peak.

The inference forward runs on zero-valued weights of the right shapes (the arithmetic does
not depend on the values); the training step on a freshly initialised state, built as
``train()`` builds it, so that the shared compilation cache serves the programs training
compiled.
"""

from __future__ import annotations

import os
import pathlib
import platform
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import harness, train_steps, xla_stats


def cpu_name() -> str:
    """The CPU model (Linux /proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.partition(':')[2].strip()} ({platform.machine()})"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    device = jax.devices()[0]
    return {"cpu": cpu_name(), "cpu_count": os.cpu_count(),
            "backend": jax.default_backend(), "device": device.device_kind,
            "device_count": jax.device_count(), "jax": jax.__version__,
            "python": platform.python_version(), "host": platform.node()}


def measure_inference(model: Any, variables: Any, size: tuple[int, int], batch: int,
                      channels: int, warmup: int, repeats: int) -> dict[str, Any]:
    """GFLOPs per image and images/s of the jitted forward (images -> logits at 1/4)."""
    images = jnp.asarray(np.random.default_rng(0).standard_normal(
        (batch, *size, channels), dtype=np.float32))
    forward = jax.jit(lambda v, x: model.apply(v, x))
    compiled = forward.lower(variables, images).compile()
    flops = xla_stats.flops(compiled)
    jax.block_until_ready(compiled(variables, images))
    timing = harness.time_calls(lambda: jax.block_until_ready(compiled(variables, images)), warmup, repeats)
    return {"gflops": None if flops is None else flops / batch / 1e9,
            "infer_size": list(size), "infer_batch": batch,
            "infer_ms": timing.median_ms, "infer_images_per_s": batch / (timing.median_ms / 1e3)}


def measure_training(config: ml_collections.ConfigDict, seg_config: Any,
                     warmup: int, repeats: int) -> dict[str, Any]:
    """Times the step ``segformer_jax.train.train`` runs (``train.jit_train_step``: the same
    function, optimiser, mesh, shardings and donation), so that its program is the one
    training compiled and the compilation cache serves it."""
    step = train_steps.build(config, seg_config)
    micro = config.batch_size // config.accumulate_steps
    height, width = config.data.crop_size
    rng = np.random.default_rng(0)
    images = rng.standard_normal((micro, height, width, seg_config.num_channels), dtype=np.float32)
    labels = rng.integers(0, seg_config.num_labels, (micro, height, width), dtype=np.int32)
    timed = train_steps.time_steps(step, train_steps.device_batch(images, labels, step.mesh),
                                   warmup, repeats)
    return {"train_micro_batch": micro, "train_ms": timed.timing.median_ms,
            "train_images_per_s": micro / (timed.timing.median_ms / 1e3),
            "train_memory_bytes": xla_stats.program_bytes(timed.compiled),
            "train_compile_s": round(timed.lower_s + timed.compile_s, 2)}


def measure_point(config: ml_collections.ConfigDict, measure: dict[str, Any],
                  class_names: list[str]) -> dict[str, Any]:
    """Every measurement of the point trained with ``config`` (see the module docstring)."""
    from segformer_jax.models.segformer import init_variables
    from segformer_jax.run_config import model_config
    from segformer_jax.train import model_for_run

    seg_config = model_config(config, len(class_names), dict(enumerate(class_names)))
    model = model_for_run(config, seg_config)
    variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                             jax.eval_shape(lambda: init_variables(seg_config)))
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
    size = tuple(measure["size"] or config.data.crop_size)
    out: dict[str, Any] = {"params": params}
    out.update(measure_inference(model, variables, size, measure["batch"], seg_config.num_channels,
                                 measure["warmup"], measure["repeats"]))
    del variables
    out.update(measure_training(config, seg_config, measure["train_warmup"],
                                measure["train_repeats"]))
    out["peak_rss_bytes"] = harness.process_peak_rss_bytes()
    out["machine"] = machine()
    return out
