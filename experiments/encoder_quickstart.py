"""Encoder ablations, pretrained: B0 and two encoder ablations, each with its encoder
pretrained on the embedded classification set and then fine-tuned, beside the same from
scratch, each over three seeds (mean ± standard deviation). Sized for under 30 minutes on a
2-core CPU (measured: see experiments/README.md)::

    python -m experiments.sweep experiments/encoder_quickstart.py --workdir workdirs/encoder_quickstart

The paper studies its encoder pretrained on ImageNet-1k, never from scratch; a changed
encoder has no public checkpoint, so each pretrained point trains its own first
(``"pretrain": True``: PRETRAIN, the classification quickstart shortened to 400 steps, with
the point's encoder and seed), then fine-tunes from it. The fine-tune stage is
variants_quickstart.py's: configs/quickstart.py with 64² crops, batch 8, 200 steps.

* sr_ratios (1, 1, 1, 1): full attention at every stage instead of keys/values reduced by
  8, 4, 2, 1;
* mix_ffn_conv False: Mix-FFN without its 3×3 depthwise conv (no positional information).

The seeds change the initialisation, the data order, the augmentations and the dropout of
both stages; with one seed the sweep takes a third of the time (``SEEDS = [0]``).
"""

BASE = "configs/quickstart.py"
BASE_OVERRIDES = {
    "total_steps": 200,
    "batch_size": 8,
    "data.crop_size": (64, 64),
    "data.img_scale": (96, 96),
    "data.eval_scale": (64, 64),
    "data.options": {"num_train": 1000, "num_validation": 50, "size_range": (96, 96)},
    "optimizer.warmup_steps": 20,
    "eval_every": 200,
    "checkpoint_every": 100,
    "log_every": 20,
}
PRETRAIN = {
    "config": "configs/classification_quickstart.py",
    "total_steps": 400,
    "eval_every": 400,
    "checkpoint_every": 200,
}
_ABLATIONS = [("b0", {}), ("b0-sr1", {"model.overrides.sr_ratios": (1, 1, 1, 1)}),
             ("b0-no-mixffn-conv", {"model.overrides.mix_ffn_conv": False})]
POINTS = [{"name": f"{name}{suffix}", **changes, **({"pretrain": True} if suffix else {})}
          for name, changes in _ABLATIONS for suffix in ("", "-pretrained")]
SEEDS = [0, 1, 2]
MEASURE = {"size": None, "batch": 1, "warmup": 2, "repeats": 10, "train_warmup": 1,
           "train_repeats": 5}
