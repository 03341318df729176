"""The embedded synthetic shapes set (``synthetic.py``) as a TFDS builder: nothing to download.

``num_train`` / ``num_validation`` examples of ``generate_example(i, split, seed,
size_range)``, so the built dataset is a deterministic function of its config, whose name
records it (``train1000_val100_seed0_96-160`` is the default). Images and masks are stored as
PNG (lossless): example ``i`` of the built ``train`` split equals ``generate_example(i)``.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Iterator, Mapping
from typing import Any

import tensorflow_datasets as tfds

from segformer_jax.data.common import SegmentationBuilder, encode_png, make_example
from segformer_jax.data.synthetic import CLASS_NAMES, generate_example
from segformer_jax.errors import DatasetError

OPTIONS = ("num_train", "num_validation", "seed", "size_range")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_options(dataset: str, options: Mapping[str, Any], min_side: int = 1) -> None:
    """The options (``data.options``) of a synthetic builder, each checked before anything
    is built: ``DatasetError`` naming ``data.options.KEY``, the value and what is accepted.
    ``min_side``: the smallest image side the builder draws."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise DatasetError(f"data.options.{unknown[0]}: the {dataset} dataset has no such option; "
                           f"its options are {', '.join(OPTIONS)}")
    rules = {"num_train": (1, "an integer >= 1 (the training examples)"),
             "num_validation": (0, "an integer >= 0 (the validation examples; 0: no validation "
                                   "split)"),
             "seed": (0, "an integer >= 0")}
    for key, (low, accepted) in rules.items():
        if key in options and not (_is_int(options[key]) and options[key] >= low):
            raise DatasetError(f"data.options.{key}={options[key]!r}: the {dataset} dataset needs "
                               f"{accepted}")
    if "size_range" in options:
        value = options["size_range"]
        ok = (not isinstance(value, (str, bytes)) and hasattr(value, "__len__") and len(value) == 2
              and all(_is_int(v) for v in value) and min_side <= value[0] <= value[1])
        if not ok:
            raise DatasetError(f"data.options.size_range={value!r}: the {dataset} dataset needs two "
                               f"integers (low, high) with {min_side} <= low <= high, the range of "
                               f"the image sides in pixels, e.g. (96, 160)")


@dataclasses.dataclass(eq=False)
class SyntheticConfig(tfds.core.BuilderConfig):
    num_train: int = 1000
    num_validation: int = 100
    seed: int = 0
    size_range: tuple[int, int] = (96, 160)


def synthetic_config(num_train: int = 1000, num_validation: int = 100, seed: int = 0,
                     size_range: tuple[int, int] = (96, 160)) -> SyntheticConfig:
    check_options("synthetic", {"num_train": num_train, "num_validation": num_validation,
                                "seed": seed, "size_range": size_range})
    lo, hi = (int(v) for v in size_range)
    return SyntheticConfig(name=f"train{num_train}_val{num_validation}_seed{seed}_{lo}-{hi}",
                           num_train=int(num_train), num_validation=int(num_validation),
                           seed=int(seed), size_range=(lo, hi),
                           description="shapes from segformer_jax.data.synthetic")


class Synthetic(SegmentationBuilder):
    """Shapes on textured backgrounds, 6 classes (0 = background), generated at build time."""

    name = "segformer_synthetic"
    CLASS_NAMES = CLASS_NAMES
    REDUCE_ZERO_LABEL = False
    DESCRIPTION = __doc__
    BUILDER_CONFIGS = [synthetic_config()]

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        config = self.builder_config
        counts = {"train": config.num_train, "validation": config.num_validation}
        return {split: self._examples(split, n) for split, n in counts.items() if n > 0}

    def _examples(self, split: str, count: int) -> Iterator:
        config = self.builder_config
        for i in range(count):
            image, mask = generate_example(i, split, config.seed, tuple(config.size_range))
            name = f"{split}_{i:07d}.png"
            yield name, make_example(encode_png(image), mask, name)
