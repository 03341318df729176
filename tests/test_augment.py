"""The ImageNet recipe's augmentations against timm's (the reference PVT v2 and DeiT train
with), on real photographs (scikit-image's samples), given the same random draws.

timm draws from Python's ``random`` and numpy's global state, we from the pipeline's numpy
Generator: each test records our draws and replays them into timm through its own random
calls, so the two compute from identical choices; outputs are then uint8-exact (PIL does
the pixels in both) or, after normalisation, equal in float32.
"""

import random

import numpy as np
import PIL.Image
import pytest
import skimage.data
from timm_oracle import import_timm

from segformer_jax.data import augment, randaugment

PHOTOS = {"astronaut": skimage.data.astronaut, "chelsea": skimage.data.chelsea,
          "coffee": skimage.data.coffee}


def photo(name: str, size: tuple[int, int] | None = (150, 200)) -> PIL.Image.Image:
    image = PIL.Image.fromarray(PHOTOS[name]())
    return image.resize(size, PIL.Image.Resampling.BILINEAR) if size else image


class Recorder:
    """Our Generator, recording every value drawn, by kind."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.log = {"integers": [], "random": [], "normal": [], "uniform": [], "standard_normal": []}

    def _record(self, kind, value):
        self.log[kind].append(value)
        return value

    def integers(self, *a, **k):
        return self._record("integers", self.rng.integers(*a, **k))

    def random(self):
        return self._record("random", self.rng.random())

    def normal(self, *a):
        return self._record("normal", self.rng.normal(*a))

    def uniform(self, *a):
        return self._record("uniform", self.rng.uniform(*a))

    def standard_normal(self, *a, **k):
        return self._record("standard_normal", self.rng.standard_normal(*a, **k))


def replay(values):
    it = iter(list(values))
    return lambda *a, **k: next(it)


@pytest.mark.parametrize("name", randaugment.INCREASING)
def test_each_randaugment_op_equals_timm(name, monkeypatch):
    import_timm()
    from timm.data import auto_augment as aa

    hparams = {"img_mean": randaugment.FILL, "interpolation": PIL.Image.Resampling.BICUBIC}
    for photo_name, magnitude, negative in [("astronaut", 9.0, False), ("chelsea", 9.7, True),
                                            ("coffee", 3.2, True), ("astronaut", 10.0, False),
                                            ("coffee", 0.0, False)]:
        image = photo(photo_name)
        if name == "PosterizeIncreasing" and magnitude == 10.0:  # 0 bits: timm raises on Pillow >= 10
            assert not np.asarray(randaugment.apply_op(image, name, magnitude)).any()
            continue
        op = aa.AugmentOp(name, prob=1.0, magnitude=magnitude, hparams=hparams)
        monkeypatch.setattr(aa.random, "random", lambda sign=0.9 if negative else 0.1: sign)  # the sign draw
        expected = np.asarray(op(image))
        ours = np.asarray(randaugment.apply_op(image, name, magnitude, negative))
        np.testing.assert_array_equal(ours, expected, err_msg=f"{name} m={magnitude} -={negative}")


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_randaugment_equals_timm_given_the_draws(seed, monkeypatch):
    import_timm()
    from timm.data import auto_augment as aa

    image = photo(list(PHOTOS)[seed % 3])
    rng = Recorder(seed)
    ours = np.asarray(randaugment.RandAugment.from_string("rand-m9-mstd0.5-inc1")(image, rng))
    timm_ra = aa.rand_augment_transform("rand-m9-mstd0.5-inc1",
                                        {"img_mean": randaugment.FILL,
                                         "interpolation": PIL.Image.Resampling.BICUBIC})
    chosen = [timm_ra.ops[int(i)] for i in rng.log["integers"][0]]
    monkeypatch.setattr(aa.np.random, "choice", lambda *a, **k: chosen)
    monkeypatch.setattr(aa.random, "random", replay(rng.log["random"]))
    monkeypatch.setattr(aa.random, "gauss", replay(rng.log["normal"]))
    np.testing.assert_array_equal(ours, np.asarray(timm_ra(image)))


@pytest.mark.parametrize("seed", range(6))
def test_random_resized_crop_equals_timm(seed, monkeypatch):
    import_timm()
    from timm.data import transforms as timm_transforms

    image = photo(list(PHOTOS)[seed % 3], size=None)
    rng = Recorder(seed)
    scale = (0.08, 1.0) if seed < 4 else (0.9, 1.0)  # the last two: boxes that rarely fit
    box = augment.random_resized_crop_box(rng, image.height, image.width, scale)
    ours = np.asarray(augment.resized_crop(image, box, (224, 224)))
    monkeypatch.setattr(timm_transforms.random, "uniform", replay(rng.log["uniform"]))
    monkeypatch.setattr(timm_transforms.random, "randint", replay(rng.log["integers"]))
    crop = timm_transforms.RandomResizedCropAndInterpolation(224, scale=scale, interpolation="bicubic")
    assert crop.get_params(image, crop.scale, crop.ratio) == box
    monkeypatch.setattr(timm_transforms.random, "uniform", replay(rng.log["uniform"]))
    monkeypatch.setattr(timm_transforms.random, "randint", replay(rng.log["integers"]))
    np.testing.assert_array_equal(ours, np.asarray(crop(image)))


def test_random_resized_crop_falls_back_to_the_centre_like_timm(monkeypatch):
    """A very wide image with scale 1 and the recipe's ratios: nothing fits in ten tries."""
    import_timm()
    from timm.data import transforms as timm_transforms

    rng = Recorder(0)
    box = augment.random_resized_crop_box(rng, 50, 400, (1.0, 1.0))
    assert box == (0, (400 - 67) // 2, 50, 67)
    monkeypatch.setattr(timm_transforms.random, "uniform", replay(rng.log["uniform"]))
    image = PIL.Image.new("RGB", (400, 50))
    assert timm_transforms.RandomResizedCropAndInterpolation.get_params(image, (1.0, 1.0), (3 / 4, 4 / 3)) == box


@pytest.mark.parametrize("seed", range(5))
def test_random_erasing_equals_timm(seed, monkeypatch):
    import torch
    import_timm()
    from timm.data import random_erasing

    image = augment.normalize(np.asarray(photo(list(PHOTOS)[seed % 3], size=(224, 224))))
    rng = Recorder(seed)
    box = augment.erase_box(rng, 224, 224)
    assert box is not None
    top, left, h, w = box
    ours = image.copy()
    ours[top:top + h, left:left + w] = rng.standard_normal((h, w, 3), np.float32)
    noise = rng.log["standard_normal"][0]
    monkeypatch.setattr(random_erasing.random, "random", lambda: 0.0)      # erase
    monkeypatch.setattr(random_erasing.random, "uniform", replay(rng.log["uniform"]))
    monkeypatch.setattr(random_erasing.random, "randint", replay(rng.log["integers"]))
    monkeypatch.setattr(random_erasing, "_get_pixels",
                        lambda *a, **k: torch.from_numpy(noise.transpose(2, 0, 1).copy()))
    eraser = random_erasing.RandomErasing(probability=0.25, mode="pixel", device="cpu")
    expected = eraser(torch.from_numpy(image.transpose(2, 0, 1).copy())).numpy().transpose(1, 2, 0)
    np.testing.assert_array_equal(ours, expected)


@pytest.mark.parametrize("name", list(PHOTOS))
def test_eval_transform_equals_timm(name):
    import torch  # noqa: F401
    import_timm()
    from timm.data import create_transform

    image = photo(name, size=None)
    timm_tf = create_transform(224, is_training=False, interpolation="bicubic", crop_pct=0.875)
    expected = timm_tf(image).numpy().transpose(1, 2, 0)
    ours = augment.ClassifyEvalTransform((224, 224), 0.875)({"image": np.asarray(image), "label": 0})
    np.testing.assert_allclose(ours["image"], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("crop", [(173, 251), (251, 173), (224, 225)])
@pytest.mark.parametrize("name", ["square", *list(PHOTOS)[:1]])
def test_non_square_eval_crops_equal_timm(name, crop):
    """A crop whose two scale sizes differ: timm scales the image (aspect kept) to cover both
    and cuts the centre; no border. (Before: the short side went to min(crop) / crop_pct and
    a 173 × 251 crop of a square image had 54 black columns.)"""
    import torch  # noqa: F401
    import_timm()
    from timm.data import create_transform

    image = (PIL.Image.fromarray(np.random.default_rng(5).integers(0, 256, (300, 300, 3), np.uint8))
             if name == "square" else photo(name, size=None))
    timm_tf = create_transform(crop, is_training=False, interpolation="bicubic", crop_pct=0.875)
    expected = timm_tf(image).numpy().transpose(1, 2, 0)
    ours = augment.ClassifyEvalTransform(crop, 0.875)({"image": np.asarray(image), "label": 0})["image"]
    assert ours.shape == (*crop, 3)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)
    black = augment.normalize(np.zeros((1, 1, 3), np.uint8))[0, 0]   # a pixel outside the image
    assert not np.all(np.isclose(ours, black, atol=1e-6), axis=(0, 2)).any()   # no black column


def test_train_transform_is_a_function_of_the_generator():
    tf = augment.ClassifyTrainTransform((64, 64))
    example = {"image": np.asarray(photo("chelsea")), "label": 3}
    a = tf(example, np.random.default_rng([0, 5, 1]))
    b = tf(example, np.random.default_rng([0, 5, 1]))
    c = tf(example, np.random.default_rng([0, 5, 2]))
    assert a["image"].shape == (64, 64, 3) and a["image"].dtype == np.float32 and int(a["label"]) == 3
    np.testing.assert_array_equal(a["image"], b["image"])
    assert not np.array_equal(a["image"], c["image"])


def test_bad_randaugment_spec_is_refused():
    for spec in ("auto-m9", "rand-q3", "rand-m9-inc0"):
        with pytest.raises(ValueError, match="RandAugment config"):
            randaugment.RandAugment.from_string(spec)
    random.seed(0)  # leave Python's global state as other tests expect it
