"""The ``imagecorruptions`` package (1.1.2), the oracle of ``segformer_jax.data.corruptions``,
made to run unchanged on today's libraries, with every draw from numpy's global state.

As released it imports ``pkg_resources`` (removed from setuptools 81), uses ``np.float_``
(removed from numpy 2) in fog and calls scikit-image's ``gaussian(..., multichannel=True)``
(``channel_axis=-1`` since 0.19) in three blurs; its impulse noise comes from scikit-image's
``random_noise``, which now draws from an unseeded ``default_rng()``. ``imagecorruptions()``
is a context manager that supplies the first two, translates the third and hands
``random_noise`` a Generator over numpy's global MT19937 state (``Generator.random`` and
``RandomState.random_sample`` turn the stream into doubles the same way), then undoes all of
it. For tests and benchmarks only.
"""

from __future__ import annotations

import contextlib
import os
import sys
import types
from collections.abc import Iterator

import numpy as np


@contextlib.contextmanager
def imagecorruptions() -> Iterator[types.ModuleType]:
    import skimage.util
    added = []
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        shim = types.ModuleType("pkg_resources")
        shim.resource_filename = lambda package, path: os.path.join(
            os.path.dirname(sys.modules[package].__file__), path)
        sys.modules["pkg_resources"] = shim
        added.append("pkg_resources")
    if not hasattr(np, "float_"):
        np.float_ = np.float64
        added.append("float_")
    import imagecorruptions as package
    import imagecorruptions.corruptions as module

    original_gaussian, original_noise = module.gaussian, skimage.util.random_noise

    def gaussian(image, *args, multichannel=False, **kwargs):
        return original_gaussian(image, *args, channel_axis=-1 if multichannel else None, **kwargs)

    def random_noise(image, mode="gaussian", **kwargs):
        generator = np.random.Generator(np.random.MT19937(0))
        generator.bit_generator.state = np.random.get_state(legacy=False)
        return original_noise(image, mode=mode, rng=generator, **kwargs)

    module.gaussian, skimage.util.random_noise = gaussian, random_noise
    try:
        yield package
    finally:
        module.gaussian, skimage.util.random_noise = original_gaussian, original_noise
        if "float_" in added:
            del np.float_
        if "pkg_resources" in added:
            del sys.modules["pkg_resources"]
