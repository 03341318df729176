"""Our Flax SegFormer against transformers' PyTorch SegFormer, for every variant.

Tolerance 1e-4 (absolute, on logits of magnitude ~1–10): both sides compute in float32
with full-precision matmuls, so the only differences are summation order (the folded decode
head, the shifted-add depthwise conv) — measured at ~1e-6 for b0 and a few 1e-6 for b5.
1e-4 leaves room for that to grow with depth while still catching any real mistake (a
wrong eps, an approximate GELU, a transposed kernel or a swapped concat move logits by
1e-3 … 1).
"""

import jax
import numpy as np
import pytest
from conftest import build_hf, random_images, torch_forward

import segformer_jax as sj

ATOL = 1e-4
SIZES = [(64, 64), (97, 45), (40, 130)]  # square, odd, non-multiples of 32, both aspects
VARIANTS = ["b0", "b1", "b2", pytest.param("b3", marks=pytest.mark.slow),
            pytest.param("b4", marks=pytest.mark.slow), pytest.param("b5", marks=pytest.mark.slow)]


def _assert_close(ours, ref, what):
    ours = np.asarray(ours)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != {ref.shape}"
    diff = np.abs(ours - ref).max()
    assert diff <= ATOL, f"{what}: max abs diff {diff:.2e} > {ATOL}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_semantic_segmentation_matches_transformers(variant, tmp_path):
    config = sj.SegformerConfig.from_variant(variant, num_labels=150)
    torch_model = build_hf(config)
    torch_model.save_pretrained(tmp_path / "hub")
    loaded_config, variables = sj.from_pretrained(tmp_path / "hub")
    assert loaded_config == config

    model = sj.SegformerForSemanticSegmentation(loaded_config)
    encoder = sj.MixTransformer(loaded_config)
    apply, encode = jax.jit(model.apply), jax.jit(encoder.apply)
    # b3…b5 differ from b2 only in depth and width: the shape logic of the three sizes is
    # b0…b2's to prove, and the deep variants run the odd size (and the scanned blocks).
    sizes = SIZES if variant in ("b0", "b1", "b2") else SIZES[1:2]
    for i, (h, w) in enumerate(sizes):
        images = random_images(2, h, w, seed=i)
        ref_logits, ref_hidden = torch_forward(torch_model, images, hidden_states=True)
        with jax.default_matmul_precision("highest"):
            logits = apply(variables, images)
            features = encode({"params": variables["params"]["encoder"]}, images)
        assert logits.dtype == np.float32
        assert logits.shape == (2, -(-h // 4), -(-w // 4), 150)
        _assert_close(logits, ref_logits, f"{variant} {h}x{w} logits")
        for stage, (ours, ref) in enumerate(zip(features, ref_hidden)):
            _assert_close(ours, ref, f"{variant} {h}x{w} stage {stage + 1} features")
        if (h, w) == SIZES[1]:  # the same weights with each stage's blocks under nn.scan
            scanned = sj.SegformerForSemanticSegmentation(loaded_config, scan=True)
            with jax.default_matmul_precision("highest"):
                _assert_close(jax.jit(scanned.apply)(variables, images), ref_logits,
                              f"{variant} {h}x{w} logits, scanned blocks")

    # Export back: transformers loads our files into the very same tensors, bit for bit.
    sj.save_pretrained(tmp_path / "export", loaded_config, variables)
    import transformers
    again = transformers.SegformerForSemanticSegmentation.from_pretrained(
        tmp_path / "export", attn_implementation="eager").eval()
    _assert_same_weights(again, torch_model)
    images = random_images(1, 72, 56, seed=9)
    _assert_close(torch_forward(again, images), torch_forward(torch_model, images), "re-import")


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for key in sa:
        np.testing.assert_array_equal(sa[key].numpy(), sb[key].numpy(), err_msg=key)


@pytest.mark.parametrize("variant", ["b0", pytest.param("b2", marks=pytest.mark.slow)])
def test_image_classification_matches_transformers(variant, tmp_path):
    config = sj.SegformerConfig.from_variant(variant, num_labels=10)
    torch_model = build_hf(config, "image_classification")
    torch_model.save_pretrained(tmp_path)
    loaded_config, variables = sj.from_pretrained(tmp_path)
    model = sj.SegformerForImageClassification(loaded_config)
    for i, (h, w) in enumerate(SIZES):
        images = random_images(3, h, w, seed=i)
        with jax.default_matmul_precision("highest"):
            logits = jax.jit(model.apply)(variables, images)
        _assert_close(logits, torch_forward(torch_model, images), f"{variant} {h}x{w} class logits")

    sj.save_pretrained(tmp_path / "export", loaded_config, variables)
    import transformers
    again = transformers.SegformerForImageClassification.from_pretrained(
        tmp_path / "export", attn_implementation="eager").eval()
    _assert_same_weights(again, torch_model)


PAPER_PARAMS_M = {"b0": 3.8, "b1": 13.7, "b2": 27.5, "b3": 47.3, "b4": 64.1, "b5": 84.7}
# The issue's 3,753,207 for b0 counts transformers' state dict: the 3,752,694 parameters plus
# BatchNorm's running mean and variance (2 × 256) and its 0-d num_batches_tracked counter.
STATE_DICT_ELEMENTS = {"b0": 3_753_207}


@pytest.mark.parametrize("variant", list(PAPER_PARAMS_M))
def test_parameter_counts_equal_transformers_and_paper(variant):
    import transformers
    from conftest import hf_config
    config = sj.SegformerConfig.from_variant(variant, num_labels=150)
    shapes = jax.eval_shape(sj.SegformerForSemanticSegmentation(config).init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, 64, 64, 3), np.float32))
    count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))  # noqa: E731
    ours = count(shapes["params"])
    with __import__("torch").device("meta"):
        torch_model = transformers.SegformerForSemanticSegmentation(hf_config(config))
    assert ours == sum(p.numel() for p in torch_model.parameters())
    state_dict = sum(v.numel() for v in torch_model.state_dict().values())
    assert ours + count(shapes["batch_stats"]) + 1 == state_dict
    assert round(ours / 1e6, 1) == PAPER_PARAMS_M[variant]
    if variant in STATE_DICT_ELEMENTS:
        assert state_dict == STATE_DICT_ELEMENTS[variant]
