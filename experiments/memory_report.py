"""Memory per device of one training step: train state, saved activations, XLA's peak.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
        python -m experiments.memory_report --variants b0 b2 b5 --sizes 512 1024 [--compile]
    XLA_FLAGS=... python -m experiments.memory_report --task image_classification \\
        --sizes 224 --batch 128     # ImageNet pretraining: PVT v2's 128 images per GPU

Per configuration (variant, crop, images per device, remat per MiT block, FSDP over all
devices or replicated parameters), for the step ``segformer_jax.train`` runs
(``train.jit_train_step``, built by ``experiments.train_steps`` from the default run config,
or for ``--task image_classification`` from ``configs/imagenet.py``'s, 1000 classes):

* ``state``: this device's share of parameters + two Adam moments + BN statistics, from
  the shardings ``segformer_jax.sharding`` gives the leaves (exact).
* ``activations``: what the backward pass keeps, as JAX's autodiff saves it, without
  compiling: the residuals of ``jax.vjp`` of the loss with respect to the parameters (the
  leaves of the returned vjp function), less those that are the step's own inputs
  (parameters, BN statistics, the batch), which the state and the batch hold anyway. What
  remat changes. (It equals JAX's ``saved_residuals`` without its "argument" entries.)
* ``XLA peak`` (``--compile``, slow: minutes per B5 compile on a CPU):
  ``experiments.xla_stats.program_bytes`` of the compiled, sharded train step (arguments +
  temporaries + outputs not aliasing the donated state). XLA:CPU's scheduler does not keep
  recomputation late, so on CPU this figure is the same with and without remat (measured,
  even for a plain MLP chain); GPU and TPU schedulers do realise remat's savings. Only
  remat-off rows compile.

Estimate for an accelerator: ``state + gradients (= the parameter share) + activations +
workspace``, the last being what XLA peak shows beyond the rest.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp

from experiments import train_steps, xla_stats
from segformer_jax.constants import IGNORE_INDEX


def _bytes(leaf: Any) -> int:
    """Bytes of one array or shape (PRNG keys, with no itemsize: negligible, 0)."""
    itemsize = getattr(leaf.dtype, "itemsize", 0)
    return math.prod(leaf.shape) * itemsize


def saved_activation_bytes(model: Any, variables: dict[str, Any], images: Any, labels: Any,
                           loss_reduction: str) -> int:
    """Bytes of the residuals the backward pass of the training loss keeps, the step's
    inputs excluded (see the module docstring); shapes only, nothing is computed. One
    label per image (classification): the cross-entropy of the logits."""
    import optax

    from segformer_jax.losses import segmentation_loss
    inputs_seen: dict[str, list[bool]] = {}

    def task_loss(logits: Any, y: Any) -> jax.Array:
        if y.ndim == 1:
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return segmentation_loss(logits, y, IGNORE_INDEX, loss_reduction)

    def residuals(params: Any, batch_stats: Any, x: Any, y: Any) -> list[Any]:
        def loss(p: Any) -> jax.Array:
            logits, _ = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                    mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
            return task_loss(logits, y)

        leaves = jax.tree.leaves(jax.vjp(loss, params)[1])
        inputs = jax.tree.leaves((params, batch_stats, x, y))
        inputs_seen["flags"] = [any(leaf is i for i in inputs) for leaf in leaves]
        return leaves

    shapes = jax.eval_shape(residuals, variables["params"], variables["batch_stats"], images,
                            labels)
    return sum(_bytes(s) for s, is_input in zip(shapes, inputs_seen["flags"]) if not is_input)


def step_memory(variant: str, size: int, per_device_batch: int, remat: bool, fsdp: bool,
                dtype: str, compile_step: bool, num_labels: int = 150,
                task: str = "semantic_segmentation") -> dict[str, Any]:
    """Memory figures of one configuration, per device (see the module docstring)."""
    from segformer_jax.run_config import default_config, model_config, use_imagenet_recipe

    devices = jax.device_count()
    config = default_config()
    if task == "image_classification":
        use_imagenet_recipe(config, variant, batch=per_device_batch * devices)
    else:
        config.model.variant = variant
    seg_config = model_config(config, num_labels)
    config.mesh.data, config.mesh.fsdp = (1, devices) if fsdp else (devices, 1)
    config.model.dtype, config.model.remat = dtype, remat
    step = train_steps.build(config, seg_config, abstract=True)
    mesh = step.mesh

    def per_device(leaf: Any) -> int:
        return _bytes(leaf) // math.prod(mesh.shape[a] for a in leaf.sharding.spec if a is not None)

    state_bytes = sum(per_device(x) for x in jax.tree.leaves(step.state))
    params_bytes = sum(per_device(x) for x in jax.tree.leaves(step.state["params"]))
    image = jax.ShapeDtypeStruct((per_device_batch, size, size, 3), jnp.float32)
    per_pixel = task == "semantic_segmentation"
    label = jax.ShapeDtypeStruct((per_device_batch, size, size) if per_pixel else (per_device_batch,),
                                 jnp.int32)
    activations = saved_activation_bytes(step.model, step.state, image, label,
                                         config.loss_reduction)
    out = {"variant": variant, "size": size, "batch": per_device_batch, "remat": remat,
           "fsdp": fsdp, "devices": devices, "state_gib": state_bytes / 2**30,
           "grads_gib": params_bytes / 2**30, "activations_gib": activations / 2**30,
           "xla_peak_gib": None, "compile_s": None}
    if compile_step and not remat:
        batch = train_steps.abstract_batch(per_device_batch * devices, size, size, 3, mesh, per_pixel)
        start = time.perf_counter()
        compiled = step.step.lower(step.state, batch).compile()
        out["compile_s"] = time.perf_counter() - start
        peak = xla_stats.program_bytes(compiled)
        out["xla_peak_gib"] = None if peak is None else peak / 2**30
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m experiments.memory_report",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", default=["b0", "b2", "b5"])
    p.add_argument("--sizes", nargs="+", type=int, default=[512, 1024])
    p.add_argument("--batch", type=int, default=2, help="images per device (default 2, NVlabs' 8 GPUs x 2)")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--remat", nargs="+", default=["off", "on"], choices=["off", "on"])
    p.add_argument("--fsdp", nargs="+", default=["off", "on"], choices=["off", "on"])
    p.add_argument("--compile", action="store_true", help="also compile remat-off steps for XLA's peak")
    p.add_argument("--task", default="semantic_segmentation",
                   choices=["semantic_segmentation", "image_classification"])
    args = p.parse_args(argv)
    classes = 1000 if args.task == "image_classification" else 150
    print(f"{jax.device_count()} x {jax.devices()[0].platform} devices, {args.task}, compute "
          f"{args.dtype}, float32 parameters and Adam moments, {classes} classes, {args.batch} "
          "images per device\n")
    print("| variant | crop | remat | FSDP | state GiB | gradients GiB | saved activations GiB | "
          "XLA peak GiB |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for variant, size, remat, fsdp in itertools.product(args.variants, args.sizes, args.remat, args.fsdp):
        r = step_memory(variant, size, args.batch, remat == "on", fsdp == "on", args.dtype, args.compile,
                        classes, args.task)
        peak = "–" if r["xla_peak_gib"] is None else f"{r['xla_peak_gib']:.2f}"
        print(f"| {variant} | {size}² | {remat} | {fsdp} | {r['state_gib']:.3f} | {r['grads_gib']:.3f} | "
              f"{r['activations_gib']:.2f} | {peak} |", flush=True)
        if r["compile_s"] is not None:
            print(f"  (compiled in {r['compile_s']:.0f} s)", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
