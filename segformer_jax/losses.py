"""The semantic segmentation loss, as transformers and mmseg compute it.

Logits come at 1/4 resolution and are upsampled (bilinear, ``align_corners=False``) to the
label size before the loss, as in both references.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from segformer_jax.constants import IGNORE_INDEX
from segformer_jax.models.ops import resize_bilinear


def segmentation_loss(logits: jax.Array, labels: jax.Array, ignore_index: int = IGNORE_INDEX,
                      reduction: str = "valid") -> jax.Array:
    """Cross-entropy of NHWC ``logits`` against (N, H, W) integer ``labels``.

    reduction="valid": mean over non-ignored pixels (transformers' ``CrossEntropyLoss``).
    reduction="all":   mean over all pixels, ignored ones counting 0 (mmseg 0.x, NVlabs).
    With one label (binary segmentation) it is transformers' BCE-with-logits on the single
    channel, masked by valid pixels and averaged over all pixels.
    """
    if reduction not in ("valid", "all"):
        raise ValueError(f"reduction must be 'valid' or 'all'; got {reduction!r}")
    logits = resize_bilinear(logits.astype(jnp.float32), labels.shape[1:3])
    valid = labels != ignore_index
    if logits.shape[-1] == 1:
        valid = valid & (labels >= 0)
        target = jnp.where(valid, labels, 0).astype(jnp.float32)
        losses = optax.sigmoid_binary_cross_entropy(logits[..., 0], target)
        return jnp.sum(jnp.where(valid, losses, 0.0)) / labels.size
    safe = jnp.where(valid, labels, 0)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
    total = jnp.sum(jnp.where(valid, losses, 0.0))
    if reduction == "all":
        return total / labels.size
    return total / jnp.maximum(jnp.sum(valid), 1)
