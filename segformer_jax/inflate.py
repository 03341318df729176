"""Pretrained RGB weights for a model of K input channels (RGB+NIR, RGB-D, multispectral).

Only the first stage's patch embedding sees the input bands, so only its kernel changes;
every other weight loads as it is. The rule (``inflate_input_kernel``):

* K >= 3: the first three input channels keep the RGB filters exactly, so a K-channel
  model given zeros in its extra bands computes what the RGB model computes. Each extra
  channel starts from the *mean* of the three RGB filters, rescaled (per output filter)
  to the mean norm of the RGB filters: averaging three filters that respond to different
  colours shrinks them, and the rescaling gives an extra band the response size a colour
  channel has, for a normalised input of the same spread (the bands are normalised per
  channel by ``data.mean`` / ``data.std``).
* K == 1 (grey images): the sum of the RGB filters, which responds to a grey image exactly
  as the RGB model responds to that image in colour-less RGB (R = G = B).
* K == 2: no rule is unambiguous; it is refused.

timm's ``adapt_input_conv`` instead repeats the RGB filters over the bands and scales all of
them by 3 / K, which changes the RGB response; we keep it, so that a pretrained model is
unchanged on the bands it was trained on.
"""

from __future__ import annotations

import numpy as np

from segformer_jax.errors import CheckpointError

RULE = ("RGB filters kept; each extra band's filter = the mean of the RGB filters, rescaled to "
        "their mean norm (one band: the sum of the RGB filters)")


def inflate_input_kernel(kernel: np.ndarray, num_channels: int, source: str = "checkpoint") -> np.ndarray:
    """An HWIO conv kernel of 3 input channels -> ``num_channels`` input channels (the rule
    in the module docstring). ``source`` names the weights in errors."""
    kernel = np.asarray(kernel, np.float32)
    if kernel.ndim != 4 or kernel.shape[2] != 3:
        raise CheckpointError(f"{source}: the first patch embedding has {kernel.shape[2]} input "
                              f"channels; only 3-channel (RGB) weights are inflated to {num_channels}")
    if num_channels == 3:
        return kernel
    if num_channels == 1:
        return kernel.sum(axis=2, keepdims=True)
    if num_channels < 3:
        raise CheckpointError(f"{source}: cannot adapt RGB weights to {num_channels} input channels "
                              "(1 sums the RGB filters, 3 or more keep them and add bands)")
    mean = kernel.mean(axis=2, keepdims=True)                          # (h, w, 1, out)
    target = np.sqrt((kernel ** 2).sum(axis=(0, 1))).mean(axis=0)      # (out,) mean RGB norm
    norm = np.sqrt((mean ** 2).sum(axis=(0, 1, 2)))                    # (out,)
    scale = np.where(norm > 0, target / np.where(norm > 0, norm, 1.0), 0.0)
    extra = np.repeat(mean * scale.astype(np.float32), num_channels - 3, axis=2)
    return np.concatenate([kernel, extra], axis=2)
