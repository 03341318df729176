"""Where the encoder's time goes: each part of the Mix Transformer timed on its own, forward
and forward + backward, at the shapes of a training step, and the whole step's
``jax.profiler`` trace summed by XLA operation kind.

    python -m experiments.profile_encoder [--task image_classification] [--variant b0]
        [--batch 32] [--size 224] [--repeats 5] [--tiny] [--torch [--threads N]]

Part 1: per stage, the overlapping patch embedding, one block, and the block's attention
(with its sequence-reduction conv) and Mix-FFN (dense, depthwise conv, GELU, dense) apart,
each jitted alone on random inputs of the stage's shape (batch ``--batch``, train mode);
the block times are multiplied by the stage's depth in the total. Part 2: the trainer's own
step (``experiments.train_steps``) traced for two steps after warming up; the trace's
events (XLA:CPU thunks and fusions) summed by kind with their share, the names' trailing
numbers dropped. Both on the backend this runs on, in milliseconds, median of
``--repeats``. The sums of part 1 exceed the step: each part pays its own dispatch and
loses fusion across its borders. ``--tiny``: the variant's tiny form (widths 8-32, one
block a stage; ``TINY_MODEL``), for a check that the script runs (a test does, on a CPU),
at a fraction of the compile time.

``--torch`` adds a third table: each part (patch embedding, attention, Mix-FFN) forward +
backward in train mode against transformers' own module (``SegformerOverlapPatchEmbeddings``,
``SegformerAttention``, ``SegformerMixMLP``) of the same config on the same input, timed in
turn (``harness.time_interleaved``), with their ratio: where the encoder loses to torch.
Stage 1's patch embedding is differentiated for its parameters only, as in a step (the
image needs no gradient); the other parts for their parameters and input.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import re
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments.harness import import_torch, time_calls, time_interleaved
from segformer_jax import host_memory
from segformer_jax.tables import markdown_table

# ``--tiny``: the model overrides of experiments.accelerator_report's tiny settings.
TINY_MODEL = {"hidden_sizes": (8, 16, 24, 32), "num_attention_heads": (1, 2, 3, 4),
              "depths": (1, 1, 1, 1), "decoder_hidden_size": 16}


def _median_ms(fn: Callable[..., Any], args: tuple, repeats: int) -> float:
    """Median wall-clock ms of ``fn(*args)`` (results awaited), after one untimed call."""
    return time_calls(lambda: jax.block_until_ready(fn(*args)), 1, repeats).median_ms


def _forward_backward(module: Any, x: jax.Array, repeats: int, *train: bool) -> tuple[float, float]:
    """(forward ms, forward + backward ms) of a module on ``x``."""
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    params = module.init(rngs, x, *train)["params"]

    def apply(p: Any, v: jax.Array) -> jax.Array:
        return module.apply({"params": p}, v, *train, rngs={"dropout": jax.random.key(2)})

    grad = jax.jit(jax.grad(lambda p, v: jnp.sum(apply(p, v)) * 1e-3, argnums=(0, 1)))
    return _median_ms(jax.jit(apply), (params, x), repeats), _median_ms(grad, (params, x), repeats)


def part_rows(variant: str, batch: int, size: int, repeats: int,
              overrides: dict[str, Any] | None = None) -> list[tuple[str, float, float, int]]:
    """``(part, forward ms, forward + backward ms, times per step)`` of the encoder's parts
    (``overrides``: model config fields set over the variant's, e.g. ``TINY_MODEL``)."""
    import segformer_jax as sj
    from segformer_jax.models import mit
    config = sj.SegformerConfig.from_variant(variant, num_labels=1000, **(overrides or {}))
    rng = np.random.default_rng(0)
    rows = []
    x = jnp.asarray(rng.standard_normal((batch, size, size, 3), np.float32))
    for i in range(4):
        rows.append((f"stage {i + 1} patch embedding", *_forward_backward(
            mit.OverlapPatchEmbeddings(config, i), x, repeats), 1))
        side = -(-size // 2 ** (i + 2))
        x = jnp.asarray(rng.standard_normal((batch, side, side, config.hidden_sizes[i]), np.float32))
        depth = config.depths[i]
        rows.append((f"stage {i + 1} block ({side}², {config.hidden_sizes[i]} ch)",
                     *_forward_backward(mit.MixTransformerLayer(config, i, 0.1), x, repeats, True), depth))
        rows.append((f"  attention, sr {config.sr_ratios[i]}",
                     *_forward_backward(mit.EfficientSelfAttention(config, i), x, repeats, False), depth))
        rows.append(("  Mix-FFN", *_forward_backward(mit.MixFFN(config, i), x, repeats, False), depth))
    return rows


def _our_step(module: Any, x: jax.Array, train: tuple[bool, ...], input_grad: bool) -> Callable[[], Any]:
    """A call running ``module``'s forward + backward (parameters, and ``x`` if asked)."""
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    params = module.init(rngs, x, *train)["params"]

    def loss(p: Any, v: jax.Array) -> jax.Array:
        out = module.apply({"params": p}, v, *train, rngs={"dropout": jax.random.key(2)})
        return jnp.sum(out) * 1e-3

    grad = jax.jit(jax.grad(loss, argnums=(0, 1) if input_grad else 0))
    return lambda: jax.block_until_ready(grad(params, x))


def _torch_step(torch: Any, module: Any, x: np.ndarray, size: tuple[int, int] | None,
                input_grad: bool) -> Callable[[], None]:
    """The same for a transformers module in train mode; ``size``: the (h, w) that the
    sequence modules take beside their (N, h·w, C) input."""
    module.train()
    inputs = torch.tensor(x).requires_grad_(input_grad)

    def step() -> None:
        for p in module.parameters():
            p.grad = None
        inputs.grad = None
        out = module(inputs, *size) if size else module(inputs)
        (out[0] if isinstance(out, tuple) else out).sum().mul(1e-3).backward()
    return step


def torch_rows(variant: str, batch: int, size: int, repeats: int, threads: int | None = None,
               overrides: dict[str, Any] | None = None) -> list[tuple[str, float, float]]:
    """``(part, our ms, torch's ms)`` forward + backward of each part against transformers'."""
    torch = import_torch(False, threads)
    import transformers
    from transformers.models.segformer import modeling_segformer as hf

    import segformer_jax as sj
    from segformer_jax.models import mit
    config = sj.SegformerConfig.from_variant(variant, num_labels=1000, **(overrides or {}))
    fields = config.to_dict()
    fields.pop("model_type")
    theirs_config = transformers.SegformerConfig(**fields, attn_implementation="eager")
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    calls: dict[str, Callable[[], Any]] = {}
    x = rng.standard_normal((batch, size, size, config.num_channels), np.float32)
    for i in range(4):
        c = config.hidden_sizes[i]
        embed = hf.SegformerOverlapPatchEmbeddings(config.patch_sizes[i], config.strides[i],
                                                   x.shape[-1], c)
        calls[f"stage {i + 1} patch embedding"] = _our_step(mit.OverlapPatchEmbeddings(config, i),
                                                            jnp.asarray(x), (), i > 0)
        calls[f"stage {i + 1} patch embedding torch"] = _torch_step(
            torch, embed, x.transpose(0, 3, 1, 2).copy(), None, i > 0)
        side = -(-size // 2 ** (i + 2))
        x = rng.standard_normal((batch, side, side, c), np.float32)
        sequence = x.reshape(batch, side * side, c)
        attention = hf.SegformerAttention(theirs_config, c, config.num_attention_heads[i],
                                          config.sr_ratios[i])
        calls[f"stage {i + 1} attention"] = _our_step(mit.EfficientSelfAttention(config, i),
                                                      jnp.asarray(x), (False,), True)
        calls[f"stage {i + 1} attention torch"] = _torch_step(torch, attention, sequence, (side, side), True)
        ffn = hf.SegformerMixMLP(theirs_config, in_features=c,
                                 hidden_features=int(c * config.mlp_ratios[i]))
        calls[f"stage {i + 1} Mix-FFN"] = _our_step(mit.MixFFN(config, i), jnp.asarray(x), (False,), True)
        calls[f"stage {i + 1} Mix-FFN torch"] = _torch_step(torch, ffn, sequence, (side, side), True)
    timings = time_interleaved(calls, 1, repeats)
    return [(name, timings[name].median_ms, timings[f"{name} torch"].median_ms)
            for name in calls if not name.endswith(" torch")]


def step_profile(task: str, variant: str, batch: int, size: int,
                 overrides: dict[str, Any] | None = None) -> list[tuple[str, float, int]]:
    """``(operation kind, ms per step, count per step)`` of the trainer's step, from a
    ``jax.profiler`` trace of two steps (``overrides``: as ``part_rows``)."""
    from experiments import train_steps
    from segformer_jax import run_config
    config = run_config.default_config()
    if task == "image_classification":
        run_config.use_imagenet_recipe(config, variant, batch=batch)
        config.data.name = "synthetic_classification"
        classes, shape = 1000, (batch,)
    else:
        run_config.use_variant(config, variant)
        config.batch_size = batch
        classes, shape = 150, (batch, size, size)
    for key, value in (overrides or {}).items():
        config.model.overrides[key] = value
    step = train_steps.build(config, run_config.model_config(config, classes))
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch, size, size, 3), dtype=np.float32)
    labels = rng.integers(0, classes, shape).astype(np.int32)
    compiled = train_steps.compile_step(step, train_steps.device_batch(images, labels, step.mesh))
    compiled.one_step()
    directory = pathlib.Path(tempfile.mkdtemp(prefix="segformer-profile-"))
    jax.profiler.start_trace(str(directory))
    for _ in range(2):
        compiled.one_step()
    jax.profiler.stop_trace()
    trace = max(directory.rglob("*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
    durations: collections.Counter = collections.Counter()
    counts: collections.Counter = collections.Counter()
    for event in json.load(gzip.open(trace))["traceEvents"]:
        name = event.get("name", "")
        if event.get("ph") != "X" or name.startswith(("ThunkExecutor", "$", "PjitFunction")):
            continue
        kind = re.sub(r"[.\d]+$", "", name)
        durations[kind] += event["dur"]
        counts[kind] += 1
    return [(kind, us / 2 / 1000, counts[kind] // 2) for kind, us in durations.most_common()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.profile_encoder", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="image_classification",
                        choices=("image_classification", "semantic_segmentation"))
    parser.add_argument("--variant", default="b0")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--top", type=int, default=15, help="operation kinds shown (default 15)")
    parser.add_argument("--tiny", action="store_true",
                        help="the variant at tiny widths, one block a stage: checks that this runs")
    parser.add_argument("--torch", action="store_true",
                        help="also time each part against transformers' module (a third table)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    overrides = TINY_MODEL if args.tiny else None
    device = jax.devices()[0]
    print(f"# {device.platform} ({device.device_kind}), jax {jax.__version__}; {args.task} "
          f"{args.variant}{' (tiny)' if args.tiny else ''}, batch {args.batch}, {args.size}²\n")
    parts = part_rows(args.variant, args.batch, args.size, args.repeats, overrides)
    total = sum(both * times for part, _, both, times in parts if not part.startswith("  "))
    rows = [[part, f"{forward:.1f}", f"{both:.1f}", f"×{times}"] for part, forward, both, times in parts]
    print(markdown_table(["part", "forward (ms)", "forward + backward (ms)", "per step"],
                         [*rows, ["encoder, parts summed", "", f"{total:.0f}", ""]], numbers_from=1) + "\n")
    rows = step_profile(args.task, args.variant, args.batch, args.size, overrides)
    step_ms = sum(ms for _, ms, _ in rows)
    print(f"The step's operations (XLA's thunks, summed over threads: {step_ms:.0f} ms per step):\n")
    print(markdown_table(["operation kind", "ms per step", "share", "count"],
                         [[kind, f"{ms:.1f}", f"{100 * ms / step_ms:.1f} %", count]
                          for kind, ms, count in rows[:args.top]], numbers_from=1))
    if args.torch:
        rows = torch_rows(args.variant, args.batch, args.size, args.repeats, args.threads, overrides)
        print("\nEach part forward + backward against transformers' module (train mode):\n")
        print(markdown_table(["part", "ours (ms)", "transformers + torch (ms)", "torch / ours"],
                             [[part, f"{ours:.1f}", f"{theirs:.1f}", f"{theirs / ours:.2f}×"]
                              for part, ours, theirs in rows], numbers_from=1))
    return 0


if __name__ == "__main__":
    host_memory.keep_freed_memory(announce=True)
    raise SystemExit(main())
