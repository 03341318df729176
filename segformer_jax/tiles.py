"""Images far larger than any crop (aerial and satellite scenes, slide scans), in bounded memory.

mmseg's sliding-window inference (``inference.Inference.slide``) sums every window's logits
on a canvas of the whole image, (H, W, classes) float32: 7.6 GB for a 10000 × 10000 scene
and 19 classes, before the image itself. ``tiled_masks`` computes the same sums in the same
order, but in vertical stripes of ``stripe`` pixels (4096), each swept window row by window
row, keeping only the canvas rows a later window can still reach: after window row ``i``
(top ``y_i``), the rows above ``y_{i+1}`` are final, are divided by their window count,
turned into class ids and written. So it holds at most

    crop_h × (stripe + 2 crop_w) × (classes + 1) × 4 bytes    (the open canvas rows)
  + batch_windows × crop_h × crop_w × (bands + classes) × 4 bytes    (one batch of windows)

whatever the image's size: 512 × 5120 × 20 × 4 = 210 MB for 19 classes at crop 512. On top
come the mask, written block by block into a memory-mapped TIFF on disk (``write_mask_tiff``;
the operating system keeps as much of it in memory as it likes), and the image source: a
memory-mapped uncompressed TIFF or ``.npy`` costs only the pages the windows touch, any
other file is decoded whole. The windows that cross a stripe border run for both stripes:
about crop / stripe more work (one eighth at the defaults), none for images narrower than
a stripe.

The model runs at the image's own resolution (the remote-sensing convention: a metre per
pixel means the same at training and test time). The windows, their order, the sums and
the division are mmseg's, so the mask equals ``predict --mode slide`` at the native size.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segformer_jax.errors import InputError
from segformer_jax.files import replacing
from segformer_jax.images import read_band_image, read_image
from segformer_jax.inference import slide_windows

STRIPE = 4096  # pixels: the width of the canvas rows held at a time


def open_image(path: str | os.PathLike, num_channels: int) -> Any:
    """An (H, W, bands) array-like of ``path`` for ``tiled_masks``: memory-mapped when the
    file allows it (an uncompressed TIFF of interleaved bands, an ``.npy``), else decoded
    (``images.read_image`` for RGB, ``images.read_band_image`` otherwise).

    Raises ``InputError`` naming the file when it is not an (H, W, ``num_channels``) array
    of integers or floats (a damaged or pickled ``.npy``, another shape, a dtype that is not
    a number), before any window runs.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    image = None
    expected = f"an (H, W, {num_channels}) array of integers or floats"
    if suffix == ".npy":
        try:
            with open(path, "rb") as f:
                magic = f.read(6)
            if magic != b"\x93NUMPY":   # numpy would take it for a pickle
                raise InputError(f"{path}: not a .npy file (no numpy header); expected "
                                 f"{expected} saved with numpy.save")
            image = np.load(path, mmap_mode="r")
        except FileNotFoundError:
            raise InputError(f"{path}: no such file") from None
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 - numpy raises ValueError, OSError, EOFError, ...
            raise InputError(f"{path}: cannot read it as a .npy array ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else 'damaged'}); expected "
                             f"{expected} saved with numpy.save") from None
    elif suffix in (".tif", ".tiff"):
        import tifffile
        try:
            image = tifffile.memmap(path, mode="r")
        except (ValueError, OSError):  # compressed, tiled or planar: decoded below
            image = None
        if image is not None and image.ndim == 2:
            image = image[..., None]
    if image is None:
        image = read_image(path) if num_channels == 3 else read_band_image(path, num_channels)
    if image.ndim != 3 or image.shape[-1] != num_channels or 0 in image.shape:
        raise InputError(f"{path}: an image of shape {image.shape}; the model takes (H, W, "
                         f"{num_channels})")
    dtype = image.dtype
    if dtype == np.bool_ or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise InputError(f"{path}: an array of dtype {dtype}; expected {expected} (uint8 or "
                         "uint16 for an image)")
    return image


def tiled_masks(window_logits: Callable[[np.ndarray], np.ndarray], image: Any,
                crop: int | Sequence[int], stride: int | Sequence[int],
                prepare: Callable[[np.ndarray], np.ndarray], *, batch_windows: int = 1,
                stripe: int = STRIPE, progress: Callable[[int, int], None] | None = None
                ) -> Iterator[tuple[int, int, np.ndarray]]:
    """Class ids of ``image`` by mmseg's sliding windows, in blocks ``(y0, x0, ids)``.

    ``window_logits(x)``: (n, crop_h, crop_w, bands) prepared crops -> (n, crop_h, crop_w,
    classes) float32 logits at the crop size; ``prepare(crop)``: one window of the image as
    stored -> (crop_h, crop_w, bands) float32 (the normalisation; no resize). The image is
    cut into vertical stripes ``stripe`` pixels wide, each swept top to bottom with every
    window that reaches it (a window across a stripe border runs for both stripes: about
    crop / stripe more work), so that a pixel sums exactly the windows, in exactly the
    order, of the whole-image canvas. ``ids``: uint8 (uint16 above 255 classes, as predict's PNGs) rows of one
    stripe; ``progress(done, total)`` after each batch of windows.
    """
    height, width = int(image.shape[0]), int(image.shape[1])
    windows = slide_windows(height, width, crop, stride)   # rows outer, columns inner
    sw = int(stride if isinstance(stride, (int, np.integer)) else stride[1])
    cw = int(crop if isinstance(crop, (int, np.integer)) else crop[1])
    columns = max(width - cw + sw - 1, 0) // sw + 1        # slide_windows' w_grids
    rows = [windows[i:i + columns] for i in range(0, len(windows), columns)]
    count_y, count_x = np.zeros(height, np.int64), np.zeros(width, np.int64)
    for row in rows:
        count_y[row[0].y1:row[0].y2] += 1
    for w in rows[0]:
        count_x[w.x1:w.x2] += 1
    # A pixel's count is count_y * count_x: a zero along either axis would divide by zero.
    for axis, count in (("row", count_y), ("column", count_x)):
        if count.size and count.min() < 1:
            raise InputError(f"sliding windows (crop {crop}, stride {stride}) leave {axis} "
                             f"{int(np.argmin(count))} of a {height}x{width} image uncovered; "
                             "use a stride of at most the crop")
    bounds = [(x0, min(x0 + int(stripe), width)) for x0 in range(0, width, int(stripe))]
    reaching = [[j for j, w in enumerate(rows[0]) if w.x1 < x1 and w.x2 > x0] for x0, x1 in bounds]
    state = {"done": 0, "total": len(rows) * sum(len(r) for r in reaching)}
    for (x0, x1), js in zip(bounds, reaching):
        yield from _stripe(window_logits, image, rows, js, x0, x1, count_y, count_x, prepare,
                           max(1, int(batch_windows)), progress, state)


def _stripe(window_logits: Callable, image: Any, rows: list, js: list[int], x0: int, x1: int,
            count_y: np.ndarray, count_x: np.ndarray, prepare: Callable, batch_windows: int,
            progress: Callable | None, state: dict) -> Iterator[tuple[int, int, np.ndarray]]:
    """One stripe of ``tiled_masks``: the window rows top to bottom, the canvas rows that no
    later window reaches finished and yielded after each."""
    left = min(rows[0][j].x1 for j in js)
    right = max(rows[0][j].x2 for j in js)
    ch = rows[0][0].y2 - rows[0][0].y1
    sums: np.ndarray | None = None   # canvas rows [top, top + ch), columns [left, right)
    top = 0

    def finish(block: np.ndarray, y0: int) -> tuple[int, int, np.ndarray]:
        block = block[:, x0 - left:x1 - left]
        count = (count_y[y0:y0 + len(block), None] * count_x[None, x0:x1]).astype(np.float32)
        logits = block / count[..., None]
        ids = (logits[..., 0] > 0) if logits.shape[-1] == 1 else logits.argmax(-1)
        return y0, x0, ids.astype(np.uint16 if logits.shape[-1] > 255 else np.uint8)

    for row in rows:
        y1 = row[0].y1
        if sums is not None and y1 > top:   # rows [top, y1): no later window reaches them
            shift = y1 - top
            yield finish(sums[:shift], top)
            _shift_up(sums, shift)
            top = y1
        batch_list = [row[j] for j in js]
        for start in range(0, len(batch_list), batch_windows):
            batch = batch_list[start:start + batch_windows]
            crops = np.stack([prepare(np.asarray(image[w.y1:w.y2, w.x1:w.x2])) for w in batch])
            logits = np.asarray(window_logits(crops), np.float32)
            if sums is None:
                sums = np.zeros((ch, right - left, logits.shape[-1]), np.float32)
            for w, window in zip(batch, logits):  # mmseg's order of additions
                sums[:, w.x1 - left:w.x2 - left] += window
            state["done"] += len(batch)
            if progress is not None:
                progress(state["done"], state["total"])
    yield finish(sums[:len(count_y) - top], top)


def _shift_up(sums: np.ndarray, shift: int) -> None:
    """``sums[:-shift] = sums[shift:]`` and zeros below, in place, in chunks of at most
    ``shift`` rows (so no chunk overlaps its source and numpy makes no temporary copy)."""
    kept = len(sums) - shift
    step = max(1, min(shift, 64))
    for r in range(0, kept, step):
        end = min(r + step, kept)
        sums[r:end] = sums[r + shift:end + shift]
    sums[kept:] = 0.0


def write_mask_tiff(path: str | os.PathLike, blocks: Iterator[tuple[int, int, np.ndarray]],
                    height: int, width: int, dtype: Any = np.uint8) -> Path:
    """Writes ``blocks`` ``(y0, x0, ids)`` into an uncompressed single-band TIFF of class
    ids, memory-mapped (tifffile): each block goes to disk as it comes, and the mask is never
    whole in memory. A failure leaves no partial file. Returns the path."""
    import tifffile
    path = Path(path)
    with replacing(path) as partial:
        mask = tifffile.memmap(partial, shape=(height, width), dtype=np.dtype(dtype),
                               photometric="minisblack")
        for y0, x0, ids in blocks:
            mask[y0:y0 + ids.shape[0], x0:x0 + ids.shape[1]] = ids
            mask.flush()
        del mask
    return path
