"""The Mix Transformer (MiT) encoder of SegFormer, in Flax linen, NHWC.

Every block keeps its activations as (N, h, w, C) feature maps: the token sequence of the
paper is just ``x.reshape(N, h * w, C)``, taken where attention needs it, so no layer has to
guess the height and width from the sequence length and any input size works.

Numerics follow transformers' ``modeling_segformer.py`` exactly: symmetric padding in the
overlapping patch embeddings, LayerNorm eps 1e-5 everywhere, exact (erf) GELU, softmax in
float32. Parameters are float32; ``dtype`` is the compute dtype of convolutions and matmuls.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segformer_jax.config import SegformerConfig
from segformer_jax.models.ops import depthwise_conv3x3, form_set, multi_head_attention, reduction_conv

Dtype = Any
LAYER_NORM_EPS = 1e-5  # torch's default: transformers never passes config.layer_norm_eps.

ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def dense_init(config: SegformerConfig) -> nn.initializers.Initializer:
    """transformers' init for every Linear and Conv2d: N(0, initializer_range), bias 0."""
    return nn.initializers.normal(stddev=config.initializer_range)


def layer_norm(name: str) -> nn.LayerNorm:
    """A LayerNorm computed in float32 with torch's eps and two-pass variance."""
    return nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=jnp.float32, use_fast_variance=False,
                        name=name)


class OverlapPatchEmbeddings(nn.Module):
    """Strided conv with kernel > stride (7/4 then 3/2), so patches overlap; then LayerNorm."""

    config: SegformerConfig
    stage: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.config.patch_sizes[self.stage]
        s = self.config.strides[self.stage]
        p = k // 2  # symmetric, as torch: 'SAME' would pad (1, 2) for k7 s4 and shift outputs.
        x = nn.Conv(self.config.hidden_sizes[self.stage], (k, k), strides=(s, s),
                    padding=((p, p), (p, p)), dtype=self.dtype,
                    kernel_init=dense_init(self.config), name="proj")(x)
        return layer_norm("layer_norm")(x)


class SequenceReduction(nn.Module):
    """``nn.Conv(C, (sr, sr), strides=sr, padding="VALID")`` (same parameters, same forward),
    its backward pass in the form set's ``reduction`` form (``ops.reduction_conv``)."""

    config: SegformerConfig
    ratio: int
    dtype: Dtype = jnp.float32
    forms: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        kernel = self.param("kernel", dense_init(self.config), (self.ratio, self.ratio, c, c), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        y = reduction_conv(x.astype(self.dtype), kernel.astype(self.dtype), form_set(self.forms)["reduction"])
        return y + bias.astype(self.dtype)


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys and values come from a map shrunk by ``sr_ratio``.

    The reduction (a strided sr×sr conv + LayerNorm) cuts the cost from O(N²) to O(N²/R²).
    """

    config: SegformerConfig
    stage: int
    dtype: Dtype = jnp.float32
    forms: str = "auto"   # ops.FORM_SETS: the reduction's and attention's forms

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        cfg = self.config
        n, h, w, c = x.shape
        heads = cfg.num_attention_heads[self.stage]
        sr = cfg.sr_ratios[self.stage]
        dense = lambda name: nn.Dense(c, dtype=self.dtype, kernel_init=dense_init(cfg), name=name)  # noqa: E731

        q = dense("query")(x).reshape(n, h * w, heads, c // heads)
        kv = x
        if sr > 1:
            kv = SequenceReduction(cfg, sr, self.dtype, self.forms, name="sr")(kv)
            kv = layer_norm("layer_norm")(kv)
        # Sizes spelled out, not -1: jax.export cannot infer a -1 from symbolic dimensions.
        m = kv.shape[1] * kv.shape[2]
        kv = kv.reshape(n, m, c)
        k = dense("key")(kv).reshape(n, m, heads, c // heads)
        v = dense("value")(kv).reshape(n, m, heads, c // heads)

        rate = cfg.attention_probs_dropout_prob
        if self.is_mutable_collection("intermediates"):
            # Asked for (``apply(..., mutable=["intermediates"])``): the probabilities as
            # transformers returns them, (N, heads, queries, keys) in float32. Not computed
            # otherwise, so the attention below stays fused.
            scores = jnp.einsum("nqhd,nkhd->nhqk", q, k, preferred_element_type=jnp.float32)
            self.sow("intermediates", "attentions", jax.nn.softmax(scores * (c // heads) ** -0.5, axis=-1))
        if train and rate > 0.0:
            scores = jnp.einsum("nqhd,nkhd->nhqk", q, k).astype(jnp.float32)
            probs = jax.nn.softmax(scores * (c // heads) ** -0.5, axis=-1)
            probs = nn.Dropout(rate, deterministic=False)(probs).astype(v.dtype)
            ctx = jnp.einsum("nhqk,nkhd->nqhd", probs, v)
        else:  # jax.nn.dot_product_attention, or its arithmetic with a faster backward pass
            ctx = multi_head_attention(q, k, v, form_set(self.forms)["attention"])
        ctx = ctx.reshape(n, h, w, c)
        out = dense("output")(ctx)
        return nn.Dropout(cfg.hidden_dropout_prob, deterministic=not train)(out)


class MixFFN(nn.Module):
    """Dense → 3×3 depthwise conv → GELU → Dense: the conv leaks position, replacing encodings.

    With ``config.mix_ffn_conv`` False (an ablation) the conv and its parameters are left out.
    """

    config: SegformerConfig
    stage: int
    dtype: Dtype = jnp.float32
    forms: str = "auto"   # ops.FORM_SETS: the depthwise conv's form

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        cfg = self.config
        c = x.shape[-1]
        hidden = int(c * cfg.mlp_ratios[self.stage])
        x = nn.Dense(hidden, dtype=self.dtype, kernel_init=dense_init(cfg), name="dense1")(x)
        if cfg.mix_ffn_conv:
            kernel = self.param("dwconv_kernel", dense_init(cfg), (3, 3, hidden), jnp.float32)
            bias = self.param("dwconv_bias", nn.initializers.zeros, (hidden,), jnp.float32)
            x = depthwise_conv3x3(x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype),
                                  form=form_set(self.forms)["conv"])
        x = ACTIVATIONS[cfg.hidden_act](x)
        x = nn.Dropout(cfg.hidden_dropout_prob, deterministic=not train)(x)
        x = nn.Dense(c, dtype=self.dtype, kernel_init=dense_init(cfg), name="dense2")(x)
        return nn.Dropout(cfg.hidden_dropout_prob, deterministic=not train)(x)


class DropPath(nn.Module):
    """Stochastic depth: drops a sample's whole residual branch with probability ``rate``.

    ``rate`` is a float, or a traced scalar when the block runs under ``nn.scan`` (each
    block of a stage has its own rate, so the scan carries them as inputs).
    """

    rate: float | jax.Array

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if isinstance(self.rate, (int, float)):
            # One Bernoulli draw per sample, broadcast over h, w and C; scaled by 1/keep.
            return nn.Dropout(self.rate, broadcast_dims=tuple(range(1, x.ndim)),
                              deterministic=not train or self.rate == 0.0)(x)
        if not train:
            return x
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
        return jnp.where(mask, x / keep.astype(x.dtype), jnp.zeros((), x.dtype))


class MixTransformerLayer(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MixFFN(LN(x))."""

    config: SegformerConfig
    stage: int
    drop_path: float | jax.Array
    dtype: Dtype = jnp.float32
    forms: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        drop = DropPath(self.drop_path)
        a = EfficientSelfAttention(self.config, self.stage, self.dtype, self.forms, name="attention")(
            layer_norm("layer_norm_1")(x), train)
        x = x + drop(a, train)
        m = MixFFN(self.config, self.stage, self.dtype, self.forms, name="mlp")(
            layer_norm("layer_norm_2")(x), train)
        return x + drop(m, train)


class MixTransformer(nn.Module):
    """The MiT encoder: four stages at strides 4, 8, 16, 32; returns their feature maps.

    ``remat`` recomputes each block's activations in the backward pass (saves memory).
    Every block is its own module ``block_{stage}_{index}``, unrolled in the program; see
    ``scanned_mix_transformer`` for the same encoder with each stage under ``nn.scan``.
    ``forms``: the ops' form set (``ops.FORM_SETS``; "auto": the backend's).
    """

    config: SegformerConfig
    dtype: Dtype = jnp.float32
    remat: bool = False
    forms: str = "auto"

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> tuple[jax.Array, ...]:
        layer_cls = nn.remat(MixTransformerLayer, static_argnums=(2,)) if self.remat \
            else MixTransformerLayer

        def blocks(i: int, rates: list[float], x: jax.Array) -> jax.Array:
            for j, rate in enumerate(rates):
                x = layer_cls(self.config, i, rate, self.dtype, self.forms, name=f"block_{i}_{j}")(x, train)
            return x

        return _stages(self, images, blocks)


class _ScanStep(nn.Module):
    """One block as an ``nn.scan`` body: (features, this block's drop-path rate) → features."""

    config: SegformerConfig
    stage: int
    dtype: Dtype
    train: bool
    forms: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, rate: jax.Array) -> tuple[jax.Array, None]:
        layer = MixTransformerLayer(self.config, self.stage, rate, self.dtype, self.forms, name="layer")
        return layer(x, self.train), None


class _StackedMixTransformer(nn.Module):
    """The MiT encoder with the blocks of each stage stacked: ``blocks_{stage}`` holds every
    parameter of that stage's blocks with a leading axis of length ``depths[stage]``."""

    config: SegformerConfig
    dtype: Dtype = jnp.float32
    remat: bool = False
    forms: str = "auto"

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> tuple[jax.Array, ...]:
        step = nn.remat(_ScanStep, prevent_cse=False) if self.remat else _ScanStep

        def blocks(i: int, rates: list[float], x: jax.Array) -> jax.Array:
            if not rates:
                return x
            stage = nn.scan(step, variable_axes={"params": 0, "intermediates": 0},
                            split_rngs={"params": True, "dropout": True}, length=len(rates))
            x, _ = stage(self.config, i, self.dtype, train, self.forms, name=f"blocks_{i}")(
                x, jnp.asarray(rates, jnp.float32))
            return x

        return _stages(self, images, blocks)


def _stages(encoder: nn.Module, images: jax.Array,
            blocks: Callable[[int, list[float], jax.Array], jax.Array]) -> tuple[jax.Array, ...]:
    """The four stages of an encoder module (called inside its ``__call__``): overlapping
    patch embedding, ``blocks(stage, drop-path rates, x)``, LayerNorm; the feature maps."""
    check_images(images, encoder.config)
    x = images
    features = []
    for i, rates in enumerate(encoder.config.drop_path_rates()):
        x = OverlapPatchEmbeddings(encoder.config, i, encoder.dtype, name=f"patch_embeddings_{i}")(x)
        x = blocks(i, rates, x)
        x = layer_norm(f"layer_norm_{i}")(x)
        encoder.sow("intermediates", "hidden_states", x)   # kept only when asked for
        features.append(x)
    return tuple(features)


_BLOCK = re.compile(r"block_(\d+)_(\d+)$")
_STACK = re.compile(r"blocks_(\d+)$")


def stack_blocks(tree: Mapping[str, Any]) -> dict[str, Any]:
    """Per-block parameters (``block_{i}_{j}``) → one stacked tree per stage (``blocks_{i}``)."""
    out: dict[str, Any] = {}
    stages: dict[int, dict[int, Any]] = {}
    for name, value in tree.items():
        match = _BLOCK.match(name)
        if match:
            stages.setdefault(int(match[1]), {})[int(match[2])] = value
        else:
            out[name] = value
    for i, blocks in stages.items():
        ordered = [blocks[j] for j in range(len(blocks))]
        out[f"blocks_{i}"] = {"layer": jax.tree_util.tree_map(lambda *a: jnp.stack(a), *ordered)}
    return out


def unstack_blocks(tree: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of ``stack_blocks``."""
    out: dict[str, Any] = {}
    for name, value in tree.items():
        match = _STACK.match(name)
        if not match:
            out[name] = value
            continue
        layer = value["layer"]
        depth = jax.tree_util.tree_leaves(layer)[0].shape[0]
        for j in range(depth):
            out[f"block_{match[1]}_{j}"] = jax.tree_util.tree_map(lambda a, j=j: a[j], layer)
    return out


def _map_params(fn: Callable[[Mapping[str, Any]], dict[str, Any]]) -> Callable[[Any], Any]:
    def mapped(variables: Mapping[str, Any]) -> dict[str, Any]:
        return {col: fn(tree) if col == "params" else tree for col, tree in variables.items()}
    return mapped


def scanned_mix_transformer(initializing: bool) -> type[nn.Module]:
    """The MiT encoder with the identical blocks of each stage run under ``flax.linen.scan``,
    as a class to instantiate inside a parent's ``__call__``.

    One traced block per stage, so compile time does not grow with depth (as maxtext and
    big_vision do for deep stacks); with ``remat`` the scan body is rematerialised. Its
    parameters are laid out exactly as ``MixTransformer``'s (``block_{stage}_{index}``):
    stacked per stage on the way in and unstacked on the way out, inside the jitted
    program, so Hub and Orbax files, parity tests and optimiser states never see the
    stacked form. Eval-mode outputs equal ``MixTransformer``'s to float32 rounding; in train
    mode drop-path draws other random numbers (``nn.scan`` splits the dropout key per
    block instead of folding in the block's name).

    ``map_variables`` must only initialise the stacked parameters (``init=True``) in
    ``init``: in a train-mode ``apply`` with other mutable collections it would otherwise
    look for stacked parameters that are not there.
    """
    return nn.map_variables(_StackedMixTransformer, "params", trans_in_fn=_map_params(stack_blocks),
                            trans_out_fn=_map_params(unstack_blocks), init=initializing)


def check_images(images: Any, config: SegformerConfig) -> None:
    """One clear error for inputs the encoder cannot take, before any layer sees them."""
    shape = getattr(images, "shape", None)
    if shape is None or len(shape) != 4:
        raise ValueError(f"images must be a rank-4 array (N, H, W, {config.num_channels}) in NHWC "
                         f"layout; got shape {shape}")
    if shape[-1] != config.num_channels:
        hint = " (an NCHW array? transpose it to NHWC)" if shape[1] == config.num_channels else ""
        raise ValueError(f"images have {shape[-1]} channels in the last axis but the config has "
                         f"num_channels={config.num_channels}; got shape {tuple(shape)}{hint}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"images must be floating point (normalised pixels); got {images.dtype}")
