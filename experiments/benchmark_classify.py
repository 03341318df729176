"""Pretraining benchmark: the ImageNet-recipe classification step against transformers +
torch, same weights, one process.

What it measures, for one MiT variant (b0…b5, 1000 ImageNet classes), at ``--size``
(default 224x224) and batch ``--batch`` (default 32):

* ours: ``segformer_jax.train.jit_train_step`` for ``configs/imagenet.py:VARIANT`` (the
  step a pretraining run runs: Mixup / CutMix and label smoothing drawn in the step, the
  soft-target cross-entropy, backward, AdamW with the 1-D parameters exempt from weight
  decay, the per-step cosine schedule, drop-path 0.1 / 0.3), on all devices, the state
  donated;
* torch: ``transformers.SegformerForImageClassification`` in train mode (eager attention),
  ``zero_grad`` -> ``model(pixel_values, labels=labels).loss.backward()`` (transformers'
  cross-entropy; no mixing) -> ``torch.optim.AdamW(lr 5e-4 x batch / 512, weight_decay
  0.05).step()``. Mixing the batch and smoothing the targets are element-wise work on the
  inputs, a few hundredths of the step's cost; ours includes them;
* both timed in turn, as ``benchmark_train`` does (``--warmup`` untimed, ``--repeats``
  timed rounds, the median per-round ratio), and both models' loss in eval mode on the same
  batch (no randomness: equal to float32 rounding).

The batch is random: images N(0, 1), labels uniform in 0..999, on the device once.
Run it from the repository root, on an otherwise idle machine::

    python -m experiments.benchmark_classify --variant b0        # 224², batch 32
    python -m experiments.benchmark_classify --variant b2
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: never touch the network

import time
from typing import Any

import jax
import numpy as np

from experiments import harness, train_steps, xla_stats
from segformer_jax import host_memory


def parse_args(argv: list[str] | None = None) -> Any:
    p = harness.benchmark_parser("experiments.benchmark_classify", __doc__, 32, 10,
                            "untimed steps after the first one")
    p.set_defaults(size=(224, 224))
    return harness.parse_checked(p, argv)


def main(argv: list[str] | None = None) -> None:
    from segformer_jax import init_variables, run_config
    args = parse_args(argv)
    height, width = args.size
    torch = harness.import_torch(args.skip_torch, args.threads)
    harness.print_machine(torch)

    run = train_steps.classify_recipe_config(args.variant, args.batch)
    config = run_config.model_config(run, train_steps.CLASSIFY_CLASSES)
    if args.skip_torch:
        torch_model = None
        variables = init_variables(config, task="image_classification")
    else:
        torch_model = harness.build_torch_model(config, "image_classification")
        config, variables = harness.convert(torch_model)
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))
    c = run.classification
    print(f"model          MiT-{args.variant} classifier, {train_steps.CLASSIFY_CLASSES} classes, "
          f"{n_params / 1e6:.2f} M parameters; drop-path {config.drop_path_rate}")
    print(f"recipe         mixup {c.mixup_alpha} / cutmix {c.cutmix_alpha} (switch "
          f"{c.mixup_switch_prob}), label smoothing {c.label_smoothing}, AdamW lr "
          f"{run.optimizer.learning_rate:.2e} wd {run.optimizer.weight_decay} (1-D exempt), cosine")
    print(f"input          batch {args.batch}, {height}x{width}; warmup {args.warmup}, "
          f"repeats {args.repeats}")

    images, labels = train_steps.classify_random_batch(args.batch, height, width)
    jax_eval = train_steps.jax_classify_eval_loss(config, variables, images, labels)
    torch_eval = None
    if torch_model is not None:
        device = harness.torch_device(None)
        torch_model.to(device)
        pixel_values = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(device)
        torch_labels = torch.from_numpy(labels.astype(np.int64)).to(device)
        torch_eval = harness.torch_eval_loss(torch_model, pixel_values, torch_labels)

    ours = train_steps.jax_classify_step(run, config, variables, images, labels)
    del variables  # donated with the state
    print(f"jax compile    trace + lower {ours.lower_s:.2f} s, XLA compile {ours.compile_s:.2f} s, "
          f"first step {ours.first_step_s:.2f} s")
    rss_after_jax = harness.process_peak_rss_bytes()
    calls = {"jax": ours.one_step}
    if torch_model is not None:
        torch_model.train()
        opt = torch.optim.AdamW(torch_model.parameters(), lr=run.optimizer.learning_rate,
                                weight_decay=0.05)

        def torch_step() -> Any:
            opt.zero_grad(set_to_none=True)
            loss = torch_model(pixel_values=pixel_values, labels=torch_labels).loss
            loss.backward()
            opt.step()
            return loss

        start = time.perf_counter()
        torch_step()  # allocates AdamW's moments
        print(f"torch ({device.type})    first step {time.perf_counter() - start:.2f} s")
        calls["torch"] = torch_step
    timings = harness.time_interleaved(calls, args.warmup, args.repeats)
    ours_timing = timings["jax"]
    print(f"jax            {ours_timing}   {harness.images_per_s(args.batch, ours_timing):7.2f} img/s")
    head = (f"classify {args.variant} bs{args.batch} {height}x{width}: jax "
            f"{ours_timing.median_ms:.1f} ms/step ({harness.images_per_s(args.batch, ours_timing):.2f} img/s)")
    if torch_model is not None:
        torch_timing = timings["torch"]
        harness.print_torch_rounds(args.batch, ours_timing, torch_timing)
        print(f"loss           eval mode, same batch: jax {jax_eval:.5f}   torch {torch_eval:.5f}   "
              f"|diff| {abs(jax_eval - torch_eval):.2e}")
        head += (f", torch {torch_timing.median_ms:.1f} ms/step "
                 f"({harness.images_per_s(args.batch, torch_timing):.2f} img/s), speed-up "
                 f"{torch_timing.median_ms / ours_timing.median_ms:.2f}x (torch/jax)")
    flops = xla_stats.flops(ours.compiled)
    if flops is not None:
        print(f"compute        XLA cost analysis of the step: {flops / args.batch / 1e9:.2f} GFLOP per image")
    harness.print_memory(ours.compiled, rss_after_jax)
    print(head)


if __name__ == "__main__":
    host_memory.keep_freed_memory(announce=True)
    main()
