"""What a GPU or TPU is handed: the trainer's own step and the inference program lowered
(traced and lowered, never compiled) for another platform from this host, and the ops that
hurt there counted in the StableHLO text.

    python -m experiments.lowering_counts [--platforms tpu,cuda] [--forms cpu,xla]

prints one Markdown row per (program, form set, platform): ``while`` loops, scatters,
gathers and ``precision = HIGHEST`` (each serial, atomic or six bf16 passes on an
accelerator; ``models/ops.py`` says why), with the dots and convolutions for scale.
``tests/test_accelerator_forms.py`` asserts the XLA form set's zeros from the same counts.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from segformer_jax.tables import markdown_table

# One pattern per op as the StableHLO text spells it: the op's name, not the attributes
# named after it (``#stablehlo.scatter<...>``); HIGHEST as a dot's or a conv's precision.
PATTERNS = {"while": r"stablehlo\.while\b(?!<)", "scatter": r"stablehlo\.scatter\b(?!<)",
            "gather": r"stablehlo\.(?:dynamic_)?gather\b(?!<)", "HIGHEST": r"HIGHEST",
            "dot": r"stablehlo\.dot_general\b(?!<)", "conv": r"stablehlo\.convolution\b(?!<)"}
PROGRAMS = {  # name: (task, variant, image side, batch)
    "segmentation step b0 512², batch 2": ("semantic_segmentation", "b0", 512, 2),
    "segmentation step b2 512², batch 2": ("semantic_segmentation", "b2", 512, 2),
    "classification step b0 224², batch 32 (ImageNet recipe: Mixup, CutMix)": ("image_classification", "b0", 224, 32),
    "inference b0 512², batch 1": ("inference", "b0", 512, 1),
}


def counts(text: str) -> dict[str, int]:
    """Occurrences of each op of ``PATTERNS`` in a StableHLO text."""
    return {name: len(re.findall(pattern, text)) for name, pattern in PATTERNS.items()}


def run_config_for(task: str, variant: str, forms: str, platform: str) -> Any:
    """The run-config defaults for ``task`` with the form set and compute dtype that "auto"
    gives on ``platform`` (``forms="auto"``), or the form set given."""
    from segformer_jax import run_config
    from segformer_jax.models import ops
    config = run_config.default_config()
    if task == "image_classification":
        run_config.use_imagenet_recipe(config, variant, batch=32)
        config.data.name = "synthetic_classification"
    else:
        run_config.use_variant(config, variant)
    config.model.op_forms = ops.form_set_name(forms, platform)
    config.model.dtype = run_config.compute_dtype(config, platform)
    return config


def lowered_text(program: str, forms: str, platform: str) -> str:
    """The StableHLO of one of ``PROGRAMS`` for ``platform`` (``jax.jit(...).trace(...)
    .lower(lowering_platforms=...)``; nothing is compiled or allocated)."""
    from experiments import train_steps
    from segformer_jax import run_config
    from segformer_jax.inference import Inference
    from segformer_jax.train import model_for_run
    task, variant, side, batch = PROGRAMS[program]
    if task == "inference":
        config = run_config_for("semantic_segmentation", variant, forms, platform)
        seg_config = run_config.model_config(config, 150)
        model = model_for_run(config, seg_config)
        images = jax.ShapeDtypeStruct((batch, side, side, 3), jnp.float32)
        variables = jax.eval_shape(model.init, jax.random.key(0), images)
        inference = Inference(model.apply, forms=config.model.op_forms)
        traced = inference._whole.trace(variables, images)
    else:
        config = run_config_for(task, variant, forms, platform)
        seg_config = run_config.model_config(config, 150 if task == "semantic_segmentation" else 1000)
        step = train_steps.build(config, seg_config, abstract=True)
        labels = task == "semantic_segmentation"
        traced = step.step.trace(step.state, train_steps.abstract_batch(batch, side, side, 3, step.mesh, labels))
    return traced.lower(lowering_platforms=(platform,)).as_text()


def table(platforms: Sequence[str], forms: Sequence[str]) -> str:
    rows = []
    for program in PROGRAMS:
        for form in forms:
            for platform in platforms:
                c = counts(lowered_text(program, form, platform))
                rows.append([program, form, platform, *(c[k] for k in PATTERNS)])
    return markdown_table(["program", "forms", "platform", "while", "scatter", "gather", "HIGHEST", "dot",
                           "conv"], rows, numbers_from=3)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.lowering_counts", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--platforms", default="tpu,cuda", help="lowering platforms (default tpu,cuda)")
    parser.add_argument("--forms", default="cpu,xla", help="form sets (default cpu,xla)")
    args = parser.parse_args(argv)
    print(table(args.platforms.split(","), args.forms.split(",")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
