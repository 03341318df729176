"""COCO-Stuff 164k: the raw ids mapped exactly as mmsegmentation's converter maps them (its
own code, run here), the builder on tiny archives in the release's layout, its class names
equal mmseg's, a 10-step B0 run through configs/coco_stuff.py and evaluate on it."""

from __future__ import annotations

import ast
import importlib.util
import io
import json
import os
import sys
import types
import zipfile

import numpy as np
import PIL.Image
import pytest
from test_train import ROOT, TINY_OVERRIDES

from segformer_jax import data as sd
from segformer_jax.data import coco_stuff
from segformer_jax.errors import DatasetError

MMSEG = os.path.join(os.path.dirname(importlib.util.find_spec("mmseg").origin))


def _converter():
    """mmsegmentation 1.2.2's ``tools/dataset_converters/coco_stuff164k.py`` as it ships;
    ``mmengine`` (only its progress helpers are imported) stands in as an empty module."""
    stub = types.ModuleType("mmengine.utils")
    stub.mkdir_or_exist = stub.track_parallel_progress = stub.track_progress = None
    saved = {k: sys.modules.get(k) for k in ("mmengine", "mmengine.utils")}
    sys.modules.update({"mmengine": types.ModuleType("mmengine"), "mmengine.utils": stub})
    try:
        spec = importlib.util.spec_from_file_location(
            "coco_stuff164k", os.path.join(MMSEG, ".mim/tools/dataset_converters/coco_stuff164k.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return module


def test_every_raw_id_maps_as_the_converter_maps_it(tmp_path):
    """All 256 values (the 171 ids in use, the 11 unused ones, 182…254 and 255) through the
    converter's ``convert_to_trainID`` (PNG in, PNG out) and through ours."""
    raw = np.arange(256, dtype=np.uint8).reshape(16, 16)
    PIL.Image.fromarray(raw).save(tmp_path / "000000000001.png")
    (tmp_path / "out" / "train2017").mkdir(parents=True)
    _converter().convert_to_trainID(str(tmp_path / "000000000001.png"), str(tmp_path / "out"), True)
    theirs = np.asarray(PIL.Image.open(tmp_path / "out/train2017/000000000001_labelTrainIds.png"))
    np.testing.assert_array_equal(coco_stuff.raw_to_train_ids(raw), theirs)
    assert len(coco_stuff.RAW_TO_TRAIN) == 172 and coco_stuff.RAW_TO_TRAIN[181] == 170


def test_class_names_are_mmsegs():
    source = open(os.path.join(MMSEG, "datasets/coco_stuff.py")).read()
    calls = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call)
             and getattr(n.func, "id", "") == "dict"]
    classes = next(ast.literal_eval(k.value) for c in calls for k in c.keywords if k.arg == "classes")
    assert coco_stuff.CLASS_NAMES == tuple(classes)


USED = [i for i in range(182) if i not in coco_stuff.UNUSED_IDS]
FILES = {"train": ["000000000009", "000000000025", "000000000030"], "validation": ["000000000139"]}


def _encode(array, fmt):
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def _archives(directory, raw_values=(0, 1, 11, 90, 181, 255, 40)):
    """train2017.zip, val2017.zip and stuffthingmaps_trainval2017.zip as released: members
    ``train2017/000000000009.jpg`` and ``train2017/000000000009.png`` (raw ids)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images, maps, expected = {}, {}, {}
    for split, stems in FILES.items():
        folder = coco_stuff.FOLDERS[split]
        for stem in stems:
            image = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
            raw = np.asarray(raw_values, np.uint8)[rng.integers(0, len(raw_values), (3, 5))].repeat(8, 0).repeat(8, 1)
            images.setdefault(split, {})[f"{folder}/{stem}.jpg"] = _encode(image, "JPEG")
            maps[f"{folder}/{stem}.png"] = _encode(raw, "PNG")
            expected[(split, f"{stem}.jpg")] = raw
    for split, members in images.items():
        with zipfile.ZipFile(directory / coco_stuff.IMAGE_ZIPS[split], "w") as z:
            for name, payload in members.items():
                z.writestr(name, payload)
    with zipfile.ZipFile(directory / coco_stuff.MAPS_ZIP, "w") as z:
        for name, payload in maps.items():
            z.writestr(name, payload)
    return expected


def test_the_builder_maps_the_archives(tmp_path):
    expected = _archives(tmp_path)
    converter = _converter()
    for split, count in (("train", 3), ("validation", 1)):
        data = sd.load_split("coco_stuff", split, tmp_path / "tfds", tmp_path)
        assert len(data) == count and data.num_labels == 171 and not data.reduce_zero_label
        for i in range(len(data)):
            record = data.source[i]
            raw = expected[(split, record["file_name"].decode())]
            want = raw.copy()
            for cls, train in converter.clsID_to_trID.items():   # the converter's own loop
                want[raw == cls] = train
            np.testing.assert_array_equal(record["segmentation_mask"][..., 0], want)


def test_the_extracted_layouts_and_a_missing_archive(tmp_path):
    _archives(tmp_path / "zips")
    for layout in ("release", "mmseg"):
        root = tmp_path / layout
        for archive in (*coco_stuff.IMAGE_ZIPS.values(), coco_stuff.MAPS_ZIP):
            with zipfile.ZipFile(tmp_path / "zips" / archive) as z:
                if layout == "release":
                    z.extractall(root / ("stuffthingmaps_trainval2017" if archive == coco_stuff.MAPS_ZIP else ""))
                else:
                    z.extractall(root / ("annotations" if archive == coco_stuff.MAPS_ZIP else "images"))
        assert len(sd.load_split("coco_stuff", "validation", tmp_path / f"tfds_{layout}", root)) == 1
    (tmp_path / "partial").mkdir()
    (tmp_path / "zips" / "val2017.zip").rename(tmp_path / "partial" / "val2017.zip")
    with pytest.raises(DatasetError, match=r"COCO-Stuff train: train2017\.zip and "
                                           r"stuffthingmaps_trainval2017\.zip not found in .*partial "
                                           r"\(nor extracted; it holds val2017\.zip\)"):
        sd.load_split("coco_stuff", "validation", tmp_path / "tfds_partial", tmp_path / "partial")


def test_a_value_the_converter_leaves_out_of_range_names_the_file(tmp_path):
    _archives(tmp_path, raw_values=(0, 200))
    with pytest.raises(DatasetError, match=r"stuffthingmaps_trainval2017\.zip:train2017/\d+\.png.*200"):
        sd.load_split("coco_stuff", "train", tmp_path / "tfds", tmp_path)


@pytest.mark.slow
def test_ten_steps_through_the_config_and_evaluate(tmp_path):
    import subprocess
    _archives(tmp_path / "man")
    args = [sys.executable, "-m", "segformer_jax.train", "--config",
            os.path.join(ROOT, "configs/coco_stuff.py:b0"), "--workdir", str(tmp_path / "w"),
            f"--config.data.manual_dir={tmp_path / 'man'}", f"--config.data.data_dir={tmp_path / 'tfds'}",
            "--config.total_steps=10", "--config.batch_size=2", "--config.data.crop_size=(32, 32)",
            "--config.data.img_scale=(64, 32)", "--config.data.eval_scale=(64, 32)",
            "--config.eval_every=10", "--config.checkpoint_every=10", "--config.log_every=5",
            "--config.data.num_workers=1", "--config.optimizer.warmup_steps=2", *TINY_OVERRIDES]
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    last = json.loads((tmp_path / "w" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 10 and "val/mIoU" in last
    from segformer_jax import evaluate
    assert evaluate.main(["--checkpoint", str(tmp_path / "w"), "--dataset", "coco_stuff", "--manual-dir",
                          str(tmp_path / "man"), "--data-dir", str(tmp_path / "tfds"),
                          "--img-scale", "64,32", "--json", str(tmp_path / "eval.json")]) == 0
    scores = json.loads((tmp_path / "eval.json").read_text())
    assert scores["num_examples"] == 1 and len(scores["class_names"]) == 171
    assert abs(scores["mIoU"] - last["val/mIoU"]) < 1e-12   # the run's validation, scored again
