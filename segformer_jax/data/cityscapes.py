"""Cityscapes (gtFine) as a TFDS builder: the 19 evaluation classes (trainIds), 255 = ignore.

``manual_dir`` holds ``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip`` from
https://www.cityscapes-dataset.com/downloads/ (login needed; they are read in place, never
extracted), or their extracted ``leftImg8bit/`` and ``gtFine/`` folders. Splits: ``train``
(2,975) and ``validation`` (500) in ``Cityscapes``; ``test`` (1,525 images whose public
labels are all "unlabeled", so its masks are all 255) in ``CityscapesTest``, a builder of
its own, so that it is built only when asked for (``load_split("cityscapes", "test")``:
predictions for the evaluation server), not with every training run's dataset.

The ``*_gtFine_labelIds.png`` masks hold the 34 labelIds; they are mapped to trainIds at build
time with the official table (``cityscapes_labels.LABEL_ID_TO_TRAIN_ID``, from cityscapesScripts'
``labels.py``): every labelId without a trainId, and any value that is not a labelId, -> 255.
Unlike TFDS's own ``cityscapes`` builder, image sizes are not fixed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from segformer_jax.data.cityscapes_labels import label_ids_to_train_ids
from segformer_jax.data.common import (
    DatasetError,
    FileStore,
    SegmentationBuilder,
    check_same_size,
    make_example,
    manual_dir_of,
    read_image,
    read_mask,
)

IMAGES_ZIP = "leftImg8bit_trainvaltest.zip"
LABELS_ZIP = "gtFine_trainvaltest.zip"
URLS = {IMAGES_ZIP: "https://www.cityscapes-dataset.com/file-handling/?packageID=3",
        LABELS_ZIP: "https://www.cityscapes-dataset.com/file-handling/?packageID=1"}
SPLITS = {"train": "train", "validation": "val", "test": "test"}

CLASS_NAMES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)

def instructions(manual_dir: str | Path = "<manual_dir>") -> str:
    return (f"put {IMAGES_ZIP} (from {URLS[IMAGES_ZIP]}) and {LABELS_ZIP} (from "
            f"{URLS[LABELS_ZIP]}) into {manual_dir} (a free login at cityscapes-dataset.com "
            f"is needed), or their extracted leftImg8bit/ and gtFine/ folders")


INSTRUCTIONS = instructions()


def find_sources(manual_dir: str | Path) -> tuple[Path, Path]:
    """(images source, labels source): each an extracted folder or the zip in ``manual_dir``.

    An extracted ``leftImg8bit/`` (``gtFine/``) is found in ``manual_dir`` or one level down,
    in a folder of the archive's name (``leftImg8bit_trainvaltest/leftImg8bit/``: what
    unzipping into a folder per archive makes); the source is the folder holding it."""
    manual_dir = Path(manual_dir)
    if not manual_dir.is_dir():
        raise DatasetError(f"Cityscapes: manual_dir {manual_dir} does not exist: "
                           f"{instructions(manual_dir)}")
    found = []
    for archive, folder in ((IMAGES_ZIP, "leftImg8bit"), (LABELS_ZIP, "gtFine")):
        parents = [manual_dir, manual_dir / archive.removesuffix(".zip")]
        parent = next((p for p in parents if (p / folder).is_dir()), None)
        if parent is not None:
            found.append(parent)  # members are named leftImg8bit/... and gtFine/...
        elif (manual_dir / archive).is_file():
            found.append(manual_dir / archive)
        else:
            held = sorted(p.name + ("/" if p.is_dir() else "") for p in manual_dir.iterdir())
            raise DatasetError(f"Cityscapes: {manual_dir / archive} not found, nor an extracted "
                               f"{folder}/ in {' or '.join(str(p) for p in parents)} "
                               f"({manual_dir} holds {', '.join(held[:8]) or 'nothing'}"
                               f"{' and more' if len(held) > 8 else ''}): put {archive} (from "
                               f"{URLS[archive]}) into {manual_dir}, or its extracted {folder}/ "
                               f"folder (a free login at cityscapes-dataset.com is needed)")
    return found[0], found[1]


_IMAGE_RE = re.compile(r"^(?:.*/)?leftImg8bit/(?P<split>train|val|test)/(?P<city>[^/]+)/"
                       r"(?P<base>[^/]+)_leftImg8bit\.png$")


class Cityscapes(SegmentationBuilder):
    """Cityscapes fine annotations, labelIds mapped to the 19 trainIds."""

    name = "segformer_cityscapes"
    CLASS_NAMES = CLASS_NAMES
    REDUCE_ZERO_LABEL = False
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    DESCRIPTION = ("Cityscapes gtFine semantic segmentation, 19 classes (trainIds), 255 = "
                   "ignore.")
    HOMEPAGE = "https://www.cityscapes-dataset.com/"
    BUILT_SPLITS: tuple[str, ...] = ("train", "validation")

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        images_source, labels_source = find_sources(
            manual_dir_of(dl_manager, "Cityscapes", instructions))
        items: dict[str, list[tuple[str, str, str]]] = {s: [] for s in SPLITS}
        split_of = {v: k for k, v in SPLITS.items()}
        with FileStore(images_source) as images, FileStore(labels_source) as labels:
            label_names = {n.split("gtFine/", 1)[-1]: n for n in labels.names()
                           if "gtFine/" in n}
            for name in images.names():
                match = _IMAGE_RE.match(name)
                if not match:
                    continue
                split, city, base = match["split"], match["city"], match["base"]
                if split_of[split] not in self.BUILT_SPLITS:
                    continue
                key = f"{split}/{city}/{base}_gtFine_labelIds.png"
                if key not in label_names:
                    raise DatasetError(f"{images.where(name)}: no gtFine labels for this image "
                                       f"(expected gtFine/{key} in {labels_source})")
                items[split_of[split]].append(
                    (name, label_names[key], f"{city}/{base}_leftImg8bit.png"))
        if not any(items.values()):
            folders = " or ".join(f"leftImg8bit/{SPLITS[s]}/" for s in self.BUILT_SPLITS)
            raise DatasetError(f"Cityscapes: no <city>/*_leftImg8bit.png images in {folders} "
                               f"of {images_source}: {INSTRUCTIONS}")
        return {split: self._examples(images_source, labels_source, pairs)
                for split, pairs in items.items() if pairs}

    def _examples(self, images_source: Path, labels_source: Path,
                  items: list[tuple[str, str, str]]) -> Iterator:
        with FileStore(images_source) as images, FileStore(labels_source) as labels:
            for image_name, label_name, file_name in items:
                image_where, mask_where = images.where(image_name), labels.where(label_name)
                image_bytes, size = read_image(images.read(image_name), image_where)
                label_ids = read_mask(labels.read(label_name), mask_where)
                check_same_size(size, label_ids, image_where, mask_where)
                yield file_name, make_example(image_bytes, label_ids_to_train_ids(label_ids),
                                              file_name)


class CityscapesTest(Cityscapes):
    """Cityscapes' test split alone (its masks all 255): predictions for the server."""

    name = "segformer_cityscapes_test"
    DESCRIPTION = ("Cityscapes leftImg8bit test images (1,525); the public labels are all "
                   "'unlabeled' (255): for writing the evaluation server's files.")
    BUILT_SPLITS = ("test",)
