"""COCO-Stuff 164k as a TFDS builder: 171 classes (80 things, 91 stuff), 255 = ignore; the
third benchmark of the SegFormer paper.

``manual_dir`` holds the official archives, read in place: ``train2017.zip`` and
``val2017.zip`` (images, https://cocodataset.org) and ``stuffthingmaps_trainval2017.zip``
(the pixel maps, https://github.com/nightrome/cocostuff); or their extracted folders:
``train2017/``, ``val2017/`` and ``stuffthingmaps_trainval2017/{train2017,val2017}/`` (or
mmsegmentation's ``images/`` and ``annotations/`` layout, whose ``annotations`` hold the raw
maps). Splits: ``train`` (118,287 images) and ``validation`` (5,000).

The maps hold COCO's 182 raw ids (0..181, 255 unlabelled); they are mapped at build time as
mmsegmentation's ``tools/dataset_converters/coco_stuff164k.py`` maps them (``RAW_TO_TRAIN``):
the 171 ids in use, in order, to 0..170, 255 kept. The 11 ids COCO never uses (11, 25, 28,
29, 44, 65, 67, 68, 70, 82, 90) are not in that table, so the converter leaves them as they
are (the released maps hold none of them); so does this builder, and a value above 170 that
is not 255 stops the build naming the file.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

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

IMAGE_ZIPS = {"train": "train2017.zip", "validation": "val2017.zip"}
MAPS_ZIP = "stuffthingmaps_trainval2017.zip"
FOLDERS = {"train": "train2017", "validation": "val2017"}
URLS = {"train2017.zip": "http://images.cocodataset.org/zips/train2017.zip",
        "val2017.zip": "http://images.cocodataset.org/zips/val2017.zip",
        MAPS_ZIP: "http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/"
                  "stuffthingmaps_trainval2017.zip"}

CLASS_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck",
    "boat", "traffic light", "fire hydrant", "stop sign", "parking meter", "bench",
    "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra",
    "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "wine glass", "cup",
    "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush", "banner", "blanket", "branch", "bridge", "building-other", "bush",
    "cabinet", "cage", "cardboard", "carpet", "ceiling-other", "ceiling-tile",
    "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone",
    "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit",
    "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves",
    "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin",
    "net", "paper", "pavement", "pillow", "plant-other", "plastic", "platform",
    "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug",
    "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow",
    "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent",
    "textile-other", "towel", "tree", "vegetable", "wall-brick", "wall-concrete",
    "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood",
    "water-other", "waterdrops", "window-blind", "window-other", "wood",
)
assert len(CLASS_NAMES) == 171

UNUSED_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
# mmsegmentation's clsID_to_trID: the 171 raw ids in use, in order, to 0..170; 255 -> 255.
RAW_TO_TRAIN: dict[int, int] = {
    **{raw: i for i, raw in enumerate(r for r in range(182) if r not in UNUSED_IDS)}, 255: 255}
_TABLE = np.arange(256, dtype=np.int64)   # ids not in the table stay as they are
for _raw, _train in RAW_TO_TRAIN.items():
    _TABLE[_raw] = _train


def raw_to_train_ids(raw: np.ndarray) -> np.ndarray:
    """Train ids of a raw stuffthingmap, as the converter computes them (see the module doc)."""
    ids = np.asarray(raw).astype(np.int64)
    inside = (ids >= 0) & (ids < 256)
    return np.where(inside, _TABLE[np.clip(ids, 0, 255)], ids)


def instructions(manual_dir: str | Path = "<manual_dir>") -> str:
    return (f"put train2017.zip and val2017.zip ({URLS['train2017.zip'].rsplit('/', 1)[0]}/) and "
            f"{MAPS_ZIP} ({URLS[MAPS_ZIP]}) into {manual_dir}, or their extracted folders "
            f"(train2017/, val2017/, {MAPS_ZIP.removesuffix('.zip')}/)")


INSTRUCTIONS = instructions()


def find_sources(manual_dir: str | Path, split: str) -> tuple[Path, str, Path, str]:
    """``(images source, member prefix, maps source, member prefix)`` of ``split``: each a zip
    archive or a folder, and the path inside it of the split's files."""
    manual_dir = Path(manual_dir)
    if not manual_dir.is_dir():
        raise DatasetError(f"COCO-Stuff: manual_dir {manual_dir} does not exist: "
                           f"{instructions(manual_dir)}")
    folder = FOLDERS[split]
    images = next(((manual_dir, f"{sub}{folder}/") for sub in ("", "images/")
                   if (manual_dir / sub / folder).is_dir()), None)
    if images is None and (manual_dir / IMAGE_ZIPS[split]).is_file():
        images = (manual_dir / IMAGE_ZIPS[split], f"{folder}/")
    maps_folder = MAPS_ZIP.removesuffix(".zip")
    maps = next(((manual_dir, f"{sub}{folder}/") for sub in (f"{maps_folder}/", "annotations/")
                 if (manual_dir / sub / folder).is_dir()), None)
    if maps is None and (manual_dir / MAPS_ZIP).is_file():
        maps = (manual_dir / MAPS_ZIP, f"{folder}/")
    missing = ([IMAGE_ZIPS[split]] if images is None else []) + ([MAPS_ZIP] if maps is None else [])
    if missing:
        held = sorted(p.name + ("/" if p.is_dir() else "") for p in manual_dir.iterdir())
        raise DatasetError(f"COCO-Stuff {split}: {' and '.join(missing)} not found in {manual_dir} "
                           f"(nor extracted; it holds {', '.join(held[:8]) or 'nothing'}): "
                           f"{instructions(manual_dir)}")
    return images[0], images[1], maps[0], maps[1]


_STEM = re.compile(r"^(?P<stem>\d+)\.(?:jpg|jpeg|png)$", re.IGNORECASE)


class CocoStuff(SegmentationBuilder):

    name = "segformer_coco_stuff"
    CLASS_NAMES = CLASS_NAMES
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    DESCRIPTION = ("COCO-Stuff 164k: 171 classes (train ids of mmsegmentation's converter), "
                   "255 = ignore.")
    HOMEPAGE = "https://github.com/nightrome/cocostuff"

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        manual_dir = manual_dir_of(dl_manager, "COCO-Stuff", instructions)
        generators = {}
        for split in FOLDERS:
            images, image_prefix, maps, map_prefix = find_sources(manual_dir, split)
            with FileStore(images) as image_store, FileStore(maps) as map_store:
                map_names = set(map_store.names())
                items = []
                for name in image_store.names():
                    if not name.startswith(image_prefix):
                        continue
                    match = _STEM.match(name[len(image_prefix):])
                    if not match:
                        continue
                    mask_name = f"{map_prefix}{match['stem']}.png"
                    if mask_name not in map_names:
                        raise DatasetError(f"{image_store.where(name)}: no stuffthingmap for this "
                                           f"image (expected {map_store.where(mask_name)})")
                    items.append((name, mask_name, name.rsplit("/", 1)[-1]))
            if not items:
                raise DatasetError(f"COCO-Stuff {split}: no images under {image_prefix} in {images}: "
                                   f"{instructions(manual_dir)}")
            generators[split] = self._examples(images, maps, items)
        return generators

    def _examples(self, images: Path, maps: Path, items: list[tuple[str, str, str]]) -> Iterator:
        with FileStore(images) as image_store, FileStore(maps) as map_store:
            for image_name, mask_name, file_name in items:
                image_where, mask_where = image_store.where(image_name), map_store.where(mask_name)
                image_bytes, size = read_image(image_store.read(image_name), image_where)
                mask = raw_to_train_ids(read_mask(map_store.read(mask_name), mask_where))
                check_same_size(size, mask, image_where, mask_where)
                check_labels(mask, len(CLASS_NAMES), mask_where, ignore=(255,))
                yield file_name, make_example(image_bytes, mask, file_name)
