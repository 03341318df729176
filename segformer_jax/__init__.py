"""SegFormer (Xie et al., NeurIPS 2021) in JAX and Flax."""

from segformer_jax.config import SegformerConfig
from segformer_jax.errors import CheckpointError, ConfigError
from segformer_jax.hub import from_pretrained, save_pretrained
from segformer_jax.models import (
                                  MixTransformer,
                                  ModelOutputs,
                                  SegformerDecodeHead,
                                  SegformerForImageClassification,
                                  SegformerForSemanticSegmentation,
                                  apply_with_outputs,
                                  init_variables,
)

__all__ = [
    "SegformerConfig", "ConfigError", "CheckpointError",
    "MixTransformer", "SegformerDecodeHead",
    "SegformerForSemanticSegmentation", "SegformerForImageClassification",
    "init_variables", "apply_with_outputs", "ModelOutputs", "from_pretrained", "save_pretrained",
]
__version__ = "0.1.0"
