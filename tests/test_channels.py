"""More than three input bands (``model.num_channels``): the model against transformers,
RGB weights inflated to K bands, and K-band images read, normalised and trained on.

Tolerance: ATOL 1e-4 on logits, as tests/test_parity.py argues. Inflation with zero extra
bands adds exact zeros to the first convolution's sums, so the only difference from the
RGB model is the order XLA sums the input channels in (measured below 1e-6): 1e-5.
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np
import PIL.Image
import pytest
from conftest import build_hf, random_images, torch_forward

import segformer_jax as sj
from segformer_jax.errors import CheckpointError
from segformer_jax.inflate import inflate_input_kernel

ATOL = 1e-4
INFLATION_ATOL = 1e-5
FIRST = "encoder.patch_embeddings.0.proj.weight"


def _logits(config, variables, images):
    with jax.default_matmul_precision("highest"):
        return np.asarray(jax.jit(sj.SegformerForSemanticSegmentation(config).apply)(variables, images))


@pytest.mark.parametrize("bands", [4, 13])
def test_k_band_model_matches_transformers_both_ways(bands, tmp_path):
    """transformers' ``num_channels=K`` checkpoint loads into ours with the same logits, and
    our export loads back into transformers with the same tensors."""
    config = sj.SegformerConfig.from_variant("b0", num_labels=5, num_channels=bands)
    torch_model = build_hf(config, seed=bands)
    torch_model.save_pretrained(tmp_path / "hub")
    loaded, variables = sj.from_pretrained(tmp_path / "hub")
    assert loaded.num_channels == bands and loaded == config
    images = random_images(2, 70, 51, seed=bands, c=bands)
    diff = np.abs(_logits(loaded, variables, images) - torch_forward(torch_model, images)).max()
    assert diff <= ATOL, diff

    import transformers
    sj.save_pretrained(tmp_path / "export", loaded, variables)
    again = transformers.SegformerForSemanticSegmentation.from_pretrained(
        tmp_path / "export", attn_implementation="eager").eval()
    assert again.config.num_channels == bands
    for key, value in torch_model.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[key].numpy(), value.numpy(), err_msg=key)


@pytest.mark.parametrize("bands", [4, 13])
def test_inflated_rgb_model_is_unchanged_when_the_extra_bands_are_zero(b0_hub_dir, bands):
    hub, _ = b0_hub_dir
    config, rgb = sj.from_pretrained(hub)
    inflated_config, variables, report = sj.from_pretrained(hub, num_channels=bands, report=True)
    assert inflated_config.num_channels == bands and report.inflated == (FIRST,)
    assert not report.initialised and not report.dropped
    rgb_kernel = np.asarray(rgb["params"]["encoder"]["patch_embeddings_0"]["proj"]["kernel"])
    kernel = np.asarray(variables["params"]["encoder"]["patch_embeddings_0"]["proj"]["kernel"])
    assert kernel.shape == (7, 7, bands, 32)
    np.testing.assert_array_equal(kernel[:, :, :3], rgb_kernel)  # the RGB filters, bit for bit
    # The rule: each extra band is the mean RGB filter, at the RGB filters' mean norm.
    mean = rgb_kernel.mean(axis=2)
    rgb_norm = np.sqrt((rgb_kernel ** 2).sum(axis=(0, 1))).mean(axis=0)
    for extra in range(3, bands):
        band = kernel[:, :, extra]
        np.testing.assert_allclose(np.sqrt((band ** 2).sum(axis=(0, 1))), rgb_norm, rtol=1e-5)
        cosine = (band * mean).sum(axis=(0, 1)) / np.sqrt((band ** 2).sum((0, 1)) * (mean ** 2).sum((0, 1)))
        np.testing.assert_allclose(cosine, 1.0, rtol=1e-5)

    images = random_images(2, 64, 48, seed=1)
    padded = np.concatenate([images, np.zeros((2, 64, 48, bands - 3), np.float32)], axis=-1)
    diff = np.abs(_logits(inflated_config, variables, padded) - _logits(config, rgb, images)).max()
    assert diff <= INFLATION_ATOL, diff
    # ... and the extra bands do move the output once they carry a signal.
    signal = padded.copy()
    signal[..., 3:] = 1.0
    assert np.abs(_logits(inflated_config, variables, signal) - _logits(config, rgb, images)).max() > 1e-2


def test_one_band_sums_the_rgb_filters_and_two_bands_are_refused(b0_hub_dir):
    hub, _ = b0_hub_dir
    config, rgb = sj.from_pretrained(hub)
    grey_config, grey = sj.from_pretrained(hub, num_channels=1)
    image = random_images(1, 64, 64, seed=2, c=1)
    diff = np.abs(_logits(grey_config, grey, image) - _logits(config, rgb, np.repeat(image, 3, -1))).max()
    assert diff <= INFLATION_ATOL, diff
    with pytest.raises(CheckpointError, match="cannot adapt RGB weights to 2 input channels"):
        sj.from_pretrained(hub, num_channels=2)
    with pytest.raises(CheckpointError, match="has 4 input channels; only 3-channel"):
        inflate_input_kernel(np.zeros((7, 7, 4, 8)), 13)


def test_own_checkpoint_is_inflated_for_a_k_band_run(tmp_path, caplog):
    """``model.init`` from one of our model checkpoints (an RGB fine-tune or an ImageNet
    pretraining run) inflates the same way, and says so."""
    from segformer_jax.checkpoint import encoder_init, save_model
    config = sj.SegformerConfig.from_variant("b0", num_labels=5, hidden_sizes=(8, 16, 24, 32),
                                             num_attention_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1),
                                             decoder_hidden_size=16)
    variables = sj.init_variables(config, seed=0)
    save_model(tmp_path / "rgb", config, variables)
    four = config.replace(num_channels=4)
    with caplog.at_level("WARNING"):
        inflated = encoder_init(tmp_path / "rgb", four, "semantic_segmentation")
    assert "inflated to 4 input channels" in caplog.text
    images = random_images(1, 64, 64, seed=3)
    padded = np.concatenate([images, np.zeros((1, 64, 64, 1), np.float32)], axis=-1)
    diff = np.abs(_logits(four, inflated, padded) - _logits(config, variables, images)).max()
    assert diff <= INFLATION_ATOL, diff


# -- K-band images: reading, building, normalising, training --------------------------


def _band_example(seed: int, bands: int = 4, size: int = 48):
    """uint16 bands of noise; the class ("wet") is bright in the last band only, so a model
    can find it only through that band."""
    from test_binary import rectangles
    rng = np.random.default_rng(seed)
    mask = rectangles(rng, size, 2, 22)
    image = rng.normal(3000, 400, (size, size, bands))
    image[..., -1] += 2500.0 * mask
    return np.clip(image, 0, 65535).astype(np.uint16), mask


def make_band_folder(root, bands: int = 4, train: int = 16, validation: int = 4):
    """Multi-band TIFFs (interleaved and planar alternately) and one band stack directory."""
    import tifffile
    (root / "images").mkdir(parents=True)
    (root / "classes.txt").write_text("dry\nwet\n")
    for split, count, offset in (("train", train, 0), ("validation", validation, 500)):
        for d in ("images", "masks"):
            (root / d / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, mask = _band_example(offset + i, bands)
            if i == 0 and split == "train":   # a stack: the first three bands, then the rest
                stack = root / "images" / split / f"{i:03d}"
                stack.mkdir()
                tifffile.imwrite(stack / "1_rgb.tif", image[..., :3])
                rest = np.moveaxis(image[..., 3:], -1, 0)
                tifffile.imwrite(stack / "2_rest.tif", rest[0] if len(rest) == 1 else rest,
                                 photometric="minisblack",
                                 planarconfig=None if len(rest) == 1 else "separate")
            elif i % 2:
                tifffile.imwrite(root / "images" / split / f"{i:03d}.tif", np.moveaxis(image, -1, 0),
                                 photometric="minisblack", planarconfig="separate")
            else:
                tifffile.imwrite(root / "images" / split / f"{i:03d}.tif", image,
                                 photometric="minisblack", planarconfig="contig")
            PIL.Image.fromarray(mask).save(root / "masks" / split / f"{i:03d}.png")
    return root


def test_bands_are_read_from_tiffs_and_stacks_as_stored(tmp_path):
    from segformer_jax.images import read_bands
    root = make_band_folder(tmp_path / "bands", bands=13, train=3, validation=1)
    for i in range(3):
        expected, _ = _band_example(i, 13)
        path = root / "images/train" / (f"{i:03d}" if i == 0 else f"{i:03d}.tif")
        got = read_bands(path)
        assert got.dtype == np.uint16 and got.shape == (48, 48, 13)
        np.testing.assert_array_equal(got, expected)
    rgba = np.random.default_rng(0).integers(0, 256, (8, 9, 4), np.uint8)
    PIL.Image.fromarray(rgba, "RGBA").save(tmp_path / "rgbn.png")
    np.testing.assert_array_equal(read_bands(tmp_path / "rgbn.png"), rgba)  # RGB + NIR in RGBA
    with pytest.raises(ValueError, match="no such file"):
        read_bands(tmp_path / "missing.tif")


def test_built_band_folder_keeps_the_bands_and_names_a_wrong_count(tmp_path):
    from segformer_jax.data import load_split
    from segformer_jax.errors import DatasetError
    root = make_band_folder(tmp_path / "bands", bands=4, train=3, validation=1)
    split = load_split("folder", "train", data_dir=tmp_path / "tfds", manual_dir=root, num_channels=4)
    assert split.num_channels == 4 and split.class_names == ("dry", "wet")
    for i in range(3):
        expected, mask = _band_example(i, 4)
        np.testing.assert_array_equal(split[i]["image"], expected)
        np.testing.assert_array_equal(split[i]["segmentation_mask"][..., 0], mask)
    with pytest.raises(DatasetError, match=r"000: 4 band\(s\) \(uint16\); model.num_channels=13 expects 13"):
        load_split("folder", "train", data_dir=tmp_path / "tfds", manual_dir=root, num_channels=13)


def test_per_band_normalisation_and_its_config_errors():
    from test_binary import folder_config

    from segformer_jax.data.transforms import EvalTransform, TrainTransform
    from segformer_jax.errors import ConfigError
    from segformer_jax.run_config import normalisation, validate
    image, mask = _band_example(0, 4)
    mean, std = (3000.0, 3000.0, 3000.0, 4000.0), (400.0, 400.0, 400.0, 1200.0)
    out = EvalTransform(img_scale=None, mean=mean, std=std)({"image": image, "label": mask})["image"]
    np.testing.assert_allclose(out, (image.astype(np.float32) - mean) / std, rtol=1e-6, atol=1e-6)
    crop = TrainTransform(img_scale=(48, 48), crop_size=(32, 32), mean=mean, std=std)(
        {"image": image, "label": mask}, np.random.default_rng(0))
    assert crop["image"].shape == (32, 32, 4) and crop["image"].dtype == np.float32

    config = folder_config("--config.model.num_channels=4", "--config.data.mean=(3000,3000,3000,4000)",
                           "--config.data.std=(400,400,400,1200)")
    assert normalisation(config) == (mean, std)
    with pytest.raises(ConfigError, match=r"data.mean and data.std need one value per band "
                                          r"\(model.num_channels=4\); got 0 and 0"):
        validate(folder_config("--config.model.num_channels=4"))
    with pytest.raises(ConfigError, match="data.name='synthetic' has RGB images"):
        validate(folder_config("--config.model.num_channels=4", "--config.data.name=synthetic",
                               "--config.data.mean=(1,1,1,1)", "--config.data.std=(1,1,1,1)"))


@pytest.mark.slow
def test_four_band_folder_trains_on_the_fourth_band(tmp_path):
    """The class is visible in band 4 only: a 4-band run finds it (IoU far above the class's
    pixel share, which "all wet" scores), so the band reaches the model through the builder,
    the transforms, the per-band normalisation and the first kernel."""
    from test_binary import folder_config
    from test_train import TINY_OVERRIDES

    from segformer_jax import train
    root = make_band_folder(tmp_path / "bands", bands=4)
    summary = train.train(folder_config(
        f"--config.data.manual_dir={root}", f"--config.data.data_dir={tmp_path / 'tfds'}",
        "--config.model.num_channels=4", "--config.data.mean=(3000,3000,3000,4000)",
        "--config.data.std=(400,400,400,1200)", "--config.batch_size=4", "--config.total_steps=60",
        "--config.eval_every=60", "--config.checkpoint_every=60",
        "--config.optimizer.learning_rate=0.002", "--config.optimizer.warmup_steps=5",
        "--config.data.num_workers=1", "--config.data.crop_size=(48, 48)",
        "--config.data.img_scale=(48, 48)", "--config.data.eval_scale=(192, 48)",
        "--config.data.eval_size_divisor=32", *TINY_OVERRIDES), tmp_path / "w")
    masks = np.stack([_band_example(500 + i)[1] for i in range(4)])
    assert summary["IoU"][1] > 0.6 > 2 * masks.mean(), (summary["IoU"], masks.mean())

    # evaluate and predict (at one test size: 48 aligned to 32) read the run's data.mean/std
    # from its workdir; predict takes the TIFFs and writes the masks evaluate scores; the Hub
    # export carries the statistics.
    import json

    from segformer_jax import convert, evaluate, predict
    work, out = tmp_path / "w", tmp_path / "eval.json"
    assert evaluate.main(["--checkpoint", str(work), "--dataset", "folder", "--manual-dir", str(root),
                          "--data-dir", str(tmp_path / "tfds"), "--img-scale", "192,48",
                          "--size-divisor", "32", "--json", str(out)]) == 0
    evaluated = json.loads(out.read_text())
    np.testing.assert_array_equal(evaluated["confusion_matrix"], summary["confusion_matrix"])
    assert evaluated["mean"] == [3000, 3000, 3000, 4000]
    tiffs = sorted(str(p) for p in (root / "images/validation").glob("*.tif"))
    assert convert.main(["to-hub", str(work), str(tmp_path / "hub")]) == 0
    hub_stats = json.loads((tmp_path / "hub/preprocessor_config.json").read_text())
    assert hub_stats["image_std"] == [400, 400, 400, 1200] and hub_stats["do_rescale"] is False
    for checkpoint, pred in ((work, tmp_path / "pred"), (tmp_path / "hub", tmp_path / "pred_hub")):
        assert predict.main([*tiffs, "--checkpoint", str(checkpoint), "--out", str(pred),
                             "--size", "48", "--mode", "whole"]) == 0
    predicted = np.stack([np.asarray(PIL.Image.open(tmp_path / "pred" / f"{pathlib.Path(t).stem}_mask.png"))
                          for t in tiffs])
    from_hub = np.stack([np.asarray(PIL.Image.open(tmp_path / "pred_hub" / f"{pathlib.Path(t).stem}_mask.png"))
                         for t in tiffs])
    np.testing.assert_array_equal(from_hub, predicted)
    inter, union = np.sum((predicted == 1) & (masks == 1)), np.sum((predicted == 1) | (masks == 1))
    assert inter / union == pytest.approx(evaluated["per_class"]["wet"]["IoU"], abs=1e-12)


def test_check_reports_the_bands_and_the_line_to_train_with(tmp_path, capsys):
    """data.check on a 4-band folder names the band count and prints the training images'
    per-band mean/std in the verdict's line; a folder mixing band counts is an error."""
    import tifffile

    from segformer_jax.data import check
    root = make_band_folder(tmp_path / "bands", bands=4, train=3, validation=1)
    assert check.main(["--dataset", "folder", "--manual-dir", str(root)]) == 0
    out = capsys.readouterr().out
    stack = np.concatenate([_band_example(i)[0].reshape(-1, 4) for i in range(3)]).astype(np.float64)
    mean = tuple(round(float(v), 3) for v in stack.mean(0))
    assert "4 band(s) uint16 4" in out and "[bands] 4-band images" in out
    assert f"--config.model.num_channels=4 --config.data.mean='{mean}'" in out
    tifffile.imwrite(root / "images/train/001.tif", _band_example(1, 13)[0])
    assert check.main(["--dataset", "folder", "--manual-dir", str(root)]) == 1
    assert "[band-count] the images differ in their bands: 4 band(s): 3" in capsys.readouterr().out


def test_k_band_checkpoint_without_statistics_is_one_error(tmp_path, capsys):
    """predict on a 4-band model checkpoint that carries no per-band mean/std stops with one
    error naming it; a preprocessor_config.json beside it (0..1 units, do_rescale) is read."""
    import json

    import tifffile

    from segformer_jax import predict
    from segformer_jax.checkpoint import normalisation_of, save_model
    config = sj.SegformerConfig.from_variant("b0", num_labels=2, num_channels=4, hidden_sizes=(8, 16, 24, 32),
                                             num_attention_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1),
                                             decoder_hidden_size=16)
    save_model(tmp_path / "model", config, sj.init_variables(config, seed=0))
    tifffile.imwrite(tmp_path / "x.tif", _band_example(0)[0])
    args = [str(tmp_path / "x.tif"), "--checkpoint", str(tmp_path / "model"), "--out", str(tmp_path / "o")]
    assert predict.main(args) == 1
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "a 4-band model, but no per-band mean/std beside it" in err
    (tmp_path / "model/preprocessor_config.json").write_text(json.dumps(
        {"do_rescale": True, "rescale_factor": 1 / 65535, "image_mean": [0.5] * 4, "image_std": [0.25] * 4}))
    mean, std = normalisation_of(tmp_path / "model", 4)
    np.testing.assert_allclose(mean, [32767.5] * 4)
    np.testing.assert_allclose(std, [16383.75] * 4)
    assert predict.main(args) == 0


def test_rgb_only_paths_refuse_a_k_band_model(tmp_path):
    """The demo page (RGB uploads) and the export's uint8-RGB preprocessing name the band
    count instead of failing inside the model."""
    from segformer_jax import export, serve
    from segformer_jax.checkpoint import save_model
    from segformer_jax.errors import InputError
    config = sj.SegformerConfig.from_variant("b0", num_labels=2, num_channels=4, hidden_sizes=(8, 16, 24, 32),
                                             num_attention_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1),
                                             decoder_hidden_size=16)
    save_model(tmp_path / "model", config, sj.init_variables(config, seed=0))
    with pytest.raises(InputError, match="segments RGB uploads; this model takes 4 bands"):
        serve.Page(str(tmp_path / "model"))
    with pytest.raises(InputError, match="--with-preprocessing takes uint8 RGB images.*takes 4 bands"):
        export.check_signature(export.FORMATS["stablehlo"], export.Signature(None, None, True, 4))


def test_rgb_folder_takes_three_band_stacks_and_tiffs(tmp_path, capsys):
    """An RGB folder may hold its images as RGB TIFFs or as stacks of three band files: the
    check finds nothing to say about bands and the builder stores the 8-bit RGB."""
    import tifffile

    from segformer_jax.data import check, load_split
    root = tmp_path / "rgb"
    (root / "images/train/000").mkdir(parents=True)
    (root / "masks/train").mkdir(parents=True)
    (root / "classes.txt").write_text("a\nb\n")
    rgb = np.random.default_rng(0).integers(0, 256, (20, 24, 3), np.uint8)
    mask = (rgb[..., 0] > 127).astype(np.uint8)
    for k, name in enumerate(("1_red.png", "2_green.png", "3_blue.png")):  # stacked in name order
        PIL.Image.fromarray(rgb[..., k]).save(root / "images/train/000" / name)
    tifffile.imwrite(root / "images/train/001.tif", rgb, photometric="rgb")
    for i in range(2):
        PIL.Image.fromarray(mask).save(root / "masks/train" / f"{i:03d}.png")
    assert check.main(["--dataset", "folder", "--manual-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert "band-count" not in out and "num_channels" not in out
    split = load_split("folder", "train", data_dir=tmp_path / "tfds", manual_dir=root)
    for i in range(2):
        np.testing.assert_array_equal(split[i]["image"], rgb)
