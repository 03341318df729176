"""A user's own segmentation data in a folder, as a TFDS builder.

Layout (``ROOT`` is passed as ``manual_dir``)::

    ROOT/classes.txt                    one class name per line; line i names class id i
    ROOT/images/<split>/**/NAME.jpg     (or .png, .jpeg, .bmp, .tif, .webp, ...)
    ROOT/masks/<split>/**/NAME.png      same relative path and stem as its image

The splits are the subfolders of ``ROOT/images`` that hold images (e.g. ``train``,
``validation``); their names are kept as they are. Mask values are class ids
``0..len(classes)-1``, or 255 for "ignore" (or ``0..len(classes)`` with
``data.reduce_zero_label=True``, 0 meaning "unlabelled"). Masks may be 8-bit grayscale, palette (the
indices are the ids) or 16-bit PNGs; images in any mode PIL reads (converted to RGB). Labels
are stored as they are (``data.reduce_zero_label`` shifts them when the run reads them).
``python -m segformer_jax.data.check --dataset folder --manual-dir ROOT`` checks a folder
before it is built. An image without its mask is an error; a mask without an image is ignored.

The built dataset's config name is ``<folder name>_<hash>``, where the hash covers the
folder's absolute path, ``classes.txt`` and every file's name, size and modification time:
editing the folder makes the next ``load_split`` build a fresh copy.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from segformer_jax.data.common import (
    IGNORE_INDEX,
    IMAGE_EXTENSIONS,
    DatasetError,
    SegmentationBuilder,
    band_features,
    check_labels,
    check_same_size,
    encode_png,
    folder_name,
    make_example,
    read_image,
    read_mask,
)
from segformer_jax.images import read_bands

LAYOUT = ("ROOT/classes.txt (one class name per line), ROOT/images/<split>/<name>.<jpg|png|...>"
          " and ROOT/masks/<split>/<name>.png")


def read_class_names(root: str | Path) -> tuple[str, ...]:
    """The names in ``ROOT/classes.txt``: line i (0-based) is class id i."""
    path = Path(root) / "classes.txt"
    if not path.is_file():
        raise DatasetError(f"{path} not found: the folder dataset needs it (one class name per "
                           f"line, line i = class id i); layout: {LAYOUT}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read it as UTF-8 text ({e})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    names = tuple(line.strip() for line in lines)
    for i, name in enumerate(names):
        if not name:
            raise DatasetError(f"{path}: line {i + 1} is empty; line i names class id i - 1, so "
                               f"every line up to the last must hold a name")
    if not names:
        raise DatasetError(f"{path}: no class names")
    if len(names) > IGNORE_INDEX:
        raise DatasetError(f"{path}: {len(names)} classes; at most {IGNORE_INDEX} fit uint8 masks "
                           f"with {IGNORE_INDEX} = ignore")
    return names


@dataclasses.dataclass(frozen=True)
class Pairs:
    """What the folder holds, without judging it: per split, the (image, mask, name) pairs
    (sorted), the images without a mask and the masks without an image."""

    pairs: dict[str, list[tuple[Path, Path, str]]]
    missing_masks: dict[str, list[tuple[Path, Path]]]   # (image, the mask expected)
    orphan_masks: dict[str, list[Path]]


def find_pairs(root: str | Path) -> Pairs:
    """The images and masks of ``root`` matched by relative path and stem; raises only when
    the layout itself is wrong (no ``images/``, no split folders, a bad split name)."""
    root = Path(root)
    images_dir, masks_dir = root / "images", root / "masks"
    if not images_dir.is_dir():
        raise DatasetError(f"{images_dir} not found; layout: {LAYOUT}")
    splits = sorted(p.name for p in images_dir.iterdir() if p.is_dir())
    if not splits:
        raise DatasetError(f"{images_dir} has no split subfolders (e.g. images/train/); "
                           f"layout: {LAYOUT}")
    pairs: dict[str, list[tuple[Path, Path, str]]] = {}
    missing: dict[str, list[tuple[Path, Path]]] = {}
    orphans: dict[str, list[Path]] = {}
    for split in splits:
        if not re.fullmatch(r"[A-Za-z0-9_]+", split) or split.lower() == "all":
            raise DatasetError(f"{images_dir / split}: split folder names must be letters, digits "
                               f"and '_' (and not 'all'), e.g. train, validation")
        items, expected = [], set()
        for image in _images(images_dir / split, masks_dir / split):
            relative = image.relative_to(images_dir / split)
            mask = masks_dir / split / relative.parent / (relative.stem if image.is_file()
                                                          else relative.name)
            mask = mask.with_name(mask.name + ".png")
            expected.add(mask)
            if mask.is_file():
                items.append((image, mask, relative.as_posix()))
            else:
                missing.setdefault(split, []).append((image, mask))
        if items:  # an empty split folder is left out
            pairs[split] = items
        extra = sorted(p for p in (masks_dir / split).rglob("*.png")
                       if p.is_file() and p not in expected) if (masks_dir / split).is_dir() else []
        if extra:
            orphans[split] = extra
    return Pairs(pairs, missing, orphans)


def _images(images: Path, masks: Path) -> list[Path]:
    """The image files under ``images``, and the band stacks: a directory ``NAME/`` whose
    mask ``masks/.../NAME.png`` exists is one image of the bands of its files (they are not
    images of their own)."""
    stacks = sorted(d for d in images.rglob("*") if d.is_dir()
                    and (masks / d.relative_to(images)).with_name(d.name + ".png").is_file())
    files = [p for p in images.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
             and not any(s in p.parents for s in stacks)]
    return sorted(files + stacks)


def scan(root: str | Path) -> dict[str, list[tuple[Path, Path, str]]]:
    """{split: [(image path, mask path, name relative to the split folder)]}, sorted; an image
    without its mask is an error (a mask without an image is ignored)."""
    found = find_pairs(root)
    for missing in found.missing_masks.values():
        image, mask = missing[0]
        raise DatasetError(f"{image}: no mask for this image (expected {mask})")
    if not found.pairs:
        raise DatasetError(f"{Path(root) / 'images'}: no images ({', '.join(IMAGE_EXTENSIONS)}) "
                           f"in its split folders; layout: {LAYOUT}")
    return found.pairs


@dataclasses.dataclass(eq=False)
class FolderConfig(tfds.core.BuilderConfig):
    """One folder: ``root`` is its absolute path; ``num_channels`` other than 3 stores every
    image's bands as they are (``band_dtype``: the first image's) instead of RGB."""

    root: str = ""
    num_channels: int = 3
    band_dtype: str = "uint8"


def folder_config(root: str | Path, num_channels: int = 3) -> FolderConfig:
    """The config of the folder at ``root``, named after its contents (see the module doc)."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"folder dataset: {root} does not exist; layout: {LAYOUT}")
    read_class_names(root)
    name = folder_name(root, (root / "classes.txt", root / "images", root / "masks"))
    band_dtype = "uint8"
    if num_channels != 3:
        first = next(iter(scan(root).values()))[0][0]
        band_dtype = str(_bands(first, num_channels).dtype)
        name = f"{name}_{num_channels}b"
    return FolderConfig(name=name, root=str(root), num_channels=num_channels, band_dtype=band_dtype,
                        description=f"segmentation folder {root}")


def _bands(path: Path, num_channels: int) -> np.ndarray:
    """``images.read_bands`` of ``path``, which must have ``num_channels`` bands."""
    try:
        bands = read_bands(path)
    except ValueError as e:
        raise DatasetError(str(e)) from None
    if bands.shape[-1] != num_channels:
        raise DatasetError(f"{path}: {bands.shape[-1]} band(s) ({bands.dtype}); "
                           f"model.num_channels={num_channels} expects {num_channels}")
    return bands


class Folder(SegmentationBuilder):
    """Images and masks from ``ROOT/images/<split>`` and ``ROOT/masks/<split>``."""

    name = "segformer_folder"
    REDUCE_ZERO_LABEL = False
    DESCRIPTION = "A user's segmentation folder: " + LAYOUT
    BUILDER_CONFIGS: list[FolderConfig] = []

    def __init__(self, *, root: str | Path | None = None, config: Any = None,
                 num_channels: int = 3, **kwargs: Any):
        if config is None or isinstance(config, str):
            if root is None:
                raise DatasetError("folder dataset: pass the folder (root=..., or manual_dir=... "
                                   f"to load_split); layout: {LAYOUT}")
            config = folder_config(root, num_channels)
        self._class_names = read_class_names(config.root)
        super().__init__(config=config, **kwargs)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._class_names

    def _info(self) -> tfds.core.DatasetInfo:
        info = super()._info()
        c = self.builder_config
        if c.num_channels == 3:
            return info
        return tfds.core.DatasetInfo(builder=self, description=info.description,
                                     features=band_features(c.num_channels, c.band_dtype),
                                     homepage=info.homepage, disable_shuffling=True,
                                     metadata=info.metadata)

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        return {split: self._examples(items)
                for split, items in scan(self.builder_config.root).items()}

    def _examples(self, items: list[tuple[Path, Path, str]]) -> Iterator:
        num_labels = len(self._class_names)
        c = self.builder_config
        for image_path, mask_path, name in items:
            try:
                mask_data = mask_path.read_bytes()
                image_data = image_path.read_bytes() if c.num_channels == 3 else None
            except IsADirectoryError:  # a stack of band files in an RGB folder: 8-bit RGB
                rgb = _bands(image_path, 3)
                if rgb.dtype != np.uint8:
                    raise DatasetError(f"{image_path}: a stack of {rgb.dtype} bands; a stack in an "
                                       "RGB folder must hold 8-bit bands") from None
                image_data = encode_png(rgb)
            except OSError as e:
                raise DatasetError(f"{e.filename}: cannot read the file ({e.strerror})") from None
            mask = read_mask(mask_data, str(mask_path))
            if image_data is None:
                bands = _bands(image_path, c.num_channels)
                if str(bands.dtype) != c.band_dtype:
                    raise DatasetError(f"{image_path}: {bands.dtype} bands, but the folder's first "
                                       f"image has {c.band_dtype}: every image needs one dtype")
                size = bands.shape[:2]
            else:
                image, size = read_image(image_data, str(image_path))
            check_same_size(size, mask, str(image_path), str(mask_path))
            # num_labels itself is a class id once data.reduce_zero_label shifts the labels
            # down; whether it is right is the trainer's check (data.pipeline.preflight).
            check_labels(mask, num_labels + 1, str(mask_path), ignore=(IGNORE_INDEX,))
            yield name, make_example(image if image_data is not None else bands, mask, name)
