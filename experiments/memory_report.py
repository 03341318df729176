"""Memory per device of one training step: train state, saved activations, XLA's peak.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
        python experiments/memory_report.py --variants b0 b2 b5 --sizes 512 1024 [--compile]

Per configuration (variant, crop, images per device, remat per MiT block, FSDP over all
devices or replicated parameters):

* ``state``: this device's share of parameters + two Adam moments + BN statistics, from
  the shardings ``segformer_jax.sharding`` gives the leaves (exact).
* ``activations``: the residuals the backward pass keeps, as JAX's autodiff saves them
  (``saved_residuals`` of the loss; no compile): what remat changes.
* ``XLA peak`` (``--compile``, slow: minutes per B5 compile on a CPU): arguments +
  temporaries + non-donated outputs of the compiled, sharded train step from
  ``compiled.memory_analysis()``. XLA:CPU's scheduler does not keep recomputation late, so
  on CPU this figure is the same with and without remat (measured, even for a plain MLP
  chain); GPU and TPU schedulers do realise remat's savings. Only remat-off rows compile.

Estimate for an accelerator: ``state + gradients (= the parameter share) + activations +
workspace``, the last being what XLA peak shows beyond the rest.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
from jax._src.ad_checkpoint import saved_residuals  # public only as print_saved_residuals

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from segformer_jax import sharding  # noqa: E402
from segformer_jax.config import SegformerConfig  # noqa: E402
from segformer_jax.losses import segmentation_loss  # noqa: E402
from segformer_jax.models.segformer import SegformerForSemanticSegmentation  # noqa: E402
from segformer_jax.optim import Recipe, make_optimizer  # noqa: E402
from segformer_jax.train import initial_state, make_train_step  # noqa: E402


def step_memory(variant: str, size: int, per_device_batch: int, remat: bool, fsdp: bool,
                dtype: str, compile_step: bool, num_labels: int = 150) -> dict:
    """Memory figures of one configuration, per device (see the module docstring)."""
    config = SegformerConfig.from_variant(variant, num_labels=num_labels)
    devices = jax.device_count()
    mesh = sharding.make_mesh(1, devices) if fsdp else sharding.make_mesh(devices, 1)
    model = SegformerForSemanticSegmentation(config, dtype=jnp.dtype(dtype), remat=remat)
    tx = make_optimizer(Recipe())
    abstract = jax.eval_shape(lambda: initial_state(config, tx, 0))
    state_sharding = sharding.state_shardings(abstract, mesh)
    per_device = lambda x, s: x.size * x.dtype.itemsize // math.prod(  # noqa: E731
        mesh.shape[a] for a in s.spec if a is not None)
    state_bytes = sum(per_device(x, s) for x, s in zip(jax.tree.leaves(abstract),
                                                       jax.tree.leaves(state_sharding)))
    params_bytes = sum(per_device(x, s) for x, s in zip(jax.tree.leaves(abstract["params"]),
                                                        jax.tree.leaves(state_sharding["params"])))

    image = jax.ShapeDtypeStruct((per_device_batch, size, size, 3), jnp.float32)
    label = jax.ShapeDtypeStruct((per_device_batch, size, size), jnp.int32)

    def loss(params, batch_stats, images, labels):
        logits, _ = model.apply({"params": params, "batch_stats": batch_stats}, images, train=True,
                                mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
        return segmentation_loss(logits, labels, 255, "valid")

    residuals = saved_residuals(loss, abstract["params"], abstract["batch_stats"], image, label)
    activations = sum(math.prod(a.shape) * a.dtype.itemsize  # (PRNG keys: 8 bytes, negligible)
                      for a, why in residuals if "argument" not in why and hasattr(a.dtype, "itemsize"))
    out = {"variant": variant, "size": size, "batch": per_device_batch, "remat": remat,
           "fsdp": fsdp, "devices": devices, "state_gib": state_bytes / 2**30,
           "grads_gib": params_bytes / 2**30, "activations_gib": activations / 2**30,
           "xla_peak_gib": None, "compile_s": None}
    if compile_step and not remat:
        images = sharding.batch_sharding(mesh)
        rows = per_device_batch * devices
        batch = {"image": jax.ShapeDtypeStruct((rows, size, size, 3), jnp.float32, sharding=images),
                 "label": jax.ShapeDtypeStruct((rows, size, size), jnp.int32, sharding=images)}
        state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                             abstract, state_sharding)
        step = jax.jit(make_train_step(model, tx, 0, 255, "valid"), in_shardings=(state_sharding, images),
                       out_shardings=(state_sharding, sharding.replicated(mesh)), donate_argnums=0)
        start = time.perf_counter()
        memory = step.lower(state, batch).compile().memory_analysis()
        out["compile_s"] = time.perf_counter() - start
        out["xla_peak_gib"] = (memory.argument_size_in_bytes + memory.temp_size_in_bytes
                               + memory.output_size_in_bytes - memory.alias_size_in_bytes) / 2**30
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", default=["b0", "b2", "b5"])
    p.add_argument("--sizes", nargs="+", type=int, default=[512, 1024])
    p.add_argument("--batch", type=int, default=2, help="images per device (default 2, NVlabs' 8 GPUs x 2)")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--remat", nargs="+", default=["off", "on"], choices=["off", "on"])
    p.add_argument("--fsdp", nargs="+", default=["off", "on"], choices=["off", "on"])
    p.add_argument("--compile", action="store_true", help="also compile remat-off steps for XLA's peak")
    args = p.parse_args(argv)
    print(f"{jax.device_count()} x {jax.devices()[0].platform} devices, compute {args.dtype}, "
          f"float32 parameters and Adam moments, 150 classes, {args.batch} images per device\n")
    print("| variant | crop | remat | FSDP | state GiB | gradients GiB | saved activations GiB | "
          "XLA peak GiB |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for variant, size, remat, fsdp in itertools.product(args.variants, args.sizes, args.remat, args.fsdp):
        r = step_memory(variant, size, args.batch, remat == "on", fsdp == "on", args.dtype, args.compile)
        peak = "–" if r["xla_peak_gib"] is None else f"{r['xla_peak_gib']:.2f}"
        print(f"| {variant} | {size}² | {remat} | {fsdp} | {r['state_gib']:.3f} | {r['grads_gib']:.3f} | "
              f"{r['activations_gib']:.2f} | {peak} |", flush=True)
        if r["compile_s"] is not None:
            print(f"  (compiled in {r['compile_s']:.0f} s)", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
