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
import dataclasses
import pathlib
import platform
import re
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import segformer_jax
from experiments import xla_stats
from segformer_jax import SegformerConfig, host_memory

NUM_LABELS = 150  # ADE20K
# Table of the paper (Xie et al. 2021), ADE20K, reported as "GFLOPs" but counted as
# multiply-accumulates (mmcv's counter): (GMACs, input side). B5's ADE20K figure is for its
# 640x640 crop (the analytic count below gives 111.5 G at 512x512 and 183.1 G at 640x640).
PAPER_GMACS = {"b0": (8.4, 512), "b1": (15.9, 512), "b2": (62.4, 512), "b3": (79.0, 512),
               "b4": (95.7, 512), "b5": (183.3, 640)}


# -- command line -----------------------------------------------------------------------

def parse_size(text: str) -> tuple[int, int]:
    """``512`` -> (512, 512); ``512x1024`` -> (512, 1024) as (height, width)."""
    parts = text.lower().split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}") from None
    if len(sizes) == 1:
        sizes *= 2
    if len(sizes) != 2 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}")
    return sizes[0], sizes[1]


def benchmark_parser(module: str, doc: str, batch: int, repeats: int,
                     warmup_help: str) -> argparse.ArgumentParser:
    """The flags of both single benchmarks (this one and benchmark_train): variant, batch,
    size, repeats, warmup, torch threads, --skip-torch."""
    p = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="b0", choices=sorted(PAPER_GMACS))
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--size", type=parse_size, default=(512, 512), help="N or HxW (default 512)")
    p.add_argument("--repeats", type=int, default=repeats, help=f"timed runs (default {repeats})")
    p.add_argument("--warmup", type=int, default=2, help=f"{warmup_help} (default 2)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--skip-torch", action="store_true",
                   help="time JAX only, with freshly initialised weights (no transformers)")
    return p


def parse_checked(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``p``'s arguments, with counts that cannot be run refused."""
    args = p.parse_args(argv)
    if args.batch < 1 or args.repeats < 1 or args.warmup < 0:
        p.error("--batch and --repeats must be >= 1, --warmup >= 0")
    return args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return parse_checked(benchmark_parser("experiments.benchmark_inference", __doc__, 1, 5, "untimed runs first"), argv)


# -- timing -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Timing:
    seconds: tuple[float, ...]

    @property
    def median_ms(self) -> float:
        return 1e3 * statistics.median(self.seconds)

    def __str__(self) -> str:
        return (f"median {self.median_ms:9.1f} ms   min {1e3 * min(self.seconds):9.1f} ms   "
                f"max {1e3 * max(self.seconds):9.1f} ms   ({len(self.seconds)} runs)")


def time_calls(call: Callable[[], Any], warmup: int, repeats: int) -> Timing:
    """Runs ``call`` ``warmup`` times untimed, then ``repeats`` times timed (wall clock)."""
    for _ in range(warmup):
        call()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return Timing(tuple(seconds))


def time_interleaved(calls: Mapping[str, Callable[[], Any]], warmup: int,
                     repeats: int) -> dict[str, Timing]:
    """Like ``time_calls`` for several calls, run in turn: round r times each call once
    (in reversed order on odd rounds), so that a machine whose speed drifts over minutes
    (this project's shared 2-core VM: up to 1.8x between runs) slows all of them alike,
    and a ratio of their medians compares them under the same conditions."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for r in range(repeats):
        for name in (list(calls) if r % 2 == 0 else list(reversed(calls))):
            start = time.perf_counter()
            calls[name]()
            seconds[name].append(time.perf_counter() - start)
    return {name: Timing(tuple(s)) for name, s in seconds.items()}


# -- models -----------------------------------------------------------------------------

def build_torch_model(config: SegformerConfig, task: str = "semantic_segmentation") -> Any:
    """transformers' SegFormer for ``task`` (``SegformerForSemanticSegmentation`` or
    ``SegformerForImageClassification``) with our config and torch's seeded random init,
    eval mode."""
    import torch
    import transformers

    cfg_dict = config.to_dict()
    cfg_dict.pop("model_type")
    torch_config = transformers.SegformerConfig(**cfg_dict, attn_implementation="eager")
    torch.manual_seed(0)
    cls = {"semantic_segmentation": transformers.SegformerForSemanticSegmentation,
           "image_classification": transformers.SegformerForImageClassification}[task]
    return cls(torch_config).eval()


def convert(torch_model: Any) -> tuple[SegformerConfig, dict[str, Any]]:
    """Our variables for ``torch_model``, through a Hub-layout checkpoint and our converter."""
    with tempfile.TemporaryDirectory() as directory:
        torch_model.save_pretrained(directory)
        return segformer_jax.from_pretrained(directory)


def run_torch(torch_model: Any, images: Any) -> Any:
    import torch

    with torch.inference_mode():
        return torch_model(pixel_values=images).logits


# -- FLOPs ------------------------------------------------------------------------------

def conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def paper_style_macs(config: SegformerConfig, height: int, width: int) -> int:
    """Multiply-accumulates of one image through the unfolded network, as the paper counts.

    Patch-embedding convs; per block q/k/v/output Dense, the sr conv, QK^T and PV; Mix-FFN
    dense1, 3x3 depthwise conv, dense2; the head's linear_c_i at each stage's resolution,
    linear_fuse 4D->D and the classifier D->K at 1/4 resolution. Norms, activations,
    softmax, biases and the bilinear upsampling are not counted.
    """
    macs = 0
    h, w, c_in = height, width, config.num_channels
    stage_tokens: list[tuple[int, int]] = []  # (tokens, channels) of each stage's output
    for i, c in enumerate(config.hidden_sizes):
        k, s = config.patch_sizes[i], config.strides[i]
        h, w = conv_out(h, k, s, k // 2), conv_out(w, k, s, k // 2)
        n = h * w
        macs += n * k * k * c_in * c  # overlapping patch embedding
        sr = config.sr_ratios[i]
        n_kv = (h // sr) * (w // sr) if sr > 1 else n
        hidden = int(c * config.mlp_ratios[i])
        block = (2 * n * c * c            # query and output projections
                 + 2 * n_kv * c * c       # key and value projections
                 + 2 * n * n_kv * c)      # QK^T and PV (summed over heads)
        if sr > 1:
            block += n_kv * sr * sr * c * c  # spatial-reduction conv
        block += 2 * n * c * hidden + n * hidden * 9  # Mix-FFN: dense1, dense2, 3x3 dwconv
        macs += config.depths[i] * block
        stage_tokens.append((n, c))
        c_in = c
    d = config.decoder_hidden_size
    n_quarter = stage_tokens[0][0]
    macs += sum(n * c * d for n, c in stage_tokens)                 # linear_c_i
    macs += n_quarter * len(stage_tokens) * d * d                   # linear_fuse 4D -> D
    macs += n_quarter * d * config.num_labels                       # classifier D -> K
    return macs


# -- memory -----------------------------------------------------------------------------

def process_peak_rss_bytes() -> int:
    """Peak resident set of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


# -- report -----------------------------------------------------------------------------

def import_torch(skip: bool, threads: int | None) -> Any | None:
    """torch (with ``threads`` intra-op threads when given), or None when it is skipped."""
    if skip:
        return None
    from experiments.torchvision_shim import allow_torchvision_without_extension
    allow_torchvision_without_extension()  # transformers imports torchvision when installed
    import torch
    if threads is not None:
        torch.set_num_threads(threads)
    return torch


def print_machine(torch_module: Any | None) -> None:
    print("machine")
    print(f"  cpu          {platform.processor() or '?'} / {platform.machine()}, "
          f"os.cpu_count() = {os.cpu_count()}")
    device = jax.devices()[0]
    print(f"  jax          {jax.__version__}, backend {jax.default_backend()}, "
          f"device {device.device_kind} (x{jax.device_count()})")
    if torch_module is not None:
        print(f"  torch        {torch_module.__version__}, "
              f"threads {torch_module.get_num_threads()}")
    print(f"  python       {platform.python_version()}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    print(f"  load (1 min) {load:.2f}")
    cpus = os.cpu_count() or 1
    threads = torch_module.get_num_threads() if torch_module is not None else 0
    if threads > 1 and load + threads > cpus + 0.5:
        print(f"  WARNING: load {load:.1f} + {threads} torch threads > "
              f"{cpus} CPUs; torch's spin-waiting OpenMP threads")
        print("           can run many times slower on a busy machine: try --threads 1 "
              "or OMP_WAIT_POLICY=PASSIVE")


def cpu_peak_flops() -> tuple[float, str] | None:
    """The float32 peak this process's CPUs are stated at, and how: cores × clock × 2 FMA
    units × SIMD lanes (16 with AVX-512, 8 with AVX2) × 2 FLOPs per FMA. Zen 4 runs AVX-512
    on two 256-bit pipes, so half that is reached at best there. None off Linux."""
    try:
        info = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    mhz = re.search(r"^cpu MHz\s*:\s*([\d.]+)", info, re.M)
    if mhz is None:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    lanes = 16 if re.search(r"\bavx512f\b", info) else 8 if re.search(r"\bavx2\b", info) else 4
    ghz = float(mhz.group(1)) / 1000
    peak = cores * ghz * 1e9 * 2 * lanes * 2
    return peak, f"{cores} cores × {ghz:.2f} GHz × 2 FMA × {lanes} lanes × 2"


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
