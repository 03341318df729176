"""The losses of ``config.loss`` against their public implementations: values and
gradients on random logits with ignored pixels (``loss_oracles`` says which code runs).

Our losses take the model's 1/4-resolution logits and upsample them (bilinear,
``align_corners=False``) to the label size; the oracles get ``F.interpolate`` of the same
logits, and the gradients are compared with respect to the low-resolution logits. The
oracles run in float64, so the differences are our float32 rounding. Tolerance: values
rtol 1e-5 (a float32 mean over ~3000 pixels); gradients atol 1e-5 of the largest entry:
each low-resolution logit's gradient sums ~100 upsampled pixels' terms of either sign,
each of about the largest entry's size and a few float32 ulps off (measured: 2e-6).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FAST_COMPILE

from segformer_jax import losses
from segformer_jax.constants import IGNORE_INDEX

torch = pytest.importorskip("torch")
F = torch.nn.functional
oracles = pytest.importorskip("loss_oracles")

N, H, W, C = 2, 48, 40, 5          # labels; logits at a quarter of it


def _data(seed: int, ignored: float = 0.2, classes: int = C, scale: float = 2.0):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((N, H // 4, W // 4, classes)) * scale).astype(np.float32)
    labels = rng.integers(0, classes, (N, H, W)).astype(np.int32)
    labels[rng.random((N, H, W)) < ignored] = IGNORE_INDEX
    return logits, labels


def _torch_grad(fn, logits: np.ndarray, labels: np.ndarray,
                dtype: str = "float64") -> tuple[float, np.ndarray]:
    x = torch.tensor(logits.transpose(0, 3, 1, 2), dtype=getattr(torch, dtype),
                     requires_grad=True)
    up = F.interpolate(x, size=labels.shape[1:], mode="bilinear", align_corners=False)
    value = fn(up, torch.tensor(labels, dtype=torch.long))
    value.backward()
    return float(value.detach()), x.grad.numpy().transpose(0, 2, 3, 1)


def _ours(fn, logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    value, grad = jax.value_and_grad(fn)(jnp.asarray(logits), jnp.asarray(labels))
    return float(value), np.asarray(grad)


def _assert_equal(ours, ref):
    (v, g), (rv, rg) = ours, ref
    assert v == pytest.approx(rv, rel=1e-5), (v, rv)
    np.testing.assert_allclose(g, rg, rtol=0, atol=1e-5 * np.abs(rg).max())
    assert np.abs(rg).max() > 0  # the comparison is of something


CLASS_WEIGHT = (0.5, 1.0, 2.0, 1.5, 0.25)


@pytest.mark.parametrize("reduction", ["valid", "all"])
def test_cross_entropy_equals_mmseg(reduction):
    ref = oracles.mmseg_losses().CrossEntropyLoss(avg_non_ignore=reduction == "valid")
    logits, labels = _data(0)
    _assert_equal(
        _ours(lambda x, y: losses.cross_entropy(x, y, IGNORE_INDEX, reduction), logits, labels),
        _torch_grad(lambda x, y: ref(x, y, ignore_index=IGNORE_INDEX), logits, labels))


@pytest.mark.parametrize("reduction", ["valid", "all"])
def test_class_weighted_cross_entropy_equals_torch(reduction):
    weight = torch.tensor(CLASS_WEIGHT, dtype=torch.float64)

    def ref(x, y):
        if reduction == "valid":
            return F.cross_entropy(x, y, weight=weight, ignore_index=IGNORE_INDEX)
        return F.cross_entropy(x, y, weight=weight, ignore_index=IGNORE_INDEX,
                               reduction="sum") / y.numel()

    logits, labels = _data(0)
    _assert_equal(_ours(lambda x, y: losses.cross_entropy(x, y, IGNORE_INDEX, reduction,
                                                          CLASS_WEIGHT), logits, labels),
                  _torch_grad(ref, logits, labels))


@pytest.mark.parametrize("thresh, min_kept, weight", [(0.7, 500, None), (0.3, 2000, None),
                                                      (0.7, 100_000, CLASS_WEIGHT),
                                                      (0.05, 10, None)])
def test_ohem_equals_mmseg(thresh, min_kept, weight):
    mm = oracles.mmseg_losses()
    ref = mm.OhemCrossEntropy(ignore_label=IGNORE_INDEX, thres=thresh, min_kept=min_kept,
                              class_weight=list(weight) if weight else None)
    logits, labels = _data(1)
    ours = _ours(lambda x, y: losses.ohem_cross_entropy(x, y, IGNORE_INDEX, thresh, min_kept,
                                                        weight), logits, labels)
    _assert_equal(ours, _torch_grad(ref, logits, labels))


def test_ohem_keeps_fewer_pixels_than_cross_entropy():
    """OHEM's mean is over the hard pixels: above plain cross-entropy's mean."""
    logits, labels = _data(2)
    x, y = jnp.asarray(logits), jnp.asarray(labels)
    assert float(losses.ohem_cross_entropy(x, y, min_kept=100)) > float(losses.cross_entropy(x, y))


@pytest.mark.parametrize("gamma, alpha", [(2.0, None), (1.0, 0.25)])
def test_focal_equals_smp(gamma, alpha):
    ref = oracles.smp_losses().FocalLoss("multiclass", alpha=alpha, gamma=gamma,
                                         ignore_index=IGNORE_INDEX)
    logits, labels = _data(3)
    _assert_equal(_ours(lambda x, y: losses.focal_loss(x, y, IGNORE_INDEX, gamma, alpha), logits, labels),
                  _torch_grad(ref, logits, labels))


@pytest.mark.parametrize("smooth", [0.0, 1.0])
def test_dice_equals_smp(smooth):
    ref = oracles.smp_losses().DiceLoss("multiclass", smooth=smooth, ignore_index=IGNORE_INDEX)
    logits, labels = _data(4)
    labels[labels == 3] = 0  # a class absent from the labels counts 0
    _assert_equal(_ours(lambda x, y: losses.dice_loss(x, y, IGNORE_INDEX, smooth), logits, labels),
                  _torch_grad(ref, logits, labels))


def test_lovasz_equals_smp():
    ref = oracles.smp_losses().LovaszLoss("multiclass", per_image=False, ignore_index=IGNORE_INDEX)
    logits, labels = _data(5)
    labels[labels == 2] = 1  # classes "present": an absent one is left out of the mean
    # float32: smp's Lovász gradient casts to float32 (.float()) and fails in float64.
    _assert_equal(_ours(lambda x, y: losses.lovasz_softmax(x, y, IGNORE_INDEX), logits, labels),
                  _torch_grad(ref, logits, labels, "float32"))


def test_all_ignored_is_zero_with_zero_gradient():
    logits, labels = _data(6)
    labels[:] = IGNORE_INDEX
    for name in losses.LOSS_NAMES:
        fn = losses.make_loss(losses.LossSettings(terms=((name, 1.0),)))
        value, grad = _ours(fn, logits, labels)
        assert value == 0.0 and not np.abs(grad).any(), name


def test_weighted_sum_of_two():
    logits, labels = _data(7)
    x, y = jnp.asarray(logits), jnp.asarray(labels)
    settings = losses.LossSettings(terms=losses.parse_terms("cross_entropy+dice", (1.0, 0.5)))
    want = float(losses.cross_entropy(x, y)) + 0.5 * float(losses.dice_loss(x, y))
    assert float(losses.make_loss(settings)(x, y)) == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="loss.weights has 1 value"):
        losses.parse_terms("cross_entropy+dice", (1.0,))
    with pytest.raises(ValueError, match="'tversky'"):
        losses.parse_terms("tversky")


def test_median_frequency_weights():
    """Eigen & Fergus: freq(c) = pixels of c / pixels of the images holding c."""
    class_pixels = np.array([600, 100, 300, 0])
    image_pixels = np.array([1000, 400, 600, 0])      # class 3 never appears
    freq = np.array([0.6, 0.25, 0.5])
    want = np.append(np.median(freq) / freq, 0.0)
    np.testing.assert_allclose(losses.median_frequency_weights(class_pixels, image_pixels), want)
    with pytest.raises(ValueError, match="no labelled pixel"):
        losses.median_frequency_weights(np.zeros(3), np.zeros(3))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ohem", "focal", "dice", "lovasz"])
def test_a_few_steps_lower_each_loss(name):
    """Ten AdamW steps on four images of the embedded dataset lower each loss (plain
    cross-entropy: tests/test_train.py; a sum of two is a sum of these)."""
    import segformer_jax as sj
    from segformer_jax import tasks
    from segformer_jax.data.synthetic import generate_example
    from segformer_jax.optim import Recipe, make_optimizer
    from segformer_jax.run_config import default_config
    from segformer_jax.train import initial_state, make_train_step
    examples = [generate_example(i) for i in range(4)]
    images = np.stack([im[:64, :64] for im, _ in examples]).astype(np.float32) / 127.5 - 1
    labels = np.stack([m[:64, :64] for _, m in examples]).astype(np.int32)
    config = sj.SegformerConfig.from_variant("b0", num_labels=6, hidden_sizes=(8, 16, 24, 32),
                                             num_attention_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1),
                                             decoder_hidden_size=16)
    run = default_config()
    run.loss.name = name
    run.loss.ohem_min_kept = 1000
    objective = tasks.objective(run, 6, IGNORE_INDEX)
    tx = make_optimizer(Recipe(learning_rate=2e-3, warmup_steps=0, total_steps=100))
    state = initial_state(config, tx, seed=0)
    step = jax.jit(make_train_step(sj.SegformerForSemanticSegmentation(config), tx, seed=0,
                                   objective=objective),
                   compiler_options=FAST_COMPILE)
    values = []
    for _ in range(10):
        state, out = step(state, {"image": images, "label": labels})
        values.append(float(out["loss"]))
    assert np.isfinite(values).all() and values[-1] < 0.9 * values[0], values


def test_trainer_class_weight_given_and_median_frequency(capsys):
    """train's ``loss.class_weight``: given weights checked against the classes, and
    median frequency computed over the training masks (after reduce_zero_label)."""
    from segformer_jax import train
    from segformer_jax.data import SplitData
    from segformer_jax.errors import SegformerError
    from segformer_jax.run_config import default_config
    masks = [np.array([[0, 0, 1, 255]]), np.array([[1, 1, 2, 2]])]
    records = [{"segmentation_mask": m[..., None].astype(np.uint8)} for m in masks]
    split = SplitData(source=records, class_names=("a", "b", "c"), reduce_zero_label=False,
                      name="folder", split="train")
    config = default_config()
    config.loss.class_weight = "1,2"
    with pytest.raises(SegformerError, match="has 2 weights; the dataset has 3 classes"):
        train._class_weight(config, split)
    config.loss.class_weight = "1,2,0.5"
    assert train._class_weight(config, split) == (1.0, 2.0, 0.5)
    config.loss.class_weight = "median_frequency"
    # freq: a 2/4 (image 1), b 3/8 (both images), c 2/4 (image 2); median 0.5
    assert train._class_weight(config, split) == pytest.approx((1.0, 0.5 / 0.375, 1.0))
    assert "median_frequency over 2 training masks" in capsys.readouterr().out


@pytest.mark.parametrize("key, value, message", [
    ("name", "tversky", "loss.name must be one of"),
    ("class_weight", "1,x", "loss.class_weight must be"),
    ("ohem_thresh", 1.5, "loss.ohem_thresh"),
    ("focal_alpha", 2.0, "loss.focal_alpha"),
])
def test_bad_loss_config_names_the_key(key, value, message):
    from segformer_jax.errors import ConfigError
    from segformer_jax.run_config import default_config, validate
    config = default_config()
    config.loss[key] = value
    with pytest.raises(ConfigError, match=message):
        validate(config)
    config = default_config()
    config.loss.name, config.loss.class_weight = "dice", "1,2"
    with pytest.raises(ConfigError, match="weighs cross_entropy and ohem"):
        validate(config)
