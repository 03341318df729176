"""Datasets: the embedded synthetic shapes set, ADE20K, Cityscapes, COCO-Stuff and your own folders.

Every dataset is a TFDS builder (``tfds.core.GeneratorBasedBuilder``) written as ArrayRecord,
so ``load_split`` gives a random-access source; nothing is downloaded at run time:

* ``"synthetic"``: the embedded procedurally generated shapes (``synthetic.py``), 6 classes;
* ``"ade20k"``: ADEChallengeData2016 from ``manual_dir`` (the official zip or the extracted
  folder), 150 classes, stored raw 0..150 and reduced (0 -> ignore) by the transforms;
* ``"cityscapes"``: ``leftImg8bit_trainvaltest.zip`` + ``gtFine_trainvaltest.zip`` from
  ``manual_dir``, labelIds mapped to the 19 trainIds (255 = ignore); its ``test`` split
  (masks all 255) is built on its own, only when asked for;
* ``"coco_stuff"``: COCO-Stuff 164k's three archives from ``manual_dir``, the raw ids mapped
  to 171 classes as mmsegmentation's converter maps them (``coco_stuff.py``);
* ``"folder"``: ``manual_dir=ROOT`` with ``ROOT/images/<split>/``, ``ROOT/masks/<split>/`` and
  ``ROOT/classes.txt``.

and for image classification (``classification.py``; records ``{"image", "label": int,
"file_name"}``):

* ``"synthetic_classification"``: the embedded shapes, one per image, 5 classes;
* ``"imagenet2012"``: TFDS's own ImageNet-1k builder, from ``ILSVRC2012_img_train.tar`` and
  ``ILSVRC2012_img_val.tar`` in ``manual_dir`` (both needed: TFDS reads the validation
  labels whatever the split asked for), 1000 classes in WordNet-id order;
* ``"image_folder"``: ``manual_dir=ROOT`` with ``ROOT/<split>/<class>/*.jpg``.

The first ``load_split`` of a dataset builds it into ``data_dir`` (TFDS's default when None);
later calls read what was built. Bad input stops it with one ``DatasetError`` line before
anything is built: an option (``data.options``) a builder does not take or a value it does
not accept, a ``data_dir`` that is a file; and a built copy that cannot be read (its
``dataset_info.json`` garbled, a shard file missing or truncated) is named with the
directory to delete (nothing is ever deleted here). Then::

    data = load_split("ade20k", "train", data_dir="~/tensorflow_datasets", manual_dir="~/ade")
    transform = train_transform("ade20k", reduce_zero_label=data.reduce_zero_label)
    batches = train_batches(data.source, transform, global_batch_size=16, seed=0)
    validation = load_split("ade20k", "validation", ...)
    scores = segformer_jax.evaluators.evaluate_split(config, variables, validation)

(the rescale, crop and test sizes of each dataset are in ``presets``).

``transforms`` (the NVlabs/mmseg augmentations) and ``pipeline`` (deterministic batching)
need numpy and PIL only; TensorFlow Datasets is imported when a builder is needed.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from pathlib import Path
from typing import Any

from segformer_jax.constants import CLASSIFY, IGNORE_INDEX, SEMSEG
from segformer_jax.data.pipeline import TrainBatches, eval_batches, global_batch_indices, train_batches
from segformer_jax.data.synthetic import CLASS_NAMES as SYNTHETIC_CLASS_NAMES
from segformer_jax.data.transforms import EvalTransform, TrainTransform, train_transform
from segformer_jax.errors import DatasetError  # imports nothing: TFDS stays unloaded

SEGMENTATION_DATASETS = ("synthetic", "ade20k", "cityscapes", "coco_stuff", "folder")
CLASSIFICATION_DATASETS = ("synthetic_classification", "imagenet2012", "image_folder")
DATASETS = SEGMENTATION_DATASETS + CLASSIFICATION_DATASETS


def task_of_dataset(name: str) -> str:
    """The task whose records dataset ``name`` holds."""
    if name in CLASSIFICATION_DATASETS:
        return CLASSIFY
    if name in SEGMENTATION_DATASETS:
        return SEMSEG
    raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")


@dataclasses.dataclass(frozen=True)
class SplitData:
    """One split: ``source[i]`` -> ``{"image": uint8 (H, W, 3), "segmentation_mask": uint8
    (H, W, 1), "file_name": bytes}`` (random access, ``len(source)`` examples); for a
    classification dataset (``task``) ``"label"`` (an int) instead of the mask.

    ``class_names[k]`` names label ``k`` *after* ``reduce_zero_label`` when that is True
    (ADE20K); 255 is "ignore" everywhere.
    """

    source: Any
    class_names: tuple[str, ...]
    reduce_zero_label: bool
    name: str
    split: str
    ignore_index: int = IGNORE_INDEX
    task: str = SEMSEG
    num_channels: int = 3  # the images' bands (a folder of K-band images: K)

    @property
    def num_labels(self) -> int:
        return len(self.class_names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.class_names))

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.source[index]


def _expand(path: str | os.PathLike | None) -> str | None:
    return None if path is None else str(Path(path).expanduser())


def get_builder(name: str, data_dir: str | os.PathLike | None = None,
                manual_dir: str | os.PathLike | None = None, num_channels: int = 3, *,
                split: str | None = None, **options: Any) -> Any:
    """The TFDS builder of dataset ``name`` (one of ``DATASETS``); nothing is built yet.

    ``split``: the split to be read, where it decides the builder: Cityscapes' ``"test"``
    has one of its own (``cityscapes.CityscapesTest``), built only when asked for.

    ``options``: for ``"synthetic"`` and ``"synthetic_classification"``, ``num_train``,
    ``num_validation``, ``seed``, ``size_range`` (see ``synthetic_builder.check_options``:
    each is checked here, before any builder exists); none for the others.
    ``manual_dir`` is needed by ``"folder"`` (it is the folder) to make the builder.
    ``num_channels`` other than 3: a ``"folder"`` of K-band images (``images.read_bands``).
    """
    if num_channels != 3 and name != "folder":
        raise DatasetError(f"dataset {name!r} has RGB images; images of {num_channels} bands "
                           "come from a folder dataset (data.name='folder')")
    from segformer_jax.data.common import quiet_absl_warnings
    quiet_absl_warnings()
    data_dir = _expand(data_dir)
    if name in ("synthetic", "synthetic_classification"):
        from segformer_jax.data.synthetic_builder import check_options
        check_options(name, options, min_side=16 if name == "synthetic_classification" else 1)
    elif options:
        raise DatasetError(f"data.options {dict(options)}: dataset {name!r} takes no options "
                           "(only synthetic and synthetic_classification do)")
    if name == "synthetic":
        from segformer_jax.data.synthetic_builder import Synthetic, synthetic_config
        config = synthetic_config(**options)
        default = Synthetic.BUILDER_CONFIGS[0]
        return Synthetic(data_dir=data_dir, config=default if config.name == default.name
                         else config)
    if name == "synthetic_classification":
        from segformer_jax.data.classification import (
            SyntheticClassification,
            synthetic_classification_config,
        )
        config = synthetic_classification_config(**options)
        default = SyntheticClassification.BUILDER_CONFIGS[0]
        return SyntheticClassification(data_dir=data_dir, config=default if config.name == default.name
                                       else config)
    if name == "ade20k":
        from segformer_jax.data.ade20k import Ade20k
        return Ade20k(data_dir=data_dir)
    if name == "cityscapes":
        from segformer_jax.data.cityscapes import Cityscapes, CityscapesTest
        return (CityscapesTest if split == "test" else Cityscapes)(data_dir=data_dir)
    if name == "coco_stuff":
        from segformer_jax.data.coco_stuff import CocoStuff
        return CocoStuff(data_dir=data_dir)
    if name == "folder":
        from segformer_jax.data.folder import Folder
        return Folder(root=_expand(manual_dir), data_dir=data_dir, num_channels=num_channels)
    if name == "image_folder":
        from segformer_jax.data.classification import ImageFolder
        return ImageFolder(root=_expand(manual_dir), data_dir=data_dir)
    if name == "imagenet2012":
        import tensorflow_datasets as tfds
        return tfds.builder("imagenet2012", data_dir=data_dir, file_format="array_record")
    raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")


def prepare(name: str, data_dir: str | os.PathLike | None = None,
            manual_dir: str | os.PathLike | None = None, num_channels: int = 3, *,
            split: str | None = None, **options: Any) -> Any:
    """``get_builder``, then builds the dataset unless ``data_dir`` already holds it."""
    import tensorflow_datasets as tfds

    from segformer_jax.data.common import damaged_message
    check_data_dir(data_dir)
    builder = get_builder(name, data_dir, manual_dir, num_channels, split=split, **options)
    # Never look for a prepared copy on Google Cloud Storage: nothing is downloaded, ever
    # (and on a closed network the look-up can stall for a minute per build).
    config = tfds.download.DownloadConfig(manual_dir=_expand(manual_dir), try_download_gcs=False)
    tfds.disable_progress_bar()  # one bar per split and shard would swamp training logs
    try:
        builder.download_and_prepare(download_config=config)
    except OSError as e:
        if e.errno not in _WRITE_ERRNOS:
            raise
        raise DatasetError(f"{e.filename or builder.data_dir}: cannot build dataset {name!r} "
                           f"there ({e.strerror}); give a data_dir where it can be written") from None
    if not builder.info.splits:  # TFDS reuses a version directory it cannot read the splits of
        raise DatasetError(damaged_message(builder.data_dir, "no dataset_info.json with its splits"))
    return builder


_WRITE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.ENOTDIR)


def check_data_dir(data_dir: str | os.PathLike | None) -> None:
    """``data_dir`` must be a directory or not exist yet (it is then created), and so must the
    first of its parents that exists; a file there is a ``DatasetError`` naming it."""
    if data_dir is None:
        return
    path = Path(data_dir).expanduser()
    for existing in (path, *path.parents):
        if existing.exists():
            if not existing.is_dir():
                what = "data_dir" if existing == path else f"a parent of data_dir {path}"
                raise DatasetError(f"{existing}: {what} is a file, not a directory; give a "
                                   "directory for the built datasets (it is created if missing)")
            return


def check_shards(builder: Any, split: str) -> None:
    """Every shard file of ``split`` is there and opens: the first record of each is read
    as stored bytes (nothing decoded; opening a shard reads its index, which a truncated
    file lacks). A missing or unreadable file is a ``DatasetError`` naming it and the
    directory to delete, before training starts."""
    from segformer_jax.data.common import damaged_message
    info = builder.info.splits[split]
    paths = list(getattr(info, "filepaths", None) or [])
    lengths = list(info.shard_lengths or [])
    if len(paths) != len(lengths):
        return  # a layout this check does not know: reading will tell
    for path in paths:
        if not Path(os.fspath(path)).is_file():
            raise DatasetError(damaged_message(builder.data_dir, f"{Path(os.fspath(path)).name} "
                                                                 "is missing"))
    source = builder.as_data_source(split)
    source = getattr(source, "data_source", source)  # ArrayRecord's own: bytes, not decoded
    start = 0
    for path, length in zip(paths, lengths):
        if length:
            try:
                source[start]
            except Exception as e:  # noqa: BLE001 - ArrayRecord raises RuntimeError, TFDS others
                raise DatasetError(damaged_message(
                    builder.data_dir, f"{Path(os.fspath(path)).name} cannot be read: "
                                      f"{type(e).__name__}: {e}", e)) from None
        start += int(length)


def load_split(name: str, split: str, data_dir: str | os.PathLike | None = None,
               manual_dir: str | os.PathLike | None = None, num_channels: int = 3,
               **options: Any) -> SplitData:
    """Split ``split`` of dataset ``name`` as a random-access source plus its class names.

    Builds the dataset on first use (see ``prepare``): ``manual_dir`` holds the downloaded
    archives for ``"ade20k"`` and ``"cityscapes"`` and is the folder for ``"folder"``.
    ``split`` is a split name (``train``, ``validation``, ``test``, or a folder's subfolder),
    optionally with TFDS slicing (``"train[:100]"``). A bad input raises ``DatasetError``.
    """
    base = split.split("[", 1)[0]
    builder = prepare(name, data_dir, manual_dir, num_channels, split=base, **options)
    if base not in builder.info.splits:
        built_from = ""
        if name in ("ade20k", "cityscapes", "coco_stuff"):   # built from what the manual dir held
            built_from = (f": {builder.data_dir} was built from a copy without that split's "
                          f"images; add them to the manual dir and delete {builder.data_dir} to "
                          f"build it again")
        raise DatasetError(f"dataset {name!r} has no split {base!r}; it has "
                           f"{sorted(builder.info.splits)}{built_from}")
    check_shards(builder, base)
    metadata = builder.info.metadata or {}
    task = task_of_dataset(name)
    if task == CLASSIFY:  # TFDS's ImageNet has no metadata: its label feature
        class_names = tuple(builder.info.features["label"].names)
        reduce = False
    else:
        class_names = tuple(metadata.get("class_names") or builder.class_names)
        reduce = bool(metadata.get("reduce_zero_label", builder.reduce_zero_label))
    return SplitData(source=builder.as_data_source(split), class_names=class_names,
                     reduce_zero_label=reduce, name=name, split=split, task=task,
                     num_channels=num_channels)


__all__ = ["DATASETS", "SEGMENTATION_DATASETS", "CLASSIFICATION_DATASETS", "task_of_dataset",
           "SYNTHETIC_CLASS_NAMES", "DatasetError", "SplitData", "get_builder",
           "prepare", "load_split", "TrainTransform", "EvalTransform", "train_transform",
           "TrainBatches", "train_batches", "eval_batches",
           "global_batch_indices"]
