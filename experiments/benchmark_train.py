"""Training benchmark: segformer_jax's train step against transformers + torch, same weights.

What it measures, for one SegFormer variant (b0…b5, ADE20K head with 150 classes), at
``--size`` crops (default 512x512) and batch ``--batch`` (default 2):

* ours: ``segformer_jax.train.jit_train_step``, the update ``train`` runs (forward in train
  mode with dropout / drop-path, cross-entropy on logits upsampled to the label size with
  255 ignored, backward, the NVlabs AdamW of ``segformer_jax.optim`` with its three
  parameter groups and poly/warmup schedule, new BatchNorm statistics), on the default run
  config's mesh (all devices), compiled with the state donated;
* torch: ``transformers.SegformerForSemanticSegmentation`` in train mode (eager attention),
  ``zero_grad`` -> ``model(pixel_values, labels=labels).loss.backward()`` -> ``AdamW(lr 6e-5,
  weight_decay 0.01).step()`` (one parameter group: the per-group learning rates of ours
  change no arithmetic);
* for both: ``--warmup`` untimed steps, then ``--repeats`` rounds of one timed step of
  each, in turn (this machine's speed drifts by up to 1.8x over minutes; steps timed in
  turn see the same drift): the median / min / max wall time, the images/s of the median,
  and the median of the per-round ratios; for ours also the compile time (trace + lower,
  and XLA compile, apart from the first run);
* the first-step losses of both (same weights, same batch; dropout and drop-path draw
  different random numbers in the two frameworks, so they agree only approximately), and
  an exact check without randomness: both models' loss in eval mode (running BatchNorm
  statistics, no dropout) on the same batch;
* memory: the buffers of the compiled XLA step (``memory_analysis``: temporaries,
  arguments, outputs; outputs alias the donated arguments; their total is
  ``experiments.xla_stats.program_bytes``) and the process's peak RSS.

Both models start from the same weights: torch's seeded random init, saved with
``save_pretrained`` and read back with ``segformer_jax.from_pretrained``. The batch is
random: images N(0, 1) (already normalised), labels in blocks of random classes 0..149 with
some 255 (ignored) pixels; it is put on the device once, so host->device copies are not timed.

Run it from the repository root::

    python -m experiments.benchmark_train                      # b0, 512², batch 2
    python -m experiments.benchmark_train --variant b2 --batch 8 --threads 8
    python -m experiments.benchmark_train --size 128 --repeats 2 --warmup 1  # smoke

``--threads`` only calls ``torch.set_num_threads``; JAX's CPU thread pool is not set by it.
Time on an otherwise idle machine (see benchmark_inference.py: torch's spin-waiting OpenMP
threads run many times slower against other load; the script prints the load average).
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: never touch the network

import argparse

import jax
import numpy as np

import segformer_jax
from experiments import harness, train_steps, xla_stats
from segformer_jax import SegformerConfig, host_memory
from segformer_jax.constants import IGNORE_INDEX

NUM_LABELS = harness.NUM_LABELS  # ADE20K


# -- command line -----------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = harness.benchmark_parser("experiments.benchmark_train", __doc__, 2, 10, "untimed steps after the first one")
    p.add_argument("--torch-device", default=None,
                   help="torch device (default: cuda if available, else cpu)")
    return harness.parse_checked(p, argv)


# -- data -------------------------------------------------------------------------------


# -- ours -------------------------------------------------------------------------------


# -- torch ------------------------------------------------------------------------------


# -- report -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    height, width = args.size
    torch = harness.import_torch(args.skip_torch, args.threads)
    harness.print_machine(torch)

    config = SegformerConfig.from_variant(args.variant, num_labels=NUM_LABELS)
    if args.skip_torch:
        torch_model = None
        variables = segformer_jax.init_variables(config)
    else:
        torch_model = harness.build_torch_model(config)
        config, variables = harness.convert(torch_model)
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(variables["params"]))
    print(f"model          SegFormer-{args.variant}, {NUM_LABELS} classes, "
          f"{n_params / 1e6:.2f} M parameters; dropout {config.classifier_dropout_prob} "
          f"(classifier), drop-path {config.drop_path_rate}")
    print(f"input          batch {args.batch}, {height}x{width}, float32 images, int32 labels "
          f"({IGNORE_INDEX} ignored); warmup {args.warmup}, repeats {args.repeats}")

    images, labels = train_steps.random_batch(args.batch, height, width, config.num_channels)

    # Loss check first: the training steps change both models' weights (and donate ours).
    jax_eval = train_steps.jax_eval_loss(config, variables, images, labels)
    torch_eval = None
    if torch_model is not None:
        device = harness.torch_device(args.torch_device)
        torch_model.to(device)
        pixel_values = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(device)
        torch_labels = torch.from_numpy(labels.astype(np.int64)).to(device)
        torch_eval = harness.torch_eval_loss(torch_model, pixel_values, torch_labels)

    ours = train_steps.jax_train_step(config, variables, images, labels)
    del variables  # its buffers may have been donated with the state
    print(f"jax compile    trace + lower {ours.lower_s:.2f} s, XLA compile {ours.compile_s:.2f} s, "
          f"first step {ours.first_step_s:.2f} s")
    rss_after_jax = harness.process_peak_rss_bytes()
    calls = {"jax": ours.one_step}
    theirs = None
    if torch_model is not None:
        theirs = harness.torch_train_step(torch_model, pixel_values, torch_labels)
        print(f"torch ({device.type})    first step {theirs.first_step_s:.2f} s")
        calls["torch"] = theirs.one_step
    # Steps of the two in turn, so that the machine's drift slows both alike.
    timings = harness.time_interleaved(calls, args.warmup, args.repeats)
    ours_timing = timings["jax"]
    print(f"jax            {ours_timing}   {harness.images_per_s(args.batch, ours_timing):7.2f} img/s")
    if theirs is not None:
        torch_timing = timings["torch"]
        harness.print_torch_rounds(args.batch, ours_timing, torch_timing)

    print("loss")
    if theirs is None:
        print(f"  first step (train mode)   jax {ours.first_loss:.5f}")
        print(f"  eval mode, same batch     jax {jax_eval:.5f}")
    else:
        print(f"  first step (train mode)   jax {ours.first_loss:.5f}   torch {theirs.first_loss:.5f}"
              f"   |diff| {abs(ours.first_loss - theirs.first_loss):.2e}")
        print("    (same weights and batch; dropout and drop-path draw different random numbers "
              "in the two frameworks, so only close)")
        print(f"  eval mode, same batch     jax {jax_eval:.5f}   torch {torch_eval:.5f}"
              f"   |diff| {abs(jax_eval - torch_eval):.2e}")
        print("    (no randomness, running BN statistics: the same function, equal to float32 "
              "rounding)")

    flops = xla_stats.flops(ours.compiled)
    if flops is not None:
        print(f"compute        XLA cost analysis of the step: {flops / args.batch / 1e9:.2f} "
              f"GFLOP per image (forward + backward + optimiser)")
        peak = harness.cpu_peak_flops() if jax.default_backend() == "cpu" else None
        if peak is not None:
            rate = flops / (ours_timing.median_ms / 1000)
            print(f"               {rate / 1e9:.1f} GFLOP/s = {100 * rate / peak[0]:.1f} % of the "
                  f"CPU's float32 peak {peak[0] / 1e9:.0f} GFLOP/s ({peak[1]})")
    harness.print_memory(ours.compiled, rss_after_jax)

    head = (f"train {args.variant} bs{args.batch} {height}x{width}: "
            f"jax {ours_timing.median_ms:.1f} ms/step "
            f"({harness.images_per_s(args.batch, ours_timing):.2f} img/s)")
    if theirs is None:
        print(f"{head}, torch skipped")
    else:
        print(f"{head}, torch {torch_timing.median_ms:.1f} ms/step "
              f"({harness.images_per_s(args.batch, torch_timing):.2f} img/s), "
              f"speed-up {torch_timing.median_ms / ours_timing.median_ms:.2f}x (torch/jax)")


if __name__ == "__main__":
    host_memory.keep_freed_memory(announce=True)
    main()
