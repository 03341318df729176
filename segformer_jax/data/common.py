"""What the TFDS builders share: features, file access, image and mask checks, the base builder.

Every builder writes the same features, so the rest of the library reads any of them alike:

* ``image``: uint8 (H, W, 3) RGB. JPEG and 8-bit RGB PNG files are stored as they are (no
  re-encoding, no loss); grayscale, RGBA, palette, CMYK and 16-bit images are converted to RGB
  and stored as PNG.
* ``segmentation_mask``: uint8 (H, W, 1) PNG of class ids, 255 = ignore. Palette masks give
  their indices, 16-bit masks their values.
* ``file_name``: the file's path inside its split, e.g. ``ADE_train_00000001.jpg``.

Examples keep the (sorted) file order of the source (``disable_shuffling``), so index ``i`` of
a split is always the same file; the training pipeline does its own shuffling.

Bad input stops the build with one :class:`DatasetError` naming the file (the class lives in
``segformer_jax.errors`` with the library's other errors; it is importable from here too).
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import re
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from segformer_jax.constants import IGNORE_INDEX
from segformer_jax.errors import DatasetError, SegformerError
from segformer_jax.images import (
    LOSSY_FORMATS,
    SIXTEEN_BIT_MODES,
    lossy_mask_message,
    open_image,
    to_rgb,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".gif")


# ----------------------------------------------------------------------------- file access


class FileStore:
    """Read-only access to the files of an extracted folder or of a zip archive.

    Members are named by their '/'-separated path inside the folder or archive; ``where(name)``
    is what error messages show (the file path, or ``archive.zip:member``).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.is_zip = self.path.is_file()
        self._zip: zipfile.ZipFile | None = None
        if self.is_zip:
            try:
                self._zip = zipfile.ZipFile(self.path)
                self._names = sorted(n for n in self._zip.namelist() if not n.endswith("/"))
            except (zipfile.BadZipFile, OSError) as e:
                raise DatasetError(f"{self.path}: not a readable zip archive ({e}); download it "
                                   f"again") from None
        else:
            root = self.path
            self._names = sorted(p.relative_to(root).as_posix()
                                 for p in root.rglob("*") if p.is_file())

    def names(self) -> list[str]:
        return self._names

    def where(self, name: str) -> str:
        return f"{self.path}:{name}" if self.is_zip else str(self.path / name)

    def read(self, name: str) -> bytes:
        try:
            if self._zip is not None:
                return self._zip.read(name)
            return (self.path / name).read_bytes()
        except (OSError, zipfile.BadZipFile, KeyError, EOFError) as e:
            raise DatasetError(f"{self.where(name)}: cannot read the file ({e})") from None

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def __enter__(self) -> FileStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def manual_dir_of(dl_manager: Any, dataset: str, instructions: Callable[[Any], str]) -> Path:
    """``dl_manager.manual_dir`` with our message (naming the files to get) when it is missing."""
    try:
        return Path(dl_manager.manual_dir)
    except (AssertionError, ValueError):
        path = getattr(dl_manager, "_manual_dir", None) or "<manual_dir>"
        raise DatasetError(f"{dataset}: manual_dir {path} does not exist or is empty: "
                           f"{instructions(path)}") from None


# ----------------------------------------------------------------------------- images and masks


def _open(data: bytes, where: str, what: str) -> PIL.Image.Image:
    try:  # open_image decodes everything: a truncated file fails here, not at training time
        image = open_image(io.BytesIO(data), where)  # beyond PIL's pixel limit: our one line
    except DatasetError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{where}: cannot decode the {what} ({type(e).__name__}: {e}); the "
                           f"file is truncated or not an image") from None
    if image.width == 0 or image.height == 0:
        raise DatasetError(f"{where}: empty {what} ({image.width}x{image.height})")
    return image


def encode_png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def read_image(data: bytes, where: str) -> tuple[bytes, tuple[int, int]]:
    """Checks an image file; returns (bytes to store, (H, W)).

    8-bit RGB JPEG and PNG files without transparency are stored unchanged; anything else is
    decoded, converted to RGB by ``images.to_rgb`` (the library's one rule for that) and
    stored as PNG.
    """
    image = _open(data, where, "image")
    size = (image.height, image.width)
    if (image.format in ("JPEG", "PNG") and image.mode == "RGB"
            and image.info.get("transparency") is None):
        return data, size
    return encode_png(to_rgb(image)), size


def read_mask(data: bytes, where: str) -> np.ndarray:
    """(H, W) int64 class ids of a mask file (L, P, 1, I, I;16; or RGB with equal channels).
    A JPEG mask (whatever its name) is refused: its compression has changed the ids."""
    image = _open(data, where, "mask")
    if image.format in LOSSY_FORMATS:
        raise DatasetError(lossy_mask_message(where, image.format))
    mode = image.mode
    if mode in ("L", "P", "I", "1") or mode in SIXTEEN_BIT_MODES:
        return np.asarray(image).astype(np.int64)  # P: the palette indices, not the colours
    if mode in ("LA", "PA"):
        return np.asarray(image)[..., 0].astype(np.int64)
    if mode in ("RGB", "RGBA"):
        rgb = np.asarray(image)[..., :3]
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all():
            return rgb[..., 0].astype(np.int64)
        raise DatasetError(f"{where}: the mask is a colour ({mode}) image; a mask must hold one "
                           f"class id per pixel: save it as a single-channel (L or palette) PNG")
    raise DatasetError(f"{where}: mask mode {mode} is not a label map; save it as a "
                       f"single-channel (L, P or 16-bit) PNG of class ids")


def check_labels(mask: np.ndarray, num_labels: int, where: str, ignore: Sequence[int] = ()) -> None:
    """Every value must be < num_labels, or one of ``ignore`` (e.g. 255)."""
    if mask.size and 0 <= mask.min() and mask.max() < num_labels:
        return
    values = np.unique(mask)
    bad = values[(values < 0) | (values >= num_labels)]
    bad = bad[~np.isin(bad, list(ignore))]
    if bad.size:
        allowed = f"0..{num_labels - 1}" + "".join(f" or {v}" for v in ignore)
        raise DatasetError(f"{where}: label value(s) {bad[:10].tolist()} out of range: "
                           f"{num_labels} classes, so labels must be {allowed}")


def check_same_size(image_size: tuple[int, int], mask: np.ndarray, image_where: str,
                    mask_where: str) -> None:
    if tuple(mask.shape[:2]) != tuple(image_size):
        raise DatasetError(f"{mask_where}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its "
                           f"image {image_where} is {image_size[1]}x{image_size[0]}")


def folder_name(root: Path, paths: Sequence[Path]) -> str:
    """A builder config name for the folder ``root``: ``<folder name>_<hash>``, the hash over
    its absolute path and every file under ``paths`` (name, size, modification time), so
    that editing the folder makes the next ``load_split`` build a fresh copy."""
    digest = hashlib.sha256(str(root).encode())
    for top in paths:
        for path in sorted(top.rglob("*")) if top.is_dir() else [top]:
            if path.is_file():
                stat = path.stat()
                digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n"
                              .encode())
    slug = re.sub(r"[^a-z0-9_]+", "_", root.name.lower()).strip("_") or "folder"
    return f"{slug}_{digest.hexdigest()[:10]}"


def make_example(image_bytes: bytes, mask: np.ndarray, file_name: str) -> dict[str, Any]:
    return {"image": image_bytes,
            "segmentation_mask": encode_png(mask.astype(np.uint8)),
            "file_name": file_name}


# ----------------------------------------------------------------------------- base builder


# Errors that say the file system refused or timed out, not that the files are wrong: a
# rebuild would not help, and for a large dataset it costs hours.
_ACCESS_ERRNOS = (errno.EACCES, errno.EPERM, errno.ETIMEDOUT, errno.ENOMEM, errno.EAGAIN,
                  errno.ESTALE, errno.EHOSTDOWN, errno.ENETDOWN)
_ACCESS_WORDS = ("PERMISSION_DENIED", "UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED",
                 "Permission denied", "timed out")


def damaged_message(directory: str | os.PathLike, what: str, error: BaseException | None = None) -> str:
    """The one line for a built copy of a dataset that cannot be read: what is wrong, and the
    fix (the library never deletes anything itself). ``error`` an access or system error
    (permissions, a timeout, memory): no advice to delete what may be intact."""
    if error is not None and (getattr(error, "errno", None) in _ACCESS_ERRNOS
                              or any(word in str(error) for word in _ACCESS_WORDS)):
        return (f"{directory}: the built dataset cannot be read now ({what}): an access or system "
                "error, not a sign of damage; check the file system and its permissions and try again")
    return (f"{directory}: the built dataset is damaged ({what}); delete this directory and the "
            f"next run rebuilds it")


def segmentation_features(image: Any = None) -> tfds.features.FeaturesDict:
    """The common features; ``image`` replaces the RGB image feature (``band_features``)."""
    return tfds.features.FeaturesDict({
        # No fixed encoding: stored JPEG stays JPEG, converted images are PNG.
        "image": image if image is not None else tfds.features.Image(shape=(None, None, 3),
                                                                     dtype=np.uint8),
        "segmentation_mask": tfds.features.Image(shape=(None, None, 1), dtype=np.uint8,
                                                 encoding_format="png"),
        "file_name": tfds.features.Text(),
    })


def band_features(num_channels: int, dtype: str) -> tfds.features.FeaturesDict:
    """The features of a folder of K-band images: ``image`` (H, W, K) of the bands' own dtype
    (uint8, uint16 or float32), zlib-compressed, lossless; the mask and name as usual."""
    return segmentation_features(tfds.features.Tensor(
        shape=(None, None, num_channels), dtype=np.dtype(dtype), encoding=tfds.features.Encoding.ZLIB))


class SegmentationBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of this library's builders: the common features, class names in the metadata.

    Subclasses set ``CLASS_NAMES`` (or override ``class_names``), ``REDUCE_ZERO_LABEL``,
    ``DESCRIPTION``, ``HOMEPAGE`` and implement ``_split_generators``.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    CLASS_NAMES: tuple[str, ...] = ()
    REDUCE_ZERO_LABEL = False
    DESCRIPTION = ""
    HOMEPAGE = ""

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("file_format", "array_record")
        try:
            super().__init__(**kwargs)
        except SegformerError:
            raise
        except Exception as e:  # noqa: BLE001 - protobuf, json, OSError: a damaged dataset_info.json
            # TFDS sets the version directory before it reads the dataset_info.json in it
            directory = getattr(self, "_data_dir", None)
            if directory is None or not os.path.isdir(directory):
                raise
            raise DatasetError(damaged_message(directory, f"its dataset_info.json cannot be read: "
                                                          f"{type(e).__name__}: {e}", e)) from None

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.CLASS_NAMES)

    @property
    def reduce_zero_label(self) -> bool:
        return bool(self.REDUCE_ZERO_LABEL)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=segmentation_features(),
            homepage=self.HOMEPAGE,
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(class_names=list(self.class_names),
                                            reduce_zero_label=self.reduce_zero_label,
                                            ignore_index=IGNORE_INDEX),
        )

    def _generate_examples(self, *args: Any, **kwargs: Any) -> Iterator[tuple[str, dict]]:
        raise NotImplementedError  # subclasses return their own generators from _split_generators


_QUIET = ("OpenCV is not installed",  # TFDS then decodes with PIL, which is what we want
          "Using custom data configuration")  # our folder / synthetic configs are always custom


def quiet_absl_warnings() -> None:
    """Drops two TFDS warnings about what this library does on purpose."""
    logger = logging.getLogger("absl")
    if not any(getattr(f, "_segformer_jax", False) for f in logger.filters):
        def _filter(record: logging.LogRecord) -> bool:
            message = record.getMessage()
            return not any(text in message for text in _QUIET)
        _filter._segformer_jax = True  # type: ignore[attr-defined]
        logger.addFilter(_filter)
