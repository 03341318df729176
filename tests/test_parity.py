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
from conftest import FAST_COMPILE, build_hf, random_images, torch_forward

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
    # Our side at level 0 (conftest.FAST_COMPILE); the tolerances are unchanged.
    apply = jax.jit(model.apply, compiler_options=FAST_COMPILE)
    encode = jax.jit(encoder.apply, compiler_options=FAST_COMPILE)
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
                _assert_close(jax.jit(scanned.apply, compiler_options=FAST_COMPILE)(variables, images), ref_logits,
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
            logits = jax.jit(model.apply, compiler_options=FAST_COMPILE)(variables, images)
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


@pytest.mark.parametrize("variant", ["b0", "b2"])
def test_hidden_states_and_attentions_match_transformers(variant, tmp_path):
    """``apply_with_outputs`` against transformers' ``output_hidden_states=True,
    output_attentions=True`` at an odd size: every stage's output (ours NHWC, theirs NCHW)
    and every block's attention probabilities (both (N, heads, queries, keys)), unrolled and
    scanned; the logits equal a plain ``apply`` bit for bit (asking changes nothing)."""
    import torch
    config = sj.SegformerConfig.from_variant(variant, num_labels=150)
    torch_model = build_hf(config)
    torch_model.config._attn_implementation = "eager"
    torch_model.save_pretrained(tmp_path / "hub")
    config, variables = sj.from_pretrained(tmp_path / "hub")
    images = random_images(2, 97, 45, seed=3)
    with torch.no_grad():
        ref = torch_model(torch.from_numpy(images.transpose(0, 3, 1, 2)), output_hidden_states=True,
                          output_attentions=True)
    assert len(ref.attentions) == sum(config.depths) and len(ref.hidden_states) == 4
    for scan in (False, True):
        model = sj.SegformerForSemanticSegmentation(config, scan=scan)
        with jax.default_matmul_precision("highest"):
            outputs = jax.jit(lambda v, x, m=model: sj.apply_with_outputs(m, v, x), compiler_options=FAST_COMPILE)
            out = outputs(variables, images)
            plain = jax.jit(model.apply, compiler_options=FAST_COMPILE)(variables, images)
        np.testing.assert_array_equal(out.logits, plain)
        assert len(out.hidden_states) == 4 and len(out.attentions) == sum(config.depths)
        for i, (ours, theirs) in enumerate(zip(out.hidden_states, ref.hidden_states)):
            _assert_close(ours, theirs.numpy().transpose(0, 2, 3, 1), f"{variant} scan={scan} stage {i + 1}")
        for i, (ours, theirs) in enumerate(zip(out.attentions, ref.attentions)):
            _assert_close(ours, theirs.numpy(), f"{variant} scan={scan} block {i} attention")
            np.testing.assert_allclose(np.asarray(ours).sum(-1), 1.0, atol=1e-5)   # rows sum to one


def test_classification_outputs_and_a_plain_apply_forms_no_probabilities(tmp_path):
    """The classifier returns the same encoder outputs; a plain ``apply`` (nothing mutable)
    has no attention-probability tensor in its program (the fused attention only)."""
    import torch
    config = sj.SegformerConfig.from_variant("b0", num_labels=10)
    torch_model = build_hf(config, "image_classification")
    torch_model.config._attn_implementation = "eager"
    torch_model.save_pretrained(tmp_path)
    config, variables = sj.from_pretrained(tmp_path)
    model = sj.SegformerForImageClassification(config)
    images = random_images(1, 64, 48, seed=4)
    with torch.no_grad():
        ref = torch_model(torch.from_numpy(images.transpose(0, 3, 1, 2)), output_hidden_states=True,
                          output_attentions=True)
    with jax.default_matmul_precision("highest"):
        out = sj.apply_with_outputs(model, variables, images)
    _assert_close(out.logits, ref.logits.numpy(), "class logits")
    _assert_close(out.hidden_states[-1], ref.hidden_states[-1].numpy().transpose(0, 2, 3, 1), "stage 4")
    _assert_close(out.attentions[0], ref.attentions[0].numpy(), "block 0 attention")
    plain = jax.jit(model.apply).lower(variables, images).as_text()
    asked = jax.jit(lambda v, x: sj.apply_with_outputs(model, v, x)).lower(variables, images).as_text()
    assert out.attentions[0].shape == (1, 1, 16 * 12, 2 * 1)   # 64×48 / 4; keys reduced 8×8 (VALID)
    # One more softmax (one exponential) per block when asked, none when not.
    extra = asked.count("stablehlo.exponential") - plain.count("stablehlo.exponential")
    assert extra == sum(config.depths)


def test_attention_map_figure(b0_hub_dir, tmp_path):
    """``experiments.attention_map`` on a b0 checkpoint: the map of the centre pixel is the
    image's size, scaled to a maximum of 1, and the figure is the image twice side by side."""
    from experiments import attention_map
    hub_dir, _ = b0_hub_dir
    out = tmp_path / "map.png"
    assert attention_map.main(["--checkpoint", str(hub_dir), "--block", "2", "--size", "96",
                               "--out", str(out)]) == 0
    import PIL.Image
    assert PIL.Image.open(out).size == (2 * 96 + 8, 96)
    config, variables = sj.from_pretrained(hub_dir)
    rgb = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    heat = attention_map.attention_map(config, variables, rgb, 2, (10, 70))
    assert heat.shape == (64, 96) and 0.0 <= heat.min() and heat.max() == 1.0
