"""Bad dataset input as a user meets it: one ``DatasetError`` line, never a traceback.

Builder options out of range (``--config.data.options.num_train=0``), a damaged built copy
of a dataset (a shard truncated, deleted or corrupted, a garbled ``dataset_info.json``), a
``data_dir`` that is a file, and a label out of range in a record that the trainer's preflight
(the first two batches) does not read. Each test reproduces the defect the way it was found
and checks the message, and that nothing was deleted.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from segformer_jax import data as sd
from segformer_jax.data import check, pipeline
from segformer_jax.data import transforms as T
from segformer_jax.errors import DatasetError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(num_train=4, num_validation=2, size_range=(32, 40))


@pytest.fixture(autouse=True)
def _quiet_tfds():
    import tensorflow_datasets as tfds
    tfds.disable_progress_bar()


def _tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its bytes: what must survive a failed load."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize("options, key, accepted", [
    (dict(num_train=0), "num_train=0", "an integer >= 1"),
    (dict(num_train=2.5), "num_train=2.5", "an integer >= 1"),
    (dict(num_validation=-1), "num_validation=-1", "an integer >= 0"),
    (dict(seed=-3), "seed=-3", "an integer >= 0"),
    (dict(size_range=(0, 8)), "size_range=(0, 8)", "1 <= low <= high"),
    (dict(size_range=(50, 40)), "size_range=(50, 40)", "1 <= low <= high"),
    (dict(size_range=48), "size_range=48", "two integers (low, high)"),
    (dict(num_trian=5), "num_trian", "its options are num_train, num_validation, seed, size_range"),
])
def test_builder_options_are_checked_before_anything_is_built(tmp_path, options, key, accepted):
    with pytest.raises(DatasetError) as err:
        sd.load_split("synthetic", "train", tmp_path / "tfds", **options)
    message = str(err.value)
    assert message.startswith(f"data.options.{key}") and accepted in message, message
    assert not (tmp_path / "tfds").exists()


def test_classification_options_and_datasets_without_options(tmp_path):
    with pytest.raises(DatasetError, match=r"data\.options\.size_range=\(8, 8\).*16 <= low"):
        sd.load_split("synthetic_classification", "train", tmp_path / "tfds", size_range=(8, 8))
    with pytest.raises(DatasetError, match=r"data\.options \{'num_train': 3\}: dataset 'ade20k' "
                                           r"takes no options"):
        sd.load_split("ade20k", "train", tmp_path / "tfds", tmp_path, num_train=3)
    assert not (tmp_path / "tfds").exists()


def test_train_with_num_train_zero_is_one_line(tmp_path, capsys):
    """``--config.data.options.num_train=0`` ended in a traceback from the builder."""
    from segformer_jax import train
    status = train.main(["--config", os.path.join(ROOT, "configs/quickstart.py"),
                         "--workdir", str(tmp_path / "w"),
                         f"--config.data.data_dir={tmp_path / 'tfds'}",
                         "--config.data.options.num_train=0"])
    err = capsys.readouterr().err
    assert status == 1 and err.count("error:") == 1 and "Traceback" not in err
    assert "error: data.options.num_train=0: the synthetic dataset needs an integer >= 1" in err
    assert not (tmp_path / "tfds").exists()


# ----------------------------------------------------------------------------- damaged cache


def _built(data_dir: Path) -> Path:
    """The small synthetic set built into ``data_dir``: its version directory."""
    loaded = sd.load_split("synthetic", "train", data_dir, **SMALL)
    directory = Path(loaded.source.dataset_info.data_dir)
    assert len(loaded) == 4 and (directory / "dataset_info.json").is_file()
    return directory


def _shard(directory: Path) -> Path:
    (shard,) = directory.glob("*-train.array_record-*")
    return shard


def _truncate(directory: Path) -> None:
    with open(_shard(directory), "r+b") as f:
        f.truncate(1000)


def _truncate_past_64k(directory: Path) -> None:
    shard = _shard(directory)
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size - 30000)


def _delete(directory: Path) -> None:
    _shard(directory).unlink()


def _garble_info(directory: Path) -> None:
    (directory / "dataset_info.json").write_text("garbage")


def _delete_info(directory: Path) -> None:
    (directory / "dataset_info.json").unlink()


@pytest.mark.parametrize("damage, what", [
    (_truncate, r"segformer_synthetic-train\.array_record-00000-of-00001 cannot be read: "
                r"RuntimeError: ArrayRecord file should be at least 64KB"),
    (_truncate_past_64k, r"segformer_synthetic-train\.array_record-00000-of-00001 cannot be read"),
    (_delete, r"segformer_synthetic-train\.array_record-00000-of-00001 is missing"),
    (_garble_info, r"its dataset_info\.json cannot be read: ParseError"),
    (_delete_info, r"no dataset_info\.json with its splits"),
])
def test_a_damaged_built_dataset_names_the_directory_to_delete(tmp_path, damage, what):
    directory = _built(tmp_path / "tfds")
    damage(directory)
    before = _tree(tmp_path / "tfds")
    with pytest.raises(DatasetError) as err:
        sd.load_split("synthetic", "train", tmp_path / "tfds", **SMALL)
    message = str(err.value)
    assert message.startswith(f"{directory}: the built dataset is damaged (")
    assert "delete this directory and the next run rebuilds it" in message
    assert __import__("re").search(what, message), message
    assert _tree(tmp_path / "tfds") == before  # nothing deleted or rewritten
    # The advice works: once the directory is gone, the next load rebuilds it.
    shutil.rmtree(directory)
    assert len(sd.load_split("synthetic", "train", tmp_path / "tfds", **SMALL)) == 4


def test_train_on_a_damaged_built_dataset_is_one_line(tmp_path, capsys):
    """The run that meets the truncated shard stops before its first step, in one line."""
    from segformer_jax import train
    directory = _built(tmp_path / "tfds")
    _truncate(directory)
    status = train.main(["--config", os.path.join(ROOT, "configs/quickstart.py"),
                         "--workdir", str(tmp_path / "w"),
                         f"--config.data.data_dir={tmp_path / 'tfds'}",
                         "--config.data.options={'num_train': 4, 'num_validation': 2, "
                         "'size_range': (32, 40)}"])
    err = capsys.readouterr().err
    assert status == 1 and err.count("error:") == 1 and "Traceback" not in err, err
    assert f"error: {directory}: the built dataset is damaged (" in err
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_a_corrupted_record_stops_training_naming_the_directory(tmp_path):
    """A chunk in the middle of a shard corrupted: load_split's probe (the first record of
    each shard) passes, and the pipeline's read of the bad record raises DatasetError."""
    loaded = sd.load_split("synthetic", "train", tmp_path / "tfds", num_train=8,
                           num_validation=1, size_range=(32, 40))
    directory = Path(loaded.source.dataset_info.data_dir)
    shard = _shard(directory)
    data = bytearray(shard.read_bytes())
    for i in range(len(data) // 6, len(data) // 6 + 200):
        data[i] ^= 0xFF
    shard.write_bytes(bytes(data))
    loaded = sd.load_split("synthetic", "train", tmp_path / "tfds", num_train=8,
                           num_validation=1, size_range=(32, 40))
    bad = []
    for i in range(len(loaded)):
        try:
            loaded.source[i]
        except Exception:  # noqa: BLE001 - whatever ArrayRecord raises
            bad.append(i)
    assert bad and 0 not in bad  # the damage is real, and past the probe
    transform = T.TrainTransform(img_scale=(64, 16), crop_size=(16, 16))
    with pytest.raises(DatasetError) as err:
        with sd.train_batches(loaded.source, transform, 8, seed=0, num_steps=1) as batches:
            list(batches)
    message = str(err.value)
    assert message.startswith(f"{directory}: the built dataset is damaged (record {bad[0]} cannot be read: ")
    assert message.endswith("; delete this directory and the next run rebuilds it")


def test_an_access_error_is_not_called_damage(tmp_path):
    """A refused or timed-out read says so, without advice to delete a dataset that may be
    intact (a rebuild of a large one costs hours)."""
    from segformer_jax.data.pipeline import read_record

    class Source:
        dataset_info = type("Info", (), {"data_dir": str(tmp_path)})()

        def __getitem__(self, index):
            raise PermissionError(13, "Permission denied", str(tmp_path / "shard-0"))

    with pytest.raises(DatasetError) as err:
        read_record(Source(), 3)
    message = str(err.value)
    assert message.startswith(f"{tmp_path}: the built dataset cannot be read now (record 3 cannot be read: ")
    assert "not a sign of damage" in message and "delete" not in message


def test_data_dir_that_is_a_file(tmp_path, capsys):
    path = tmp_path / "datasets"
    path.write_text("not a directory")
    for data_dir, what in ((path, "data_dir is a file"),
                           (path / "sub", f"a parent of data_dir {path / 'sub'} is a file")):
        with pytest.raises(DatasetError, match=f"^{path}: {what}, not a directory"):
            sd.load_split("synthetic", "train", data_dir, **SMALL)
    assert path.read_text() == "not a directory"
    # as the data check meets it
    assert check.main(["--dataset", "synthetic", "--data-dir", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: data_dir is a file") and err.count("\n") == 1


# ----------------------------------------------------------------------------- labels


def _folder(root: Path, bad: str | None, n: int = 10, value: int = 3) -> Path:
    """A 3-class folder of ``n`` train pairs (ids 0..2 and 255); mask ``bad`` also holds
    ``value`` (3 = K: the folder builder stores it, since reduce_zero_label would make it a
    class id)."""
    (root / "classes.txt").parent.mkdir(parents=True)
    (root / "classes.txt").write_text("road\ncar\ntree\n")
    for split in ("train", "validation"):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
    for i in range(n):
        rng = np.random.default_rng(i)
        PIL.Image.fromarray(rng.integers(0, 256, (24, 32, 3), np.uint8)).save(
            root / "images" / "train" / f"img{i}.png")
        mask = np.array([0, 1, 2, 255], np.uint8)[rng.integers(0, 4, (24, 32))]
        if f"img{i}.png" == bad:
            mask[5:9, 5:9] = value
        PIL.Image.fromarray(mask).save(root / "masks" / "train" / f"img{i}.png")
    PIL.Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(root / "images/validation/v.png")
    PIL.Image.fromarray(np.zeros((24, 32), np.uint8)).save(root / "masks/validation/v.png")
    return root


_TRANSFORM = T.TrainTransform(img_scale=(64, 16), crop_size=(16, 16))


def test_an_out_of_range_label_past_the_preflight_stops_the_pipeline(tmp_path):
    """Value K in a record outside the first two batches: the trainer's preflight passes,
    and the pipeline used to train it silently as ignored pixels. With num_labels it raises
    the preflight's own message, naming the record and its file, at the batch holding it."""
    batch, seed = 2, 0
    first = {int(i) for s in range(pipeline.PREFLIGHT_BATCHES)
             for i in pipeline.global_batch_indices(10, batch, seed, s)}
    late = next(i for i in range(10) if i not in first)
    name = f"img{late}.png"  # records keep the sorted file order
    data = sd.load_split("folder", "train", tmp_path / "tfds", _folder(tmp_path / "f", name))
    assert data.source[late]["file_name"].decode() == name
    pipeline.preflight(data.source, sorted(first), data.num_labels, data.reduce_zero_label)  # passes
    step = next(s for s in range(10)
                if late in pipeline.global_batch_indices(10, batch, seed, s).tolist())
    expected = pipeline.record_label_problem(data.source[late], late, 3, False)
    assert expected.startswith(f"record {late} ({name}): label value(s) [3] out of range")
    with pytest.raises(DatasetError) as err:
        with sd.train_batches(data.source, _TRANSFORM, batch, seed=seed, num_steps=10,
                              num_threads=2, num_labels=data.num_labels,
                              reduce_zero_label=data.reduce_zero_label) as batches:
            for _ in batches:
                pass
    assert str(err.value) == expected
    with pytest.raises(DatasetError, match=f"record {late} "):
        pipeline.TrainBatches(data.source, _TRANSFORM, batch, seed=seed,
                              num_labels=3).batch(step)
    # The batches before it came; and under reduce_zero_label, 3 is class 2: no error.
    with sd.train_batches(data.source, _TRANSFORM, batch, seed=seed, num_steps=step,
                          num_labels=3) as batches:
        assert sum(1 for _ in batches) == step
    with sd.train_batches(data.source, _TRANSFORM, batch, seed=seed, num_steps=10,
                          num_labels=3, reduce_zero_label=True) as batches:
        assert sum(1 for _ in batches) == 10


def test_the_label_check_leaves_the_batches_bit_identical(tmp_path):
    data = sd.load_split("synthetic", "train", tmp_path / "tfds", **SMALL)
    plain = pipeline.TrainBatches(data.source, _TRANSFORM, 3, seed=1, num_steps=4)
    checked = pipeline.TrainBatches(data.source, _TRANSFORM, 3, seed=1, num_steps=4,
                                    num_labels=data.num_labels)
    with plain, checked:
        for a, b in zip(plain, checked, strict=True):
            assert a.keys() == b.keys()
            for key in a:
                assert a[key].dtype == b[key].dtype
                np.testing.assert_array_equal(a[key], b[key])


def test_record_label_problem_rules():
    record = {"segmentation_mask": np.array([[[0], [2], [255]]], np.uint8), "file_name": b"a.png"}
    assert pipeline.record_label_problem(record, 0, 3, False) is None
    record["segmentation_mask"][0, 1, 0] = 3
    assert "if the ids are 1-based with 0 = unlabelled" in pipeline.record_label_problem(record, 7, 3, False)
    assert pipeline.record_label_problem(record, 7, 3, True) is None
    record["segmentation_mask"][0, 0, 0] = 4
    message = pipeline.record_label_problem(record, 7, 3, True)
    assert message.startswith("record 7 (a.png): label value(s) [4] (stored; reduce_zero_label")
    assert pipeline.record_label_problem({"label": 3, "file_name": b"x"}, 0, 3, False) is None
