"""Deployment benchmark: one forward pass (float NHWC images -> logits) of a SegFormer
variant in each runtime it leaves this project in, against transformers + torch, same
weights, one process.

For each variant (ADE20K head, 150 classes; torch's seeded random weights converted with
``segformer_jax.from_pretrained``, so all rows compute the same function):

* ``jax jit``: ``jax.jit(SegformerForSemanticSegmentation.apply)``, the function ``predict``
  and ``evaluate`` run;
* ``stablehlo fixed``: ``python -m segformer_jax.export --format stablehlo --batch 1 --size
  H,W`` deserialised with ``jax.export.deserialize`` and called;
* ``stablehlo dynamic``: the same with symbolic batch, height and width (the default export):
  the resize taps are computed in the program instead of being constants;
* ``onnx``: ``--format onnx --batch 1 --size H,W`` in onnxruntime (CPUExecutionProvider,
  its default threads);
* ``torch``: ``transformers.SegformerForSemanticSegmentation`` under ``inference_mode``
  (eager attention).

The calls are timed in turn (``benchmark_inference.time_interleaved``: ``--warmup``
untimed runs each, then ``--repeats`` rounds), and each row is reported as its median and
as the ratio of its median to ``jax jit``'s. Each row's largest absolute difference from
``jax jit``'s logits shows that the timings are of the same computation. Exports are
written with ``check=False`` (the parity gate is the tests'); the agreement column is this
benchmark's own check at the timed size.

Run it from the repository root, on an otherwise idle machine::

    python -m experiments.benchmark_deploy --variants b0,b2 --size 512
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: never touch the network

import argparse
import pathlib
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments import harness
from segformer_jax import SegformerConfig, export

NUM_LABELS = harness.NUM_LABELS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.benchmark_deploy",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default="b0,b2", help="comma-separated (default b0,b2)")
    p.add_argument("--size", type=harness.parse_size, default=(512, 512), help="N or HxW (default 512)")
    p.add_argument("--repeats", type=int, default=10, help="timed rounds (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs of each (default 2)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in harness.PAPER_GMACS]
    if unknown or not args.variants:
        p.error(f"--variants: unknown {unknown or args.variants}; expected from "
                f"{', '.join(sorted(harness.PAPER_GMACS))}")
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1, --warmup >= 0")
    return args


def exported_runner(config: SegformerConfig, variables: dict, fmt: str,
                    signature: export.Signature, directory: pathlib.Path
                    ) -> tuple[Callable[[np.ndarray], np.ndarray], float]:
    """The artefact ``export.export`` writes for ``fmt``, loaded in its runtime, and the
    seconds the export took."""
    start = time.perf_counter()
    export.export(config, variables, fmt, signature, directory, check=False, log=lambda _: None)
    return export.load_runner(fmt, directory), time.perf_counter() - start


def runners(config: SegformerConfig, variables: dict, torch_model: Any, size: tuple[int, int],
            images: np.ndarray, workdir: pathlib.Path
            ) -> tuple[dict[str, Callable[[], np.ndarray]], dict[str, float]]:
    """Each runtime's call on ``images`` (returning NHWC logits as numpy), and how long each
    took to prepare (jit: first call; exports: export + load)."""
    import torch

    import segformer_jax
    prepare: dict[str, float] = {}
    apply = jax.jit(segformer_jax.SegformerForSemanticSegmentation(config).apply)
    x = jnp.asarray(images)
    start = time.perf_counter()
    jax.block_until_ready(apply(variables, x))
    prepare["jax jit"] = time.perf_counter() - start
    calls: dict[str, Callable[[], np.ndarray]] = {
        "jax jit": lambda: np.asarray(apply(variables, x))}
    fixed = export.Signature(batch=1, size=size, with_preprocessing=False)
    dynamic = export.Signature(batch=None, size=None, with_preprocessing=False)
    for name, fmt, signature in (("stablehlo fixed", "stablehlo", fixed),
                                 ("stablehlo dynamic", "stablehlo", dynamic),
                                 ("onnx", "onnx", fixed)):
        run, seconds = exported_runner(config, variables, fmt, signature,
                                       workdir / name.replace(" ", "_"))
        start = time.perf_counter()
        run(images)  # the first call compiles (StableHLO) or plans (onnxruntime)
        prepare[name] = seconds + time.perf_counter() - start
        calls[name] = lambda run=run: run(images)
    pixel_values = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    calls["torch"] = lambda: harness.run_torch(torch_model, pixel_values).numpy().transpose(0, 2, 3, 1)
    return calls, prepare


def bench_variant(variant: str, size: tuple[int, int], warmup: int, repeats: int) -> list[tuple]:
    config = SegformerConfig.from_variant(variant, num_labels=NUM_LABELS)
    torch_model = harness.build_torch_model(config)
    config, variables = harness.convert(torch_model)
    variables = jax.device_put(variables)
    images = np.random.default_rng(0).standard_normal((1, *size, 3), dtype=np.float32)
    with tempfile.TemporaryDirectory() as workdir:
        calls, prepare = runners(config, variables, torch_model, size, images,
                                 pathlib.Path(workdir))
        reference = calls["jax jit"]()
        agreement = {name: float(np.max(np.abs(call() - reference)))
                     for name, call in calls.items()}
        timings = harness.time_interleaved(calls, warmup, repeats)
    base = timings["jax jit"].median_ms
    return [(variant, name, timings[name], timings[name].median_ms / base, agreement[name],
             prepare.get(name)) for name in calls]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch = harness.import_torch(False, args.threads)
    harness.print_machine(torch)
    import onnxruntime
    print(f"  onnxruntime  {onnxruntime.__version__}")
    height, width = args.size
    print(f"input          batch 1, {height}x{width}, float32 NHWC (torch: NCHW); "
          f"warmup {args.warmup}, repeats {args.repeats}")
    rows = []
    for variant in args.variants:
        variant_rows = bench_variant(variant, args.size, args.warmup, args.repeats)
        for row in variant_rows:
            print(f"{row[0]} {row[1]:18s} {row[2]}")
        rows += variant_rows
    print()
    print("| variant | runtime | median ms | time / jax jit | max abs diff vs jax jit | "
          "prepare s |")
    print("|---|---|---:|---:|---:|---:|")
    for variant, name, timing, ratio, diff, prepare in rows:
        prepared = "–" if prepare is None else f"{prepare:.1f}"
        print(f"| {variant} | {name} | {timing.median_ms:.1f} | {ratio:.2f} | {diff:.1e} | "
              f"{prepared} |")
    print("(prepare: jax jit's first call; exports: export + load + first call; torch: –)")


if __name__ == "__main__":
    main()
