"""Converts between Hub checkpoints and our Orbax model checkpoints.

    python -m segformer_jax.convert to-orbax HUB_DIR_OR_FILE OUT_DIR [--task T] [--num-labels K]
    python -m segformer_jax.convert to-hub   ORBAX_DIR_OR_TRAIN_WORKDIR OUT_DIR [--ema]

``to-orbax`` reads anything ``segformer_jax.from_pretrained`` reads (Hub directories with
safetensors or pytorch_model.bin, transformers 5 names, NVlabs ``.pth``); ``to-hub`` writes
config.json + model.safetensors that ``transformers`` loads, as
``SegformerForSemanticSegmentation`` or, for a classification model (a pretraining run),
``SegformerForImageClassification`` (the layout of ``nvidia/mit-b0``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from segformer_jax.checkpoint import load_checkpoint, save_model
from segformer_jax.cli import ArgumentParser
from segformer_jax.errors import CheckpointError
from segformer_jax.hub import from_pretrained, save_pretrained
from segformer_jax.models.segformer import TASKS


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m segformer_jax.convert", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    to_orbax = sub.add_parser("to-orbax", help="Hub/NVlabs checkpoint -> Orbax model checkpoint")
    to_orbax.add_argument("source")
    to_orbax.add_argument("output")
    to_orbax.add_argument("--task", choices=sorted(TASKS), default=None,
                          help="model head (default: the one the checkpoint has)")
    to_orbax.add_argument("--num-labels", type=int, default=None,
                          help="re-initialise the classifier for this many classes")
    to_hub = sub.add_parser("to-hub", help="Orbax model checkpoint or training workdir -> Hub "
                                           "directory (safetensors)")
    to_hub.add_argument("source")
    to_hub.add_argument("output")
    to_hub.add_argument("--ema", action="store_true",
                        help="a training run's EMA of the weights (optimizer.ema_decay) instead")
    for p in (to_orbax, to_hub):
        p.add_argument("--overwrite", action="store_true", help="replace a non-empty output")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        if args.command == "to-orbax":
            config, variables = from_pretrained(args.source, task=args.task, num_labels=args.num_labels)
            out = save_model(args.output, config, variables, args.task, overwrite=args.overwrite)
        else:  # a model checkpoint, a training workdir (its latest step) or a step directory
            config, variables, task = load_checkpoint(args.source, ema=args.ema)
        if args.command == "to-hub":
            _refuse_non_empty(args.output, args.overwrite)
            out = save_pretrained(args.output, config, variables, task)
            _write_band_statistics(args.source, config.num_channels, out)
    except ValueError as e:  # CheckpointError, ConfigError (segformer_jax.errors) and the like
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # permission denied, disk full, a file where a directory should be
        print(f"error: {e.filename or args.output}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


def _write_band_statistics(source: str, num_channels: int, out: Any) -> None:
    """A model trained with its own per-band normalisation (``data.mean`` / ``data.std``, a
    K-band model's) takes it along as ``preprocessor_config.json`` (transformers' keys, in
    the images' stored units, so ``do_rescale`` false); ImageNet's RGB one needs none."""
    import json
    import pathlib

    from segformer_jax.checkpoint import normalisation_of
    from segformer_jax.constants import MEAN_RGB, STD_RGB
    try:
        mean, std = normalisation_of(source, num_channels)
    except CheckpointError:  # a K-band model checkpoint that never had them
        print(f"warning: {source}: no per-band mean/std to export with the {num_channels}-band "
              "model", file=sys.stderr)
        return
    if (mean, std) == (MEAN_RGB, STD_RGB):
        return
    directory = pathlib.Path(out)
    directory = directory if directory.is_dir() else directory.parent
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "SegformerImageProcessor", "do_resize": False,
        "do_rescale": False, "do_normalize": True, "image_mean": list(mean),
        "image_std": list(std), "do_reduce_labels": False}, indent=2) + "\n")


def _refuse_non_empty(path: str, overwrite: bool) -> None:
    import pathlib
    p = pathlib.Path(path)
    if p.exists() and not p.is_dir():
        raise CheckpointError(f"{p}: exists and is not a directory")
    if p.exists() and any(p.iterdir()) and not overwrite:
        raise CheckpointError(f"{p}: exists and is not empty; choose another directory or pass --overwrite")


if __name__ == "__main__":
    sys.exit(main())
