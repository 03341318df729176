"""Flax modules of SegFormer: the MiT encoder, the All-MLP decode head and the two models."""

from segformer_jax.models.head import SegformerDecodeHead
from segformer_jax.models.mit import MixTransformer
from segformer_jax.models.segformer import (
                                            ModelOutputs,
                                            SegformerForImageClassification,
                                            SegformerForSemanticSegmentation,
                                            apply_with_outputs,
                                            init_variables,
)

__all__ = ["MixTransformer", "SegformerDecodeHead", "SegformerForSemanticSegmentation",
           "SegformerForImageClassification", "init_variables", "apply_with_outputs", "ModelOutputs"]
