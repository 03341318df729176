"""MiT pretraining on ImageNet-1k, as PVT v2 (whai362/PVT ``classification/``) and DeiT
(facebookresearch/deit ``main.py``) do it: ``--config configs/imagenet.py:b2`` (b0…b5;
``:b2,batch=4096`` for another global batch, the learning rate scaled with it).

    python -m segformer_jax.train --config configs/imagenet.py:b2 --workdir DIR \\
        --config.data.manual_dir=/data/imagenet   # ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar

The recipe (``run_config.use_imagenet_recipe``): AdamW, lr 5e-4 × batch / 512 (1e-3 at PVT's
8 GPUs × 128), weight decay 0.05 on every parameter of two or more dimensions (none on
biases and norm scales: timm's rule), eps 1e-8; timm's cosine schedule from 1e-6 over 5
warm-up epochs, down to 1e-5 at 300 epochs, here stepped every step (PVT steps it once an
epoch); gradient norm clipped at 1.0 for b3-b5 (PVT v2's configs); stochastic depth 0.1
(b0-b2) / 0.3 (b3-b5); label smoothing 0.1; Mixup 0.8 / CutMix 1.0, one of them per batch
(switch 0.5); RandAugment rand-m9-mstd0.5-inc1; random erasing 0.25 (per-pixel noise);
RandomResizedCrop to 224 (scale 0.08-1, ratio 3/4-4/3, bicubic) and flip. Colour jitter 0.4
is among PVT's arguments, but timm applies it only without RandAugment, so it is not here
either. Test: short side 256 (bicubic), centre 224. An epoch is 1281167 // batch steps.
Not reproduced: PVT's repeated-augmentation sampler (each image thrice an epoch, on
different GPUs) and its mixed precision (``--config.model.dtype=bfloat16`` is ours).
"""

from segformer_jax.run_config import default_config, use_imagenet_recipe


def parse(arg: str | None) -> tuple[str, int]:
    """``"b2"`` or ``"b2,batch=4096"`` -> (variant, global batch)."""
    variant, *rest = (arg or "b0").split(",")
    options = dict(item.split("=", 1) for item in rest if "=" in item)
    if len(options) != len(rest) or set(options) - {"batch"}:
        raise ValueError(f"configs/imagenet.py:{arg}: the form is VARIANT[,batch=N]")
    return variant, int(options.get("batch", 1024))


def get_config(arg: str | None = "b0"):
    variant, batch = parse(arg)
    c = default_config()
    use_imagenet_recipe(c, variant, batch)
    c.data.name = "imagenet2012"
    c.data.train_split, c.data.eval_split = "train", "validation"
    c.data.num_workers = 16
    c.classification.eval_batch_size = 256
    c.log_every = 100
    return c
