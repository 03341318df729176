"""Cityscapes (19 classes) as NVlabs trains it: ``--config configs/cityscapes.py:b5``.

    python -m segformer_jax.train --config configs/cityscapes.py:b5 --workdir DIR \\
        --config.data.manual_dir=/data/cityscapes --config.model.init=/weights/mit-b5

``manual_dir`` holds leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip. 160k steps of
global batch 8 (8 GPUs × 1), 1024² crops. Validation during training is whole-image at the
native 1024×2048; the paper's number uses sliding windows (1024 crops, stride 768):
``python -m segformer_jax.evaluate --dataset cityscapes`` does that on the final checkpoint.
"""

from segformer_jax.run_config import default_config, use_dataset, use_variant


def get_config(variant: str = "b0"):
    c = default_config()
    use_variant(c, variant)
    use_dataset(c, "cityscapes")
    c.data.num_workers = 8
    c.batch_size = 8
    c.total_steps = 160_000
    c.eval_every = 4000
    c.checkpoint_every = 4000
    return c
