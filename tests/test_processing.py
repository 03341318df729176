"""SegformerImageProcessor against transformers' PIL-backend SegFormer processor (the oracle).

No photograph files exist here and nothing may be downloaded, so ``photo`` synthesises
photo-like images — smooth illumination gradients, soft blobs, fractal "foliage" texture,
stripes, hard-edged objects and sensor noise — and passes them through a JPEG encode/decode,
so that what the processors see has JPEG's blocking, ringing and chroma subsampling.
"""

import io
import json
import types
from functools import cache

import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest

from segformer_jax.processing import CONFIG_NAME, SegformerImageProcessor

SIZES = [(480, 640), (333, 517), (1024, 768), (50, 70)]          # (height, width)
MODES = ["RGB", "L", "RGBA", "P"]

# Both processors compute float32((float64(u8) * (1/255)) - mean) / std) from the same uint8
# PIL resize: the same float32 operations in the same order, so the values are in fact
# bit-identical. 1e-6 (≈ 4 float32 ulps at the largest |value| ≈ 2.64) only leaves room for
# an operation-order change (e.g. a fused (x - m) / s) — it is far below the 1/255/0.225 ≈
# 0.017 step that one grey level, i.e. a real resize or conversion difference, would make.
ATOL = 1e-6


@pytest.fixture(scope="module")
def hf():
    from transformers import SegformerImageProcessorPil
    return SegformerImageProcessorPil()


def hf_run(hf, images, masks=None, **kwargs):
    """transformers' output, NHWC like ours."""
    out = hf(images, segmentation_maps=masks, return_tensors="np", **kwargs)
    pixels = np.asarray(out["pixel_values"]).transpose(0, 2, 3, 1)
    return pixels, (np.asarray(out["labels"]) if masks is not None else None)


def _jpeg(image: PIL.Image.Image, quality: int = 88) -> PIL.Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    out = PIL.Image.open(buf)
    out.load()
    return out


@cache
def _photo_rgb(h: int, w: int, seed: int) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    yy, xx = yy / h, xx / w
    # illumination: a vertical "sky to ground" ramp and a horizontal fall-off per channel
    img = (rng.uniform(60, 200, 3) + rng.uniform(-80, 80, 3) * yy[..., None]
           + rng.uniform(-40, 40, 3) * xx[..., None])
    for _ in range(4):  # soft blobs of colour (out-of-focus objects)
        cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        img += blob[..., None] * rng.uniform(-90, 90, 3)
    # fractal texture ("foliage") in the lower half: octaves of upsampled noise
    tex = np.zeros((h, w))
    for octave in range(1, 6):
        gh, gw = max(2, h >> (6 - octave)), max(2, w >> (6 - octave))
        small = PIL.Image.fromarray(rng.standard_normal((gh, gw)).astype(np.float32), mode="F")
        tex += np.asarray(small.resize((w, h), PIL.Image.Resampling.BICUBIC)) * 25 / octave
    img += (tex * (yy > 0.5))[..., None] * np.array([0.6, 1.0, 0.4])
    # fine stripes (fabric, fences) in a band, and two hard-edged objects
    img[(yy > 0.2) & (yy < 0.35)] += 30 * np.sin(2 * np.pi * (xx * w / 3.7 + yy * h / 9.1))[
        (yy > 0.2) & (yy < 0.35)][..., None]
    img[(np.abs(yy - 0.6) < 0.12) & (np.abs(xx - 0.3) < 0.1)] = rng.uniform(0, 255, 3)
    img[(yy - 0.3) ** 2 + (xx - 0.75) ** 2 < 0.01] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 4, img.shape)  # sensor noise
    return _jpeg(PIL.Image.fromarray(np.clip(np.round(img), 0, 255).astype(np.uint8)))


def photo(h: int, w: int, mode: str = "RGB", seed: int = 0) -> PIL.Image.Image:
    """A JPEG-decoded photo-like image of size h × w in ``mode``."""
    rgb = _photo_rgb(h, w, seed)
    if mode == "RGB":
        return rgb
    if mode == "L":  # a grayscale JPEG
        return _jpeg(rgb.convert("L"))
    if mode == "CMYK":  # a CMYK JPEG, as print workflows produce
        return _jpeg(rgb.convert("CMYK"))
    if mode == "RGBA":  # alpha: a radial vignette, opaque centre, transparent corners
        yy, xx = np.mgrid[0:h, 0:w]
        d = np.hypot((yy - h / 2) / h, (xx - w / 2) / w)
        alpha = np.clip(255 * (1.4 - 2.2 * d), 0, 255).astype(np.uint8)
        out = rgb.copy()
        out.putalpha(PIL.Image.fromarray(alpha))
        return out
    if mode == "P":  # an adaptive-palette GIF-like image
        return rgb.quantize(colors=64)
    if mode == "P+transparency":  # a palette PNG with a transparent colour index
        buf = io.BytesIO()
        rgb.quantize(colors=32).save(buf, format="PNG", transparency=3)
        buf.seek(0)
        out = PIL.Image.open(buf)
        out.load()
        return out
    raise ValueError(mode)


def label_map(h: int, w: int, seed: int = 0) -> np.ndarray:
    """ADE-like labels: Voronoi regions with ids 0..150 and 255 ("ignore") boundaries."""
    rng = np.random.default_rng(seed + 100)
    centres = rng.uniform(0, 1, (24, 2)) * (h, w)
    ids = rng.integers(0, 151, 24)
    ids[:3] = (0, 150, 1)
    yy, xx = np.mgrid[0:h, 0:w]
    d = (yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2
    nearest = np.sort(d, axis=-1)
    labels = ids[np.argmin(d, axis=-1)].astype(np.uint8)
    labels[np.sqrt(nearest[..., 1]) - np.sqrt(nearest[..., 0]) < 1.5] = 255
    return labels


# -- pixel values ------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("mode", MODES)
def test_photos_match_transformers(hf, size, mode):
    image = photo(*size, mode)
    ours = SegformerImageProcessor()(image)["pixel_values"]
    # transformers refuses non-RGB modes unless asked to convert; for RGB both calls agree.
    theirs, _ = hf_run(hf, image, do_convert_rgb=(mode != "RGB") or None)
    assert ours.shape == (1, 512, 512, 3) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=ATOL)


@pytest.mark.parametrize("mode", ["CMYK", "P+transparency"])
def test_more_modes_match_transformers(hf, mode):
    image = photo(333, 517, mode)
    assert image.mode == mode.split("+")[0]
    ours = SegformerImageProcessor()(image)["pixel_values"]
    theirs, _ = hf_run(hf, image, do_convert_rgb=True)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=ATOL)


def test_batches_and_options_match_transformers(hf):
    images = [photo(333, 517, seed=s) for s in range(3)]
    arrays = np.stack([np.asarray(im) for im in images])          # (3, 333, 517, 3) uint8
    proc = SegformerImageProcessor()
    theirs, _ = hf_run(hf, images)
    for given in (images, arrays, list(arrays), tuple(images)):
        np.testing.assert_allclose(proc(given)["pixel_values"], theirs, rtol=0, atol=ATOL)
    # non-default options, per call and as fields
    opts = dict(size={"height": 256, "width": 320}, resample=PIL.Image.Resampling.BICUBIC,
                image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], rescale_factor=1 / 127.5)
    theirs, _ = hf_run(hf, images, **opts)
    np.testing.assert_allclose(proc(images, **opts)["pixel_values"], theirs, rtol=0, atol=ATOL)
    np.testing.assert_allclose(SegformerImageProcessor(**opts)(images)["pixel_values"], theirs,
                               rtol=0, atol=ATOL)
    for flags in (dict(do_normalize=False), dict(do_rescale=False), dict(do_resize=False)):
        theirs, _ = hf_run(hf, images, **flags)
        np.testing.assert_allclose(proc(images, **flags)["pixel_values"], theirs, rtol=0,
                                   atol=ATOL)


def test_arrays_of_other_dtypes_and_channels_match_transformers(hf):
    rgb = np.asarray(photo(50, 70))
    rgba = np.asarray(photo(50, 70, "RGBA"))
    proc = SegformerImageProcessor(size={"height": 64, "width": 96})
    hf64 = dict(size={"height": 64, "width": 96})
    cases = [
        (rgb.astype(np.float32), {}),                         # 0..255 as floats
        (rgb.astype(np.int64), {}),
        (rgba, dict(do_convert_rgb=True)),                    # composited onto white
        (rgba.astype(np.float32) / 255, dict(do_convert_rgb=True, do_rescale=False)),
        (rgb[..., :1], dict(do_convert_rgb=True)),            # (H, W, 1)
        (rgb.astype(np.float64) / 255, dict(do_rescale=False)),
    ]
    for image, kwargs in cases:
        theirs, _ = hf_run(hf, image, **hf64, **kwargs)
        ours = proc(image, **{k: v for k, v in kwargs.items() if k != "do_convert_rgb"})
        np.testing.assert_allclose(ours["pixel_values"], theirs, rtol=0, atol=ATOL)
    # A (H, W) array is a grayscale image (transformers cannot batch those: compare to (H, W, 1)).
    np.testing.assert_array_equal(proc(rgb[..., 0])["pixel_values"],
                                  proc(rgb[..., :1])["pixel_values"])


def test_unit_range_floats_are_rescaled_twice_like_transformers(hf):
    image = np.asarray(photo(50, 70)).astype(np.float32) / 255
    theirs, _ = hf_run(hf, image)
    with pytest.warns(UserWarning, match="do_rescale=False"):
        ours = SegformerImageProcessor()(image)["pixel_values"]
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=ATOL)


def test_sixteen_bit_images_are_scaled_to_eight_bit():
    # transformers' convert("RGB") saturates 16-bit data at 255; here it is scaled instead.
    gray8 = np.asarray(photo(50, 70, "L"))
    gray16 = gray8.astype(np.uint16) * 257                     # 255 * 257 = 65535
    proc = SegformerImageProcessor(size={"height": 40, "width": 60})
    expected = proc(PIL.Image.fromarray(gray8))["pixel_values"]
    image16 = PIL.Image.fromarray(gray16)
    assert image16.mode == "I;16"
    np.testing.assert_array_equal(proc(image16)["pixel_values"], expected)
    np.testing.assert_array_equal(proc(gray16)["pixel_values"], expected)


def test_pil_images_use_images_to_rgb_but_modes_i_and_f_follow_transformers(hf):
    """PIL modes other than I and F are converted by ``images.to_rgb`` (what the datasets and
    ``predict`` use); I and F are read as arrays, so 8-bit data in them equals transformers."""
    from segformer_jax import images
    proc = SegformerImageProcessor(size={"height": 40, "width": 60})
    for mode in ("RGBA", "P+transparency", "CMYK", "L"):
        image = photo(50, 70, mode)
        np.testing.assert_array_equal(proc(image)["pixel_values"],
                                      proc(images.to_rgb(image))["pixel_values"])
    gray = np.asarray(photo(50, 70, "L"))
    hf40 = dict(size={"height": 40, "width": 60}, do_convert_rgb=True)
    for image in (PIL.Image.fromarray(gray.astype(np.int32), "I"),
                  PIL.Image.fromarray(gray.astype(np.float32), "F")):
        ours = proc(image)["pixel_values"]
        np.testing.assert_array_equal(ours, proc(np.asarray(image))["pixel_values"])
        np.testing.assert_allclose(ours, hf_run(hf, image, **hf40)[0], rtol=0, atol=ATOL)
        np.testing.assert_array_equal(ours, proc(images.to_rgb(image))["pixel_values"])


# -- labels -------------------------------------------------------------------------------


@pytest.mark.parametrize("reduce", [False, True])
def test_labels_match_transformers(hf, reduce):
    sizes = [(333, 517), (50, 70)]
    for h, w in sizes:
        image = photo(h, w)
        labels = label_map(h, w)
        assert {0, 150, 255} <= set(np.unique(labels).tolist())
        masks = [labels, PIL.Image.fromarray(labels), PIL.Image.fromarray(labels).convert("P"),
                 PIL.Image.fromarray(labels.astype(np.uint16)), labels.astype(np.int64)]
        _, theirs = hf_run(hf, image, labels.copy(), do_reduce_labels=reduce)
        for mask in masks:
            out = SegformerImageProcessor(do_reduce_labels=reduce)(image, mask)
            assert out["labels"].shape == (1, 512, 512) and out["labels"].dtype == np.int32
            np.testing.assert_array_equal(out["labels"], theirs)
    # a batch, with a non-default size
    images = [photo(333, 517, seed=s) for s in range(2)]
    masks = np.stack([label_map(333, 517, seed=s) for s in range(2)])
    opts = dict(do_reduce_labels=reduce, size={"height": 128, "width": 200})
    _, theirs = hf_run(hf, images, masks.copy(), **opts)
    np.testing.assert_array_equal(SegformerImageProcessor()(images, masks, **opts)["labels"],
                                  theirs)


def test_reduce_labels_values_and_input_untouched():
    mask = np.array([[0, 1, 2, 150], [253, 254, 255, 7]], dtype=np.uint8)
    before = mask.copy()
    out = SegformerImageProcessor(do_resize=False, do_reduce_labels=True)(
        np.zeros((2, 4, 3), np.uint8), mask)["labels"][0]
    np.testing.assert_array_equal(out, [[255, 0, 1, 149], [252, 253, 255, 6]])
    np.testing.assert_array_equal(mask, before)  # transformers edits numpy masks in place


def test_labels_beyond_eight_bit_resize_like_eight_bit():
    rng = np.random.default_rng(0)
    values = np.array([-1, 0, 3, 255, 256, 1000, 70000])
    index = rng.integers(0, len(values), (37, 53)).astype(np.uint8)
    proc = SegformerImageProcessor(size={"height": 64, "width": 48})
    image = np.zeros((37, 53, 3), np.uint8)
    small = proc(image, index)["labels"]
    big = proc(image, values[index])["labels"]
    np.testing.assert_array_equal(big, values[small])


# -- post-processing ------------------------------------------------------------------------


def test_post_process_matches_transformers(hf):
    import torch
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 32, 40, 19)).astype(np.float32)     # NHWC
    outputs = types.SimpleNamespace(logits=torch.from_numpy(logits.transpose(0, 3, 1, 2)))
    proc = SegformerImageProcessor()
    # target sizes larger and smaller than the 32 x 40 logits, mixed per axis
    for targets in ([(128, 160), (20, 17)], np.array([[7, 300], [33, 41]])):
        theirs = [t.numpy() for t in hf.post_process_semantic_segmentation(
            outputs, target_sizes=[tuple(t) for t in np.asarray(targets).tolist()])]
        for given in (logits, jnp.asarray(logits), types.SimpleNamespace(logits=logits)):
            ours = proc.post_process_semantic_segmentation(given, target_sizes=targets)
            assert len(ours) == 2
            for o, t in zip(ours, theirs):
                # random float logits have no exact ties, so the argmax maps must be equal
                assert o.shape == t.shape and o.dtype == np.int32
                np.testing.assert_array_equal(o, t)
    theirs = hf.post_process_semantic_segmentation(outputs)
    ours = proc.post_process_semantic_segmentation(logits)
    for o, t in zip(ours, theirs):
        np.testing.assert_array_equal(o, t.numpy())


def test_post_process_ade_sized(hf):
    import torch
    logits = np.random.default_rng(1).standard_normal((1, 64, 64, 150)).astype(np.float32)
    outputs = types.SimpleNamespace(logits=torch.from_numpy(logits.transpose(0, 3, 1, 2)))
    theirs = hf.post_process_semantic_segmentation(outputs, target_sizes=[(256, 256)])[0]
    ours = SegformerImageProcessor().post_process_semantic_segmentation(logits, [(256, 256)])[0]
    np.testing.assert_array_equal(ours, theirs.numpy())


# -- preprocessor_config.json ------------------------------------------------------------


def test_defaults_and_json_equal_transformers(tmp_path):
    from transformers import SegformerImageProcessorPil
    for opts in ({}, dict(do_reduce_labels=True, size={"height": 640, "width": 480},
                          resample=3, image_mean=[0.5, 0.4, 0.3], do_normalize=False)):
        SegformerImageProcessorPil(**opts).save_pretrained(tmp_path / "hf")
        ours = SegformerImageProcessor(**opts)
        ours.save_pretrained(tmp_path / "ours")
        hf_text = (tmp_path / "hf" / CONFIG_NAME).read_text()
        assert (tmp_path / "ours" / CONFIG_NAME).read_text() == hf_text   # byte-identical
        assert SegformerImageProcessor.from_pretrained(tmp_path / "hf") == ours
        back = SegformerImageProcessorPil.from_pretrained(tmp_path / "ours")
        assert back.to_dict() == SegformerImageProcessorPil(**opts).to_dict()


def test_round_trip_and_hashable(tmp_path):
    proc = SegformerImageProcessor(size=(256, 320), resample=0, do_reduce_labels=True,
                                   image_std=0.5, rescale_factor=0.01)
    assert proc.size == {"height": 256, "width": 320} and proc.image_std == (0.5, 0.5, 0.5)
    path = proc.save_pretrained(tmp_path / "new" / "dir")
    assert path == tmp_path / "new" / "dir" / CONFIG_NAME
    for source in (tmp_path / "new" / "dir", path, str(path)):
        back = SegformerImageProcessor.from_pretrained(source)
        assert back == proc and hash(back) == hash(proc)
    assert SegformerImageProcessor.from_json_file(path, do_resize=False).do_resize is False
    assert len({proc, SegformerImageProcessor(), SegformerImageProcessor()}) == 2
    with pytest.raises(AttributeError):
        proc.do_resize = False  # frozen
    assert proc.replace(do_resize=False).do_resize is False and proc.do_resize


def test_reads_legacy_hub_config(tmp_path):
    # The shape of the NVIDIA ADE20k checkpoints' file (feature-extractor era): int size,
    # the deprecated reduce_labels, no do_rescale, plus keys this processor does not use.
    legacy = {"do_normalize": True, "do_resize": True,
              "feature_extractor_type": "SegformerFeatureExtractor",
              "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
              "reduce_labels": True, "resample": 2, "size": 512, "processor_class": "X",
              "do_convert_rgb": None, "crop_size": None}
    (tmp_path / CONFIG_NAME).write_text(json.dumps(legacy))
    proc = SegformerImageProcessor.from_pretrained(tmp_path)
    assert proc == SegformerImageProcessor(do_reduce_labels=True)


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    (dict(size={"shortest_edge": 512}), "height"),
    (dict(size={"height": 0, "width": 5}), "positive"),
    (dict(size="big"), "size"),
    (dict(resample=7), "resample"),
    (dict(image_mean=[0.5, 0.5]), "image_mean"),
    (dict(image_std=[1, 0, 1]), "image_std"),
    (dict(do_resize="yes"), "do_resize"),
    (dict(rescale_factor=None), "rescale_factor"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SegformerImageProcessor(**kwargs)


def test_bad_files(tmp_path):
    cases = {
        "not_json.json": "{size: 512",
        "list.json": "[1, 2]",
        "bad_size.json": json.dumps({"size": {"shortest_edge": 512}}),
        "other_model.json": json.dumps({"image_processor_type": "ViTImageProcessor"}),
        "conflict.json": json.dumps({"do_reduce_labels": False, "reduce_labels": True}),
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=name):
            SegformerImageProcessor.from_json_file(tmp_path / name)
    with pytest.raises(ValueError, match="no such"):
        SegformerImageProcessor.from_pretrained(tmp_path / "missing")
    with pytest.raises(ValueError, match="no such"):
        SegformerImageProcessor.from_pretrained(tmp_path)  # a directory without the file


def test_bad_inputs():
    proc = SegformerImageProcessor(size={"height": 16, "width": 16})
    image = np.zeros((10, 12, 3), np.uint8)
    mask = np.zeros((10, 12), np.uint8)
    bad = [
        (lambda: proc(np.zeros(5, np.uint8)), "rank 1"),
        (lambda: proc(np.zeros((1, 1, 4, 4, 3), np.uint8)), "rank 5"),
        (lambda: proc(np.zeros((3, 10, 12), np.uint8)), "channels-last"),
        (lambda: proc([]), "empty"),
        (lambda: proc("cat.png"), "not an image"),
        (lambda: proc(np.full((4, 4, 3), 1000, np.int32)), r"\[0, 255\]"),
        (lambda: proc(np.full((4, 4, 3), 1.5, np.float32) * np.arange(3)), r"\[0, 1\]"),
        (lambda: proc([image, np.zeros((5, 5, 3), np.uint8)], do_resize=False),
         "different sizes"),
        (lambda: proc(image, [mask, mask]), "2 segmentation maps for 1 images"),
        (lambda: proc(image, PIL.Image.new("RGB", (12, 10))), "mode RGB"),
        (lambda: proc(image, mask.astype(np.float32)), "integers"),
        (lambda: proc(image, np.zeros((10, 13), np.uint8)), "10x13"),
        (lambda: proc(image, colour=True), "colour"),
        (lambda: proc.post_process_semantic_segmentation(np.zeros((2, 4, 4))), "shape"),
        (lambda: proc.post_process_semantic_segmentation(np.zeros((2, 4, 4, 3)), [(8, 8)]),
         "1 target sizes"),
        (lambda: proc.post_process_semantic_segmentation(np.zeros((1, 4, 4, 3)), [(8,)]),
         "target size 0"),
    ]
    for call, match in bad:
        with pytest.raises(ValueError, match=match):
            call()
