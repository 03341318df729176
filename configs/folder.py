"""Your own data: ``--config configs/folder.py:b0 --config.data.manual_dir=ROOT``.

ROOT holds ``images/<split>/*.jpg|png``, ``masks/<split>/<same stem>.png`` (class ids, 255 =
ignore) and ``classes.txt`` (one name per line, line i = class i); the splits are
``train`` and ``validation``. Fine-tunes from ``--config.model.init`` (a Hub SegFormer or
MiT directory, an NVlabs ``.pth``); the recipe is NVlabs' with a run length for small sets.
"""

from segformer_jax.run_config import default_config, use_dataset, use_variant


def get_config(variant: str = "b0"):
    c = default_config()
    use_variant(c, variant)
    use_dataset(c, "folder")
    c.batch_size = 8
    c.total_steps = 20_000
    c.optimizer.warmup_steps = 500
    c.eval_every = 2000
    c.checkpoint_every = 2000
    return c
