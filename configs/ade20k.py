"""ADE20K-150 as NVlabs trains it: ``--config configs/ade20k.py:b2`` (b0…b5).

    python -m segformer_jax.train --config configs/ade20k.py:b2 --workdir DIR \\
        --config.data.manual_dir=/data/ade --config.model.init=/weights/mit-b2

``manual_dir`` holds ADEChallengeData2016.zip (or the extracted folder); ``model.init`` the
ImageNet backbone (a Hub ``nvidia/mit-b2`` directory or NVlabs ``mit_b2.pth``). 160k steps
of global batch 16 (8 GPUs × 2), 512² crops (640² for B5), whole-image validation at short
side 512 aligned to 32 every 16k steps.
"""

from segformer_jax.run_config import default_config, use_dataset, use_variant


def get_config(variant: str = "b0"):
    c = default_config()
    use_variant(c, variant)
    use_dataset(c, "ade20k", crop=640 if variant == "b5" else 512)
    c.data.num_workers = 8
    c.batch_size = 16
    c.total_steps = 160_000
    c.eval_every = 16_000
    c.checkpoint_every = 4000
    return c
