"""The training recipe: mmcv's schedule, the parameter groups, and the loss against transformers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import build_hf, random_images

import segformer_jax as sj
from segformer_jax.losses import segmentation_loss
from segformer_jax.optim import Recipe, make_optimizer, param_groups, poly_with_warmup


def mmcv_lr(step, base=6e-5, total=160_000, warmup=1500, ratio=1e-6, power=1.0):
    """mmcv PolyLrUpdaterHook.get_lr + get_warmup_lr('linear'), written out in plain Python."""
    regular = (base - 0.0) * (1 - step / total) ** power + 0.0
    if step < warmup:
        k = (1 - step / warmup) * (1 - ratio)
        return regular * (1 - k)
    return regular


@pytest.mark.parametrize("step", [0, 1, 1499, 1500, 80_000, 159_999, 160_000])
def test_schedule_equals_mmcv(step):
    recipe = Recipe()
    assert float(poly_with_warmup(recipe)(step)) == pytest.approx(mmcv_lr(step), rel=1e-6, abs=1e-16)
    head = poly_with_warmup(recipe, recipe.learning_rate * recipe.head_lr_mult)
    assert float(head(step)) == pytest.approx(mmcv_lr(step, base=6e-4), rel=1e-6, abs=1e-16)


def test_schedule_values():
    s = poly_with_warmup(Recipe())
    assert float(s(0)) == pytest.approx(6e-5 * 1e-6, rel=1e-5)  # warmup starts at ratio × lr
    assert float(s(1500)) == pytest.approx(6e-5 * (1 - 1500 / 160_000), rel=1e-6)
    assert float(s(160_000)) == 0.0


PVT_RECIPE = dict(schedule="cosine", no_decay="1d", learning_rate=1e-3, weight_decay=0.05,
                  warmup_lr=1e-6, min_lr=1e-5, warmup_steps=5 * 1251, total_steps=300 * 1251,
                  head_lr_mult=1.0)


@pytest.mark.parametrize("step", [0, 1, 3127, 6254, 6255, 187_650, 375_299, 375_300])
def test_cosine_schedule_equals_timm(step):
    """Warmup start / middle / end, the cosine's middle and end, against timm's
    CosineLRScheduler as PVT v2 builds it (here stepped per optimiser step)."""
    import torch
    from timm_oracle import import_timm

    import_timm()
    from timm.scheduler import CosineLRScheduler

    from segformer_jax.optim import learning_rate

    recipe = Recipe(**PVT_RECIPE)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=recipe.learning_rate)
    timm_schedule = CosineLRScheduler(opt, t_initial=recipe.total_steps, lr_min=recipe.min_lr,
                                      warmup_lr_init=recipe.warmup_lr, warmup_t=recipe.warmup_steps,
                                      cycle_limit=1, t_in_epochs=False)
    expected = timm_schedule._get_lr(step)[0]
    assert float(learning_rate(recipe)(step)) == pytest.approx(expected, rel=2e-6, abs=1e-12)


def test_no_weight_decay_on_one_dimensional_parameters():
    """timm's rule on the classification model: biases and norm scales keep their values
    under zero gradients, kernels (incl. the depthwise conv and the patch embedding) decay."""
    config = sj.SegformerConfig.from_variant("b0", num_labels=5)
    params = sj.init_variables(config, task="image_classification")["params"]
    recipe = Recipe(**{**PVT_RECIPE, "warmup_steps": 0})
    tx = make_optimizer(recipe)
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    flat = {"/".join(k.key for k in path): (np.asarray(u), np.asarray(p))
            for (path, u), p in zip(jax.tree_util.tree_flatten_with_path(updates)[0],
                                    jax.tree.leaves(params))}
    exempt = ["encoder/block_0_0/layer_norm_1/scale", "encoder/block_0_0/layer_norm_1/bias",
              "encoder/block_0_0/attention/query/bias", "encoder/layer_norm_3/scale",
              "encoder/patch_embeddings_0/layer_norm/bias", "classifier/bias"]
    decayed = ["encoder/block_0_0/attention/query/kernel", "encoder/block_1_0/mlp/dwconv_kernel",
               "encoder/patch_embeddings_0/proj/kernel", "encoder/block_0_0/attention/sr/kernel",
               "classifier/kernel"]
    lr = recipe.learning_rate * 1.0  # cosine at t = 0 without warmup: the base lr
    for name in exempt:
        np.testing.assert_array_equal(flat[name][0], 0.0, err_msg=name)
    for name in decayed:
        update, value = flat[name]
        np.testing.assert_allclose(update, -lr * recipe.weight_decay * value, rtol=1e-5,
                                   atol=1e-12, err_msg=name)
    assert {n for n, (u, p) in flat.items() if p.ndim <= 1} >= set(exempt)
    assert all(not np.any(u) for u, p in flat.values() if p.ndim <= 1)


EXPECTED_GROUPS = {
    "decode_head/batch_norm/scale": "head", "decode_head/linear_fuse": "head",
    "decode_head/classifier/kernel": "head", "decode_head/linear_c_2_bias": "head",
    "encoder/block_0_0/layer_norm_1/scale": "norm", "encoder/block_1_1/layer_norm_2/bias": "norm",
    "encoder/block_0_1/attention/layer_norm/scale": "norm",
    "encoder/patch_embeddings_2/layer_norm/bias": "norm", "encoder/layer_norm_3/scale": "norm",
    "encoder/block_0_0/attention/query/kernel": "default", "encoder/block_0_0/attention/query/bias": "default",
    "encoder/block_2_0/mlp/dwconv_kernel": "default", "encoder/patch_embeddings_0/proj/kernel": "default",
    "encoder/block_0_0/attention/sr/kernel": "default",
}


def test_parameter_groups_by_name():
    config = sj.SegformerConfig.from_variant("b0", num_labels=4)
    params = jax.eval_shape(sj.SegformerForSemanticSegmentation(config).init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))["params"]
    flat = {"/".join(k.key for k in path): group
            for path, group in jax.tree_util.tree_flatten_with_path(param_groups(params))[0]}
    for name, group in EXPECTED_GROUPS.items():
        assert flat[name] == group, name
    assert {g for n, g in flat.items() if n.startswith("decode_head")} == {"head"}
    assert all(g == "norm" for n, g in flat.items() if "norm" in n and n.startswith("encoder"))


def test_optimizer_applies_groups():
    """With zero gradients AdamW only decays: -lr·wd·p, ×10 on the head, nothing on norms."""
    recipe = Recipe(warmup_steps=0, total_steps=100)
    params = {"decode_head": {"linear_fuse": jnp.ones(3)},
              "encoder": {"layer_norm_0": {"scale": jnp.ones(3)}, "block_0_0": {"kernel": jnp.ones(3)}}}
    tx = make_optimizer(recipe)
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    lr, wd = recipe.learning_rate, recipe.weight_decay
    np.testing.assert_allclose(updates["decode_head"]["linear_fuse"], -10 * lr * wd, rtol=1e-6)
    np.testing.assert_allclose(updates["encoder"]["block_0_0"]["kernel"], -lr * wd, rtol=1e-6)
    np.testing.assert_array_equal(updates["encoder"]["layer_norm_0"]["scale"], 0.0)


def test_loss_equals_transformers(b0_hub_dir):
    import torch
    hub, torch_model = b0_hub_dir
    config, variables = sj.from_pretrained(hub)
    images = random_images(2, 64, 48)
    labels = np.random.default_rng(0).integers(0, 150, (2, 64, 48))
    labels[:, :10] = 255
    with torch.no_grad():
        ref = torch_model(torch.from_numpy(images.transpose(0, 3, 1, 2)),
                          labels=torch.from_numpy(labels)).loss.item()
    with jax.default_matmul_precision("highest"):
        logits = jax.jit(sj.SegformerForSemanticSegmentation(config).apply)(variables, images)
    assert float(segmentation_loss(logits, labels)) == pytest.approx(ref, rel=1e-5)
    # mmseg 0.x divides by every pixel, ignored ones included.
    valid = (labels != 255).mean()
    assert float(segmentation_loss(logits, labels, reduction="all")) == pytest.approx(ref * valid, rel=1e-5)


def test_binary_loss_equals_transformers(tmp_path):
    import torch
    config = sj.SegformerConfig.from_variant("b0", num_labels=1, hidden_sizes=(8, 16, 24, 32),
                                             num_attention_heads=(1, 2, 3, 4), decoder_hidden_size=16)
    torch_model = build_hf(config)
    torch_model.save_pretrained(tmp_path)
    config, variables = sj.from_pretrained(tmp_path)
    images = random_images(2, 40, 40)
    labels = np.random.default_rng(1).integers(0, 2, (2, 40, 40))
    labels[:, :5] = 255
    with torch.no_grad():
        ref = torch_model(torch.from_numpy(images.transpose(0, 3, 1, 2)),
                          labels=torch.from_numpy(labels)).loss.item()
    with jax.default_matmul_precision("highest"):
        logits = jax.jit(sj.SegformerForSemanticSegmentation(config).apply)(variables, images)
    assert float(segmentation_loss(logits, labels)) == pytest.approx(ref, rel=1e-5)


def _plain_cross_entropy(logits, labels):
    """The loss written the plain way: resize, log-softmax, pick (JAX differentiates it)."""
    from segformer_jax.models.ops import resize_axis
    up = resize_axis(resize_axis(logits, 1, labels.shape[1]), 2, labels.shape[2])
    valid = (labels >= 0) & (labels < logits.shape[-1])
    ce = optax.softmax_cross_entropy_with_integer_labels(up, jnp.where(valid, labels, 0))
    return jnp.where(valid, ce, 0.0)


@pytest.mark.parametrize("logit_shape, label_hw, rows", [
    ((2, 7, 9, 5), (29, 31), 1), ((2, 7, 9, 5), (29, 31), 4), ((2, 7, 9, 5), (29, 31), None),
    ((1, 12, 10, 3), (5, 7), 2),          # labels smaller than the logits: a downsampling
    ((1, 8, 8, 150), (32, 32), 3)])       # 150 classes, bands that do not divide the height
def test_upsampled_cross_entropy_equals_the_plain_form(logit_shape, label_hw, rows):
    """Per-pixel values and the gradient (softmax − one-hot through the transposed resize)
    equal JAX's automatic gradient of the plain form, to float32 rounding; ignored pixels
    (255, and -1) give 0 and no gradient."""
    from segformer_jax.losses import upsampled_cross_entropy
    rng = np.random.default_rng(4)
    logits = jnp.asarray(3 * rng.standard_normal(logit_shape, dtype=np.float32))
    labels = rng.integers(0, logit_shape[-1], (logit_shape[0], *label_hw)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.2] = 255
    labels[0, 0, :2] = -1
    labels = jnp.asarray(labels)
    weights = jnp.asarray(rng.random(labels.shape, dtype=np.float32))

    ours = upsampled_cross_entropy(logits, labels, rows)
    np.testing.assert_allclose(ours, _plain_cross_entropy(logits, labels), rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(jnp.where(labels == 255, ours, 0)).max()) == 0.0
    grad = jax.jit(jax.grad(lambda v: jnp.sum(upsampled_cross_entropy(v, labels, rows) * weights)))(logits)
    ref = jax.grad(lambda v: jnp.sum(_plain_cross_entropy(v, labels) * weights))(logits)
    np.testing.assert_allclose(grad, ref, rtol=1e-5, atol=2e-6)


def test_band_rows_per_backend():
    from segformer_jax.losses import band_rows
    assert band_rows(2, 512, 512, 150, "cpu") == 6        # 2·6·512·150 ≈ 2^20 floats
    assert band_rows(64, 512, 512, 150, "cpu") == 1
    assert band_rows(2, 512, 512, 150, "gpu") == 512      # one band: big kernels
