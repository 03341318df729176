"""Inference benchmark: segformer_jax against transformers + torch, same weights, same process.

What it measures, for one SegFormer variant (b0…b5, ADE20K head with 150 classes):

* wall time of a forward pass (images -> logits) of our jitted Flax model and of
  ``transformers.SegformerForSemanticSegmentation`` under ``torch.inference_mode()``:
  ``--warmup`` untimed runs, then the median / min / max of ``--repeats`` timed runs;
* the compile time of our jitted function (its first call: trace + XLA compile + one run);
* the largest absolute difference between the two models' logits, so that the two timings
  are known to be of the same computation (the torch model's random weights are converted
  with our ``segformer_jax.from_pretrained``);
* the FLOPs that XLA's cost analysis counts for our compiled function, next to the paper's
  figure and to a paper-style count made analytically for the unfolded network;
* memory: the buffers of the compiled XLA program and the process's peak resident set.

Run it from the repository root::

    python -m experiments.benchmark_inference --variant b0 --size 512
    python -m experiments.benchmark_inference --variant b2 --size 512x1024 --threads 8

JAX's CPU thread pool is not set by ``--threads``, which only calls ``torch.set_num_threads``.
Time on an otherwise idle machine: when other processes hold some of the cores, torch's
OpenMP threads spin-wait against them and a forward pass can take tens of times longer
(the script prints the load average and warns); ``--threads 1`` or
``OMP_WAIT_POLICY=PASSIVE`` avoid that.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: never touch the network

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import segformer_jax
from experiments import xla_stats
from experiments.harness import (
    NUM_LABELS,
    PAPER_GMACS,
    benchmark_parser,
    build_torch_model,
    convert,
    import_torch,
    mib,
    paper_style_macs,
    parse_checked,
    print_machine,
    process_peak_rss_bytes,
    run_torch,
    time_calls,
)
from segformer_jax import SegformerConfig, host_memory

# -- command line -----------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return parse_checked(benchmark_parser("experiments.benchmark_inference", __doc__, 1, 5, "untimed runs first"), argv)


# -- timing -----------------------------------------------------------------------------


# -- models -----------------------------------------------------------------------------


# -- FLOPs ------------------------------------------------------------------------------


# -- memory -----------------------------------------------------------------------------


# -- report -----------------------------------------------------------------------------


def print_flops(config: SegformerConfig, variant: str, size: tuple[int, int],
                batch: int, flops: float | None) -> None:
    height, width = size
    print("compute per image")
    if flops is None:
        print("  XLA cost analysis      not reported by this backend")
    else:
        per_image = flops / batch
        print(f"  XLA cost analysis      {per_image / 1e9:8.2f} GFLOP   "
              f"= {per_image / 2e9:8.2f} GMACs (flops / 2)")
    paper_style = paper_style_macs(config, height, width)
    print(f"  paper-style, unfolded  {paper_style / 1e9:8.2f} GMACs (analytic, {height}x{width})")
    paper, side = PAPER_GMACS[variant]
    if (height, width) != (side, side):
        at_side = paper_style_macs(config, side, side)
        print(f"  paper-style, unfolded  {at_side / 1e9:8.2f} GMACs (analytic, {side}x{side})")
    print(f"  paper (ADE20K)         {paper:8.2f} GMACs ({side}x{side}, reported as 'GFLOPs')")
    print("  note: our decode head folds each stage's linear_c_i into its block of linear_fuse")
    print("        (the same function, fewer MACs), so XLA's count is below the paper's; XLA")
    print("        also counts elementwise ops (norms, GELU, softmax) as flops.")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    height, width = args.size
    torch = import_torch(args.skip_torch, args.threads)
    print_machine(torch)

    config = SegformerConfig.from_variant(args.variant, num_labels=NUM_LABELS)
    if args.skip_torch:
        torch_model = None
        variables = segformer_jax.init_variables(config)
    else:
        torch_model = build_torch_model(config)
        config, variables = convert(torch_model)
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(variables["params"]))
    print(f"model          SegFormer-{args.variant}, {NUM_LABELS} classes, "
          f"{n_params / 1e6:.2f} M parameters")
    print(f"input          batch {args.batch}, {height}x{width}, float32; "
          f"warmup {args.warmup}, repeats {args.repeats}")

    images = np.random.default_rng(0).standard_normal(
        (args.batch, height, width, config.num_channels), dtype=np.float32)
    x = jnp.asarray(images)  # NHWC
    model = segformer_jax.SegformerForSemanticSegmentation(config)
    fn = jax.jit(model.apply)

    start = time.perf_counter()
    jax_logits = jax.block_until_ready(fn(variables, x))
    first_call = time.perf_counter() - start
    compiled = fn.lower(variables, x).compile()  # from jit's cache: no second compile
    print(f"jax compile    first call (trace + compile + run) {first_call:.2f} s")

    jax_time = time_calls(lambda: jax.block_until_ready(fn(variables, x)),
                          args.warmup, args.repeats)
    print(f"jax            {jax_time}")

    torch_time = None
    if torch_model is not None:
        pixel_values = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())  # NCHW
        torch_logits = run_torch(torch_model, pixel_values).numpy()
        torch_time = time_calls(lambda: run_torch(torch_model, pixel_values),
                                args.warmup, args.repeats)
        print(f"torch          {torch_time}")
        ours = np.asarray(jax_logits).transpose(0, 3, 1, 2)
        if ours.shape != torch_logits.shape:
            print(f"agreement      SHAPES DIFFER: jax {ours.shape}, torch {torch_logits.shape}")
        else:
            diff = float(np.max(np.abs(ours - torch_logits)))
            scale = float(np.max(np.abs(torch_logits)))
            print(f"agreement      max |logits_jax - logits_torch| = {diff:.3e} "
                  f"(max |logit| {scale:.3e}), logits {tuple(ours.shape)} NCHW")

    print_flops(config, args.variant, args.size, args.batch, xla_stats.flops(compiled))
    program = xla_stats.program_bytes(compiled)
    print("memory")
    print(f"  XLA program (args + temps + outputs) "
          f"{mib(program) if program is not None else 'not reported'}")
    print(f"  process peak RSS (ru_maxrss)         {mib(process_peak_rss_bytes())}")

    head = f"{args.variant} bs{args.batch} {height}x{width}: jax {jax_time.median_ms:.1f} ms"
    if torch_time is None:
        print(f"{head}, torch skipped")
    else:
        print(f"{head}, torch {torch_time.median_ms:.1f} ms, "
              f"speed-up {torch_time.median_ms / jax_time.median_ms:.2f}x (torch/jax)")


if __name__ == "__main__":
    host_memory.keep_freed_memory(announce=True)
    main()
