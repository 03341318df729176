"""Mixup / CutMix and the soft-target loss against timm's ``Mixup`` and
``SoftTargetCrossEntropy`` (the reference implementation PVT v2 and DeiT train with), given
the same draws."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from timm_oracle import import_timm

from segformer_jax import mixup

SETTINGS = mixup.MixupSettings()  # the recipe's: 0.8 / 1.0 / prob 1 / switch 0.5 / smoothing 0.1


def timm_mix(images, labels, lam, use_cutmix, centre, num_classes, monkeypatch):
    """timm's Mixup on NCHW torch copies with its draws replaced by ours."""
    import torch
    import_timm()
    from timm.data.mixup import Mixup

    mixer = Mixup(mixup_alpha=SETTINGS.mixup_alpha, cutmix_alpha=SETTINGS.cutmix_alpha,
                  prob=SETTINGS.prob, switch_prob=SETTINGS.switch_prob, mode="batch",
                  label_smoothing=SETTINGS.label_smoothing, num_classes=num_classes)
    monkeypatch.setattr(mixer, "_params_per_batch", lambda: (float(lam), bool(use_cutmix)))
    centres = iter(centre)
    monkeypatch.setattr(np.random, "randint", lambda lo, hi, size=None: next(centres))  # rand_bbox's cy, cx
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    out, target = mixer(x, torch.from_numpy(labels.astype(np.int64)))
    return out.numpy().transpose(0, 2, 3, 1), target.numpy()


@pytest.mark.parametrize("case", [(0.37, False, (0, 0)), (0.81, True, (5, 17)),
                                  (0.12, True, (0, 23)), (0.55, True, (12, 0)),
                                  (0.999, True, (7, 7))])
def test_mix_equals_timm(case, monkeypatch):
    lam, use_cutmix, centre = case
    rng = np.random.default_rng(int(lam * 1000))
    images = rng.standard_normal((6, 13, 24, 3), dtype=np.float32)
    labels = rng.integers(0, 10, 6)
    expected_x, expected_t = timm_mix(images, labels, lam, use_cutmix, centre, 10, monkeypatch)
    draws = mixup.MixDraws(jnp.asarray(True), jnp.asarray(use_cutmix), jnp.float32(lam),
                           jnp.int32(centre[0]), jnp.int32(centre[1]))
    x, t = jax.jit(mixup.mix_batch, static_argnums=(3, 4))(images, labels, draws, SETTINGS, 10)
    # One rounding apart at most: timm scales by the double 1 - lam, we by float32's.
    np.testing.assert_allclose(x, expected_x, rtol=0, atol=1e-6)
    if use_cutmix:  # copied pixels are exact
        np.testing.assert_array_equal(x, expected_x)
    np.testing.assert_allclose(t, expected_t, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(t).sum(-1), 1.0, rtol=1e-6)


def test_unmixed_batch_is_the_smoothed_one_hot():
    labels = np.array([3, 0, 2])
    draws = mixup.MixDraws(jnp.asarray(False), jnp.asarray(True), jnp.float32(0.3),
                           jnp.int32(1), jnp.int32(1))
    images = np.random.default_rng(0).standard_normal((3, 4, 4, 3), dtype=np.float32)
    x, t = mixup.mix_batch(images, labels, draws, SETTINGS, 4)
    np.testing.assert_array_equal(x, images)
    expected = np.full((3, 4), 0.1 / 4)
    expected[np.arange(3), labels] = 1 - 0.1 + 0.1 / 4
    np.testing.assert_allclose(t, expected, rtol=1e-6)


def test_draws_follow_the_recipe():
    """Over many keys: CutMix about half the time, lambda's mean 1/2 (both Betas are
    symmetric), centres inside the image; a function of the key only."""
    keys = jax.random.split(jax.random.key(0), 4000)
    draws = jax.vmap(lambda k: mixup.draw(k, SETTINGS, 13, 24))(keys)
    assert bool(jnp.all(draws.mixed))
    assert 0.46 < float(jnp.mean(draws.use_cutmix)) < 0.54   # 4000 draws: sd 0.008
    assert 0.48 < float(jnp.mean(draws.lam)) < 0.52            # sd of the mean < 0.006
    assert int(draws.centre_y.min()) == 0 and int(draws.centre_y.max()) == 12
    assert int(draws.centre_x.min()) == 0 and int(draws.centre_x.max()) == 23
    again = mixup.draw(keys[7], SETTINGS, 13, 24)
    assert float(again.lam) == float(draws.lam[7])


def test_soft_target_cross_entropy_equals_timm():
    import torch
    import_timm()
    from timm.loss import SoftTargetCrossEntropy

    rng = np.random.default_rng(1)
    logits = rng.standard_normal((5, 7), dtype=np.float32) * 3
    targets = rng.dirichlet(np.ones(7), 5).astype(np.float32)
    expected = SoftTargetCrossEntropy()(torch.from_numpy(logits), torch.from_numpy(targets))
    ours = mixup.soft_target_cross_entropy(jnp.asarray(logits), jnp.asarray(targets))
    assert float(ours) == pytest.approx(float(expected), rel=1e-6)
