"""More than three input bands (``model.num_channels``): the model against transformers,
RGB weights inflated to K bands, and K-band images read, normalised and trained on.

Tolerance: ATOL 1e-4 on logits, as tests/test_parity.py argues. Inflation with zero extra
bands adds exact zeros to the first convolution's sums, so the only difference from the
RGB model is the order XLA sums the input channels in (measured below 1e-6): 1e-5.
"""

from __future__ import annotations

import jax
import numpy as np
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
