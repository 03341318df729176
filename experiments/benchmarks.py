"""All the benchmarks against transformers + torch in one table: inference and training.

For every variant and size asked for, on this machine, with the same (converted) weights in
one process, it runs what benchmark_inference (a jitted forward, ``--infer-batch``) and
benchmark_train (the jitted update with AdamW, ``--train-batch``) measure, and prints
one Markdown table: milliseconds per call of each framework, the speed-up (torch / ours),
images/s, and how far the two agree (max |logit difference|; |eval-mode loss difference|)::

    python -m experiments.benchmarks                          # b0, 512², both kinds
    python -m experiments.benchmarks --variants b0,b2 --kinds inference --threads 2
    python -m experiments.benchmarks --quick                  # b0, 128², 2 repeats
    python -m experiments.benchmarks --paper                  # params/GMACs vs Table 1

For the full report of one measurement (compile times, FLOPs, memory, loss check) run the
two scripts themselves. Time on an otherwise idle machine: see benchmark_inference.py.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: never touch the network
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # save_pretrained's, in the table

import argparse
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments import harness, train_steps
from segformer_jax.tables import markdown_table

# The paper's Table 1 parameter counts (M, ADE20K model); its GFLOPs are harness.PAPER_GMACS.
PAPER_PARAMS_M = {"b0": 3.8, "b1": 13.7, "b2": 27.5, "b3": 47.3, "b4": 64.1, "b5": 84.7}


@dataclasses.dataclass
class Row:
    kind: str
    variant: str
    size: tuple[int, int]
    batch: int
    jax_ms: float
    torch_ms: float | None
    agreement: str

    def cells(self) -> list[str]:
        ratio = f"**{self.torch_ms / self.jax_ms:.2f}×**" if self.torch_ms else "–"
        torch_ms = f"{self.torch_ms:.1f}" if self.torch_ms else "skipped"
        torch_ips = f"{self.batch / self.torch_ms * 1e3:.2f}" if self.torch_ms else "–"
        return [self.kind, self.variant, f"{self.size[0]}×{self.size[1]}", str(self.batch),
                f"{self.jax_ms:.1f}", torch_ms, ratio, f"{self.batch / self.jax_ms * 1e3:.2f}",
                torch_ips, self.agreement]


HEADER = ["kind", "variant", "size", "batch", "segformer_jax ms", "transformers + torch ms",
          "speed-up (torch / jax)", "jax img/s", "torch img/s", "agreement"]


def _models(variant: str, skip_torch: bool) -> tuple[Any, Any, Any]:
    """(config, our variables, the torch model or None), on the same weights."""
    from segformer_jax import SegformerConfig, init_variables
    config = SegformerConfig.from_variant(variant, num_labels=harness.NUM_LABELS)
    if skip_torch:
        return config, init_variables(config), None
    torch_model = harness.build_torch_model(config)
    config, variables = harness.convert(torch_model)
    return config, variables, torch_model


def inference_row(variant: str, size: tuple[int, int], batch: int, warmup: int, repeats: int,
                  skip_torch: bool) -> Row:
    """benchmark_inference.py's measurement: a jitted forward against torch.inference_mode()."""
    import segformer_jax
    config, variables, torch_model = _models(variant, skip_torch)
    images = np.random.default_rng(0).standard_normal((batch, *size, config.num_channels),
                                                      dtype=np.float32)
    x = jnp.asarray(images)
    fn = jax.jit(segformer_jax.SegformerForSemanticSegmentation(config).apply)
    ours = np.asarray(jax.block_until_ready(fn(variables, x)))  # compiles
    jax_time = harness.time_calls(lambda: jax.block_until_ready(fn(variables, x)), warmup, repeats)
    if torch_model is None:
        return Row("inference", variant, size, batch, jax_time.median_ms, None, "–")
    import torch
    pixel_values = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    theirs = harness.run_torch(torch_model, pixel_values).numpy()
    torch_time = harness.time_calls(lambda: harness.run_torch(torch_model, pixel_values), warmup, repeats)
    diff = float(np.max(np.abs(ours.transpose(0, 3, 1, 2) - theirs)))
    return Row("inference", variant, size, batch, jax_time.median_ms, torch_time.median_ms,
               f"logits max diff {diff:.1e}")


def train_row(variant: str, size: tuple[int, int], batch: int, warmup: int, repeats: int,
              skip_torch: bool, torch_device: str | None) -> Row:
    """benchmark_train.py's measurement: our jitted update against torch's AdamW step."""
    config, variables, torch_model = _models(variant, skip_torch)
    images, labels = train_steps.random_batch(batch, *size, config.num_channels)
    agreement = "–"
    if torch_model is not None:
        import torch
        device = harness.torch_device(torch_device)
        torch_model.to(device)
        pixel_values = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(device)
        torch_labels = torch.from_numpy(labels.astype(np.int64)).to(device)
        # Loss check first: training changes both models' weights (and donates ours).
        diff = abs(train_steps.jax_eval_loss(config, variables, images, labels)
                   - harness.torch_eval_loss(torch_model, pixel_values, torch_labels))
        agreement = f"eval loss diff {diff:.1e}"
    ours = train_steps.jax_train_step(config, variables, images, labels)
    del variables  # donated with the state
    calls = {"jax": ours.one_step}
    if torch_model is not None:
        calls["torch"] = harness.torch_train_step(torch_model, pixel_values, torch_labels).one_step
    timings = harness.time_interleaved(calls, warmup, repeats)  # in turn: the machine's drift hits both
    torch_ms = timings["torch"].median_ms if "torch" in timings else None
    return Row("train", variant, size, batch, timings["jax"].median_ms, torch_ms, agreement)


def paper_table(variants: list[str]) -> str:
    """Our parameter count and the paper-style MAC count next to the paper's Table 1."""
    from segformer_jax import SegformerConfig, init_variables
    rows = []
    for v in variants:
        config = SegformerConfig.from_variant(v, num_labels=harness.NUM_LABELS)
        abstract = jax.eval_shape(lambda c=config: init_variables(c))
        params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract["params"]))
        gmacs, side = harness.PAPER_GMACS[v]
        ours = harness.paper_style_macs(config, side, side) / 1e9
        rows.append([v, f"{params / 1e6:.3f}", f"{PAPER_PARAMS_M[v]}", f"{side}×{side}",
                     f"{ours:.2f}", f"{gmacs}"])
    return markdown_table(["variant", "params, ours (M, 150 classes)", "params, paper (M)", "input",
                     "GMACs, ours (analytic, unfolded network)", "'GFLOPs', paper (= GMACs)"], rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.benchmarks",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default="b0", help="comma-separated, b0…b5 (default b0)")
    p.add_argument("--sizes", default="512", help="comma-separated N or HxW (default 512)")
    p.add_argument("--kinds", default="inference,train", help="inference, train or both")
    p.add_argument("--infer-batch", type=int, default=1)
    p.add_argument("--train-batch", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--torch-device", default=None, help="training: cuda if available, else cpu")
    p.add_argument("--skip-torch", action="store_true", help="time JAX only")
    p.add_argument("--quick", action="store_true", help="128², warmup 1, repeats 2: a smoke run")
    p.add_argument("--paper", action="store_true",
                   help="print params and GMACs against the paper's Table 1 (b0…b5); no timing")
    args = p.parse_args(argv)
    try:
        args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        args.sizes = [harness.parse_size(s.strip()) for s in args.sizes.split(",") if s.strip()]
    except argparse.ArgumentTypeError as e:
        p.error(str(e))
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [v for v in args.variants if v not in harness.PAPER_GMACS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {sorted(harness.PAPER_GMACS)}")
    if not args.kinds or set(args.kinds) - {"inference", "train"}:
        p.error(f"--kinds takes inference and/or train; got {args.kinds}")
    if min(args.infer_batch, args.train_batch, args.repeats) < 1 or args.warmup < 0:
        p.error("batches and --repeats must be >= 1, --warmup >= 0")
    if args.quick:
        args.sizes, args.warmup, args.repeats = [(128, 128)], 1, 2
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.paper:
        print(paper_table(sorted(PAPER_PARAMS_M)))
        return
    torch = harness.import_torch(args.skip_torch, args.threads)
    harness.print_machine(torch)
    rows = []
    for variant in args.variants:
        for size in args.sizes:
            if "inference" in args.kinds:
                rows.append(inference_row(variant, size, args.infer_batch, args.warmup,
                                          args.repeats, args.skip_torch))
                print(f"  done: inference {variant} {size[0]}x{size[1]}", flush=True)
            if "train" in args.kinds:
                rows.append(train_row(variant, size, args.train_batch, args.warmup, args.repeats,
                                      args.skip_torch, args.torch_device))
                print(f"  done: train {variant} {size[0]}x{size[1]}", flush=True)
    print(f"\nfloat32, {harness.NUM_LABELS}-class ADE20K head, same weights in both frameworks; median "
          f"of {args.repeats} after {args.warmup} warm-up calls (training: after one more step)\n")
    print(markdown_table(HEADER, [r.cells() for r in rows]))


if __name__ == "__main__":
    main()
