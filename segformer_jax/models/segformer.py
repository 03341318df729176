"""The two SegFormer models users apply: semantic segmentation and image classification.

Both are linen modules used functionally::

    model = SegformerForSemanticSegmentation(config)
    variables = model.init(jax.random.key(0), images)            # {'params', 'batch_stats'}
    logits = model.apply(variables, images)                       # (N, ceil(H/4), ceil(W/4), K)
    logits, updates = model.apply(variables, images, train=True,
                                  rngs={'dropout': key}, mutable=['batch_stats'])
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from segformer_jax.config import SegformerConfig
from segformer_jax.constants import CLASSIFY, SEMSEG
from segformer_jax.models.head import SegformerDecodeHead
from segformer_jax.models.mit import MixTransformer, dense_init, scanned_mix_transformer

Dtype = Any


def encoder(parent: nn.Module) -> nn.Module:
    """The MiT encoder of a task model, named ``encoder``: each stage's blocks unrolled, or
    scanned (``parent.scan``). Both take and return the same parameter tree."""
    cls = scanned_mix_transformer(parent.is_initializing()) if parent.scan else MixTransformer
    return cls(parent.config, parent.dtype, parent.remat, parent.forms, name="encoder")


class SegformerForSemanticSegmentation(nn.Module):
    """MiT encoder + All-MLP decode head; float32 logits at 1/4 of the input resolution.

    ``scan``: run each stage's blocks under ``nn.scan`` (``models.mit.scanned_mix_transformer``).
    ``forms``: the ops' form set, ``ops.FORM_SETS`` ("auto": the CPU forms on a CPU backend,
    the XLA forms elsewhere; give "xla" to lower for an accelerator from a CPU host).
    """

    config: SegformerConfig
    dtype: Dtype = jnp.float32
    remat: bool = False
    scan: bool = False
    forms: str = "auto"

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        features = encoder(self)(images, train)
        return SegformerDecodeHead(self.config, self.dtype, self.forms, name="decode_head")(features, train)


class SegformerForImageClassification(nn.Module):
    """MiT encoder + mean over the last stage's tokens + a linear classifier (ImageNet MiT)."""

    config: SegformerConfig
    dtype: Dtype = jnp.float32
    remat: bool = False
    scan: bool = False
    forms: str = "auto"   # as SegformerForSemanticSegmentation's

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        features = encoder(self)(images, train)
        pooled = features[-1].astype(jnp.float32).mean(axis=(1, 2))
        return nn.Dense(self.config.num_labels, dtype=jnp.float32,
                        kernel_init=dense_init(self.config), name="classifier")(pooled)


TASKS = {
    SEMSEG: SegformerForSemanticSegmentation,
    CLASSIFY: SegformerForImageClassification,
}


@flax.struct.dataclass
class ModelOutputs:
    """A model's logits with what transformers returns for ``output_hidden_states=True,
    output_attentions=True``, in transformers' order.

    ``hidden_states``: each stage's output (after its LayerNorm), (N, h, w, C) here, NCHW in
    transformers; ``attentions``: each block's attention probabilities over the reduced
    keys, (N, heads, h·w, h'·w') in both (queries and keys in row-major pixel order), float32.
    A pytree: a jitted function may return it.
    """

    logits: jax.Array
    hidden_states: tuple[jax.Array, ...]
    attentions: tuple[jax.Array, ...]


_BLOCK_NAME = re.compile(r"block_(\d+)_(\d+)$")
_STAGE_NAME = re.compile(r"blocks_(\d+)$")


def encoder_outputs(intermediates: Mapping[str, Any]) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]:
    """``(hidden_states, attentions)`` from the ``intermediates`` collection of an ``apply``
    with ``mutable=["intermediates"]``: the encoder's sown values, blocks in order (a
    scanned encoder's per-stage stacks split back into blocks)."""
    tree = intermediates.get("intermediates", intermediates)["encoder"]
    attentions: list[tuple[tuple[int, int], jax.Array]] = []
    for name, sub in tree.items():
        if (match := _BLOCK_NAME.match(name)):
            attentions.append(((int(match[1]), int(match[2])), sub["attention"]["attentions"][0]))
        elif (match := _STAGE_NAME.match(name)):
            stacked = sub["layer"]["attention"]["attentions"][0]
            attentions += [((int(match[1]), j), stacked[j]) for j in range(stacked.shape[0])]
    return tuple(tree["hidden_states"]), tuple(a for _, a in sorted(attentions, key=lambda t: t[0]))


def apply_with_outputs(model: nn.Module, variables: Mapping[str, Any], images: jax.Array,
                       train: bool = False, rngs: Mapping[str, jax.Array] | None = None) -> ModelOutputs:
    """``model.apply`` that also returns every stage's output and every block's attention
    probabilities (``ModelOutputs``), as transformers does when asked. A plain ``apply``
    computes neither: the probabilities are only formed when the ``intermediates``
    collection is mutable."""
    logits, state = model.apply(variables, images, train, rngs=rngs, mutable=["intermediates"])
    hidden_states, attentions = encoder_outputs(state)
    return ModelOutputs(logits, hidden_states, attentions)


def _transformers_init(abstract: Any, key: jax.Array, std: float) -> Any:
    """Fills a tree of shapes as transformers' ``_init_weights`` does.

    Kernels ~ N(0, std), biases and BN means 0, LayerNorm/BN scales and BN variances 1: the
    same distributions as the modules' own initialisers, drawn as ONE normal vector split
    over the kernels. (``model.init`` draws one threefry stream per kernel, and XLA:CPU takes
    ~30 s to compile B2's init and ~100 s for B5's; this compiles in about a second.)
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    names = [str(getattr(path[-1], "key", path[-1])) for path, _ in leaves]
    is_normal = [not (n.endswith("bias") or n in ("scale", "mean", "var")) for n in names]
    total = sum(math.prod(leaf.shape) for (_, leaf), normal in zip(leaves, is_normal) if normal)
    draws = std * jax.random.normal(key, (total,), jnp.float32)
    out, offset = [], 0
    for (_, leaf), name, normal in zip(leaves, names, is_normal):
        if normal:
            size = math.prod(leaf.shape)
            out.append(draws[offset:offset + size].reshape(leaf.shape))
            offset += size
        else:
            fill = jnp.ones if name in ("scale", "var") else jnp.zeros
            out.append(fill(leaf.shape, leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


def init_variables(config: SegformerConfig, task: str = SEMSEG,
                   seed: int = 0) -> dict[str, Any]:
    """Fresh variables of the model for ``task`` with transformers' initialisation.

    No parameter shape depends on the image size, so shapes come from a small input.
    """
    model = TASKS[task](config)
    images = jax.ShapeDtypeStruct((1, 64, 64, config.num_channels), jnp.float32)
    abstract = jax.eval_shape(model.init, jax.random.key(0), images)
    return jax.jit(lambda key: _transformers_init(abstract, key, config.initializer_range))(
        jax.random.key(seed))


def init_head_variables(config: SegformerConfig, task: str = SEMSEG,
                        seed: int = 0) -> dict[str, Any]:
    """Fresh variables of the task head alone, laid out as in the whole model's tree.

    Cheaper than ``init_variables`` for deep encoders: the encoder is never traced.
    """
    if task == CLASSIFY:
        head = nn.Dense(config.num_labels)
        inputs: Any = jax.ShapeDtypeStruct((1, config.hidden_sizes[-1]), jnp.float32)
        wrap = "classifier"
    else:
        head = SegformerDecodeHead(config)
        inputs = tuple(jax.ShapeDtypeStruct((1, 2, 2, c), jnp.float32) for c in config.hidden_sizes)
        wrap = "decode_head"
    abstract = jax.eval_shape(head.init, jax.random.key(0), inputs)
    abstract = {name: {wrap: tree} for name, tree in abstract.items()}
    return jax.jit(lambda key: _transformers_init(abstract, key, config.initializer_range))(
        jax.random.key(seed))
