"""The measurements of one sweep point: parameters, GFLOPs, images/s and memory.

* ``params``: the number of trainable parameters (the leaves of ``params``).
* ``gflops``: XLA's cost analysis of the compiled inference forward (images -> logits at
  1/4 resolution, eval mode) at ``MEASURE['size']`` (default: the training crop), per image.
  XLA counts 2 FLOPs per multiply-accumulate plus element-wise work, on our graph; the
  paper's "GFLOPs" are multiply-accumulates of the unfolded network (benchmark_inference.py).
* ``infer_images_per_s``: that forward, jitted, batch ``MEASURE['batch']``: the median of
  ``repeats`` timed calls after ``warmup`` untimed ones.
* ``train_images_per_s``: ``segformer_jax.train``'s update (the program ``train()`` runs,
  same optimiser, micro-batch and crop) on one device-resident random batch, the state
  donated: the median of ``train_repeats`` timed steps after ``1 + train_warmup`` untimed.
* ``train_memory_bytes``: the buffers of that compiled step (``memory_analysis``): arguments
  + temporaries + outputs that do not alias a donated argument, i.e. what the device must
  hold at the peak of a step. ``peak_rss_bytes``: the process's resident peak (ru_maxrss).

Timings use zero-valued weights of the right shapes: the arithmetic done does not depend on
the values, and the shared compilation cache then serves the very programs training built.
"""

from __future__ import annotations

import os
import pathlib
import platform
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for _siblings, when loaded by path
from _siblings import load_sibling  # noqa: E402


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


def _zeros(abstract: Any) -> Any:
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract)


def program_bytes(compiled: Any) -> int | None:
    """Arguments + temporaries + outputs not aliasing a (donated) argument, or None."""
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    get = lambda field: int(getattr(stats, field, 0) or 0)  # noqa: E731
    return (get("argument_size_in_bytes") + get("temp_size_in_bytes")
            + get("output_size_in_bytes") - get("alias_size_in_bytes"))


def measure_inference(model: Any, variables: Any, size: tuple[int, int], batch: int,
                      channels: int, warmup: int, repeats: int) -> dict[str, Any]:
    bi = load_sibling("benchmark_inference")
    images = jnp.asarray(np.random.default_rng(0).standard_normal(
        (batch, *size, channels), dtype=np.float32))
    forward = jax.jit(lambda v, x: model.apply(v, x))
    compiled = forward.lower(variables, images).compile()
    flops = bi.xla_flops(compiled)
    jax.block_until_ready(compiled(variables, images))
    timing = bi.time_calls(lambda: jax.block_until_ready(compiled(variables, images)), warmup, repeats)
    return {"gflops": None if flops is None else flops / batch / 1e9,
            "infer_size": list(size), "infer_batch": batch,
            "infer_ms": timing.median_ms, "infer_images_per_s": batch / (timing.median_ms / 1e3)}


def measure_training(config: ml_collections.ConfigDict, seg_config: Any, model: Any,
                     warmup: int, repeats: int) -> dict[str, Any]:
    """Times the step ``segformer_jax.train.train`` runs (``train.jit_train_step``: the same
    function, optimiser, mesh, shardings and donation), so that its program is the one
    training compiled and the compilation cache serves it."""
    from segformer_jax import sharding
    from segformer_jax.optim import make_optimizer
    from segformer_jax.train import initial_state, jit_train_step, recipe
    bi = load_sibling("benchmark_inference")

    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    tx = make_optimizer(recipe(config), config.accumulate_steps)
    abstract = jax.eval_shape(lambda: initial_state(seg_config, tx, config.seed))
    state_sharding = sharding.state_shardings(abstract, mesh,
                                              config.mesh.fsdp_min_size or sharding.MIN_FSDP_SIZE)
    state = jax.jit(lambda: _zeros(abstract), out_shardings=state_sharding)()
    images_sharding = sharding.batch_sharding(mesh)
    micro = config.batch_size // config.accumulate_steps
    height, width = config.data.crop_size
    rng = np.random.default_rng(0)
    rows = sharding.process_rows(images_sharding, micro)
    batch = sharding.global_batch({
        "image": rng.standard_normal((micro, height, width, seg_config.num_channels),
                                     dtype=np.float32)[rows.start:rows.stop],
        "label": rng.integers(0, seg_config.num_labels, (micro, height, width),
                              dtype=np.int32)[rows.start:rows.stop]}, images_sharding)
    step = jit_train_step(model, tx, config, seg_config, mesh, state_sharding)
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    holder = {"state": state}

    def one_step() -> None:
        holder["state"], out = compiled(holder["state"], batch)
        jax.block_until_ready(out)

    one_step()
    timing = bi.time_calls(one_step, warmup, repeats)
    return {"train_micro_batch": micro, "train_ms": timing.median_ms,
            "train_images_per_s": micro / (timing.median_ms / 1e3),
            "train_memory_bytes": program_bytes(compiled), "train_compile_s": round(compile_s, 2)}


def measure_point(config: ml_collections.ConfigDict, measure: dict[str, Any],
                  class_names: list[str]) -> dict[str, Any]:
    """Every measurement of the point trained with ``config`` (see the module docstring)."""
    from segformer_jax.models.segformer import SegformerForSemanticSegmentation, init_variables
    from segformer_jax.train import model_config
    bi = load_sibling("benchmark_inference")

    seg_config = model_config(config, len(class_names), dict(enumerate(class_names)))
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[config.model.dtype]
    model = SegformerForSemanticSegmentation(seg_config, dtype=dtype, remat=config.model.remat)
    variables = _zeros(jax.eval_shape(lambda: init_variables(seg_config)))
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
    size = tuple(measure["size"] or config.data.crop_size)
    out: dict[str, Any] = {"params": params}
    out.update(measure_inference(model, variables, size, measure["batch"], seg_config.num_channels,
                                 measure["warmup"], measure["repeats"]))
    del variables
    out.update(measure_training(config, seg_config, model, measure["train_warmup"],
                                measure["train_repeats"]))
    out["peak_rss_bytes"] = bi.process_peak_rss_bytes()
    out["machine"] = machine()
    return out
