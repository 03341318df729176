"""The embedded synthetic shapes set (``synthetic.py``) as a TFDS builder: nothing to download.

``num_train`` / ``num_validation`` examples of ``generate_example(i, split, seed,
size_range)``, so the built dataset is a deterministic function of its config, whose name
records it (``train1000_val100_seed0_96-160`` is the default). Images and masks are stored as
PNG (lossless): example ``i`` of the built ``train`` split equals ``generate_example(i)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import tensorflow_datasets as tfds

from segformer_jax.data.common import SegmentationBuilder, encode_png, make_example
from segformer_jax.data.synthetic import CLASS_NAMES, generate_example


@dataclasses.dataclass(eq=False)
class SyntheticConfig(tfds.core.BuilderConfig):
    num_train: int = 1000
    num_validation: int = 100
    seed: int = 0
    size_range: tuple[int, int] = (96, 160)


def synthetic_config(num_train: int = 1000, num_validation: int = 100, seed: int = 0,
                     size_range: tuple[int, int] = (96, 160)) -> SyntheticConfig:
    lo, hi = (int(v) for v in size_range)
    if num_train < 1 or num_validation < 0 or not 1 <= lo <= hi:
        raise ValueError(f"synthetic dataset: need num_train >= 1, num_validation >= 0 and "
                         f"1 <= size_range[0] <= size_range[1]; got {num_train}, "
                         f"{num_validation}, {size_range}")
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
