"""Large images tile by tile (``predict --mode tiled``, ``segformer_jax.tiles``).

The tiled sweep must give the very mask of whole-image sliding inference (``Segmenter`` in
``slide`` mode on an image already at its test size): it sums the same windows' logits in
the same order, so the masks are compared for equality, across stripe borders, several
windows per batch, a binary model and K bands. Its memory is measured in
experiments/benchmark_tiles.py, not here.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest

import segformer_jax as sj
from segformer_jax.segmenter import Segmenter

TINY = dict(hidden_sizes=(8, 16, 24, 32), num_attention_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1),
            decoder_hidden_size=16)


def _image(h: int, w: int, seed: int = 0, bands: int = 3) -> np.ndarray:
    """Smooth random colours (a blurred noise field), so that classes form regions."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, bands), np.uint8)
    planes = [np.asarray(PIL.Image.fromarray(small[..., k]).resize((w, h), PIL.Image.Resampling.BILINEAR))
              for k in range(bands)]
    return np.stack(planes, -1)


def _segmenter(num_labels=5, num_channels=3, seed=0, **kwargs):
    config = sj.SegformerConfig.from_variant("b0", num_labels=num_labels, num_channels=num_channels, **TINY)
    return Segmenter(config, sj.init_variables(config, seed=seed), **kwargs)


def _tiled(segmenter, image, **kwargs):
    from segformer_jax.tiles import tiled_masks
    out = np.full(image.shape[:2], 999, np.int32)
    crop = segmenter.crop
    for y0, x0, ids in tiled_masks(lambda x: segmenter.inference.windows(segmenter.variables, x),
                                   image, crop, segmenter.stride, segmenter.prepare,
                                   batch_windows=segmenter.batch_windows, **kwargs):
        assert (out[y0:y0 + ids.shape[0], x0:x0 + ids.shape[1]] == 999).all(), "a pixel twice"
        out[y0:y0 + ids.shape[0], x0:x0 + ids.shape[1]] = ids
    assert (out != 999).all(), "a pixel never written"
    return out


@pytest.mark.parametrize("stripe, batch", [(4096, 1), (160, 1), (100, 3)])
def test_tiled_equals_whole_image_sliding(stripe, batch):
    """320 x 448 at --size 320 is its own test size: slide and tiled see the same pixels.
    Stripes of 160 and 100 pixels cut windows (crop 128, stride 96) at their borders."""
    image = _image(320, 448)
    segmenter = _segmenter(size=320, mode="slide", crop=128, stride=96, batch_windows=batch)
    assert segmenter.plan(320, 448)[0] == (320, 448)
    whole = segmenter(image)
    assert len(np.unique(whole)) > 2   # a mask with regions, not one class
    np.testing.assert_array_equal(_tiled(segmenter, image, stripe=stripe), whole)


def test_tiled_binary_and_k_band_models():
    binary = _segmenter(num_labels=1, size=256, mode="slide", crop=96, stride=64)
    image = _image(256, 288, seed=1)
    whole = binary(image)
    assert set(np.unique(whole)) == {0, 1}
    np.testing.assert_array_equal(_tiled(binary, image, stripe=128), whole)

    bands = _segmenter(num_channels=4, size=192, mode="slide", crop=96, stride=72,
                       mean=(100.0, 110.0, 120.0, 90.0), std=(50.0, 55.0, 60.0, 40.0))
    image = _image(192, 256, seed=2, bands=4).astype(np.uint16) * 3
    np.testing.assert_array_equal(_tiled(bands, image, stripe=128), bands(image))


def test_predict_tiled_writes_the_slide_mask_as_a_tiff(tmp_path, capsys):
    """The command line: the mask TIFF (tile by tile, a progress bar on stderr) equals
    --mode slide's PNG; an uncompressed TIFF input is memory-mapped, not read."""
    import tifffile

    from segformer_jax import predict
    from segformer_jax.checkpoint import save_model
    from segformer_jax.tiles import open_image
    config = sj.SegformerConfig.from_variant("b0", num_labels=5, **TINY)
    save_model(tmp_path / "model", config, sj.init_variables(config, seed=0))
    image = _image(320, 448, seed=3)
    PIL.Image.fromarray(image).save(tmp_path / "scene.png")
    tifffile.imwrite(tmp_path / "scene.tif", image, photometric="rgb")
    assert isinstance(open_image(tmp_path / "scene.tif", 3), np.memmap)
    common = ["--checkpoint", str(tmp_path / "model"), "--size", "320", "--crop", "128",
              "--stride", "96"]
    assert predict.main([str(tmp_path / "scene.png"), *common, "--out", str(tmp_path / "slide"),
                         "--mode", "slide"]) == 0
    assert predict.main([str(tmp_path / "scene.tif"), *common, "--out", str(tmp_path / "tiled"),
                         "--mode", "tiled"]) == 0
    err = capsys.readouterr().err
    assert "scene.tif: windows [##############################] 100% 15/15" in err  # 3 x 5 windows
    tiled = tifffile.imread(tmp_path / "tiled/scene_mask.tif")
    np.testing.assert_array_equal(tiled, np.asarray(PIL.Image.open(tmp_path / "slide/scene_mask.png")))
    assert not list((tmp_path / "tiled").glob(".*.tmp-*"))   # files.replacing removed it


def test_write_mask_tiff_leaves_nothing_on_failure(tmp_path):
    from segformer_jax.tiles import write_mask_tiff

    def blocks():
        yield 0, 0, np.ones((4, 8), np.uint8)
        raise RuntimeError("the model failed")

    with pytest.raises(RuntimeError):
        write_mask_tiff(tmp_path / "m.tif", blocks(), 8, 8)
    assert list(tmp_path.iterdir()) == []


def test_a_stride_larger_than_the_crop_is_refused(tmp_path, monkeypatch):
    """``predict --mode tiled --crop 32 --stride 60`` wrote class 0 wherever no window
    reached (a division by a count of 0) and exited 0. The command refuses it before it reads
    the checkpoint; ``tiled_masks`` itself refuses it, and any windows that leave a gap."""
    from segformer_jax import predict, tiles
    from segformer_jax.errors import InputError
    from segformer_jax.inference import Window
    image = _image(90, 130)
    np.save(tmp_path / "scene.npy", image)
    with pytest.raises(SystemExit) as exit_info:
        predict.main([str(tmp_path / "scene.npy"), "--checkpoint", str(tmp_path / "absent"),
                      "--out", str(tmp_path / "out"), "--mode", "tiled", "--crop", "32",
                      "--stride", "60"])
    assert exit_info.value.code == 2 and not (tmp_path / "out").exists()

    def never(x):
        raise AssertionError("no window may run")

    with pytest.raises(InputError, match=r"stride 60 is larger than the crop 32"):
        list(tiles.tiled_masks(never, image, 32, 60, lambda c: c.astype(np.float32)))
    gappy = [Window(0, 0, 32, 32), Window(0, 40, 32, 72)]   # columns 32-39 in no window
    monkeypatch.setattr(tiles, "slide_windows", lambda *args: gappy)
    with pytest.raises(InputError, match=r"leave column 32 of a 32x72 image uncovered"):
        list(tiles.tiled_masks(never, image[:32, :72], 32, 40, lambda c: c.astype(np.float32)))


def test_predict_tiled_reports_bad_npy_files_and_goes_on(tmp_path, capsys):
    """Junk ``.npy`` files (random bytes, a truncated file, pickled objects, the wrong shape,
    strings, complex numbers) each give one error line naming the file and what was expected;
    the good image among them is still segmented, and the exit status is 1."""
    import tifffile

    from segformer_jax import predict
    from segformer_jax.checkpoint import save_model
    config = sj.SegformerConfig.from_variant("b0", num_labels=5, **TINY)
    save_model(tmp_path / "model", config, sj.init_variables(config, seed=0))
    good = tmp_path / "good.npy"
    np.save(good, _image(64, 96))
    bad = {"random.npy": "not a .npy file (no numpy header)",
           "truncated.npy": "cannot read it as a .npy array",
           "objects.npy": "cannot read it as a .npy array",
           "flat.npy": "an image of shape (5,); the model takes (H, W, 3)",
           "text.npy": "an array of dtype <U1; expected an (H, W, 3) array of integers or floats",
           "complex.npy": "an array of dtype complex64; expected an (H, W, 3) array"}
    (tmp_path / "random.npy").write_bytes(np.random.default_rng(0).bytes(3000))
    (tmp_path / "truncated.npy").write_bytes(good.read_bytes()[:100])
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None], dtype=object))
    np.save(tmp_path / "flat.npy", np.zeros(5, np.uint8))
    np.save(tmp_path / "text.npy", np.full((8, 8, 3), "a"))
    np.save(tmp_path / "complex.npy", np.zeros((8, 8, 3), np.complex64))
    out = tmp_path / "out"
    rc = predict.main([*(str(tmp_path / name) for name in bad), str(good), "--checkpoint",
                       str(tmp_path / "model"), "--out", str(out), "--size", "64", "--mode", "tiled"])
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert rc == 1
    assert len(errors) == len(bad), captured.err
    for line, (name, expected) in zip(errors, bad.items()):
        assert line.startswith(f"error: {tmp_path / name}: ") and expected in line, line
    assert "Traceback" not in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["good_mask.tif"]
    assert tifffile.imread(out / "good_mask.tif").shape == (64, 96)
