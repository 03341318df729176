"""The two tasks one trainer runs: semantic segmentation and image classification.

A task supplies what differs between them, all built from the run config: its model
(``models.segformer.TASKS``), the training transform of one example, the objective of the
train step (the step's inputs from a batch, and the loss) and the evaluator. The trainer,
its state, mesh, checkpoints and stops are the same for both (``train.py``).

* ``semantic_segmentation`` (the default): the NVlabs recipe's crops and photometric
  distortion, cross-entropy on logits upsampled to the label size, mIoU.
* ``image_classification``: MiT pretraining as PVT v2 / DeiT do it (``configs/imagenet.py``):
  RandomResizedCrop, flip, RandAugment, random erasing (``data.augment``), Mixup / CutMix
  and label smoothing inside the step (``mixup``), soft-target cross-entropy, top-1 / top-5.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections

from segformer_jax import mixup
from segformer_jax.constants import CLASSIFY, SEMSEG
from segformer_jax.losses import make_loss


@dataclasses.dataclass(frozen=True)
class Objective:
    """What the train step needs of a task: ``inputs(batch, step) -> (images, targets)`` (the
    step's random mixing, if any, from the run's seed and the step) and ``loss(logits,
    targets)``."""

    inputs: Callable[[dict, jax.Array], tuple[jax.Array, jax.Array]]
    loss: Callable[[jax.Array, jax.Array], jax.Array]


def mixup_settings(config: ml_collections.ConfigDict) -> mixup.MixupSettings:
    c = config.classification
    return mixup.MixupSettings(mixup_alpha=c.mixup_alpha, cutmix_alpha=c.cutmix_alpha,
                               prob=c.mixup_prob, switch_prob=c.mixup_switch_prob,
                               label_smoothing=c.label_smoothing)


def objective(config: ml_collections.ConfigDict, num_labels: int, ignore_index: int,
              class_weight: Sequence[float] | None = None) -> Objective:
    """The train step's inputs and loss for ``config.task`` (segmentation: ``config.loss``;
    ``class_weight``: the weights computed for ``loss.class_weight="median_frequency"``)."""
    if config.task == SEMSEG:
        from segformer_jax.run_config import loss_settings
        loss = make_loss(loss_settings(config, class_weight), ignore_index)
        return Objective(inputs=lambda batch, step: (batch["image"], batch["label"]), loss=loss)
    settings = mixup_settings(config)
    key = jax.random.fold_in(jax.random.key(config.seed), mixup.MIX_STREAM)

    def inputs(batch: dict, step: jax.Array) -> tuple[jax.Array, jax.Array]:
        images, labels = batch["image"], batch["label"]
        if not settings.active:
            return images, mixup.smooth_one_hot(labels, num_labels, settings.label_smoothing)
        draws = mixup.draw(jax.random.fold_in(key, step), settings, images.shape[1], images.shape[2])
        return mixup.mix_batch(images, labels, draws, settings, num_labels)

    return Objective(inputs=inputs, loss=mixup.soft_target_cross_entropy)


def train_transform(config: ml_collections.ConfigDict, split: Any) -> Any:
    """The transform of one training example: ``(example, rng) -> {"image", "label"}``."""
    d = config.data
    if config.task == CLASSIFY:
        from segformer_jax.data.augment import ClassifyTrainTransform
        c = config.classification
        return ClassifyTrainTransform(crop_size=tuple(d.crop_size), scale=tuple(c.crop_scale),
                                      ratio=tuple(c.crop_ratio), hflip=c.hflip,
                                      randaugment=c.randaugment, random_erase=c.random_erase)
    from segformer_jax.data.transforms import TrainTransform
    from segformer_jax.run_config import normalisation
    mean, std = normalisation(config)
    return TrainTransform(img_scale=tuple(d.img_scale), ratio_range=tuple(d.ratio_range),
                          crop_size=tuple(d.crop_size), cat_max_ratio=d.cat_max_ratio,
                          reduce_zero_label=split.reduce_zero_label, photometric=d.photometric,
                          mean=mean, std=std)


def make_evaluator(config: ml_collections.ConfigDict, model: Any, eval_split: Any,
                   max_examples: int | None = None) -> Any:
    """The task's validation, each process scoring its share of the split on all its devices.

    Segmentation: whole images at ``data.eval_scale``, aligned to ``data.eval_size_divisor``
    (batches of one test shape, one image per device). Classification: the recipe's test
    transform (short side to ``crop / classification.test_crop_pct``, centre crop), batches
    of ``classification.eval_batch_size``. ``max_examples``: the first examples only.
    """
    from segformer_jax.evaluators import ClassificationEvaluator, EvalSettings, SegmentationEvaluator
    d = config.data
    where = dict(process_index=jax.process_index(), process_count=jax.process_count(),
                 max_examples=max_examples)
    if config.task == CLASSIFY:
        c = config.classification
        return ClassificationEvaluator(model, eval_split, tuple(d.crop_size), c.test_crop_pct,
                                       batch_size=c.eval_batch_size, **where)
    from segformer_jax.run_config import normalisation
    mean, std = normalisation(config)
    settings = EvalSettings(img_scale=tuple(d.eval_scale) if d.eval_scale else None,
                            size_divisor=d.eval_size_divisor or None, mean=mean, std=std)
    return SegmentationEvaluator(model, eval_split, settings, **where)
