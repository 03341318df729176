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

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segformer_jax.config import SegformerConfig
from segformer_jax.models.mit import dense_init
from segformer_jax.models.ops import resize_bilinear

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
            axes = tuple(range(x.ndim - 1))
            mean = x.mean(axes)
            var = jnp.square(x - mean).mean(axes)
            if not self.is_initializing():
                count = x.size // c
                unbiased = var * (count / max(count - 1, 1))
                mean_ra.value = (1 - self.momentum) * mean_ra.value + self.momentum * mean
                var_ra.value = (1 - self.momentum) * var_ra.value + self.momentum * unbiased
        else:
            mean, var = mean_ra.value, var_ra.value
        return (x - mean) * (scale * jax.lax.rsqrt(var + self.epsilon)) + bias


class SegformerDecodeHead(nn.Module):
    """All-MLP decoder: unify the four stages' channels, upsample to 1/4, fuse, classify.

    Takes the encoder's four NHWC feature maps; returns float32 logits at 1/4 resolution.
    """

    config: SegformerConfig
    dtype: Dtype = jnp.float32

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
            y = y + resize_bilinear(e, (h, w)) + (bias @ fuse_i).astype(self.dtype)
        y = BatchNorm(name="batch_norm")(y, train)
        y = nn.relu(y)
        y = nn.Dropout(cfg.classifier_dropout_prob, deterministic=not train)(y)
        return nn.Dense(cfg.num_labels, dtype=jnp.float32, kernel_init=init, name="classifier")(y)
