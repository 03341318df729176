"""Compile time of the training step, each stage's blocks unrolled against scanned.

    python -m experiments.compile_times [--variants b2 b5] [--size 512] [--batch 2] [--steps 3]

For each variant and ``model.scan`` off/on: ``train``'s jitted step (the default run
config, the NVlabs optimiser, the state donated) traced and lowered, then compiled by XLA,
timed apart; then ``--steps`` steps on one random batch (the first one untimed), and their
median. The persistent compilation cache is off here, so every compile is a real one. The
ratio is unrolled over scanned, in the same process.
"""

from __future__ import annotations

import argparse
import platform

import jax

from experiments import train_steps
from experiments.train_steps import random_batch


def measure(variant: str, scan: bool, size: int, batch: int, steps: int) -> dict[str, float]:
    from segformer_jax import SegformerConfig
    from segformer_jax.run_config import default_config

    config = default_config()
    config.model.scan = scan
    seg_config = SegformerConfig.from_variant(variant, num_labels=150)
    step = train_steps.build(config, seg_config)
    images, labels = random_batch(batch, size, size, seg_config.num_channels)
    device_batch = train_steps.device_batch(images, labels, step.mesh)
    timed = train_steps.time_steps(step, device_batch, 0, max(steps - 1, 1))
    return {"lower_s": timed.lower_s, "compile_s": timed.compile_s,
            "step_s": timed.timing.median_ms / 1e3, "loss": timed.first_loss}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m experiments.compile_times", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["b2", "b5"])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="steps run after compiling (>= 2)")
    args = p.parse_args(argv)
    jax.config.update("jax_enable_compilation_cache", False)
    device = jax.devices()[0]
    print(f"# {device.platform} ({device.device_kind}) x{jax.device_count()}, jax {jax.__version__}, "
          f"{platform.machine()}, batch {args.batch}, crop {args.size}²\n")
    print("| variant | blocks | trace + lower (s) | XLA compile (s) | step (s) | first loss |")
    print("|---|---|---:|---:|---:|---:|")
    rows = {}
    for variant in args.variants:
        for scan in (False, True):
            r = measure(variant, scan, args.size, args.batch, args.steps)
            rows[variant, scan] = r
            print(f"| {variant} | {'scanned' if scan else 'unrolled'} | {r['lower_s']:.1f} | "
                  f"{r['compile_s']:.1f} | {r['step_s']:.2f} | {r['loss']:.5f} |", flush=True)
    print("\n| variant | compile: unrolled / scanned | trace + lower + compile: unrolled / scanned "
          "| step: scanned / unrolled |")
    print("|---|---:|---:|---:|")
    for variant in args.variants:
        u, s = rows[variant, False], rows[variant, True]
        print(f"| {variant} | {u['compile_s'] / s['compile_s']:.2f} | "
              f"{(u['lower_s'] + u['compile_s']) / (s['lower_s'] + s['compile_s']):.2f} | "
              f"{s['step_s'] / u['step_s']:.3f} |")


if __name__ == "__main__":
    main()
