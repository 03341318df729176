"""Every form of each hand-written op, forward and backward, on the backend this runs on.

    python -m experiments.ops_benchmark [--batch 2] [--size 512] [--repeats 5]

The shapes are those of a SegFormer-B0 training step at ``size``² crops: the decode head's
150-class logits upsampled from size/4 to size (the loss's resize), the head's upsampling of
stage 4 (256 channels, size/32 to size/4), the attention of stage 1 (one head of 32, size/4
squared queries on keys reduced 8×8) and stage 3 (five heads, keys reduced 2×2), and the
Mix-FFN's 3×3 depthwise conv of stage 1 (128 channels at size/4) and stage 3 (640 channels
at size/16), and the attention's sequence reduction of stage 1 (8×8, 32 channels at size/4)
and stage 3 (2×2, 160 channels at size/16).
Each form is jitted, run ``--warmup`` times, then timed ``--repeats`` times (median);
"backward" is the gradient of ``sum(op(x) * g)`` with respect to the input (and the kernel),
with ``g`` an argument (a constant ``g`` lets XLA fold the whole backward pass at compile time).
The ratio is each form's time over the default form's, in the same process.
"""

from __future__ import annotations

import argparse
import platform
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from experiments.harness import time_calls
from segformer_jax import host_memory
from segformer_jax.models import ops
from segformer_jax.tables import markdown_table


def _median_ms(fn: Callable[..., object], args: tuple, warmup: int, repeats: int) -> float:
    """Median wall-clock ms of ``fn(*args)`` (results awaited)."""
    return time_calls(lambda: jax.block_until_ready(fn(*args)), warmup, repeats).median_ms


def resize_rows(batch: int, side: int, size: int, channels: int, warmup: int,
                repeats: int) -> list[tuple[str, str, float, float]]:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, side, side, channels), dtype=np.float32))
    g = jnp.asarray(rng.standard_normal((batch, size, size, channels), dtype=np.float32))
    rows = []
    for form in ops.RESIZE_FORMS:
        forward = jax.jit(lambda v, f=form: ops.resize_bilinear(v, (size, size), form=f))
        backward = jax.jit(jax.grad(
            lambda v, w, f=form: jnp.sum(ops.resize_bilinear(v, (size, size), form=f) * w)))
        rows.append((f"resize {channels}ch {side}²→{size}²", form,
                     _median_ms(forward, (x,), warmup, repeats),
                     _median_ms(backward, (x, g), warmup, repeats)))
    return rows


def attention_rows(batch: int, queries: int, keys: int, heads: int, depth: int, warmup: int,
                   repeats: int) -> list[tuple[str, str, float, float]]:
    """``ops.attention`` against ``jax.nn.dot_product_attention`` (the same forward)."""
    rng = np.random.default_rng(2)
    q = jnp.asarray(rng.standard_normal((batch, queries, heads, depth), dtype=np.float32))
    k, v = (jnp.asarray(rng.standard_normal((batch, keys, heads, depth), dtype=np.float32))
            for _ in range(2))
    g = jnp.asarray(rng.standard_normal(q.shape, dtype=np.float32))
    rows = []
    for form, fn in (("ops.attention", ops.attention),
                     ("jax.nn.dot_product_attention", jax.nn.dot_product_attention)):
        backward = jax.jit(jax.grad(lambda *a, f=fn: jnp.sum(f(*a[:3]) * a[3]), argnums=(0, 1, 2)))
        rows.append((f"attention {heads}×{depth} {queries}q {keys}k", form,
                     _median_ms(jax.jit(fn), (q, k, v), warmup, repeats),
                     _median_ms(backward, (q, k, v, g), warmup, repeats)))
    return rows


def conv_rows(batch: int, side: int, channels: int, warmup: int,
              repeats: int) -> list[tuple[str, str, float, float]]:
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((batch, side, side, channels), dtype=np.float32))
    kernel = jnp.asarray(rng.standard_normal((3, 3, channels), dtype=np.float32))
    bias = jnp.zeros((channels,), jnp.float32)
    g = jnp.asarray(rng.standard_normal(x.shape, dtype=np.float32))
    rows = []
    for form in ops.CONV_FORMS:
        forward = jax.jit(lambda v, k, f=form: ops.depthwise_conv3x3(v, k, bias, form=f))
        backward = jax.jit(jax.grad(
            lambda v, k, w, f=form: jnp.sum(ops.depthwise_conv3x3(v, k, bias, form=f) * w),
            argnums=(0, 1)))
        rows.append((f"dwconv3x3 {channels}ch {side}²", form,
                     _median_ms(forward, (x, kernel), warmup, repeats),
                     _median_ms(backward, (x, kernel, g), warmup, repeats)))
    return rows


def reduction_rows(batch: int, side: int, channels: int, ratio: int, warmup: int,
                   repeats: int) -> list[tuple[str, str, float, float]]:
    """The attention's sequence reduction (a ratio×ratio conv at stride ratio) in each form."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((batch, side, side, channels), dtype=np.float32))
    kernel = jnp.asarray(rng.standard_normal((ratio, ratio, channels, channels), dtype=np.float32))
    g = jnp.asarray(rng.standard_normal((batch, side // ratio, side // ratio, channels), dtype=np.float32))
    rows = []
    for form in ops.REDUCTION_FORMS:
        forward = jax.jit(lambda v, k, f=form: ops.reduction_conv(v, k, form=f))
        backward = jax.jit(jax.grad(
            lambda v, k, w, f=form: jnp.sum(ops.reduction_conv(v, k, form=f) * w), argnums=(0, 1)))
        rows.append((f"reduction {ratio}×{ratio} {channels}ch {side}²", form,
                     _median_ms(forward, (x, kernel), warmup, repeats),
                     _median_ms(backward, (x, kernel, g), warmup, repeats)))
    return rows


def all_rows(batch: int, size: int, warmup: int, repeats: int) -> list[tuple[str, str, float, float]]:
    """``(op, form, forward ms, backward ms)`` of every form of every op at a B0 step's
    shapes for ``size``² crops (the module doc)."""
    tokens = (size // 4) ** 2  # stage 1: size/4 squared queries, keys reduced 8×8
    rows = resize_rows(batch, size // 4, size, 150, warmup, repeats)
    rows += resize_rows(batch, size // 32, size // 4, 256, warmup, repeats)
    rows += attention_rows(batch, tokens, tokens // 64, 1, 32, warmup, repeats)
    rows += attention_rows(batch, tokens // 16, tokens // 64, 5, 32, warmup, repeats)
    rows += conv_rows(batch, size // 4, 128, warmup, repeats)
    rows += conv_rows(batch, size // 16, 640, warmup, repeats)
    rows += reduction_rows(batch, size // 4, 32, 8, warmup, repeats)
    rows += reduction_rows(batch, size // 16, 160, 2, warmup, repeats)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m experiments.ops_benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=512, help="training crop side (multiple of 32)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    if args.size % 32 or args.size < 32:
        p.error(f"--size must be a positive multiple of 32; got {args.size}")
    host_memory.keep_freed_memory(announce=True)   # as the commands and the other benchmarks
    device = jax.devices()[0]
    print(f"# {device.platform} ({device.device_kind}), jax {jax.__version__}, "
          f"{platform.machine()}, batch {args.batch}, crop {args.size}²\n")
    rows = all_rows(args.batch, args.size, args.warmup, args.repeats)
    default: dict[str, tuple[float, float]] = {}
    cells = []
    for op, form, fwd, bwd in rows:
        base_f, base_b = default.setdefault(op, (fwd, bwd))
        cells.append([op, form, f"{fwd:.2f}", f"{bwd:.2f}", f"{fwd / base_f:.2f}", f"{bwd / base_b:.2f}"])
    print(markdown_table(["op", "form", "forward (ms)", "backward (ms)", "forward / default",
                          "backward / default"], cells, numbers_from=2))


if __name__ == "__main__":
    main()
