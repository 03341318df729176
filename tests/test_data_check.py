"""The dataset check (``python -m segformer_jax.data.check``) and the trainer's preflight.

Each generated folder has one defect a user's first week brings (labels off by one, an RGB
colour mask, a 16-bit mask, an image without its mask, a value outside the classes, a mask
of the wrong size, a JPEG mask, no training split, a scene too large for PIL) and must
produce that finding by name; a clean folder must pass.
"""

from __future__ import annotations

import json
import os

import numpy as np
import PIL.Image
import pytest
from test_train import ROOT, TINY_OVERRIDES

from segformer_jax.constants import IGNORE_INDEX
from segformer_jax.data import check, pipeline

CLASSES = ("road", "car", "tree")



def _write(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    (PIL.Image.fromarray(array) if mode is None else PIL.Image.fromarray(array, mode)).save(path)


def _labels(seed, values, h=24, w=32):
    rng = np.random.default_rng(seed)
    return np.asarray(values)[rng.integers(0, len(values), (h, w))]


def make_folder(root, defect=None, classes=CLASSES, n=3, used=None):
    """A folder dataset with ``n`` train and 2 validation pairs and at most one defect;
    its masks hold the first ``used`` class ids (all by default) and 255."""
    root.mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    k = len(classes)
    for split, count in (("train", n), ("validation", 2)):
        for i in range(count):
            seed = i + (100 if split == "validation" else 0)
            image = np.random.default_rng(seed).integers(0, 256, (24, 32, 3), np.uint8)
            _write(root / "images" / split / f"img{i}.jpg", image)
            values = list(range(used or k)) + [IGNORE_INDEX]
            if defect == "off_by_one":
                values = list(range(k + 1))          # 0 = unlabelled, ids 1..k
            elif defect == "one_based":
                values = list(range(1, k + 1))       # ids 1..k, no 0 anywhere
            mask = _labels(seed, values).astype(np.uint8)
            if defect == "extra_value" and split == "train" and i == 1:
                mask[0, :4] = 7
            path = root / "masks" / split / f"img{i}.png"
            if defect == "missing_mask" and split == "train" and i == 2:
                continue
            if defect == "rgb_mask" and split == "train" and i == 0:
                colours = np.array([[128, 64, 128], [0, 0, 142], [107, 142, 35]], np.uint8)
                _write(path, colours[mask % 3])
            elif defect == "sixteen_bit" and split == "train" and i == 0:
                _write(path, mask.astype(np.uint16))
            elif defect == "wrong_size" and split == "train" and i == 1:
                _write(path, mask[:20, :30])
            else:
                _write(path, mask)
    return root


def codes(report, level=None):
    return {f.code for f in report.findings if level is None or f.level == level}


def test_clean_folder_passes(tmp_path, capsys):
    root = make_folder(tmp_path / "clean")
    report = check.check_folder(root)
    assert not report.errors, report.findings
    assert report.pairs == {"train": 3, "validation": 2}
    assert check.main(["--dataset", "folder", "--manual-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert "verdict      ready to train" in out
    assert f"--config.data.manual_dir={root.resolve()}" in out
    assert "reduce_zero_label" not in out.split("train with")[1]
    for name in CLASSES:
        assert f" {name} " in out
    # The pixel shares printed add up to the pixels counted.
    total = check.label_counts(report.counts)
    assert sum(total.values()) == 5 * 24 * 32


@pytest.mark.parametrize("defect, code, level", [
    ("off_by_one", "off-by-one", check.ERROR),
    ("one_based", "off-by-one", check.ERROR),
    ("rgb_mask", "colour-mask", check.ERROR),
    ("sixteen_bit", "sixteen-bit-mask", check.WARNING),
    ("missing_mask", "unmatched-image", check.ERROR),
    ("extra_value", "out-of-range", check.ERROR),
    ("wrong_size", "size-mismatch", check.ERROR),
])
def test_each_defect_is_named(tmp_path, capsys, defect, code, level):
    root = make_folder(tmp_path / defect, defect)
    report = check.check_folder(root)
    assert code in codes(report, level), report.findings
    status = check.main(["--dataset", "folder", "--manual-dir", str(root)])
    out = capsys.readouterr().out
    assert f"{level}: [{code}]" in out
    assert status == (1 if level == check.ERROR else 0)
    assert ("NOT READY" in out) == (level == check.ERROR)


def test_findings_name_files_and_values(tmp_path):
    report = check.check_folder(make_folder(tmp_path / "x", "extra_value"))
    (finding,) = [f for f in report.findings if f.code == "out-of-range"]
    assert "[7]" in finding.message and os.path.join("masks", "train", "img1.png") in finding.message
    report = check.check_folder(make_folder(tmp_path / "y", "wrong_size"))
    (finding,) = [f for f in report.findings if f.code == "size-mismatch"]
    assert "img1.png is 30x20, its image 32x24" in finding.message
    report = check.check_folder(make_folder(tmp_path / "z", "rgb_mask"))
    (finding,) = [f for f in report.findings if f.code == "colour-mask"]
    assert "img0.png (RGB, 3 colours)" in finding.message


def test_off_by_one_verdict_is_reduce_zero_label_and_then_passes(tmp_path, capsys):
    root = make_folder(tmp_path / "one_based", "off_by_one")
    assert check.main(["--dataset", "folder", "--manual-dir", str(root)]) == 1
    out = capsys.readouterr().out
    assert "--config.data.reduce_zero_label=True" in out
    (finding,) = check.check_folder(root).errors  # one finding for one cause
    assert finding.code == "off-by-one" and "data.reduce_zero_label=True" in finding.message
    # Judged as the config line would train it, the same folder is clean: 0 is ignored and
    # 1..3 are the three classes.
    report = check.check_folder(root, reduce_zero_label=True)
    assert not report.errors, report.findings
    assert check.main(["--dataset", "folder", "--manual-dir", str(root),
                       "--reduce-zero-label"]) == 0
    out = capsys.readouterr().out
    assert "0: road" in out and "(ignore)" in out


def test_background_named_class_zero_is_explained(tmp_path):
    report = check.check_folder(make_folder(tmp_path / "bg", classes=("background", "cat")))
    (note,) = [f for f in report.findings if f.code == "zero-background"]
    assert note.level == check.NOTE and "reduce_zero_label=True" in note.message
    assert "0 becomes 255" in note.message


def test_palette_and_absent_class(tmp_path):
    root = make_folder(tmp_path / "p", classes=("road", "car", "tree", "sky"), used=3)
    mask = np.asarray(PIL.Image.open(root / "masks/train/img0.png"))
    palette = PIL.Image.fromarray(mask, "L").convert("P")
    palette.putpalette([v for i in range(256) for v in (i * 40 % 256, 3 * i % 256, 255 - i)])
    palette.save(root / "masks/train/img0.png")
    report = check.check_folder(root)
    assert {"palette-mask", "absent-class"} <= codes(report) and not report.errors
    assert "sky" in [f for f in report.findings if f.code == "absent-class"][0].message


def test_label_problem_is_the_one_rule():
    assert pipeline.label_problem([0, 1, 2, 255], 3, "m") is None
    assert "[3]" in pipeline.label_problem([0, 3], 3, "m")
    assert "1-based" in pipeline.label_problem([0, 1, 2, 3], 3, "m")
    assert pipeline.label_problem([0, 1, 2, 3, 255], 3, "m", reduce_zero_label=True) is None
    assert "[4]" in pipeline.label_problem([0, 4], 3, "m", reduce_zero_label=True)


def test_built_dataset_is_checked(tmp_path, capsys):
    status = check.main(["--dataset", "synthetic", "--data-dir", str(tmp_path), "--split",
                         "validation"])
    out = capsys.readouterr().out
    assert status == 0 and "verdict      ready to train" in out and "background" in out
    assert "note: [splits-read] read split 'validation' of synthetic; it also has " in out


def test_bad_flags(tmp_path, capsys):
    with pytest.raises(SystemExit):
        check.main(["--dataset", "folder"])
    assert "--manual-dir" in capsys.readouterr().err
    assert check.main(["--dataset", "folder", "--manual-dir", str(tmp_path / "none")]) == 1
    assert "classes.txt" in capsys.readouterr().err


def _tiny_folder_run(tmp_path, root):
    """train's command line for a tiny model on the folder ``root``, two steps."""
    return ["--config", os.path.join(ROOT, "configs/folder.py:b0"),
            "--workdir", str(tmp_path / "w"), f"--config.data.manual_dir={root}",
            f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.batch_size=2",
            "--config.total_steps=2", "--config.eval_every=2", "--config.checkpoint_every=2",
            "--config.optimizer.warmup_steps=1", "--config.data.num_workers=1",
            "--config.data.crop_size=(16, 16)", "--config.data.img_scale=(32, 24)",
            "--config.data.eval_scale=(32, 24)", *TINY_OVERRIDES]


def test_train_stops_at_an_out_of_range_label(tmp_path, capsys):
    """The folder builder stores 0..K (K is a class id under reduce_zero_label); a run
    without it stops before its first step, naming the file and the value."""
    from segformer_jax import train
    root = make_folder(tmp_path / "one_based", "off_by_one", n=2)
    assert train.main(_tiny_folder_run(tmp_path, root)) == 1
    err = capsys.readouterr().err
    assert err.count("error:") == 1
    assert "label value(s) [3] out of range" in err and "(img" in err and "1-based" in err
    assert not (tmp_path / "w" / "checkpoints").exists()


@pytest.mark.slow
def test_the_verdicts_config_line_trains(tmp_path, capsys):
    """The off-by-one folder with the verdict's data.reduce_zero_label=True: the preflight
    passes and two steps run, 0 ignored and 1..3 trained as the three classes."""
    from segformer_jax import train
    root = make_folder(tmp_path / "one_based", "off_by_one", n=2)
    args = _tiny_folder_run(tmp_path, root) + ["--config.data.reduce_zero_label=True"]
    assert train.main(args) == 0, capsys.readouterr().err
    config = json.loads((tmp_path / "w" / "config.json").read_text())
    assert config["data"]["reduce_zero_label"] is True


# --------------------------------------------------------------------------------------
# Defects a tester found on landed code, reproduced as they were met


def _check(root, *flags):
    """``python -m segformer_jax.data.check`` on the folder ``root``: (status, stdout)."""
    import subprocess
    import sys
    run = subprocess.run([sys.executable, "-m", "segformer_jax.data.check", "--dataset", "folder",
                          "--manual-dir", str(root), *flags], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert "Traceback" not in run.stderr, run.stderr
    return run.returncode, run.stdout, run.stderr


def test_one_based_masks_without_zero_are_named_one_based(tmp_path):
    """Masks 1..K with no 0 at all: the ids are shifted by one, and reduce_zero_label (which
    maps k to k - 1) is the fix; judged with it, the folder is clean and every class is
    present."""
    root = make_folder(tmp_path / "one_based", "one_based")
    status, out, _ = _check(root)
    assert status == 1
    (finding,) = check.check_folder(root).errors
    assert finding.code == "off-by-one" and "1-based" in finding.message
    assert "no 0 at all" in finding.message and "value 3 in" in finding.message
    assert "--config.data.reduce_zero_label=True" in out.split("train with")[1]
    assert "absent-class" not in codes(check.check_folder(root))
    status, out, _ = _check(root, "--reduce-zero-label")
    assert status == 0 and "verdict      ready to train" in out
    # the trainer's rule says the same
    assert "1-based" in pipeline.label_problem([1, 2, 3], 3, "m")


def _shapes_mask(h=40, w=56):
    """Class ids 0..2 in discs and boxes whose edges do not follow JPEG's 8x8 blocks."""
    yy, xx = np.mgrid[:h, :w]
    mask = np.zeros((h, w), np.uint8)
    mask[(yy - 20) ** 2 + (xx - 18) ** 2 < 100] = 1
    mask[(yy - 15) ** 2 + (xx - 40) ** 2 < 64] = 2
    mask[25:37, 30:51] = 2
    mask[3:9, 3:50] = 1
    return mask


def _shapes_folder(root, jpeg=None):
    """3 train and 2 validation pairs of 40x56 shape masks (0-based, correct); ``jpeg``:
    (split, i) of the mask saved as a JPEG under its .png name."""
    root.mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    mask = _shapes_mask()
    for split, count in (("train", 3), ("validation", 2)):
        for i in range(count):
            image = np.random.default_rng(i).integers(0, 256, (40, 56, 3), np.uint8)
            _write(root / "images" / split / f"img{i}.jpg", image)
            path = root / "masks" / split / f"img{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            PIL.Image.fromarray(mask).save(path, format="JPEG" if (split, i) == jpeg else "PNG")
    return root


def test_jpeg_mask_under_a_png_name_is_lossy_not_off_by_one(tmp_path):
    """A mask saved as JPEG under a .png name: ringing makes pixels of value K = 3, which
    looked like 1-based ids, and the verdict added reduce_zero_label (shifting every correct
    label). Now: the file is named as a lossy mask, and no config line touches the labels."""
    root = _shapes_folder(tmp_path / "jpeg", jpeg=("train", 1))
    path = root / "masks" / "train" / "img1.png"
    with PIL.Image.open(path) as image:
        assert image.format == "JPEG"
        stored = np.asarray(image)
    # the defect is real: the ringing holds value 3 (only), and pixels changed class
    assert set(np.unique(stored).tolist()) == {0, 1, 2, 3}
    assert (stored != _shapes_mask()).sum() > 100
    status, out, _ = _check(root)
    assert status == 1
    report = check.check_folder(root)
    assert {f.code for f in report.errors} == {"lossy-mask"}, report.findings
    (finding,) = report.errors
    assert f"{path} (JPEG under a .png name)" in finding.message
    assert "[3]" in finding.message and "re-export" in finding.message.lower()
    assert "[lossy-mask]" in out and "off-by-one" not in out
    assert "reduce_zero_label" not in out.split("train with")[1]
    # the builder refuses it too, naming the file
    from segformer_jax import data as sd
    with pytest.raises(sd.DatasetError, match=r"img1\.png: the mask is a JPEG file under a \.png name"):
        sd.load_split("folder", "train", tmp_path / "tfds", root)


def test_jpg_masks_are_named_as_lossy_masks(tmp_path):
    """``masks/train/img2.jpg`` was reported as "an image without a mask", without naming
    the .jpg: it is a lossy mask, named as such."""
    root = make_folder(tmp_path / "jpg")
    png = root / "masks" / "train" / "img2.png"
    with PIL.Image.open(png) as image:
        image.save(png.with_suffix(".jpg"), format="JPEG")
    png.unlink()
    status, out, _ = _check(root)
    assert status == 1
    report = check.check_folder(root)
    assert codes(report, check.ERROR) == {"lossy-mask"}, report.findings
    assert str(png.with_suffix(".jpg")) in report.errors[0].message
    assert "unmatched-image" not in out


def test_values_no_setting_explains_get_no_config_line(tmp_path, capsys):
    """Ids 0..K and a stray 9 in one PNG: not the one-based pattern, so no reduce_zero_label;
    the values are called unexplained and their files named."""
    root = make_folder(tmp_path / "stray", "off_by_one")
    mask_path = root / "masks" / "train" / "img1.png"
    mask = np.asarray(PIL.Image.open(mask_path)).copy()
    mask[0, :3] = 9
    _write(mask_path, mask)
    assert check.main(["--dataset", "folder", "--manual-dir", str(root)]) == 1
    out = capsys.readouterr().out
    (finding,) = check.check_folder(root).errors
    assert finding.code == "out-of-range" and "No setting explains" in finding.message
    assert "[3, 9]" in finding.message and str(mask_path) in finding.message
    assert "reduce_zero_label" not in out.split("train with")[1]


def test_empty_training_split_is_an_error_and_trains_on_nothing_else(tmp_path, capsys):
    """images/train with no pair was "ready to train", and the verdict's command trained on
    the validation split. Now it is an error, and the verdict gives no command."""
    root = make_folder(tmp_path / "empty_train")
    for folder in ("images", "masks"):
        for path in (root / folder / "train").iterdir():
            path.unlink()
    assert check.main(["--dataset", "folder", "--manual-dir", str(root)]) == 1
    out = capsys.readouterr().out
    assert "error: [no-train-split]" in out and str(root / "images" / "train") in out
    assert "NOT READY" in out and "train with" not in out and "train_split" not in out
    # no images/train at all: the same, naming the splits there are
    (root / "images" / "train").rmdir()
    report = check.check_folder(root)
    assert codes(report, check.ERROR) == {"no-train-split"} and not report.config_lines
    assert "the splits are validation" in report.errors[0].message
    # a training split by another name is still found (good data: unchanged)
    (root / "images" / "validation").rename(root / "images" / "training")
    (root / "masks" / "validation").rename(root / "masks" / "training")
    report = check.check_folder(root)
    assert not report.errors and "--config.data.train_split=training" in report.config_lines[1]


def _big_png(path, width, height):
    """A valid 8-bit grayscale PNG of zeros, compressed row by row (never whole in memory)."""
    import struct
    import zlib

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    compress = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # filter byte + pixels
    data = b"".join([compress.compress(row) for _ in range(height)] + [compress.flush()])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def scene_png(tmp_path_factory):
    """A 20000 x 20000 PNG (400 megapixels; 0.4 MB on disk)."""
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    _big_png(path, 20000, 20000)
    return path


def test_an_image_beyond_pils_limit_is_one_line(tmp_path, scene_png):
    """data.check died with PIL's DecompressionBombError traceback on a 20000x20000 PNG."""
    import shutil
    root = make_folder(tmp_path / "scene", n=2)
    shutil.copy(scene_png, root / "images" / "train" / "scene.png")
    shutil.copy(scene_png, root / "masks" / "train" / "scene.png")
    status, out, err = _check(root)
    assert status == 1 and err == ""
    (line,) = [line for line in out.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: [too-large] {root / 'images' / 'train' / 'scene.png'} is "
                           "20000x20000 pixels (400 megapixels): above the 179 megapixels PIL "
                           "decodes")
    assert "cut it into tiles" in line and "predict --mode tiled" in line
    # The folder build and the image readers say the same in one DatasetError line.
    from segformer_jax import data as sd
    from segformer_jax import images
    with pytest.raises(sd.DatasetError, match=r"scene\.png: 20000x20000 pixels \(400 megapixels\), "
                                              r"above the 179 megapixels PIL decodes"):
        sd.load_split("folder", "train", tmp_path / "tfds", root)
    for read in (images.open_image, images.read_bands):
        with pytest.raises(sd.DatasetError, match="20000x20000 pixels.*predict --mode tiled"):
            read(scene_png)
