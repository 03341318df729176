"""Model behaviour beyond parity: training mode, dtypes, remat, input checks, the config."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FAST_COMPILE, random_images

import segformer_jax as sj

TINY = sj.SegformerConfig.from_variant("b0", num_labels=5, hidden_sizes=(8, 16, 24, 32), depths=(1, 1, 1, 1),
                                       num_attention_heads=(1, 2, 3, 4), decoder_hidden_size=16,
                                       drop_path_rate=0.3, hidden_dropout_prob=0.1,
                                       attention_probs_dropout_prob=0.1)


class Jitted:
    """``model.apply`` under ``jax.jit`` (eager Flax dispatches op by op: minutes on CPU), at
    level 0 (``conftest.FAST_COMPILE``): these tests compare programs of their own making."""

    def __init__(self, model):
        self.apply = jax.jit(model.apply, static_argnames=("train", "mutable"), compiler_options=FAST_COMPILE)


@pytest.fixture(scope="module")
def tiny():
    return Jitted(sj.SegformerForSemanticSegmentation(TINY)), sj.init_variables(TINY, seed=1)


def test_eval_is_deterministic_and_needs_no_rng(tiny):
    model, variables = tiny
    images = random_images(2, 40, 56)
    a = model.apply(variables, images)
    b = model.apply(variables, images, train=False)
    np.testing.assert_array_equal(a, b)


def test_train_mode_uses_dropout_rng_and_updates_batch_stats(tiny):
    model, variables = tiny
    images = random_images(2, 40, 56)
    run = lambda seed: model.apply(variables, images, train=True, rngs={"dropout": jax.random.key(seed)},  # noqa: E731
                                   mutable="batch_stats")
    (a, stats_a), (b, _), (a2, _) = run(0), run(1), run(0)
    assert not np.allclose(a, b), "dropout / drop path should make train outputs depend on the rng"
    np.testing.assert_array_equal(a, a2)
    old = variables["batch_stats"]["decode_head"]["batch_norm"]
    new = stats_a["batch_stats"]["decode_head"]["batch_norm"]
    assert not np.allclose(old["mean"], new["mean"]) and not np.allclose(old["var"], new["var"])
    with pytest.raises(Exception, match="dropout"):
        model.apply(variables, images, train=True, mutable="batch_stats")


def test_batch_norm_running_stats_follow_torch():
    """Running mean/var: momentum 0.1 and the *unbiased* batch variance, as BatchNorm2d."""
    import torch

    from segformer_jax.models.head import BatchNorm
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 4)).astype(np.float32) * 3 + 1
    bn = BatchNorm()
    variables = bn.init(jax.random.key(0), x, train=False)
    y, updates = bn.apply(variables, x, train=True, mutable=["batch_stats"])
    ref = torch.nn.BatchNorm2d(4).train()
    ref_y = ref(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(y, ref_y, atol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["mean"], ref.running_mean.numpy(), rtol=1e-6)
    np.testing.assert_allclose(updates["batch_stats"]["var"], ref.running_var.numpy(), rtol=1e-6)


def test_batch_norm_backward_equals_autodiff():
    """The hand-written training-mode BatchNorm backward (including the cotangents of the
    batch statistics) against JAX's gradient of the same forward arithmetic."""
    from segformer_jax.models.head import _batch_norm_train_fwd, batch_norm_train

    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.standard_normal((2, 5, 7, 6), dtype=np.float32) * 3 + 1)
    scale, bias = (jnp.asarray(rng.standard_normal(6, dtype=np.float32)) for _ in range(2))
    gs = [jnp.asarray(rng.standard_normal(s, dtype=np.float32)) for s in (x.shape, (6,), (6,))]

    def loss(fn):
        return lambda *a: sum(jnp.sum(o * g) for o, g in zip(fn(*a, 1e-5), gs))

    ours = jax.grad(loss(batch_norm_train), argnums=(0, 1, 2))(x, scale, bias)
    automatic = jax.grad(loss(lambda *a: _batch_norm_train_fwd(*a)[0]), argnums=(0, 1, 2))(x, scale, bias)
    for a, b in zip(ours, automatic):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


def test_relu_dropout_is_flax_dropout_of_relu_with_its_gradient():
    """``ReluDropout`` draws flax's mask (same module path, same rng) and computes the same
    values; its stored-output backward equals autodiff of ``nn.Dropout(nn.relu(x))``
    bit for bit (both are one select of ``g / keep_prob``)."""
    import flax.linen as nn

    from segformer_jax.models.head import ReluDropout

    x = jnp.asarray(np.random.default_rng(7).standard_normal((2, 9, 11, 8), dtype=np.float32))
    g = jnp.asarray(np.random.default_rng(8).standard_normal(x.shape, dtype=np.float32))
    rngs = {"dropout": jax.random.key(3)}

    def flax_reference(x):
        return nn.Dropout(0.3, name="Dropout_0")(nn.relu(x), deterministic=False)

    class Ours(nn.Module):
        @nn.compact
        def __call__(self, x):
            return ReluDropout(0.3, name="Dropout_0")(x, deterministic=False)

    class Reference(nn.Module):
        @nn.compact
        def __call__(self, x):
            return flax_reference(x)

    def value_and_vjp(module):  # jitted, as in the train step (eager division rounds apart)
        def f(x, g):
            out, vjp = jax.vjp(lambda x: module.apply({}, x, rngs=rngs), x)
            return out, vjp(g)[0]
        return jax.jit(f)(x, g)

    (out_ours, grad_ours), (out_ref, grad_ref) = value_and_vjp(Ours()), value_and_vjp(Reference())
    outs, grads = (out_ours, out_ref), (grad_ours, grad_ref)
    assert 0 < float(jnp.mean(outs[0] == 0)) < 1  # some units dropped, some kept
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(grads[0], grads[1])
    eval_out = ReluDropout(0.3).apply({}, x, deterministic=True)
    np.testing.assert_array_equal(eval_out, nn.relu(x))


def test_bfloat16_compute_keeps_float32_params_and_logits():
    config = sj.SegformerConfig.from_variant("b0", num_labels=7)
    variables = sj.init_variables(config)
    images = random_images(1, 64, 96)
    ref = Jitted(sj.SegformerForSemanticSegmentation(config)).apply(variables, images)
    out = Jitted(sj.SegformerForSemanticSegmentation(config, dtype=jnp.bfloat16)).apply(variables, images)
    assert out.dtype == jnp.float32
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
    # bf16 keeps 8 mantissa bits (relative step 2^-8 ≈ 4e-3); a dozen roundings per block
    # across 8 blocks give a few percent of the logits' spread, never a different function.
    err = np.abs(np.asarray(out) - np.asarray(ref)).max() / np.abs(np.asarray(ref)).max()
    assert err < 0.05, err
    assert np.corrcoef(np.ravel(out), np.ravel(ref))[0, 1] > 0.999


def test_remat_gives_the_same_gradients(tiny):
    _, variables = tiny
    images = random_images(2, 32, 32)
    def grads(remat):
        model = sj.SegformerForSemanticSegmentation(TINY, remat=remat)
        def loss(params):
            out, _ = model.apply({**variables, "params": params}, images, train=True,
                                 rngs={"dropout": jax.random.key(3)}, mutable=["batch_stats"])
            return jnp.mean(out ** 2)
        return jax.jit(jax.grad(loss), compiler_options=FAST_COMPILE)(variables["params"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads(False), grads(True))


def test_any_input_size(tiny):
    model, variables = tiny
    for h, w in [(1, 1), (33, 17), (5, 200)]:
        assert model.apply(variables, random_images(1, h, w)).shape == (1, -(-h // 4), -(-w // 4), 5)


def test_bad_images_get_one_clear_error(tiny):
    model, variables = tiny
    with pytest.raises(ValueError, match=r"rank-4 array \(N, H, W, 3\).*got shape \(32, 32, 3\)"):
        model.apply(variables, np.zeros((32, 32, 3), np.float32))
    with pytest.raises(ValueError, match=r"1 channels .* num_channels=3.*\(2, 32, 32, 1\)"):
        model.apply(variables, np.zeros((2, 32, 32, 1), np.float32))
    with pytest.raises(ValueError, match="NCHW"):
        model.apply(variables, np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="floating point"):
        model.apply(variables, np.zeros((2, 32, 32, 3), np.uint8))


def test_classification_model():
    config = TINY.replace(num_labels=11)
    model = Jitted(sj.SegformerForImageClassification(config))
    variables = sj.init_variables(config, "image_classification")
    assert model.apply(variables, random_images(4, 50, 30)).shape == (4, 11)


# -- config ---------------------------------------------------------------------------


def test_variants_and_overrides():
    b2 = sj.SegformerConfig.from_variant("b2", num_labels=19)
    assert b2.depths == (3, 4, 6, 3) and b2.decoder_hidden_size == 768 and b2.num_labels == 19
    assert sj.SegformerConfig.from_variant("mit-b5").depths == (3, 6, 40, 3)
    with pytest.raises(sj.ConfigError, match=r"unknown SegFormer variant 'b6'; choose one of \['b0'"):
        sj.SegformerConfig.from_variant("b6")
    with pytest.raises(sj.ConfigError, match=r"unknown SegformerConfig field\(s\) \['hiden_sizes'\]"):
        sj.SegformerConfig.from_variant("b0", hiden_sizes=(1, 2, 3, 4))
    with pytest.raises(sj.ConfigError, match="'depths' has 3 entries but num_encoder_blocks is 4"):
        sj.SegformerConfig(depths=(2, 2, 2))
    with pytest.raises(sj.ConfigError, match="hidden size 160 is not a multiple of its 3 attention heads"):
        sj.SegformerConfig(num_attention_heads=(1, 2, 3, 8))


def test_mix_ffn_without_conv_is_an_ablation_with_no_hub_form(tmp_path):
    from segformer_jax.hub import CheckpointError, save_pretrained
    config = TINY.replace(mix_ffn_conv=False)
    variables = sj.init_variables(config)
    paths = ["/".join(str(k.key) for k in path) for path, _ in
             jax.tree_util.tree_leaves_with_path(variables["params"])]
    assert paths and not [p for p in paths if "dwconv" in p]
    full = sj.init_variables(TINY)
    count = lambda v: sum(x.size for x in jax.tree.leaves(v["params"]))  # noqa: E731
    hidden = [4 * c for c in TINY.hidden_sizes]  # mlp ratio 4, one block per stage
    assert count(full) - count(variables) == sum(10 * h for h in hidden)  # 3x3 kernel + bias
    logits = Jitted(sj.SegformerForSemanticSegmentation(config)).apply(variables, random_images(1, 64, 64))
    assert logits.shape == (1, 16, 16, 5) and np.isfinite(np.asarray(logits)).all()
    # Not a transformers field: written only when False, read back, refused by Hub export.
    assert "mix_ffn_conv" not in TINY.to_dict() and config.to_dict()["mix_ffn_conv"] is False
    config.to_json_file(tmp_path / "config.json")
    assert sj.SegformerConfig.from_json_file(tmp_path / "config.json") == config
    with pytest.raises(CheckpointError, match="mix_ffn_conv=False .* transformers cannot represent it"):
        save_pretrained(tmp_path / "hub", config, variables)
    assert not (tmp_path / "hub" / "model.safetensors").exists()
    with pytest.raises(sj.ConfigError, match="mix_ffn_conv must be true or false; got 'no'"):
        sj.SegformerConfig.from_variant("b0", mix_ffn_conv="no")


def test_hub_config_json_round_trip(tmp_path):
    hub = {"model_type": "segformer", "architectures": ["SegformerForSemanticSegmentation"],
           "depths": [3, 4, 6, 3], "hidden_sizes": [64, 128, 320, 512], "decoder_hidden_size": 768,
           "id2label": {"0": "road", "1": "sidewalk"}, "label2id": {"road": 0, "sidewalk": 1},
           "some_future_key": {"x": 1}, "torch_dtype": "float32", "reshape_last_stage": True}
    (tmp_path / "config.json").write_text(json.dumps(hub))
    config = sj.SegformerConfig.from_json_file(tmp_path / "config.json")
    assert config.num_labels == 2 and config.id2label[1] == "sidewalk" and config.label2id["road"] == 0
    config.to_json_file(tmp_path / "out.json")
    again = sj.SegformerConfig.from_json_file(tmp_path / "out.json")
    assert again == config and hash(again) == hash(config)
    import transformers
    back = transformers.SegformerConfig.from_pretrained(tmp_path, config_file_name="out.json")
    assert back.id2label == {0: "road", 1: "sidewalk"}
    (tmp_path / "bad.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(sj.ConfigError, match=r"bad\.json: model_type is 'vit'"):
        sj.SegformerConfig.from_json_file(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text(json.dumps({"depths": 2}))
    with pytest.raises(sj.ConfigError, match=r"bad\.json: config field 'depths' must be a list"):
        sj.SegformerConfig.from_json_file(tmp_path / "bad.json")


DEEP = TINY.replace(depths=(2, 3, 1, 2), drop_path_rate=0.0, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0, classifier_dropout_prob=0.0)


def _loss_and_grads(config, scan, remat=False):
    """A jitted (variables, images, key) -> (loss, gradients) of a train-mode forward."""
    model = sj.SegformerForSemanticSegmentation(config, remat=remat, scan=scan)

    def loss(params, variables, images, key):
        out, _ = model.apply({**variables, "params": params}, images, train=True,
                             rngs={"dropout": key}, mutable=["batch_stats"])
        return jnp.mean(out ** 2)
    fn = jax.jit(jax.value_and_grad(loss), compiler_options=FAST_COMPILE)
    return lambda variables, images, rng=3: fn(variables["params"], variables, images, jax.random.key(rng))


def test_scanned_blocks_take_the_same_parameters_and_compute_the_same_function():
    """Each stage's blocks under nn.scan: the same parameter tree in and out (stacking is
    internal), the same eval-mode logits and, without randomness, the same train-mode
    loss and gradients (float32: XLA may fuse the scanned body differently, hence 1e-6)."""
    from segformer_jax.models.mit import stack_blocks, unstack_blocks
    variables = sj.init_variables(DEEP, seed=2)
    images = random_images(2, 32, 32)
    scanned = sj.SegformerForSemanticSegmentation(DEEP, scan=True)
    abstract = jax.eval_shape(scanned.init, jax.random.key(0), images)
    assert jax.tree.structure(abstract) == jax.tree.structure(variables)
    assert jax.tree.map(lambda a: a.shape, abstract) == jax.tree.map(lambda a: a.shape, variables)

    encoder = variables["params"]["encoder"]
    stacked = stack_blocks(encoder)
    assert "block_1_2" not in stacked and stacked["blocks_1"]["layer"]["mlp"]["dense1"]["kernel"].shape[0] == 3
    jax.tree.map(np.testing.assert_array_equal, unstack_blocks(stacked), encoder)

    unrolled = sj.SegformerForSemanticSegmentation(DEEP)
    np.testing.assert_allclose(Jitted(scanned).apply(variables, images),
                               Jitted(unrolled).apply(variables, images), rtol=1e-6, atol=1e-6)
    (loss_s, grads_s), (loss_u, grads_u) = (_loss_and_grads(DEEP, scan)(variables, images)
                                            for scan in (True, False))
    assert float(loss_s) == pytest.approx(float(loss_u), rel=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads_s, grads_u)


@pytest.mark.slow
def test_scanned_blocks_with_drop_path_and_remat():
    """Drop-path under the scan: each block's own rate (one a traced scalar), drawn per
    sample; with remat inside the scan body the gradients are the same."""
    config = DEEP.replace(drop_path_rate=0.5)
    variables = sj.init_variables(config, seed=2)
    images = random_images(4, 32, 32)
    scanned = _loss_and_grads(config, scan=True)
    loss_a, grads_a = scanned(variables, images, 5)
    loss_b, grads_b = _loss_and_grads(config, scan=True, remat=True)(variables, images, 5)
    assert np.isfinite(float(loss_a)) and float(loss_a) == pytest.approx(float(loss_b), rel=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads_a, grads_b)
    # Drop-path is the only randomness of this config: another key drops other blocks.
    assert float(scanned(variables, images, 6)[0]) != float(loss_a)
