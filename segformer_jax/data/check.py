"""Check a segmentation dataset before training on it: the labels, above all.

``python -m segformer_jax.data.check --dataset folder --manual-dir ROOT`` reads a folder
dataset's files as they are (nothing is built) and prints what it found: the image/mask
pairs and the files left unmatched, image sizes and modes, mask modes and dtypes (a colour
or palette mask, a 16-bit mask), every label value with its share of the pixels against
``classes.txt``, values that are neither a class id nor 255 ("ignore"), masks whose size
is not their image's, whether label 0 looks like an unlabelled background (and what
``reduce_zero_label`` would do), masks saved with lossy (JPEG) compression whatever their
name, images beyond PIL's pixel limit, for TIFFs and band stacks their band count and
per-band mean/std, and a verdict with the config lines to train with. It suggests
``reduce_zero_label`` only for the one-based pattern (the lossless masks hold ids 1..K, with
or without 0, for K classes); values it cannot explain are named with their files, and no
config line is offered for them. The training split is ``train`` (or the one split named
``train...``): without one, or with no pair in it, the verdict gives no command. The exit
status is 1 when it finds an error, 0 otherwise.

Any other dataset the trainer reads (``--dataset synthetic|ade20k|cityscapes``) is checked
as built (``load_split``): the label values of its stored masks, after the dataset's own
``reduce_zero_label``.

``label_problem`` (in ``pipeline``) is the one rule for an out-of-range label; the trainer
applies it to the records of its first batches (``pipeline.preflight``) before its first step, and
the input pipeline to every record it reads; both stop with the same message.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segformer_jax.cli import ArgumentParser
from segformer_jax.constants import IGNORE_INDEX
from segformer_jax.data.pipeline import label_problem
from segformer_jax.errors import DatasetError, SegformerError
from segformer_jax.images import (
    LOSSY_FORMATS,
    TIFF_SUFFIXES,
    open_image,
    pixel_limit,
    read_bands,
    size_text,
    too_large_advice,
)

ERROR, WARNING, NOTE = "error", "warning", "note"
# Names that a dataset's class 0 has when it marks "no label" rather than a class.
BACKGROUND_NAMES = frozenset({"background", "bg", "_background_", "unlabeled", "unlabelled",
                              "void", "ignore", "none", "other", "others", "nothing", "empty",
                              "clutter", "__background__"})
SHOWN_FILES = 3      # files named per finding


@dataclasses.dataclass(frozen=True)
class Finding:
    level: str     # ERROR, WARNING or NOTE
    code: str      # stable name: tests and scripts match on it
    message: str


# --------------------------------------------------------------------------------------
# Reading one file: what it is, without refusing it


@dataclasses.dataclass
class MaskFile:
    mode: str
    dtype: str
    size: tuple[int, int]                 # (W, H)
    values: np.ndarray | None             # (H, W) int64 ids; None for a colour mask
    colours: int = 0                      # distinct colours of a colour mask
    format: str | None = None             # PIL's name of the file's format (JPEG: lossy)

    @property
    def lossy(self) -> bool:
        return self.format in LOSSY_FORMATS


def read_mask_file(path: Path) -> MaskFile:
    """The mask as it is; ``DatasetError`` for one beyond PIL's pixel limit."""
    from segformer_jax.images import SIXTEEN_BIT_MODES
    with open_image(path) as image:
        mode, size, fmt = image.mode, image.size, image.format
        array = np.asarray(image)
    if mode in ("RGB", "RGBA"):
        rgb = array[..., :3]
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all():
            return MaskFile(mode, str(array.dtype), size, rgb[..., 0].astype(np.int64), format=fmt)
        colours = len(np.unique(rgb.reshape(-1, 3), axis=0))
        return MaskFile(mode, str(array.dtype), size, None, colours, format=fmt)
    if mode in ("LA", "PA"):
        array = array[..., 0]
    elif mode not in ("L", "P", "I", "1", "F") and mode not in SIXTEEN_BIT_MODES:
        return MaskFile(mode, str(array.dtype), size, None, 0, format=fmt)
    return MaskFile(mode, str(array.dtype), size, array.astype(np.int64), format=fmt)


def _tiff_size(path: Path) -> tuple[int, int] | None:
    """(W, H) of a TIFF's first series from its header (nothing decoded); None if unread."""
    import tifffile
    try:
        with tifffile.TiffFile(path) as tiff:
            series = tiff.series[0]
            shape, axes = series.shape, series.axes
        return shape[axes.index("X")], shape[axes.index("Y")]
    except Exception:  # noqa: BLE001 - read_bands names what is wrong with the file
        return None


# --------------------------------------------------------------------------------------
# The report


@dataclasses.dataclass
class BandStatistics:
    """Per-band sums over the training split's K-band images: ``data.mean`` / ``data.std``."""

    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # K -> images
    files: dict[int, list[str]] = dataclasses.field(default_factory=dict)
    pixels: int = 0
    total: np.ndarray | None = None
    squares: np.ndarray | None = None

    def add(self, bands: np.ndarray, where: str, train: bool) -> None:
        k = bands.shape[-1]
        self.counts[k] += 1
        self.files.setdefault(k, []).append(where)
        if train and (self.total is None or len(self.total) == k):
            values = bands.reshape(-1, k).astype(np.float64)
            self.total = values.sum(0) + (0 if self.total is None else self.total)
            self.squares = (values ** 2).sum(0) + (0 if self.squares is None else self.squares)
            self.pixels += len(values)

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        mean = self.total / self.pixels
        std = np.sqrt(np.maximum(self.squares / self.pixels - mean ** 2, 0.0))
        return tuple(round(float(v), 3) for v in mean), tuple(round(float(v), 3) for v in std)


@dataclasses.dataclass
class Report:
    """What the check found; ``format_report`` prints it."""

    dataset: str
    class_names: tuple[str, ...]
    reduce_zero_label: bool
    pairs: dict[str, int] = dataclasses.field(default_factory=dict)
    image_modes: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    image_sizes: list[tuple[int, int]] = dataclasses.field(default_factory=list)   # (W, H)
    mask_modes: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    counts: dict[str, collections.Counter] = dataclasses.field(default_factory=dict)
    # value -> the first files of *lossless* masks holding it (its keys: the values that no
    # lossy compression can have made)
    files_with: dict[int, list[str]] = dataclasses.field(default_factory=dict)
    lossy: list[str] = dataclasses.field(default_factory=list)   # masks saved lossily
    findings: list[Finding] = dataclasses.field(default_factory=list)
    config_lines: list[str] = dataclasses.field(default_factory=list)
    bands: BandStatistics | None = None  # K-band images (TIFFs, band stacks): their statistics

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == ERROR]

    def add(self, level: str, code: str, message: str) -> None:
        self.findings.append(Finding(level, code, message))

    def count(self, split: str, mask: np.ndarray, where: str, lossy: bool = False) -> None:
        """Adds one mask's label values to ``split``'s pixel counts (and, for a lossless
        mask, ``where`` to the first files holding each value)."""
        counts = self.counts.setdefault(split, collections.Counter())
        values, pixels = np.unique(mask, return_counts=True)
        for v, n in zip(values.tolist(), pixels.tolist()):
            counts[v] += n
            if lossy:
                continue
            files = self.files_with.setdefault(v, [])
            if len(files) < SHOWN_FILES:
                files.append(where)

    def codes(self) -> set[str]:
        return {f.code for f in self.findings}


def _files(paths: Sequence[Any]) -> str:
    shown = ", ".join(str(p) for p in paths[:SHOWN_FILES])
    more = len(paths) - SHOWN_FILES
    return shown + (f" and {more} more" if more > 0 else "")


def label_counts(counts: Mapping[str, collections.Counter]) -> collections.Counter:
    """The pixel count of each stored value over all splits."""
    total: collections.Counter = collections.Counter()
    for c in counts.values():
        total.update(c)
    return total


def one_based(values: Iterable[int], num_labels: int) -> bool:
    """The one pattern ``reduce_zero_label`` explains: ids 1..K for K classes. Value K is
    there, nothing else is above K but 255; 0 (unlabelled) may be there or not."""
    values = set(values)
    return num_labels in values and all(0 <= v <= num_labels or v == IGNORE_INDEX for v in values)


def judge_labels(report: Report) -> None:
    """The findings about label values, from the pixel counts of every split.

    Only the values of lossless masks are evidence: a value that only lossy masks hold was
    made by their compression, and no setting explains it."""
    names, k = report.class_names, len(report.class_names)
    total = label_counts(report.counts)
    reduce = report.reduce_zero_label
    values = sorted(total)
    bad = [v for v in values if label_problem([v], k, "", reduce)]
    clean = sorted(report.files_with)  # the values of the lossless masks
    made = [v for v in bad if v not in report.files_with]
    if report.lossy:
        report.add(ERROR, "lossy-mask",
                   f"{len(report.lossy)} mask(s) saved with lossy (JPEG) compression, which "
                   f"changes label values along every edge: their class ids are corrupted"
                   + (f" (the out-of-range value(s) {made[:10]} appear only in them)" if made else "")
                   + f". Re-export them losslessly (PNG) from the original labels (converting "
                   f"these files keeps the damage): {_files(report.lossy)}")
    if not total:
        return
    wrong = [v for v in bad if v in report.files_with]
    if wrong:
        files = sorted({f for v in wrong for f in report.files_with[v]})
        if not reduce and one_based(clean, k) and 0 in report.files_with:
            report.add(ERROR, "off-by-one",
                       f"the masks hold 0..{k} and classes.txt names {k} classes: label 0 marks "
                       f"unlabelled pixels and the ids start at 1 (value {k} in "
                       f"{_files(files)}). data.reduce_zero_label=True ignores 0 and trains stored "
                       f"value k as class k - 1, the name on line k of classes.txt")
        elif not reduce and one_based(clean, k):
            report.add(ERROR, "off-by-one",
                       f"the masks hold 1..{k} (no 0 at all) and classes.txt names {k} classes: "
                       f"the ids are 1-based, every label value shifted up by one (value {k} in "
                       f"{_files(files)}). data.reduce_zero_label=True trains stored value k as "
                       f"class k - 1, the name on line k of classes.txt")
        else:
            problem = label_problem(clean, k, "masks", reduce)
            report.add(ERROR, "out-of-range",
                       f"{problem}; in {_files(files)}. No setting explains these values: find "
                       f"out what they mean in those masks and correct them")
    first = names[0].strip().lower() if names else ""
    if (not reduce and first in BACKGROUND_NAMES and 0 in total
            and "off-by-one" not in report.codes()):  # there 0 is not class 0 at all
        share = total[0] / sum(total.values())
        report.add(NOTE, "zero-background",
                   f"class 0 is named {names[0]!r} ({share:.1%} of the pixels): it is trained and "
                   f"scored as a class. If it marks pixels without a label, drop its line from "
                   f"classes.txt and set data.reduce_zero_label=True: 0 becomes {IGNORE_INDEX} "
                   f"(ignored) and every k becomes k - 1")
    if reduce or "off-by-one" in report.codes():  # as the verdict's line trains them
        present = {v - 1 for v in values if 0 < v <= k}
    else:
        present = {v for v in values if 0 <= v < k}
    absent = [names[i] for i in range(k) if i not in present]
    if absent:
        report.add(WARNING, "absent-class",
                   f"{len(absent)} class(es) of classes.txt never appear in the masks: "
                   f"{', '.join(absent[:10])}{' …' if len(absent) > 10 else ''}")


def _lossy_named(expected: Path) -> Path | None:
    """A ``NAME.jpg`` / ``NAME.jpeg`` beside the ``NAME.png`` mask that was looked for."""
    stem = expected.name[:-len(".png")]
    for suffix in (".jpg", ".jpeg", ".JPG", ".JPEG", ".Jpg", ".Jpeg"):  # a few stats, not a listing
        path = expected.with_name(stem + suffix)
        if path.is_file():
            return path
    return None


def training_split(images_dir: Path, splits: Sequence[str], paired: Sequence[str]
                   ) -> tuple[str | None, str | None]:
    """(the split a run trains on, None), or (None, why there is none): ``train``, else the
    one split named ``train...`` (``training``, ``trainval``). A folder ``images/train``
    without a pair is no training split: the verdict never trains on another split."""
    if "train" in paired:
        return "train", None
    layout = "put the training images in images/train/ and their masks in masks/train/"
    if "train" in splits:
        return None, (f"{images_dir / 'train'}: the training split holds no image with its mask, "
                      f"so there is nothing to train on (a run never trains on another split): "
                      f"{layout}")
    named = [s for s in paired if s.lower().startswith("train")]
    if len(named) == 1:
        return named[0], None
    return None, (f"{images_dir}: no training split (images/train/): the splits are "
                  f"{', '.join(paired)}; {layout}" if len(named) == 0 else
                  f"{images_dir}: several training splits ({', '.join(named)}): name the one to "
                  f"train on with --config.data.train_split=NAME")


def check_folder(root: str | Path, reduce_zero_label: bool = False) -> Report:
    """Everything in the module doc, for the folder dataset at ``root``."""
    import PIL.Image

    from segformer_jax.data.folder import find_pairs, read_class_names
    from segformer_jax.images import SIXTEEN_BIT_MODES, declared_size
    root = Path(root).expanduser()
    report = Report("folder", read_class_names(root), reduce_zero_label)
    found = find_pairs(root)
    for split, missing in found.missing_masks.items():
        unmatched = []
        for image, mask in missing:
            jpeg = _lossy_named(mask)
            if jpeg is not None:  # a mask, but a lossy one (and never read: masks are NAME.png)
                report.lossy.append(f"{jpeg} (JPEG; the mask of {image.name} is read from {mask.name})")
            else:
                unmatched.append(f"{image} (expected {mask})")
        if unmatched:
            report.add(ERROR, "unmatched-image",
                       f"{split}: {len(unmatched)} image(s) without a mask: {_files(unmatched)}")
    for split, orphans in found.orphan_masks.items():
        report.add(WARNING, "unmatched-mask",
                   f"{split}: {len(orphans)} mask(s) without an image (left out): {_files(orphans)}")
    bad_size, colour, sixteen, palette, unreadable, other_mode = [], [], [], [], [], []
    too_large: list[str] = []
    limit = pixel_limit()
    for split, items in found.pairs.items():
        report.pairs[split] = len(items)
        for image_path, mask_path, _ in items:
            current = image_path
            try:
                if image_path.is_dir() or image_path.suffix.lower() in TIFF_SUFFIXES:
                    size = None if image_path.is_dir() else _tiff_size(image_path)
                    if limit is not None and size is not None and size[0] * size[1] > limit:
                        too_large.append(f"{image_path} is {size_text(size)}")
                        continue  # not decoded: its statistics alone would take ~10 GB
                    bands = read_bands(image_path)   # a stack, or a TIFF of any band count
                    report.bands = report.bands or BandStatistics()
                    report.bands.add(bands, str(image_path), split == "train")
                    report.image_modes[f"{bands.shape[-1]} band(s) {bands.dtype}"] += 1
                    image_size = (bands.shape[1], bands.shape[0])
                else:
                    with PIL.Image.open(image_path) as image:
                        report.image_modes[image.mode] += 1
                        image_size = image.size
                current = mask_path
                mask = read_mask_file(mask_path)
            except (DatasetError, PIL.Image.DecompressionBombError):  # beyond PIL's pixel limit
                size = declared_size(current) if current.is_file() else None
                too_large.append(f"{current} is {size_text(size)}")
                continue
            except (OSError, SyntaxError, ValueError) as e:
                unreadable.append(f"{getattr(e, 'filename', None) or current} ({type(e).__name__})")
                continue
            report.image_sizes.append(image_size)
            report.mask_modes[f"{mask.mode} ({mask.dtype})"] += 1
            if mask.lossy:
                report.lossy.append(f"{mask_path} ({mask.format}"
                                    + (" under a .png name)" if mask_path.suffix == ".png" else ")"))
            if mask.size != image_size:
                bad_size.append(f"{mask_path} is {mask.size[0]}x{mask.size[1]}, its image "
                                f"{image_size[0]}x{image_size[1]}")
            if mask.mode in SIXTEEN_BIT_MODES or mask.mode == "I":
                sixteen.append(mask_path)
            elif mask.mode in ("P", "PA"):
                palette.append(mask_path)
            if mask.values is None:
                (colour if mask.colours else other_mode).append(
                    f"{mask_path} ({mask.mode}" + (f", {mask.colours} colours)" if mask.colours else ")"))
                continue
            report.count(split, mask.values, str(mask_path), lossy=mask.lossy)
    for found_files, level, code, text in (
        (unreadable, ERROR, "unreadable", "{n} file(s) cannot be decoded: {files}"),
        (too_large, ERROR, "too-large", "{files}: " + too_large_advice(len(too_large) > 1)),
        (colour, ERROR, "colour-mask",
         "{n} mask(s) are colour images, read as colours, not class ids: {files}. Save each as "
         "a single-channel PNG whose pixel values are the class ids (mode L, or P with the ids "
         "as palette indices)"),
        (other_mode, ERROR, "mask-mode", "{n} mask(s) are not label maps: {files}"),
        (sixteen, WARNING, "sixteen-bit-mask",
         "{n} mask(s) are 16-bit: their values are read as class ids as they are (not scaled); "
         "check that they are ids and not ids x 256 or instance ids: {files}"),
        (palette, NOTE, "palette-mask",
         "{n} mask(s) are palette PNGs: their palette indices are the class ids (the colours "
         "are ignored)"),
        (bad_size, ERROR, "size-mismatch", "{n} mask(s) differ in size from their image: {files}"),
    ):
        if found_files:
            report.add(level, code, text.format(n=len(found_files), files=_files(found_files)))
    splits = sorted(p.name for p in (root / "images").iterdir() if p.is_dir())
    train, why = training_split(root / "images", splits, sorted(found.pairs))
    if not found.pairs:
        report.add(ERROR, "no-pairs", f"{root / 'images'}: no image with its mask")
    elif why is not None:
        report.add(ERROR, "no-train-split", why)
    judge_bands(report)
    judge_labels(report)
    report.config_lines = ([] if train is None else
                           folder_config_lines(root, sorted(found.pairs), report, train))
    return report


def judge_bands(report: Report) -> None:
    """TIFFs and band stacks: one band count for all, and their per-band statistics."""
    b = report.bands
    if b is None or set(b.counts) == {3}:  # RGB TIFFs and stacks: an RGB dataset
        return
    rgb_files = sum(report.image_modes.values()) - sum(b.counts.values())
    if len(b.counts) > 1 or rgb_files:
        shown = "; ".join(f"{k} band(s): {n} ({_files(b.files[k])})" for k, n in b.counts.most_common())
        report.add(ERROR, "band-count", f"the images differ in their bands: {shown}"
                   + (f"; {rgb_files} other image file(s) read as RGB" if rgb_files else "")
                   + ". A model takes one band count (model.num_channels)")
        return
    (k,) = b.counts
    if b.pixels:
        mean, std = b.mean_std()
        report.add(NOTE, "bands", f"{k}-band images: train with model.num_channels={k}; the "
                   f"training images' per-band mean {list(mean)} and std {list(std)} (in their "
                   "stored units) are data.mean and data.std in the line below")


def folder_config_lines(root: Path, splits: Sequence[str], report: Report,
                        train: str = "train") -> list[str]:
    """The command line that trains on split ``train`` of this folder, with the settings the
    findings call for."""
    flags = [f"--config.data.manual_dir={root.resolve()}"]
    if report.bands is not None and len(report.bands.counts) == 1 and report.bands.pixels \
            and set(report.bands.counts) != {3}:
        (k,) = report.bands.counts
        mean, std = report.bands.mean_std()
        flags += [f"--config.model.num_channels={k}",
                  f"--config.data.mean='{tuple(mean)}'", f"--config.data.std='{tuple(std)}'"]
    codes = report.codes()
    if report.reduce_zero_label or "off-by-one" in codes:
        flags.append("--config.data.reduce_zero_label=True")
    if train != "train":
        flags.append(f"--config.data.train_split={train}")
    evals = [s for s in splits if s != train]
    if "validation" not in splits:
        flags.append(f"--config.data.eval_split={evals[0] if evals else ''}")
    return ["python -m segformer_jax.train --config configs/folder.py:b0 --workdir DIR \\",
            "    " + " ".join(flags)]


def check_built(name: str, split: str, reduce_zero_label: bool | None = None,
                **load_kwargs: Any) -> Report:
    """The label values of a built dataset's stored masks (``load_split``), judged as the
    trainer sees them (the dataset's ``reduce_zero_label`` unless one is given)."""
    from segformer_jax import data
    loaded = data.load_split(name, split, **load_kwargs)
    reduce = loaded.reduce_zero_label if reduce_zero_label is None else reduce_zero_label
    report = Report(name, loaded.class_names, reduce)
    report.pairs[split] = len(loaded)
    base = split.split("[", 1)[0]
    others = sorted(set(data.prepare(name, split=base, **load_kwargs).info.splits) - {base})
    if name == "cityscapes" and base != "test":
        others.append("test (built when asked for)")
    report.add(NOTE, "splits-read", f"read split {split!r} of {name}"
               + (f"; it also has {', '.join(others)} (--split NAME checks another)" if others else
                  " (its only split)"))
    if not len(loaded):
        report.add(ERROR, "empty-split", f"dataset {name!r}: split {split!r} holds no example")
    for i in range(len(loaded)):
        record = loaded[i]
        image = np.asarray(record["image"])
        mask = np.asarray(record["segmentation_mask"])[..., 0]
        report.image_sizes.append((image.shape[1], image.shape[0]))
        report.image_modes["RGB (stored)"] += 1
        report.mask_modes[f"stored ({mask.dtype})"] += 1
        report.count(split, mask, f"{split}[{i}] {record['file_name'].decode()}")
    judge_labels(report)
    return report


# --------------------------------------------------------------------------------------
# Printing


def _sizes(sizes: Sequence[tuple[int, int]]) -> str:
    if not sizes:
        return "none read"
    areas = [w * h for w, h in sizes]
    small, large = sizes[int(np.argmin(areas))], sizes[int(np.argmax(areas))]
    distinct = len(set(sizes))
    return (f"{distinct} distinct (W x H), smallest {small[0]}x{small[1]}, "
            f"largest {large[0]}x{large[1]}")


def label_table(report: Report) -> list[str]:
    """One line per stored label value: its name (after reduce_zero_label), pixel share."""
    total = label_counts(report.counts)
    pixels = sum(total.values())
    k = len(report.class_names)
    lines = [f"  {'value':>5}  {'class':<24} {'pixels':>12} {'share':>7}"]
    for v in sorted(total):
        seen = (IGNORE_INDEX if v in (0, IGNORE_INDEX) else v - 1) if report.reduce_zero_label else v
        if seen == IGNORE_INDEX:
            name = "(ignore)"
        elif 0 <= seen < k:
            name = f"{seen}: {report.class_names[seen]}" if report.reduce_zero_label else \
                report.class_names[seen]
        else:
            name = "OUT OF RANGE"
        lines.append(f"  {v:>5}  {name:<24} {total[v]:>12,} {total[v] / pixels:>7.2%}")
    return lines


def format_report(report: Report) -> str:
    k = len(report.class_names)
    out = [f"dataset      {report.dataset}: {k} classes"
           + (", reduce_zero_label (0 -> ignore, k -> k - 1)" if report.reduce_zero_label else "")]
    out.append("pairs        " + ", ".join(f"{s} {n}" for s, n in report.pairs.items()))
    out.append("images       " + ", ".join(f"{m} {n}" for m, n in report.image_modes.most_common())
               + f"; sizes {_sizes(report.image_sizes)}")
    out.append("masks        " + ", ".join(f"{m} {n}" for m, n in report.mask_modes.most_common()))
    out.append("labels (stored values, all splits)")
    out += label_table(report)
    for level in (ERROR, WARNING, NOTE):
        for f in report.findings:
            if f.level == level:
                out.append(f"{level}: [{f.code}] {f.message}")
    errors = len(report.errors)
    out.append(f"verdict      {'NOT READY: ' + str(errors) + ' error(s) above' if errors else 'ready to train'}")
    if report.config_lines:
        fixed = "off-by-one" in report.codes()
        out.append("train with" + (" (after fixing the errors" + (
            "; the line sets what [off-by-one] needs)" if fixed else ")") if errors else ""))
        out += ["  " + line for line in report.config_lines]
    return "\n".join(out)


# --------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    from segformer_jax.data import SEGMENTATION_DATASETS
    p = ArgumentParser(prog="python -m segformer_jax.data.check",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, choices=SEGMENTATION_DATASETS)
    p.add_argument("--manual-dir", default=None, help="the folder (folder) or the archives")
    p.add_argument("--data-dir", default=None, help="where built datasets live (not folder)")
    p.add_argument("--split", default="train", help="the split of a built dataset (default train)")
    p.add_argument("--reduce-zero-label", action="store_true",
                   help="judge the labels as data.reduce_zero_label=True would train them")
    args = p.parse_args(argv)
    if args.dataset == "folder" and not args.manual_dir:
        p.error("--dataset folder needs --manual-dir ROOT (the folder)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        if args.dataset == "folder":
            report = check_folder(args.manual_dir, args.reduce_zero_label)
        else:
            report = check_built(args.dataset, args.split,
                                 True if args.reduce_zero_label else None,
                                 data_dir=args.data_dir, manual_dir=args.manual_dir)
    except SegformerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_report(report))
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
