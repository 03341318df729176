"""The data layer: TFDS builders from small generated archives, transforms, batching.

The archives imitate the real layouts (ADEChallengeData2016.zip or its folder, the two
Cityscapes zips, a user folder) with a few tiny images; nothing is downloaded. The builder
tests need tensorflow-datasets (a runtime requirement); the transform and pipeline tests
need numpy and PIL only.
"""

import io
import zipfile

import numpy as np
import PIL.Image
import pytest

from segformer_jax import data as sd
from segformer_jax import errors, images
from segformer_jax.data import pipeline, presets
from segformer_jax.data import transforms as T


@pytest.fixture
def DatasetError():  # noqa: N802 - the exception class
    """Quiets TFDS's progress bars; gives the builders' exception class.

    TFDS is a hard dependency: a broken install must fail these tests, not skip them.
    """
    import tensorflow_datasets as tfds
    tfds.disable_progress_bar()
    return errors.DatasetError


def test_dataset_error_has_one_home():
    from segformer_jax.data import common
    assert sd.DatasetError is common.DatasetError is errors.DatasetError
    assert issubclass(errors.DatasetError, (errors.SegformerError, ValueError))


# ----------------------------------------------------------------------------- fake files


def _encode(array, fmt="PNG", mode=None):
    buffer = io.BytesIO()
    image = PIL.Image.fromarray(array) if mode is None else PIL.Image.fromarray(array, mode)
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _image(seed, h=40, w=60):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (1, 1, 3))
    ramp = np.linspace(0, 60, w)[None, :, None]
    return np.clip(base + ramp + rng.integers(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def _mask(seed, values, h=40, w=60):
    rng = np.random.default_rng(seed)
    return np.asarray(values, np.uint8)[rng.integers(0, len(values), (h, w))]


def _write_zip(path, members):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _ade_members(bad_label=False):
    members, expected = {}, {}
    for split, folder, n in (("train", "training", 3), ("validation", "validation", 2)):
        for i in range(n):
            stem = f"ADE_{split}_{i + 1:08d}"
            image = _image(i + 10 * n)
            mask = _mask(i, [0, 1, 7, 150])
            if bad_label and split == "validation" and i == 1:
                mask[0, 0] = 151
            members[f"ADEChallengeData2016/images/{folder}/{stem}.jpg"] = _encode(image, "JPEG")
            members[f"ADEChallengeData2016/annotations/{folder}/{stem}.png"] = _encode(mask)
            expected[(split, f"{stem}.jpg")] = mask
    members["ADEChallengeData2016/objectInfo150.txt"] = b"Idx\tRatio\tTrain\tVal\tName\n"
    return members, expected


def _check_ade(data_dir, manual_dir, expected, members):
    train = sd.load_split("ade20k", "train", data_dir, manual_dir)
    val = sd.load_split("ade20k", "validation", data_dir, manual_dir)
    assert (len(train), len(val)) == (3, 2)
    assert train.num_labels == 150 and train.reduce_zero_label
    assert train.class_names[:5] == ("wall", "building", "sky", "floor", "tree")
    assert train.class_names[-1] == "flag"
    for split in (train, val):
        for i in range(len(split)):
            ex = split.source[i]
            name = ex["file_name"].decode()
            assert ex["image"].shape == (40, 60, 3) and ex["image"].dtype == np.uint8
            assert ex["segmentation_mask"].shape == (40, 60, 1)
            # raw labels 0..150, stored as they are
            np.testing.assert_array_equal(ex["segmentation_mask"][..., 0],
                                          expected[(split.split, name)])
            folder = "training" if split.split == "train" else "validation"
            jpeg = members[f"ADEChallengeData2016/images/{folder}/{name}"]
            np.testing.assert_array_equal(ex["image"],
                                          np.asarray(PIL.Image.open(io.BytesIO(jpeg))))


def test_ade20k_from_zip_and_from_folder(tmp_path, DatasetError):
    members, expected = _ade_members()
    zipped = tmp_path / "zip"
    zipped.mkdir()
    _write_zip(zipped / "ADEChallengeData2016.zip", members)
    _check_ade(tmp_path / "tfds_zip", zipped, expected, members)

    folder = tmp_path / "folder"
    for name, payload in members.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(payload)
    _check_ade(tmp_path / "tfds_folder", folder, expected, members)


def test_ade20k_missing_archive_names_the_file(tmp_path, DatasetError):
    (tmp_path / "man").mkdir()
    (tmp_path / "man" / "README").write_text("nothing here")
    for manual in (tmp_path / "man", tmp_path / "does_not_exist"):
        with pytest.raises(DatasetError) as err:
            sd.load_split("ade20k", "train", tmp_path / "tfds", manual)
        message = str(err.value)
        assert "ADEChallengeData2016.zip" in message
        assert "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip" in message
        assert str(manual) in message


def test_ade20k_label_above_150_names_the_file(tmp_path, DatasetError):
    members, _ = _ade_members(bad_label=True)
    _write_zip(tmp_path / "ADEChallengeData2016.zip", members)
    with pytest.raises(DatasetError, match=r"ADE_validation_00000002\.png.*151"):
        sd.load_split("ade20k", "train", tmp_path / "tfds", tmp_path)
    # the failed build left nothing behind: once the file is fixed, the build goes through
    _write_zip(tmp_path / "ADEChallengeData2016.zip", _ade_members()[0])
    assert len(sd.load_split("ade20k", "validation", tmp_path / "tfds", tmp_path)) == 2


# ----------------------------------------------------------------------------- cityscapes

_CITY_FILES = {"train": [("aachen", "000000_000019"), ("bochum", "000000_000313")],
               "val": [("frankfurt", "000000_000294")], "test": [("berlin", "000000_000019")]}


def _cityscapes_zips(directory, with_labels=True):
    label_ids = np.array([0, 7, 8, 9, 26, 33, 24, 1, 40], np.uint8)
    images, labels, expected = {}, {}, {}
    for n, (split, files) in enumerate(_CITY_FILES.items()):
        for i, (city, seq) in enumerate(files):
            base = f"{city}_{seq}"
            mask = _mask(n * 10 + i, label_ids, 32, 64)
            image = _encode(_image(i, 32, 64))
            images[f"leftImg8bit/{split}/{city}/{base}_leftImg8bit.png"] = image
            labels[f"gtFine/{split}/{city}/{base}_gtFine_labelIds.png"] = _encode(mask)
            labels[f"gtFine/{split}/{city}/{base}_gtFine_color.png"] = _encode(_image(9, 32, 64))
            expected[f"{city}/{base}_leftImg8bit.png"] = mask
    images["README"] = b"x"
    _write_zip(directory / "leftImg8bit_trainvaltest.zip", images)
    if with_labels:
        _write_zip(directory / "gtFine_trainvaltest.zip", labels)
    return expected


def test_cityscapes_zips_map_label_ids_to_train_ids(tmp_path, DatasetError):
    expected = _cityscapes_zips(tmp_path)
    mapping = {0: 255, 7: 0, 8: 1, 9: 255, 26: 13, 33: 18, 24: 11, 1: 255, 40: 255}
    sizes = {}
    for split in ("train", "validation", "test"):
        data = sd.load_split("cityscapes", split, tmp_path / "tfds", tmp_path)
        assert data.class_names[0] == "road" and data.class_names[18] == "bicycle"
        assert data.num_labels == 19 and not data.reduce_zero_label
        sizes[split] = len(data)
        for i in range(len(data)):
            ex = data.source[i]
            raw = expected[ex["file_name"].decode()]
            want = np.vectorize(mapping.get)(raw).astype(np.uint8)
            np.testing.assert_array_equal(ex["segmentation_mask"][..., 0], want)
            assert ex["image"].shape == (32, 64, 3)
        if split == "validation":  # the test split is not built with the others...
            built = sd.prepare("cityscapes", tmp_path / "tfds", tmp_path)
            assert set(built.info.splits) == {"train", "validation"}
            assert not list((tmp_path / "tfds").glob("segformer_cityscapes_test*"))
            from segformer_jax.data.check import check_built
            notes = [f.message for f in check_built("cityscapes", "validation", data_dir=tmp_path / "tfds",
                                                    manual_dir=tmp_path).findings if f.code == "splits-read"]
            assert notes == ["read split 'validation' of cityscapes; it also has train, test (built "
                             "when asked for) (--split NAME checks another)"]
    assert sizes == {"train": 2, "validation": 1, "test": 1}
    # ... but on its own when asked for, beside them.
    assert set(sd.prepare("cityscapes", tmp_path / "tfds", tmp_path, split="test").info.splits) == {"test"}
    assert list((tmp_path / "tfds").glob("segformer_cityscapes_test/*/dataset_info.json"))


def test_cityscapes_missing_labels_zip_names_the_file(tmp_path, DatasetError):
    _cityscapes_zips(tmp_path, with_labels=False)
    with pytest.raises(DatasetError, match="gtFine_trainvaltest.zip"):
        sd.load_split("cityscapes", "train", tmp_path / "tfds", tmp_path)


# ----------------------------------------------------------------------------- folder


def _folder(root, classes=("background", "cat", "dog")):
    (root / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(classes) + "\n\n")
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
    return root


def test_folder_dataset_converts_modes(tmp_path, DatasetError):
    root = _folder(tmp_path / "my_data")
    rgb = _image(1)
    gray = rgb[..., 0]
    rgba = np.concatenate([rgb, np.full((40, 60, 1), 255, np.uint8)], axis=-1)
    rgba[0, 0, 3] = 0  # one transparent pixel -> white
    masks = [_mask(i, [0, 1, 2, 255]) for i in range(4)]
    (root / "images/train/a.jpg").write_bytes(_encode(gray, "JPEG"))
    (root / "images/train/b.png").write_bytes(_encode(rgba))
    palette = PIL.Image.fromarray(rgb).quantize(colors=8)
    palette.save(root / "images/train/c.png")
    PIL.Image.fromarray(gray.astype(np.uint16) * 257).save(root / "images/val/d.png")  # 16-bit
    # masks: palette (indices), 16-bit, 8-bit with 255
    pal_mask = PIL.Image.fromarray(masks[0], "L").convert("P")
    pal_mask.putpalette([v for i in range(256) for v in (i * 7 % 256, i, 255 - i)])
    pal_mask.save(root / "masks/train/a.png")
    PIL.Image.fromarray(masks[1].astype(np.uint16)).save(root / "masks/train/b.png")
    (root / "masks/train/c.png").write_bytes(_encode(masks[2]))
    (root / "masks/val/d.png").write_bytes(_encode(masks[3]))

    train = sd.load_split("folder", "train", tmp_path / "tfds", root)
    val = sd.load_split("folder", "val", tmp_path / "tfds", root)
    assert train.class_names == ("background", "cat", "dog")
    assert (len(train), len(val)) == (3, 1)
    by_name = {train.source[i]["file_name"].decode(): train.source[i] for i in range(3)}
    assert sorted(by_name) == ["a.jpg", "b.png", "c.png"]
    a, b, c = by_name["a.jpg"], by_name["b.png"], by_name["c.png"]
    assert a["image"].shape == (40, 60, 3)
    assert (a["image"][..., 0] == a["image"][..., 1]).all()  # gray -> 3 equal channels
    np.testing.assert_array_equal(b["image"][0, 0], [255, 255, 255])
    np.testing.assert_array_equal(b["image"][1:, 1:], rgb[1:, 1:])
    np.testing.assert_array_equal(c["image"], np.asarray(palette.convert("RGB")))
    for ex, want in ((a, masks[0]), (b, masks[1]), (c, masks[2])):
        np.testing.assert_array_equal(ex["segmentation_mask"][..., 0], want)
    np.testing.assert_array_equal(val.source[0]["segmentation_mask"][..., 0], masks[3])
    np.testing.assert_array_equal(val.source[0]["image"], np.repeat(gray[..., None], 3, -1))


def _decoded(data):
    image = PIL.Image.open(io.BytesIO(data))
    image.load()
    return image


def test_builders_convert_images_with_images_to_rgb():
    """What a builder stores is ``images.to_rgb`` of the file: one rule for datasets and
    ``predict``. Mode I above 255 is 16-bit data (scaled, not saturated); RGBA goes onto
    white."""
    from segformer_jax.data import common
    assert common.to_rgb is images.to_rgb
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 65536, (20, 30)).astype(np.int32)
    wide[0, 0], wide[0, 1] = 65535, 0
    rgba = np.concatenate([_image(2, 20, 30), rng.integers(0, 256, (20, 30, 1), np.uint8)], -1)
    files = {}
    for name, array, mode, fmt in (("I", wide, "I", "TIFF"), ("RGBA", rgba, "RGBA", "PNG")):
        buffer = io.BytesIO()
        PIL.Image.fromarray(array, mode).save(buffer, format=fmt)
        files[name] = buffer.getvalue()
    for name, data in files.items():
        image = _decoded(data)
        assert image.mode == name
        stored, size = common.read_image(data, name)
        assert size == (20, 30)
        np.testing.assert_array_equal(np.asarray(_decoded(stored)), images.to_rgb(image))
    gray = images.to_rgb(_decoded(files["I"]))
    assert gray.dtype == np.uint8 and gray.shape == (20, 30, 3)
    np.testing.assert_array_equal(gray[..., 0], (wide.astype(np.int64) * 255 + 32767) // 65535)
    assert gray[0, 0, 0] == 255 and gray[0, 1, 0] == 0
    alpha = rgba[..., 3:].astype(np.float64) / 255
    want = np.round(rgba[..., :3] * alpha + 255 * (1 - alpha))
    assert np.abs(images.to_rgb(_decoded(files["RGBA"])) - want).max() <= 1  # PIL's rounding


def test_to_rgb_bit_depths():
    """8-bit data in mode I stays as it is; F in [0, 1] is scaled by 255, else taken as 0..255."""
    values = np.array([[0, 7, 200, 255]], np.int32)
    np.testing.assert_array_equal(images.to_rgb(PIL.Image.fromarray(values, "I"))[..., 1], values)
    unit = PIL.Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F")
    np.testing.assert_array_equal(images.to_rgb(unit)[..., 2], [[0, 128, 255]])
    grey = PIL.Image.fromarray(np.array([[0.0, 7.4, 300.0]], np.float32), "F")
    np.testing.assert_array_equal(images.to_rgb(grey)[..., 0], [[0, 7, 255]])
    sixteen = PIL.Image.fromarray(np.array([[0, 257, 65535]], np.uint16))
    assert sixteen.mode == "I;16"
    np.testing.assert_array_equal(images.to_rgb(sixteen)[..., 0], [[0, 1, 255]])


def _one_pair(root, image_bytes, mask_array):
    (root / "images/train/x.png").write_bytes(image_bytes)
    (root / "masks/train/x.png").write_bytes(_encode(mask_array))


@pytest.mark.parametrize("case", ["size", "truncated", "label", "missing_mask", "no_classes"])
def test_folder_errors_name_the_file(tmp_path, case, DatasetError):
    root = _folder(tmp_path / "bad")
    image = _encode(_image(0))
    if case == "size":
        _one_pair(root, image, _mask(0, [0, 1], 41, 60))
        match = r"masks/train/x\.png: mask is 60x41"
    elif case == "truncated":
        _one_pair(root, image[: len(image) // 2], _mask(0, [0, 1]))
        match = r"images/train/x\.png: cannot decode the image"
    elif case == "label":
        # 3 classes: 3 itself is a class id under reduce_zero_label (the trainer checks it)
        _one_pair(root, image, _mask(0, [0, 4]))
        match = r"masks/train/x\.png: label value\(s\) \[4\]"
    elif case == "missing_mask":
        (root / "images/train/x.png").write_bytes(image)
        match = r"images/train/x\.png: no mask .*masks/train/x\.png"
    else:
        _one_pair(root, image, _mask(0, [0, 1]))
        (root / "classes.txt").unlink()
        match = r"classes\.txt not found"
    with pytest.raises(DatasetError, match=match):
        sd.load_split("folder", "train", tmp_path / "tfds", root)


def test_synthetic_builder_matches_generator(tmp_path, DatasetError):
    from segformer_jax.data.synthetic import CLASS_NAMES, generate_example
    data = sd.load_split("synthetic", "validation", tmp_path, num_train=2, num_validation=3,
                         seed=5, size_range=(40, 48))
    assert len(data) == 3 and data.class_names == CLASS_NAMES
    image, mask = generate_example(2, "validation", 5, (40, 48))
    np.testing.assert_array_equal(data.source[2]["image"], image)
    np.testing.assert_array_equal(data.source[2]["segmentation_mask"][..., 0], mask)
    with pytest.raises(DatasetError, match="no split 'test'"):
        sd.load_split("synthetic", "test", tmp_path, num_train=2, num_validation=3, seed=5,
                      size_range=(40, 48))


# ----------------------------------------------------------------------------- transforms


def _example(h=40, w=60, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 256, (h, w, 3)).astype(np.uint8),
            "label": rng.integers(0, 5, (h, w)).astype(np.uint8)}


def test_random_rescale_range_keeps_aspect():
    ex = _example()
    shorts = []
    for seed in range(40):
        out = T.random_rescale(ex, np.random.default_rng(seed), (200, 50), (0.5, 2.0))
        h, w = out["image"].shape[:2]
        assert out["label"].shape == (h, w)
        assert abs(w / h - 1.5) < 0.05
        assert set(np.unique(out["label"])) <= set(np.unique(ex["label"]))
        shorts.append(h)
    assert 25 <= min(shorts) < 35 and 90 < max(shorts) <= 100  # short side 50 * [0.5, 2)
    # mmcv rescale_size: fits (long, short) either way round
    assert T.rescale_size(375, 500, (2048, 512)) == (512, 683)
    assert T.rescale_size(100, 1000, (2048, 512)) == (205, 2048)


def test_resize_image_is_unantialiased_bilinear():
    x = np.zeros((4, 4, 3), np.uint8)
    x[:, ::2] = 200  # columns alternate 200, 0
    out = T.resize_image(x, (4, 2))  # half-pixel centres land between columns -> 100
    assert np.abs(out.astype(int) - 100).max() <= 1
    lab = np.arange(16, dtype=np.uint8).reshape(4, 4)
    np.testing.assert_array_equal(T.resize_label(lab, (2, 2)), lab[::2, ::2])  # floor(i * 2)


def test_random_crop_size_and_cat_max_ratio():
    label = np.ones((30, 30), np.uint8)
    label[:15, :15] = 2
    ex = {"image": np.zeros((30, 30, 3), np.uint8), "label": label}

    def ok(crop):
        counts = np.bincount(crop.ravel())
        counts = counts[counts > 0]
        return len(counts) > 1 and counts.max() / counts.sum() < 0.75

    with_ratio = [ok(T.random_crop(ex, np.random.default_rng(s), (20, 20), 0.75)["label"])
                  for s in range(40)]
    without = [ok(T.random_crop(ex, np.random.default_rng(s), (20, 20), 1.0)["label"])
               for s in range(40)]
    assert all(with_ratio) and not all(without)
    small = T.random_crop(ex, np.random.default_rng(0), (50, 20), 0.75)
    assert small["image"].shape == (30, 20, 3) and small["label"].shape == (30, 20)
    # 255 is not a class: two equal classes among ignore pixels pass at the first draw (2
    # random numbers used); a single class among them never does (11 draws, the last kept).
    mostly_ignored = np.full((30, 30), 255, np.uint8)
    mostly_ignored[:, :2], mostly_ignored[:, -2:] = 1, 2
    cases = ((mostly_ignored, 2), (np.where(label == 2, 255, 1), 22))
    for crop_label, draws in cases:
        rng, reference = np.random.default_rng(0), np.random.default_rng(0)
        out = T.random_crop({"image": ex["image"], "label": crop_label.astype(np.uint8)}, rng,
                            (30, 30), 0.75)
        assert out["label"].shape == (30, 30)
        reference.integers(0, 1, size=draws)
        assert rng.integers(1 << 30) == reference.integers(1 << 30)


def test_flip_moves_image_and_label_together():
    ex = _example()
    ex["label"] = ex["image"][..., 0] % 5
    flips = 0
    for seed in range(20):
        out = T.random_flip(ex, np.random.default_rng(seed), 0.5)
        np.testing.assert_array_equal(out["label"], out["image"][..., 0] % 5)
        flips += not np.array_equal(out["image"], ex["image"])
    assert 3 <= flips <= 17
    out = T.random_flip(ex, np.random.default_rng(0), 1.0)
    np.testing.assert_array_equal(out["image"], ex["image"][:, ::-1])
    np.testing.assert_array_equal(out["label"], ex["label"][:, ::-1])


def test_pad_normalize_reduce_zero_label():
    ex = T.normalize(_example(10, 12))
    out = T.pad(ex, (16, 16))
    assert out["image"].shape == (16, 16, 3) and out["label"].shape == (16, 16)
    assert (out["image"][10:] == 0).all() and (out["image"][:, 12:] == 0).all()
    assert (out["label"][10:] == 255).all() and (out["label"][:, 12:] == 255).all()
    np.testing.assert_array_equal(out["label"][:10, :12], ex["label"])
    pixel = np.array([[[123.675, 116.28, 103.53]]])
    np.testing.assert_allclose(T.normalize({"image": pixel})["image"], 0, atol=1e-5)
    reduced = T.reduce_zero_label({"label": np.array([[0, 1, 150, 255, 7]], np.uint8)})
    np.testing.assert_array_equal(reduced["label"], [[255, 0, 149, 255, 6]])


def test_hsv_matches_opencv_and_photometric_is_deterministic():
    colours = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0],
                         [128, 64, 64]]], np.uint8)
    np.testing.assert_array_equal(T.rgb_to_hsv(colours)[0, :5],
                                  [[0, 255, 255], [60, 255, 255], [120, 255, 255],
                                   [0, 0, 255], [0, 0, 0]])
    np.testing.assert_array_equal(T.rgb_to_hsv(colours)[0, 5], [0, 128, 128])
    x = _example(20, 20)["image"]
    # H has 2-degree steps in 8 bits: a round trip moves a channel by up to ~255/60
    assert np.abs(T.hsv_to_rgb(T.rgb_to_hsv(x)).astype(int) - x).max() <= 5
    np.testing.assert_array_equal(T.hsv_to_rgb(np.array([[[30, 255, 255], [90, 255, 255],
                                                           [0, 0, 77]]], np.uint8)),
                                  [[[255, 255, 0], [0, 255, 255], [77, 77, 77]]])
    a = T.photometric_distortion({"image": x}, np.random.default_rng(3))["image"]
    b = T.photometric_distortion({"image": x}, np.random.default_rng(3))["image"]
    assert a.dtype == np.uint8 and a.shape == x.shape
    np.testing.assert_array_equal(a, b)
    changed = sum(not np.array_equal(
        T.photometric_distortion({"image": x}, np.random.default_rng(s))["image"], x)
        for s in range(10))
    assert changed >= 7


def test_train_and_eval_transforms():
    ex = {"image": _example(40, 60)["image"], "segmentation_mask": np.zeros((40, 60, 1), np.uint8)}
    ex["segmentation_mask"][:20, :, 0] = 3
    train = T.train_transform("ade20k", crop=32, img_scale=(128, 32), reduce_zero_label=True)
    out = train(ex, np.random.default_rng(0))
    assert out["image"].shape == (32, 32, 3) and out["image"].dtype == np.float32
    assert set(np.unique(out["label"])) <= {2, 255}  # 3 -> 2, 0 -> 255 (reduce_zero_label)
    ev = T.EvalTransform(img_scale=presets.settings("ade20k", crop=20).test_scale, size_divisor=16,
                         reduce_zero_label=True)(ex)
    assert ev["image"].shape == (32, 32, 3)  # 40x60 -> 20x30 -> multiples of 16
    assert ev["label"].shape == (40, 60) and ev["original_size"] == (40, 60)
    assert set(np.unique(ev["label"])) == {2, 255}


def test_dataset_transforms_come_from_the_presets():
    """The paper's per-dataset sizes (NVlabs ade20k_repeat.py, cityscapes_1024x1024_repeat.py,
    the B5 640x640 configs), read from ``data.presets``."""
    assert T.train_transform("ade20k", reduce_zero_label=True) == T.TrainTransform(
        img_scale=(2048, 512), crop_size=(512, 512), reduce_zero_label=True)
    assert T.train_transform("ade20k", 640, reduce_zero_label=True).img_scale == (2048, 640)
    assert T.train_transform("cityscapes", reduce_zero_label=False) == T.TrainTransform(
        img_scale=(2048, 1024), crop_size=(1024, 1024))
    b5 = presets.settings("ade20k", 640)
    assert (b5.test_scale, b5.size_divisor, b5.test_mode) == ((2048, 640), 32, "whole")
    city = presets.settings("cityscapes")
    assert (city.test_scale, city.size_divisor, city.test_mode, city.test_crop,
            city.test_stride) == ((2048, 1024), None, "slide", 1024, 768)
    synthetic = presets.settings("synthetic")
    assert T.train_transform("synthetic", reduce_zero_label=False, photometric=False) == \
        T.TrainTransform(img_scale=synthetic.img_scale, crop_size=synthetic.crop_size,
                         photometric=False)
    with pytest.raises(TypeError):
        T.train_transform("ade20k")  # reduce_zero_label belongs to the split: no default


def test_shared_constants_are_the_library_constants():
    from segformer_jax import constants
    from segformer_jax.data import common
    assert T.IGNORE_INDEX == common.IGNORE_INDEX == constants.IGNORE_INDEX == 255
    assert T.MEAN_RGB == constants.MEAN_RGB == (123.675, 116.28, 103.53)
    assert T.STD_RGB == constants.STD_RGB == (58.395, 57.12, 57.375)


# ----------------------------------------------------------------------------- pipeline


class _ListSource:
    def __init__(self, n=11):
        self.items = []
        for i in range(n):
            image = np.full((24 + i, 30, 3), i * 10, np.uint8)
            mask = np.full((24 + i, 30, 1), i % 4, np.uint8)
            self.items.append({"image": image, "segmentation_mask": mask,
                               "file_name": f"{i}.png".encode()})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


_TRANSFORM = T.TrainTransform(img_scale=(64, 16), crop_size=(16, 16))


def test_batches_are_a_function_of_seed_and_step():
    source = _ListSource()
    with pipeline.train_batches(source, _TRANSFORM, 4, seed=7, num_steps=6,
                                num_threads=2) as it:
        stream = list(it)
    assert len(stream) == 6
    assert stream[0]["image"].shape == (4, 16, 16, 3) and stream[0]["label"].dtype == np.int32
    again = pipeline.TrainBatches(source, _TRANSFORM, 4, seed=7, num_threads=1)
    for step in (5, 0, 3):
        batch = again.batch(step)
        for key in ("image", "label"):
            np.testing.assert_array_equal(batch[key], stream[step][key])
    again.close()
    # restart at step k == the continuing iterator
    with pipeline.train_batches(source, _TRANSFORM, 4, seed=7, start_step=4,
                                num_steps=2) as resumed:
        for step, batch in enumerate(resumed, start=4):
            np.testing.assert_array_equal(batch["image"], stream[step]["image"])
            np.testing.assert_array_equal(batch["label"], stream[step]["label"])
    other = pipeline.TrainBatches(source, _TRANSFORM, 4, seed=8).batch(0)
    assert not np.array_equal(other["image"], stream[0]["image"])


def test_epochs_are_permutations():
    n, batch = 11, 4
    order = np.concatenate([pipeline.global_batch_indices(n, batch, 3, s) for s in range(11)])
    for epoch in range(4):
        assert sorted(order[epoch * n:(epoch + 1) * n]) == list(range(n))
    assert not np.array_equal(order[:n], order[n:2 * n])


def test_processes_read_disjoint_parts_of_the_global_batch():
    source = _ListSource()
    full = pipeline.TrainBatches(source, _TRANSFORM, 4, seed=1)
    parts = [pipeline.TrainBatches(source, _TRANSFORM, 4, seed=1, process_index=p,
                                   process_count=2) for p in range(2)]
    for step in (0, 2):
        idx = [p.indices(step) for p in parts]
        assert not set(idx[0]) & set(idx[1])
        np.testing.assert_array_equal(np.concatenate(idx), full.indices(step))
        joined = [p.batch(step) for p in parts]
        whole = full.batch(step)
        for key in ("image", "label"):
            np.testing.assert_array_equal(np.concatenate([j[key] for j in joined]), whole[key])
    with pytest.raises(ValueError, match="multiple"):
        pipeline.TrainBatches(source, _TRANSFORM, 4, process_index=0, process_count=3)
    for it in [full, *parts]:
        it.close()


def test_eval_batches_cover_the_split_in_order():
    source = _ListSource(5)
    transform = T.EvalTransform(img_scale=(32, 16))
    seen = []
    for batch in pipeline.eval_batches(source, transform):
        assert batch["image"].shape[0] == 1 and batch["image"].shape[1] == 16
        i = int(batch["index"][0])
        assert batch["label"].shape == (1, 24 + i, 30)  # original resolution
        assert batch["file_name"][0] == f"{i}.png"
        seen.append(i)
    assert seen == list(range(5))
    batches = list(pipeline.eval_batches(source, transform, 2, pad_to=(16, 32),
                                         process_index=1, process_count=2))
    assert [b["index"].tolist() for b in batches] == [[3, 4]]
    assert batches[0]["image"].shape == (2, 16, 32, 3)
    assert (batches[0]["label"][0, 27:] == 255).all()  # 27 rows, padded to 28


def test_pipeline_over_a_built_dataset(tmp_path, DatasetError):
    data = sd.load_split("synthetic", "train", tmp_path, num_train=6, num_validation=1,
                         size_range=(40, 48))
    transform = T.TrainTransform(img_scale=(96, 24), crop_size=(24, 24))
    with sd.train_batches(data.source, transform, 3, seed=0, num_steps=3) as it:
        batches = list(it)
    again = sd.TrainBatches(data.source, transform, 3, seed=0).batch(2)
    np.testing.assert_array_equal(batches[2]["image"], again["image"])
    labels = set(np.unique(batches[0]["label"]).tolist())
    assert labels <= set(range(len(data.class_names))) | {255}, labels
    # Row j of batch s is the transform of its example with the generator [seed, s, j].
    index = int(sd.TrainBatches(data.source, transform, 3, seed=0).indices(0)[1])
    expected = transform(T.as_example(data.source[index]), np.random.default_rng([0, 0, 1]))
    np.testing.assert_array_equal(batches[0]["image"][1], expected["image"])
    np.testing.assert_array_equal(batches[0]["label"][1], expected["label"])


# ----------------------------------------------------------------------------- as people unzip them

def _extract(members, root):
    for name, payload in members.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(payload)


def test_ade20k_unzipped_into_a_folder_of_the_archives_name(tmp_path, DatasetError):
    """``unzip ADEChallengeData2016.zip -d ADEChallengeData2016`` nests the folder twice; the
    builder finds it there."""
    members, expected = _ade_members()
    _extract(members, tmp_path / "man" / "ADEChallengeData2016")
    _check_ade(tmp_path / "tfds", tmp_path / "man", expected, members)


def test_ade20k_with_only_the_validation_images_evaluates(tmp_path, DatasetError):
    members, expected = _ade_members()
    _extract({k: v for k, v in members.items() if "/training/" not in k}, tmp_path / "man")
    val = sd.load_split("ade20k", "validation", tmp_path / "tfds", tmp_path / "man")
    assert len(val) == 2
    with pytest.raises(DatasetError, match=r"has no split 'train'; it has \['validation'\]: .*"
                                           r"built from a copy without that split's images"):
        sd.load_split("ade20k", "train", tmp_path / "tfds", tmp_path / "man")


def test_ade20k_says_where_it_looked_and_what_it_found(tmp_path, DatasetError):
    (tmp_path / "man" / "ADEChallengeData2016" / "photos").mkdir(parents=True)
    (tmp_path / "man" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError) as err:
        sd.load_split("ade20k", "validation", tmp_path / "tfds", tmp_path / "man")
    message = str(err.value)
    assert f"under {tmp_path / 'man' / 'ADEChallengeData2016'}, {tmp_path / 'man'};" in message
    assert "holds ADEChallengeData2016/, notes.txt" in message


def test_cityscapes_unzipped_into_folders_of_the_archives_names(tmp_path, DatasetError):
    """``unzip leftImg8bit_trainvaltest.zip -d leftImg8bit_trainvaltest`` (and gtFine's
    alike): the builder finds ``leftImg8bit/`` and ``gtFine/`` one level down."""
    import zipfile
    (tmp_path / "zips").mkdir()
    expected = _cityscapes_zips(tmp_path / "zips")
    man = tmp_path / "man"
    for archive in ("leftImg8bit_trainvaltest", "gtFine_trainvaltest"):
        with zipfile.ZipFile(tmp_path / "zips" / f"{archive}.zip") as z:
            z.extractall(man / archive)
    data = sd.load_split("cityscapes", "validation", tmp_path / "tfds", man)
    assert len(data) == 1 and data.source[0]["file_name"].decode() in expected


def test_cityscapes_says_where_it_looked_and_what_it_found(tmp_path, DatasetError):
    man = tmp_path / "man"
    (man / "leftImg8bit_trainvaltest" / "images").mkdir(parents=True)
    with pytest.raises(DatasetError) as err:
        sd.load_split("cityscapes", "validation", tmp_path / "tfds", man)
    message = str(err.value)
    assert f"nor an extracted leftImg8bit/ in {man} or {man / 'leftImg8bit_trainvaltest'}" in message
    assert f"({man} holds leftImg8bit_trainvaltest/)" in message
