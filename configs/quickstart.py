"""Quickstart: SegFormer-B0 from scratch on the embedded synthetic dataset, on a 2-core CPU.

    python -m segformer_jax.train --config configs/quickstart.py --workdir workdirs/quickstart

Sized to finish in under 10 minutes on 2 CPU cores. From scratch a transformer wants a
larger learning rate than the fine-tuning recipe's 6e-5, and a shorter warmup.
"""

from segformer_jax.run_config import default_config, use_dataset


def get_config(arg=None):
    c = default_config()
    c.model.variant = "b0"
    # 96² crops of images rescaled into (256, 128) before the 0.5–2.0 random rescale; test at
    # short side 128 aligned to 32 (SegFormer's AlignedResize): segformer_jax/data/presets.py.
    use_dataset(c, "synthetic")
    c.data.options = {"num_train": 1000, "num_validation": 100}
    c.batch_size = 8
    c.total_steps = 500
    c.optimizer.learning_rate = 6e-4
    c.optimizer.warmup_steps = 50
    c.eval_every = 250
    c.checkpoint_every = 250
    c.log_every = 20
    return c
