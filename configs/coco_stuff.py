"""COCO-Stuff 164k as the paper trains it: ``--config configs/coco_stuff.py:b2`` (b0…b5).

    python -m segformer_jax.train --config configs/coco_stuff.py:b2 --workdir DIR \\
        --config.data.manual_dir=/data/coco --config.model.init=/weights/mit-b2

``manual_dir`` holds train2017.zip, val2017.zip and stuffthingmaps_trainval2017.zip (or the
extracted folders; ``segformer_jax/data/coco_stuff.py``); ``model.init`` the ImageNet
backbone. The paper (Xie et al. 2021, Sec. 4.1): 80k steps of global batch 16, 512² crops,
the NVlabs AdamW recipe; whole-image validation at short side 512 aligned to 32, as for
ADE20K (every 8k steps here). 171 classes, 255 ignored.
"""

from segformer_jax.run_config import default_config, use_dataset, use_variant


def get_config(variant: str = "b0"):
    c = default_config()
    use_variant(c, variant)
    use_dataset(c, "coco_stuff", crop=512)
    c.data.num_workers = 8
    c.batch_size = 16
    c.total_steps = 80_000
    c.eval_every = 8000
    c.checkpoint_every = 4000
    return c
