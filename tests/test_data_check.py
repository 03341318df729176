"""The dataset check (``python -m segformer_jax.data.check``) and the trainer's preflight.

Each generated folder has one defect a user's first week brings (labels off by one, an RGB
colour mask, a 16-bit mask, an image without its mask, a value outside the classes, a mask
of the wrong size) and must produce that finding by name; a clean folder must pass.
"""

from __future__ import annotations

import json
import os

import numpy as np
import PIL.Image
import pytest
from test_train import ROOT, TINY_OVERRIDES

from segformer_jax.constants import IGNORE_INDEX
from segformer_jax.data import check

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
    assert check.label_problem([0, 1, 2, 255], 3, "m") is None
    assert "[3]" in check.label_problem([0, 3], 3, "m")
    assert "1-based" in check.label_problem([0, 1, 2, 3], 3, "m")
    assert check.label_problem([0, 1, 2, 3, 255], 3, "m", reduce_zero_label=True) is None
    assert "[4]" in check.label_problem([0, 4], 3, "m", reduce_zero_label=True)


def test_built_dataset_is_checked(tmp_path, capsys):
    status = check.main(["--dataset", "synthetic", "--data-dir", str(tmp_path), "--split",
                         "validation"])
    out = capsys.readouterr().out
    assert status == 0 and "verdict      ready to train" in out and "background" in out


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
