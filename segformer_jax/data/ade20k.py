"""ADE20K (SceneParsing, ADEChallengeData2016) as a TFDS builder: 150 classes, 0 = "other".

This is the set of SegFormer's ADE20K numbers, not TFDS's own ``scene_parse150`` (that one
is the 2017 instance-challenge data with 3-channel annotations). Nothing is downloaded at run
time: ``manual_dir`` holds the official ``ADEChallengeData2016.zip`` (read in place, never
extracted) or the extracted folder ``ADEChallengeData2016/{images,annotations}/{training,
validation}``. Splits: ``train`` (20,210 images) and ``validation`` (2,000).

Masks are stored raw, 0..150 (0 = other/unlabelled). The class names are those of labels
1..150, i.e. of the ids after ``reduce_zero_label`` (0 -> 255 ignore, k -> k - 1), which the
pipeline applies (``builder.reduce_zero_label`` is True); they are the ``id2label`` of the
Hub's ``nvidia/segformer-*-finetuned-ade-*`` checkpoints (with "bed" for the Hub's "bed ").
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from segformer_jax.data.common import (
    DatasetError,
    FileStore,
    SegmentationBuilder,
    check_labels,
    check_same_size,
    make_example,
    manual_dir_of,
    read_image,
    read_mask,
)

ZIP_NAME = "ADEChallengeData2016.zip"
URL = "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"
FOLDER_NAME = "ADEChallengeData2016"
SPLITS = {"train": "training", "validation": "validation"}

CLASS_NAMES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror",
    "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
assert len(CLASS_NAMES) == 150



def instructions(manual_dir: str | Path = "<manual_dir>") -> str:
    return (f"put {ZIP_NAME} (from {URL}) into {manual_dir}, or extract it there so that "
            f"{manual_dir}/{FOLDER_NAME}/images/training and "
            f"{manual_dir}/{FOLDER_NAME}/annotations/training exist")


INSTRUCTIONS = instructions()

_IMAGE_RE = re.compile(r"^(?P<prefix>(?:.*/)?)images/(?P<split>training|validation)/"
                       r"(?P<stem>[^/]+)\.(?:jpg|jpeg|png)$", re.IGNORECASE)


def _entries(folder: Path, limit: int = 8) -> str:
    """What ``folder`` holds, for an error message: its first entries, folders marked '/'."""
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    shown = ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
    return shown or "nothing"


def candidate_folders(manual_dir: Path) -> list[Path]:
    """Where an extracted copy may be: unzipped into a folder of the archive's name (which
    nests ``ADEChallengeData2016/ADEChallengeData2016/``), extracted in place, or the
    folder itself."""
    return [manual_dir / FOLDER_NAME / FOLDER_NAME, manual_dir / FOLDER_NAME, manual_dir]


def find_source(manual_dir: str | Path) -> Path:
    manual_dir = Path(manual_dir)
    if not manual_dir.is_dir():
        raise DatasetError(f"ADE20K: manual_dir {manual_dir} does not exist: "
                           f"{instructions(manual_dir)}")
    candidates = candidate_folders(manual_dir)
    for folder in candidates:
        if any((folder / "images" / split).is_dir() for split in SPLITS.values()):
            return folder
    for archive in (manual_dir / ZIP_NAME, manual_dir / FOLDER_NAME / ZIP_NAME):
        if archive.is_file():
            return archive
    looked = ", ".join(str(c) for c in candidates if c.is_dir())
    raise DatasetError(f"ADE20K: neither {ZIP_NAME} nor an extracted {FOLDER_NAME}/ folder in "
                       f"{manual_dir}: no images/training/ or images/validation/ under {looked}; "
                       f"{manual_dir} holds {_entries(manual_dir)}. {instructions(manual_dir)}")


class Ade20k(SegmentationBuilder):
    """ADEChallengeData2016 (SceneParsing150) from a manually downloaded zip or folder."""

    name = "segformer_ade20k"
    CLASS_NAMES = CLASS_NAMES
    REDUCE_ZERO_LABEL = True
    NUM_RAW_LABELS = 151  # 0 (other) .. 150
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    DESCRIPTION = ("ADE20K SceneParsing (ADEChallengeData2016): 150 classes; masks raw 0..150 "
                   "with 0 = other (apply reduce_zero_label).")
    HOMEPAGE = "http://sceneparsing.csail.mit.edu/"

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        source = find_source(manual_dir_of(dl_manager, "ADE20K", instructions))
        with FileStore(source) as store:
            pairs: dict[str, list[tuple[str, str, str]]] = {s: [] for s in SPLITS}
            members = set(store.names())
            split_of = {v: k for k, v in SPLITS.items()}
            for name in store.names():
                match = _IMAGE_RE.match(name)
                if not match:
                    continue
                prefix, folder, stem = match["prefix"], match["split"].lower(), match["stem"]
                annotation = f"{prefix}annotations/{folder}/{stem}.png"
                if annotation not in members:
                    raise DatasetError(f"{store.where(name)}: no annotation for this image "
                                       f"(expected {store.where(annotation)})")
                pairs[split_of[folder]].append((name, annotation, name.rsplit("/", 1)[-1]))
        if not any(pairs.values()):
            raise DatasetError(f"{source}: no images under images/training/ or "
                               f"images/validation/; {instructions(source.parent)}")
        # A copy with one split (only the validation images, to evaluate) builds that split;
        # load_split names the one it lacks.
        return {split: self._examples(source, items) for split, items in pairs.items() if items}

    def _examples(self, source: Path, items: list[tuple[str, str, str]]) -> Iterator:
        with FileStore(source) as store:
            for image_name, mask_name, file_name in items:
                image_where, mask_where = store.where(image_name), store.where(mask_name)
                image_bytes, size = read_image(store.read(image_name), image_where)
                mask = read_mask(store.read(mask_name), mask_where)
                check_same_size(size, mask, image_where, mask_where)
                check_labels(mask, self.NUM_RAW_LABELS, mask_where)
                yield file_name, make_example(image_bytes, mask, file_name)
