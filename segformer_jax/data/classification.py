"""Image classification datasets, as TFDS builders: the embedded synthetic set and a folder.

Every classification builder writes TFDS's own ``imagenet2012`` features, so that the rest of
the library reads ImageNet (through TFDS's builder, from the two ILSVRC2012 tars in
``manual_dir``) and these alike:

* ``image``: uint8 (H, W, 3) RGB (JPEG and RGB PNG stored as they are, others as PNG);
* ``label``: ``tfds.features.ClassLabel`` with the class names;
* ``file_name``: the file's path inside its split.

``"synthetic_classification"``: ``generate_classification_example`` (``synthetic.py``), five
shape classes, generated at build time. ``"image_folder"``: ImageNet's folder layout
(torchvision's ``ImageFolder``)::

    ROOT/<split>/<class>/**/NAME.jpg    (or .png, .jpeg, ...; split e.g. train, val)

Class index = position in the sorted list of class folder names of all splits together (the
same ids as torchvision's ``ImageFolder`` and TFDS's ImageNet labels when every split holds
every class); an empty class folder or a file that is not an image is an error naming it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from segformer_jax.constants import CLASSIFY
from segformer_jax.data.common import IMAGE_EXTENSIONS, DatasetError, encode_png, folder_name, read_image
from segformer_jax.data.synthetic import CLASSIFICATION_CLASS_NAMES, generate_classification_example

FOLDER_LAYOUT = "ROOT/<split>/<class>/<name>.<jpg|png|...> (e.g. ROOT/train/cat/001.jpg)"


def classification_features(class_names: tuple[str, ...]) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
        "label": tfds.features.ClassLabel(names=list(class_names)),
        "file_name": tfds.features.Text(),
    })


class ClassificationBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the classification builders: the features, the class names in the metadata."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    DESCRIPTION = ""

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    @property
    def class_names(self) -> tuple[str, ...]:
        raise NotImplementedError

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description=self.DESCRIPTION,
            features=classification_features(self.class_names), disable_shuffling=True,
            metadata=tfds.core.MetadataDict(class_names=list(self.class_names), task=CLASSIFY))

    def _generate_examples(self, *args: Any, **kwargs: Any) -> Iterator[tuple[str, dict]]:
        raise NotImplementedError  # subclasses return their generators from _split_generators


# ----------------------------------------------------------------------------- synthetic


@dataclasses.dataclass(eq=False)
class SyntheticClassificationConfig(tfds.core.BuilderConfig):
    num_train: int = 2000
    num_validation: int = 250
    seed: int = 0
    size_range: tuple[int, int] = (64, 96)


def synthetic_classification_config(num_train: int = 2000, num_validation: int = 250, seed: int = 0,
                                    size_range: tuple[int, int] = (64, 96)) -> SyntheticClassificationConfig:
    lo, hi = (int(v) for v in size_range)
    if num_train < 1 or num_validation < 0 or not 16 <= lo <= hi:
        raise ValueError(f"synthetic_classification dataset: need num_train >= 1, num_validation "
                         f">= 0 and 16 <= size_range[0] <= size_range[1]; got {num_train}, "
                         f"{num_validation}, {size_range}")
    return SyntheticClassificationConfig(
        name=f"train{num_train}_val{num_validation}_seed{seed}_{lo}-{hi}", num_train=int(num_train),
        num_validation=int(num_validation), seed=int(seed), size_range=(lo, hi),
        description="shapes from segformer_jax.data.synthetic")


class SyntheticClassification(ClassificationBuilder):
    """One large shape per image (five classes) over small shapes of other classes."""

    name = "segformer_synthetic_classification"
    DESCRIPTION = __doc__
    BUILDER_CONFIGS = [synthetic_classification_config()]

    @property
    def class_names(self) -> tuple[str, ...]:
        return CLASSIFICATION_CLASS_NAMES

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        config = self.builder_config
        counts = {"train": config.num_train, "validation": config.num_validation}
        return {split: self._examples(split, n) for split, n in counts.items() if n > 0}

    def _examples(self, split: str, count: int) -> Iterator:
        config = self.builder_config
        for i in range(count):
            image, label = generate_classification_example(i, split, config.seed,
                                                           tuple(config.size_range))
            name = f"{split}_{i:07d}.png"
            yield name, {"image": encode_png(image), "label": label, "file_name": name}


# ----------------------------------------------------------------------------- folder


def scan_folder(root: str | Path) -> tuple[tuple[str, ...], dict[str, list[tuple[Path, int, str]]]]:
    """(sorted class names, {split: [(image path, class id, name inside the split)]})."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image_folder dataset: {root} does not exist; layout: {FOLDER_LAYOUT}")
    splits = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not splits:
        raise DatasetError(f"{root} has no split folders (e.g. {root}/train/); layout: {FOLDER_LAYOUT}")
    files: dict[str, dict[str, list[Path]]] = {}
    for split in splits:
        if not re.fullmatch(r"[A-Za-z0-9_]+", split) or split.lower() == "all":
            raise DatasetError(f"{root / split}: split folder names must be letters, digits and "
                               f"'_' (and not 'all'), e.g. train, val")
        classes = sorted(p for p in (root / split).iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise DatasetError(f"{root / split}: no class folders; layout: {FOLDER_LAYOUT}")
        files[split] = {}
        for folder in classes:
            images = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
            if not images:
                raise DatasetError(f"{folder}: empty class folder; put its images there or remove it")
            others = [p for p in images if p.suffix.lower() not in IMAGE_EXTENSIONS]
            if others:
                raise DatasetError(f"{others[0]}: not an image file ({', '.join(IMAGE_EXTENSIONS)})")
            files[split][folder.name] = images
    class_names = tuple(sorted({c for per_split in files.values() for c in per_split}))
    index = {name: i for i, name in enumerate(class_names)}
    out = {split: [(path, index[c], path.relative_to(root / split).as_posix())
                   for c in sorted(per_split) for path in per_split[c]]
           for split, per_split in files.items()}
    return class_names, out


@dataclasses.dataclass(eq=False)
class ImageFolderConfig(tfds.core.BuilderConfig):
    root: str = ""


class ImageFolder(ClassificationBuilder):
    """Images from ``ROOT/<split>/<class>/`` (see the module docstring)."""

    name = "segformer_image_folder"
    DESCRIPTION = "A user's classification folder: " + FOLDER_LAYOUT
    BUILDER_CONFIGS: list[ImageFolderConfig] = []

    def __init__(self, *, root: str | Path | None = None, config: Any = None, **kwargs: Any):
        if config is None or isinstance(config, str):
            if root is None:
                raise DatasetError("image_folder dataset: pass the folder (manual_dir=... to "
                                   f"load_split); layout: {FOLDER_LAYOUT}")
            root = Path(root).expanduser().resolve()
            self._scan = scan_folder(root)
            config = ImageFolderConfig(name=folder_name(root, (root,)), root=str(root),
                                       description=f"classification folder {root}")
        else:
            self._scan = scan_folder(config.root)
        super().__init__(config=config, **kwargs)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._scan[0]

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        return {split: self._examples(items) for split, items in self._scan[1].items()}

    def _examples(self, items: list[tuple[Path, int, str]]) -> Iterator:
        for path, label, name in items:
            try:
                data = path.read_bytes()
            except OSError as e:
                raise DatasetError(f"{path}: cannot read the file ({e.strerror})") from None
            image_bytes, _ = read_image(data, str(path))
            yield name, {"image": image_bytes, "label": label, "file_name": name}
