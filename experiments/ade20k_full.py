"""ADE20K-150, SegFormer B0…B5 at the NVlabs recipe: the paper's Table 1 sweep, for a cluster.

Each point is ``configs/ade20k.py:bX``: 160k steps of batch 16, 512² crops (640² for B5),
AdamW 6e-5 with poly decay, from the ImageNet-1k MiT backbone, whole-image validation at
short side 512 (640) every 16k steps. Parameters and GFLOPs are measured at the crop size,
as the paper's Table 1 counts them. One job per point::

    export ADE20K_DIR=/data/ade MIT_WEIGHTS_DIR=/weights    # ADEChallengeData2016.zip, mit-bX/
    python -m experiments.sweep experiments/ade20k_full.py --workdir /shared/sweeps/ade20k \\
        --launcher "sbatch --job-name=segformer-{name} --gres=gpu:1 --output={log} --wrap '{cmd}'"
    # ... when the jobs are done:
    python -m experiments.sweep experiments/ade20k_full.py --workdir /shared/sweeps/ade20k --collect

``MIT_WEIGHTS_DIR/mit-bX`` is a Hub ``nvidia/mit-bX`` directory or an NVlabs ``mit_bX.pth``
(anything ``segformer_jax.from_pretrained`` reads). A job that is preempted resumes from its
last checkpoint (every 4k steps) when submitted again (``--resubmit``).
"""

import os

_ADE20K_DIR = os.environ.get("ADE20K_DIR", "/data/ade")
_WEIGHTS = os.environ.get("MIT_WEIGHTS_DIR", "/weights")

BASE = "configs/ade20k.py"
BASE_OVERRIDES = {"data.manual_dir": _ADE20K_DIR}
POINTS = [{"name": v, "config": f"configs/ade20k.py:{v}", "model.init": f"{_WEIGHTS}/mit-{v}"}
          for v in ("b0", "b1", "b2", "b3", "b4", "b5")]
MEASURE = {"size": None, "batch": 1, "warmup": 3, "repeats": 20, "train_warmup": 3,
           "train_repeats": 20}
