"""One rule for turning a decoded image file into the uint8 RGB array the library works on.

The dataset builders store it, and ``predict`` segments it, so a file gives the same pixels
whether it was trained on or predicted. Only numpy and PIL are imported here (and tifffile
for ``read_bands``, the reader of images of other band counts than RGB's).

``open_image`` is the library's ``PIL.Image.open``: a file beyond PIL's pixel limit (a
20000 x 20000 scene) becomes one error line naming the file, its size and what to do with
such an image, instead of PIL's ``DecompressionBombError``.

The processor (``processing.SegformerImageProcessor``) uses it for every PIL mode but ``I``
and ``F``: for those two it follows transformers' array rules instead (see
``processing._to_rgb``), because its job is to give transformers' numbers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

import numpy as np
import PIL.Image
import PIL.ImageOps

from segformer_jax.errors import DatasetError, InputError, SegformerError  # errors imports nothing

# PIL's 16-bit grayscale modes (PNG and TIFF files with 16 bits per sample open as these).
SIXTEEN_BIT_MODES: tuple[str, ...] = ("I;16", "I;16L", "I;16B", "I;16N")


# --------------------------------------------------------------------------------------
# Opening a file: PIL's pixel limit as one line naming the file


def pixel_limit() -> int | None:
    """The most pixels ``PIL.Image.open`` accepts: twice ``PIL.Image.MAX_IMAGE_PIXELS``
    (179 megapixels by default; PIL only warns between the two), None when it is lifted."""
    limit = PIL.Image.MAX_IMAGE_PIXELS
    return None if limit is None else 2 * int(limit)


def declared_size(source: str | os.PathLike | IO[bytes]) -> tuple[int, int] | None:
    """(W, H) as a file's header declares it, read as ``PIL.Image.open`` does but without its
    pixel limit (and without decoding: only the header is read); None when no format of PIL
    recognises the file. Changing ``MAX_IMAGE_PIXELS`` instead would lift the limit for every
    thread that opens an image meanwhile."""
    fp = open(source, "rb") if isinstance(source, (str, os.PathLike)) else source  # noqa: SIM115
    try:
        fp.seek(0)
        prefix = fp.read(16)
        PIL.Image.init()
        for name in PIL.Image.ID:
            factory, accept = PIL.Image.OPEN[name]
            try:
                result = accept is None or accept(prefix)
                if result and not isinstance(result, str):  # a str: PIL's warning, no match
                    fp.seek(0)
                    return tuple(factory(fp, getattr(fp, "name", "")).size)  # type: ignore[return-value]
            except Exception:  # noqa: BLE001,S112 - the next format, as Image.open tries them
                continue
        return None
    except OSError:
        return None
    finally:
        if fp is not source:
            fp.close()


def size_text(size: tuple[int, int] | None) -> str:
    """``20000x20000 pixels (400 megapixels)`` of a (W, H), for the messages below."""
    if size is None:
        return "size unknown"
    return f"{size[0]}x{size[1]} pixels ({size[0] * size[1] / 1e6:.0f} megapixels)"


def too_large_advice(plural: bool = False) -> str:
    """What is wrong with an image beyond PIL's pixel limit, and what to do with it here."""
    limit = pixel_limit() or 0
    it, tiff = ("them", "uncompressed TIFFs") if plural else ("it", "an uncompressed TIFF")
    return (f"above the {limit / 1e6:.0f} megapixels PIL decodes (its decompression-bomb "
            f"limit). To train on {it}, cut {it} into tiles (e.g. 1024x1024 image/mask pairs): "
            f"training decodes every image whole. To segment {it}, save {it} as {tiff} and run "
            f"predict --mode tiled, which memory-maps such a file")


def too_large_message(where: str, size: tuple[int, int] | None) -> str:
    """The one line for an image beyond PIL's pixel limit: the file, its size, what to do."""
    return f"{where}: {size_text(size)}, {too_large_advice()}"


# Formats whose compression changes pixel values: a mask stored so has lost its class ids.
LOSSY_FORMATS: tuple[str, ...] = ("JPEG", "MPO")  # MPO: PIL's name for multi-picture JPEGs


def lossy_mask_message(where: str, image_format: str) -> str:
    """The one line for a mask stored with lossy compression (``LOSSY_FORMATS``)."""
    disguise = " under a .png name" if where.lower().endswith(".png") else ""
    return (f"{where}: the mask is a {image_format} file{disguise}: lossy compression changes "
            f"label values along every edge, so its class ids are corrupted; re-export it "
            f"losslessly (PNG) from the original labels (converting this file keeps the damage)")


def open_image(source: str | os.PathLike | IO[bytes], where: str | None = None,
               error: type[SegformerError] = DatasetError) -> PIL.Image.Image:
    """``PIL.Image.open(source)``, decoded (``load``), or ``error`` with ``too_large_message``
    naming ``where`` (default: the path) for an image beyond PIL's pixel limit, instead of
    PIL's ``DecompressionBombError``. Any other failure of PIL is raised as it is (each caller
    says what a truncated or foreign file means to it). Close the image when done."""
    where = where or str(source)
    try:
        image = PIL.Image.open(source)
    except PIL.Image.DecompressionBombError:
        raise error(too_large_message(where, declared_size(source))) from None
    try:
        image.load()  # some formats check the limit again here (frames, tiles)
    except PIL.Image.DecompressionBombError:
        size = image.size
        image.close()
        raise error(too_large_message(where, size)) from None
    except BaseException:
        image.close()
        raise
    return image


def sixteen_to_eight(values: np.ndarray) -> np.ndarray:
    """``round(v * 255 / 65535)`` in integers, so 0 -> 0 and 65535 -> 255 (``v`` in 0..65535).

    Scaling, not saturating as PIL's ``convert("RGB")`` does: that would turn most of a
    16-bit image white.
    """
    return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


def to_rgb(image: PIL.Image.Image) -> np.ndarray:
    """uint8 (H, W, 3) RGB of any PIL image.

    * 16-bit modes (I;16...) are scaled to 8 bit (``sixteen_to_eight``);
    * mode ``I`` (32-bit integers; PIL opens some 16-bit files so) is 8-bit data when its
      maximum is at most 255, else 16-bit data, clipped to 0..65535 and scaled likewise;
    * mode ``F`` (floats) in [0, 1] is scaled by 255, otherwise taken as 0..255; rounded;
    * anything with transparency (RGBA, LA, PA, or a ``transparency`` entry) is composited
      onto white, as transformers' ``convert_to_rgb`` does;
    * every other mode (L, P, 1, CMYK, YCbCr, ...) goes through ``convert("RGB")``.
    """
    if image.mode in SIXTEEN_BIT_MODES or image.mode == "I":
        values = np.asarray(image)
        if image.mode == "I" and values.max(initial=0) <= 255:  # 8-bit data in a 32-bit mode
            return _gray_to_rgb(np.clip(values, 0, 255).astype(np.uint8))
        return _gray_to_rgb(sixteen_to_eight(np.clip(values, 0, 65535)))
    if image.mode == "F":
        values = np.asarray(image)
        scale = 255.0 if values.max(initial=0) <= 1.0 else 1.0
        return _gray_to_rgb(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8))
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(PIL.Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


# --------------------------------------------------------------------------------------
# Images of K bands (model.num_channels != 3): multi-band TIFFs and stacks of band files

TIFF_SUFFIXES = (".tif", ".tiff")


def _as_band_dtype(array: np.ndarray, where: str) -> np.ndarray:
    """uint8 and uint16 as they are, floats as float32; other integers by their type (not
    their values, so that every file of one kind gets one dtype): 1-byte ones as uint8, wider
    ones as uint16 when their values fit."""
    if array.dtype == np.uint8 or array.dtype == np.uint16:
        return array
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32)
    if array.dtype == np.bool_ or np.issubdtype(array.dtype, np.integer):
        top = 255 if array.dtype.itemsize == 1 else 65535
        if array.size and (array.min() < 0 or array.max() > top):
            raise ValueError(f"{where}: {array.dtype} values outside 0..{top} cannot be stored "
                             "as bands; save them as float32")
        return array.astype(np.uint8 if top == 255 else np.uint16)
    raise ValueError(f"{where}: unsupported band dtype {array.dtype}")


def _tiff_bands(path: Path) -> np.ndarray:
    """(H, W, K) of a TIFF's first series: interleaved (``YXS``) or planar (``SYX``, ``CYX``,
    or pages ``IYX``) bands, as tifffile names the axes."""
    import tifffile
    with tifffile.TiffFile(path) as tiff:
        series = tiff.series[0]
        array, axes = series.asarray(), series.axes
    if array.ndim == 2:
        return array[..., None]
    if array.ndim != 3 or "Y" not in axes or "X" not in axes:
        raise ValueError(f"{path}: a TIFF of axes {axes!r} and shape {array.shape}; expected one "
                         "image of bands (YXS interleaved, or SYX / CYX / IYX planar)")
    band_axis = next(i for i, a in enumerate(axes) if a not in "YX")
    return np.moveaxis(array, band_axis, -1)


def _pil_bands(path: Path) -> np.ndarray:
    """(H, W, K) of a file PIL reads, its bands as they are (L 1, LA 2, RGB 3, RGBA 4, a 16-bit
    or float image 1); a palette image's colours."""
    with open_image(path) as image:
        if image.mode in ("P", "PA", "CMYK", "YCbCr", "1"):
            image = image.convert("RGBA" if "A" in image.mode or "transparency" in image.info
                                  else "RGB")
        array = np.asarray(image)
    return array[..., None] if array.ndim == 2 else array


def read_bands(path: str | Path) -> np.ndarray:
    """An image of K bands as (H, W, K) uint8, uint16 or float32, its values as stored.

    ``path`` is a TIFF (read with tifffile: any band count, planar or interleaved), any file
    PIL reads (its own bands, e.g. RGBA = RGB + NIR), or a *directory* of such files, one or
    more bands each, stacked in file-name order (``1_rgb.png``, ``2_nir.tif`` -> 4 bands).
    Raises ``ValueError`` naming the file when it cannot be read or the bands disagree
    (``DatasetError``, a ``ValueError``, for a file beyond PIL's pixel limit: ``open_image``).
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise ValueError(f"{path}: a band stack directory with no files")
        parts = [read_bands(p) for p in files]
        shapes = {p.shape[:2] for p in parts}
        dtypes = {p.dtype for p in parts}
        if len(shapes) > 1 or len(dtypes) > 1:
            detail = ", ".join(f"{f.name} {p.shape[1]}x{p.shape[0]} {p.dtype}" for f, p in zip(files, parts))
            raise ValueError(f"{path}: its band files differ in size or dtype ({detail})")
        return np.concatenate(parts, axis=-1)
    try:
        array = _tiff_bands(path) if path.suffix.lower() in TIFF_SUFFIXES else _pil_bands(path)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except ValueError:  # ours (DatasetError for an image beyond PIL's pixel limit)
        raise
    except Exception as e:  # noqa: BLE001 - tifffile and PIL raise many kinds
        raise ValueError(f"{path}: cannot read its bands ({type(e).__name__}: {e})") from None
    if 0 in array.shape:
        raise ValueError(f"{path}: empty image of shape {array.shape}")
    return np.ascontiguousarray(_as_band_dtype(array, str(path)))


__all__ = ["SIXTEEN_BIT_MODES", "LOSSY_FORMATS", "sixteen_to_eight", "to_rgb", "read_bands",
           "open_image", "too_large_message", "too_large_advice", "size_text",
           "lossy_mask_message", "pixel_limit", "declared_size"]


# -- files a command reads and writes: predict, serve, tiles ------------------------------

def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as uint8 (H, W, 3) RGB, EXIF orientation applied.

    The conversion is the one the dataset builders store images with (``images.to_rgb``:
    transparency composited onto white, 16-bit data scaled to 8 bit), so an image predicted
    here and the same image evaluated from a dataset are the same pixels.
    """
    try:
        with open_image(path, error=InputError) as image:  # past PIL's pixel limit: one line
            rgb = to_rgb(PIL.ImageOps.exif_transpose(image))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
        raise InputError(f"{path}: cannot read it as an image "
                         f"({type(e).__name__}: {e})") from None
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or 0 in rgb.shape:
        raise InputError(f"{path}: unsupported image of shape {rgb.shape}")
    return rgb


def read_band_image(path: str | os.PathLike, num_channels: int) -> np.ndarray:
    """A K-band image (a TIFF, a file of K bands, or a directory of band files:
    ``images.read_bands``) with the model's ``num_channels`` bands."""
    try:
        bands = read_bands(path)
    except ValueError as e:
        raise InputError(str(e)) from None
    if bands.shape[-1] != num_channels:
        raise InputError(f"{path}: {bands.shape[-1]} band(s); the model takes {num_channels}")
    return bands


def save_mask(path: str | os.PathLike, mask: np.ndarray, num_labels: int) -> None:
    """A PNG of class ids: 8-bit, or 16-bit when the model has more than 255 classes."""
    dtype = np.uint16 if num_labels > 255 else np.uint8
    PIL.Image.fromarray(np.asarray(mask).astype(dtype)).save(path)
