"""SegFormer B0, B1, B2 and four ablations around B0 on the embedded synthetic dataset.

Sized to finish in under 30 minutes on a 2-core CPU (measured: see experiments/README.md)::

    python -m experiments.sweep experiments/variants_quickstart.py --workdir workdirs/sweep_quickstart

The base is configs/quickstart.py (from scratch, lr 6e-4) shrunk: 64² crops, batch 8,
200 steps, square 96² images (so validation, at 64², compiles one program per point).
The ablations change one thing each, as the paper's Table 1 b-e do:

* decoder_hidden_size 128 instead of 256 (the MLP decoder's width, Table 1b);
* sr_ratios (1, 1, 1, 1): full attention at every stage instead of keys/values reduced by
  8, 4, 2, 1 (quadratic in tokens: affordable at 64², not at 512²);
* mix_ffn_conv False: Mix-FFN without its 3×3 depthwise conv (no positional information
  at all: there are no positional encodings either; Table 1c compares against them);
* drop_path_rate 0.0 instead of 0.1 (stochastic depth off).

200 steps from scratch rank the models only roughly: the point is the machinery and the
compute/size axes; the ADE20K sweep (experiments/ade20k_full.py) is the real comparison.
"""

BASE = "configs/quickstart.py"
BASE_OVERRIDES = {
    "total_steps": 200,
    "batch_size": 8,
    "data.crop_size": (64, 64),
    "data.img_scale": (96, 96),          # 96² images, randomly rescaled 0.5-2x, then cropped
    "data.eval_scale": (64, 64),         # validation at 64² (the crop size)
    "data.options": {"num_train": 1000, "num_validation": 50, "size_range": (96, 96)},
    "optimizer.warmup_steps": 20,
    "eval_every": 200,
    "checkpoint_every": 100,
    "log_every": 20,
}
GRID = {"model.variant": ["b0", "b1", "b2"]}
POINTS = [
    {"name": "b0-dec128", "model.overrides.decoder_hidden_size": 128},
    {"name": "b0-sr1", "model.overrides.sr_ratios": (1, 1, 1, 1)},
    {"name": "b0-no-mixffn-conv", "model.overrides.mix_ffn_conv": False},
    {"name": "b0-no-droppath", "model.overrides.drop_path_rate": 0.0},
]
MEASURE = {"size": None, "batch": 1, "warmup": 2, "repeats": 10, "train_warmup": 1,
           "train_repeats": 5}
