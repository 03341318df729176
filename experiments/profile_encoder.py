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

``--torch`` adds two columns to part 1: each part forward + backward in train mode as
transformers' own module of the same config (``SegformerOverlapPatchEmbeddings``,
``SegformerLayer``, ``SegformerAttention``, ``SegformerMixMLP``) on the same input, timed in
turn with ours (``harness.time_interleaved``: this VM's speed drifts), and their ratio:
where the encoder loses to torch. Both differentiate the parameters and the input (a step
needs no gradient of the image, so stage 1's patch embedding is timed with a little more
than a step does on both sides).
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


def _forward_backward(module: Any, x: jax.Array, repeats: int, *train: bool,
                      against: Callable[[], Any] | None = None) -> tuple[float, float, float | None]:
    """(forward ms, forward + backward ms, ``against``'s ms or None) of a module on ``x``;
    ``against`` (torch's same part) is timed in turn with the forward + backward."""
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    params = module.init(rngs, x, *train)["params"]

    def apply(p: Any, v: jax.Array) -> jax.Array:
        return module.apply({"params": p}, v, *train, rngs={"dropout": jax.random.key(2)})

    grad = jax.jit(jax.grad(lambda p, v: jnp.sum(apply(p, v)) * 1e-3, argnums=(0, 1)))
    forward = _median_ms(jax.jit(apply), (params, x), repeats)
    if against is None:
        return forward, _median_ms(grad, (params, x), repeats), None
    timings = time_interleaved({"ours": lambda: jax.block_until_ready(grad(params, x)),
                                "torch": against}, 1, repeats)
    return forward, timings["ours"].median_ms, timings["torch"].median_ms


def _torch_step(torch: Any, module: Any, x: np.ndarray, size: tuple[int, int] | None) -> Callable[[], None]:
    """A transformers module's forward + backward in train mode, for its parameters and its
    input; ``size``: the (h, w) that the sequence modules take beside their (N, h·w, C) input."""
    module.train()
    inputs = torch.tensor(x).requires_grad_(True)

    def step() -> None:
        for p in module.parameters():
            p.grad = None
        inputs.grad = None
        out = module(inputs, *size) if size else module(inputs)
        (out[0] if isinstance(out, tuple) else out).sum().mul(1e-3).backward()
    return step


def part_rows(variant: str, batch: int, size: int, repeats: int,
              overrides: dict[str, Any] | None = None, torch_threads: int | None = None,
              against_torch: bool = False) -> list[tuple[str, float, float, float | None, int]]:
    """``(part, forward ms, forward + backward ms, torch's forward + backward ms or None,
    times per step)`` of the encoder's parts (``overrides``: model config fields set over
    the variant's, e.g. ``TINY_MODEL``). ``against_torch``: each part is also run as
    transformers' own module of the same config (``SegformerOverlapPatchEmbeddings``,
    ``SegformerLayer``, ``SegformerAttention``, ``SegformerMixMLP``), in train mode, timed
    in turn with ours."""
    import segformer_jax as sj
    from segformer_jax.models import mit
    config = sj.SegformerConfig.from_variant(variant, num_labels=1000, **(overrides or {}))
    theirs = None
    if against_torch:
        torch = import_torch(False, torch_threads)
        import transformers
        from transformers.models.segformer import modeling_segformer as hf
        fields = config.to_dict()
        fields.pop("model_type")
        hf_config = transformers.SegformerConfig(**fields, attn_implementation="eager")
        torch.manual_seed(0)

        def theirs(kind: str, i: int, x: np.ndarray) -> Callable[[], None]:
            c, side = config.hidden_sizes[i], x.shape[1]
            if kind == "embedding":
                return _torch_step(torch, hf.SegformerOverlapPatchEmbeddings(
                    config.patch_sizes[i], config.strides[i], x.shape[-1], c), x.transpose(0, 3, 1, 2).copy(), None)
            module = {"block": lambda: hf.SegformerLayer(hf_config, c, config.num_attention_heads[i], 0.1,
                                                         config.sr_ratios[i], config.mlp_ratios[i]),
                      "attention": lambda: hf.SegformerAttention(hf_config, c, config.num_attention_heads[i],
                                                                 config.sr_ratios[i]),
                      "mlp": lambda: hf.SegformerMixMLP(hf_config, in_features=c,
                                                        hidden_features=int(c * config.mlp_ratios[i]))}[kind]()
            return _torch_step(torch, module, x.reshape(x.shape[0], side * side, c), (side, side))

    def timed(module: Any, kind: str, i: int, x: np.ndarray, *train: bool) -> tuple[float, float, float | None]:
        return _forward_backward(module, jnp.asarray(x), repeats, *train,
                                 against=theirs(kind, i, x) if theirs else None)

    rng = np.random.default_rng(0)
    rows = []
    x = rng.standard_normal((batch, size, size, 3), np.float32)
    for i in range(4):
        rows.append((f"stage {i + 1} patch embedding",
                     *timed(mit.OverlapPatchEmbeddings(config, i), "embedding", i, x), 1))
        side = -(-size // 2 ** (i + 2))
        x = rng.standard_normal((batch, side, side, config.hidden_sizes[i]), np.float32)
        depth = config.depths[i]
        rows.append((f"stage {i + 1} block ({side}², {config.hidden_sizes[i]} ch)",
                     *timed(mit.MixTransformerLayer(config, i, 0.1), "block", i, x, True), depth))
        rows.append((f"  attention, sr {config.sr_ratios[i]}",
                     *timed(mit.EfficientSelfAttention(config, i), "attention", i, x, False), depth))
        rows.append(("  Mix-FFN", *timed(mit.MixFFN(config, i), "mlp", i, x, False), depth))
    return rows


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
                        help="also time each part against transformers' module (two more columns)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    overrides = TINY_MODEL if args.tiny else None
    device = jax.devices()[0]
    print(f"# {device.platform} ({device.device_kind}), jax {jax.__version__}; {args.task} "
          f"{args.variant}{' (tiny)' if args.tiny else ''}, batch {args.batch}, {args.size}²\n")
    parts = part_rows(args.variant, args.batch, args.size, args.repeats, overrides, args.threads,
                      args.torch)
    total = sum(both * times for part, _, both, _, times in parts if not part.startswith("  "))
    header = ["part", "forward (ms)", "forward + backward (ms)", "per step"]
    rows = [[part, f"{forward:.1f}", f"{both:.1f}", f"×{times}"] for part, forward, both, _, times in parts]
    last = ["encoder, parts summed", "", f"{total:.0f}", ""]
    if args.torch:
        header += ["transformers + torch, forward + backward (ms)", "torch / ours"]
        for row, (_, _, both, theirs, _) in zip(rows, parts):
            row += [f"{theirs:.1f}", f"{theirs / both:.2f}×"]
        theirs_total = sum(theirs * times for part, _, _, theirs, times in parts if not part.startswith("  "))
        last += [f"{theirs_total:.0f}", f"{theirs_total / total:.2f}×"]
    print(markdown_table(header, [*rows, last], numbers_from=1) + "\n")
    rows = step_profile(args.task, args.variant, args.batch, args.size, overrides)
    step_ms = sum(ms for _, ms, _ in rows)
    print(f"The step's operations (XLA's thunks, summed over threads: {step_ms:.0f} ms per step):\n")
    print(markdown_table(["operation kind", "ms per step", "share", "count"],
                         [[kind, f"{ms:.1f}", f"{100 * ms / step_ms:.1f} %", count]
                          for kind, ms, count in rows[:args.top]], numbers_from=1))
    return 0


if __name__ == "__main__":
    host_memory.keep_freed_memory(announce=True)
    raise SystemExit(main())
