"""The All-MLP decode head of SegFormer and the BatchNorm it uses.

The head, as in the paper and transformers:
    e_i = Linear_i(F_i)                       # C_i -> D, per stage
    e_i = upsample_bilinear(e_i, size of F_1) # to 1/4 of the input
    y   = Linear_fuse(concat[e_4, e_3, e_2, e_1])   # 4D -> D, no bias (BN follows)
    logits = Linear_cls(dropout(relu(BN(y))))

Linear_i, the upsampling and Linear_fuse are all linear and bilinear weights sum to one, so
    Linear_fuse(concat[up(e_4) … up(e_1)]) = Σ_i up(F_i · (W_i W_fuse,i)) + Σ_i b_i W_fuse,i
which is the same function computed with the D×D fuse matmul done at 1/32…1/4 resolution
instead of at 1/4 resolution for all four stages: half of B0's MACs, 60 % of B2's. The
parameters (and so the Hub weights, and training) are exactly those of the original head.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segformer_jax.config import SegformerConfig
from segformer_jax.models.mit import dense_init
from segformer_jax.models.ops import form_set, resize_bilinear

Dtype = Any


class BatchNorm(nn.Module):
    """BatchNorm over (N, H, W) with torch's ``BatchNorm2d`` semantics.

    Differs from ``flax.linen.BatchNorm`` in the running variance, which (as in torch) is
    updated with the *unbiased* batch variance. Under ``jax.jit`` with a batch sharded over
    devices the batch mean is global, so this is SyncBN with no extra code.
    """

    momentum: float = 0.1  # torch convention: new = (1 - m) * old + m * batch
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        mean_ra = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
        var_ra = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
        x = x.astype(jnp.float32)
        if train:
            out, mean, var = batch_norm_train(x, scale, bias, self.epsilon)
            if not self.is_initializing():
                count = x.size // c
                unbiased = var * (count / max(count - 1, 1))
                mean_ra.value = (1 - self.momentum) * mean_ra.value + self.momentum * mean
                var_ra.value = (1 - self.momentum) * var_ra.value + self.momentum * unbiased
            return out
        return _normalize(x, mean_ra.value, var_ra.value, scale, bias, self.epsilon)


def _normalize(x, mean, var, scale, bias, epsilon):
    return (x - mean) * (scale * jax.lax.rsqrt(var + epsilon)) + bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array,
                     epsilon: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Training-mode BatchNorm over all axes but the last: (output, batch mean, batch
    variance), with a hand-written backward pass.

    Why: under autodiff XLA:CPU fused the recomputation of the normalised input (in the
    decode head, the sum of three upsampled maps) into the input-gradient loop, transposed
    for a weight gradient: one loop took 1.9 s of the 3.4 s that B2's head took forward and
    backward at 512², batch 2. With this backward (three reductions and one elementwise
    pass over the stored input) and ``ops.upsample_axis``, the head takes 1.28 s.
    The forward pass is the same arithmetic as before (bit-equal).
    """
    return _batch_norm_train_fwd(x, scale, bias, epsilon)[0]


def _batch_norm_train_fwd(x, scale, bias, epsilon):
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axes)
    var = jnp.square(x - mean).mean(axes)
    out = _normalize(x, mean, var, scale, bias, epsilon)
    return (out, mean, var), (x, mean, var, scale)


def _batch_norm_train_bwd(epsilon, residuals, cotangents):
    x, mean, var, scale = residuals
    g, g_mean, g_var = cotangents
    axes = tuple(range(x.ndim - 1))
    count = x.size // x.shape[-1]
    rstd = jax.lax.rsqrt(var + epsilon)
    centred = x - mean
    g_bias = g.sum(axes)
    g_scale = (g * centred).sum(axes) * rstd
    # d out / d x through the batch statistics, plus the statistics' own cotangents.
    g_x = (scale * rstd) * (g - (g_bias + centred * (rstd * rstd) * (g * centred).sum(axes)) / count)
    g_x = g_x + (g_mean + 2.0 * g_var * centred) / count
    return g_x, g_scale, g_bias


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


class ReluDropout(nn.Module):
    """``nn.Dropout(rate)(nn.relu(x))`` with the same random mask, and a backward pass that
    reads the stored output instead of recomputing the input (``relu_dropout``)."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return nn.relu(x)
        keep_prob = 1.0 - self.rate
        keep = jax.random.bernoulli(self.make_rng("dropout"), keep_prob, x.shape)
        return relu_dropout(x, keep, keep_prob)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def relu_dropout(x: jax.Array, keep: jax.Array, keep_prob: float) -> jax.Array:
    """``where(keep, relu(x) / keep_prob, 0)``; its gradient ``where(out > 0, g / keep_prob, 0)``.

    Why: the output is positive exactly where the input is and the unit is kept, and it is
    stored anyway (the classifier's weight gradient reads it), so the backward pass needs
    nothing else. Under autodiff XLA:CPU recomputed the ReLU's input (BatchNorm of the sum of
    the upsampled maps) inside the input-gradient loop of B2's head: 0.47 s of a 7 s step.
    Where the kept input is positive but ``x / keep_prob`` underflows to zero (subnormal
    inputs) the two gradients differ; float32 activations of this head never get there.
    """
    return _relu_dropout_fwd(x, keep, keep_prob)[0]


def _relu_dropout_fwd(x, keep, keep_prob):
    out = jax.lax.select(keep, nn.relu(x) / keep_prob, jnp.zeros_like(x))
    return out, out


def _relu_dropout_bwd(keep_prob, out, g):
    return jnp.where(out > 0, g / keep_prob, jnp.zeros_like(g)), None


relu_dropout.defvjp(_relu_dropout_fwd, _relu_dropout_bwd)


class SegformerDecodeHead(nn.Module):
    """All-MLP decoder: unify the four stages' channels, upsample to 1/4, fuse, classify.

    Takes the encoder's four NHWC feature maps; returns float32 logits at 1/4 resolution.
    ``forms``: the upsampling's form set (``ops.FORM_SETS``).
    """

    config: SegformerConfig
    dtype: Dtype = jnp.float32
    forms: str = "auto"

    @nn.compact
    def __call__(self, features: tuple[jax.Array, ...], train: bool = False) -> jax.Array:
        cfg = self.config
        d = cfg.decoder_hidden_size
        stages = len(features)
        init = dense_init(cfg)
        fuse = self.param("linear_fuse", init, (stages * d, d), jnp.float32)
        n, h, w, _ = features[0].shape
        y = jnp.zeros((), self.dtype)
        for i, feat in enumerate(features):
            kernel = self.param(f"linear_c_{i}_kernel", init, (feat.shape[-1], d), jnp.float32)
            bias = self.param(f"linear_c_{i}_bias", nn.initializers.zeros, (d,), jnp.float32)
            # Concat order is reversed (c4, c3, c2, c1): stage i owns rows of block (3 - i).
            fuse_i = fuse[(stages - 1 - i) * d:(stages - i) * d]
            e = jnp.dot(feat.astype(self.dtype), (kernel @ fuse_i).astype(self.dtype))
            y = y + resize_bilinear(e, (h, w), form_set(self.forms)["resize"]) + (bias @ fuse_i).astype(self.dtype)
        y = BatchNorm(name="batch_norm")(y, train)
        # Named as the nn.Dropout it replaces: its random stream comes from the module path.
        y = ReluDropout(cfg.classifier_dropout_prob, name="Dropout_0")(y, not train)
        return nn.Dense(cfg.num_labels, dtype=jnp.float32, kernel_init=init, name="classifier")(y)
