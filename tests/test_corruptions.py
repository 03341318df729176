"""The corruptions against the ``imagecorruptions`` package (1.1.2, the release the ImageNet-C
style benchmarks use), on scikit-image's photographs, for every corruption and severity.

The package is deterministic given numpy's global random state: that state is set to where
``image_rng(...)`` starts, so the package draws exactly what ours draws (the same legacy
MT19937 algorithms in the same order; for its impulse noise, which scikit-image draws, see
``experiments.imagecorruptions_shim``, which also lets the released package run on today's
numpy, scikit-image and setuptools). The tolerance is then the package's own, zero: the
outputs are uint8 and must be equal byte for byte.
"""

from __future__ import annotations

import numpy as np
import pytest

from experiments.imagecorruptions_shim import imagecorruptions
from segformer_jax.data import corruptions as C


@pytest.fixture(scope="module")
def package():
    with imagecorruptions() as module:
        yield module


@pytest.fixture(scope="module")
def photos():
    """Crops of two photographs, one landscape and one portrait, and small enough that the
    package's per-pixel glass-blur loop stays quick."""
    from skimage import data
    return [np.ascontiguousarray(data.coffee()[100:188, 150:270]),     # 88 x 120
            np.ascontiguousarray(data.chelsea()[40:176, 150:246])]      # 136 x 96


def test_names_are_the_packages(package):
    assert list(C.ALL) == package.get_corruption_names("all")
    assert list(C.COMMON) == package.get_corruption_names("common")
    for family in ("noise", "blur", "weather", "digital"):
        assert set(package.get_corruption_names(family)) <= set(C.FAMILIES[family])
    assert sorted(C.FAMILY) == sorted(C.ALL)
    assert len(C.PAPER) == 16 and set(C.PAPER) == set(C.ALL) - {"zoom_blur", "elastic_transform",
                                                                 "pixelate"}


@pytest.mark.parametrize("name", C.ALL)
def test_equal_to_the_package(package, photos, name):
    for severity in C.SEVERITIES:
        for index, photo in enumerate(photos):
            np.random.set_state(C.image_rng(7, index, name, severity).get_state())
            expected = package.corrupt(photo, severity=severity, corruption_name=name)
            ours = C.corrupt(photo, name, severity, C.image_rng(7, index, name, severity))
            assert ours.dtype == np.uint8 and ours.shape == photo.shape
            differ = int((ours != expected).sum())
            assert differ == 0, f"{name} severity {severity} photo {index}: {differ} values differ"


def test_a_pure_function_of_its_key(photos):
    photo = photos[0]
    first = C.corrupt(photo, "gaussian_noise", 3, C.image_rng(0, 5, "gaussian_noise", 3))
    again = C.corrupt(photo, "gaussian_noise", 3, C.image_rng(0, 5, "gaussian_noise", 3))
    np.testing.assert_array_equal(first, again)
    for other in (C.image_rng(1, 5, "gaussian_noise", 3), C.image_rng(0, 6, "gaussian_noise", 3),
                  C.image_rng(0, 5, "gaussian_noise", 4), C.image_rng(0, 5, "shot_noise", 3)):
        assert (C.corrupt(photo, "gaussian_noise", 3, other) != first).any()


def test_bad_input(photos):
    rng = C.image_rng(0, 0, "fog", 1)
    with pytest.raises(ValueError, match="unknown corruption 'rain'; choose from gaussian_noise"):
        C.corrupt(photos[0], "rain", 1, rng)
    with pytest.raises(ValueError, match="severity must be 1, 2, 3, 4 or 5; got 6"):
        C.corrupt(photos[0], "fog", 6, rng)
    with pytest.raises(ValueError, match="at least 32x32 pixels; got 40x20"):
        C.corrupt(np.zeros((20, 40, 3), np.uint8), "fog", 1, rng)
    with pytest.raises(ValueError, match="uint8"):
        C.corrupt(photos[0].astype(np.float32), "fog", 1, rng)
