"""Evaluation on every device: batches of one test shape, the same scores as image by image.

The 8-device comparison runs in a subprocess: the device count is fixed when jax starts
(``--xla_force_host_platform_device_count``).
"""

import json
import os
import subprocess
import sys

import numpy as np

from segformer_jax.evaluators import same_shape_groups

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import json, sys
import jax, numpy as np
from experiments.benchmark_eval import RandomSplit, compare
from segformer_jax import SegformerConfig
from segformer_jax.evaluators import EvalSettings

config = SegformerConfig.from_variant("b0", num_labels=4, hidden_sizes=(8, 16, 24, 32),
                                      depths=(1, 1, 1, 1), num_attention_heads=(1, 2, 3, 4),
                                      decoder_hidden_size=16)
# 11 images, 3 test shapes after the aligned resize (64x32 scale, multiples of 32): the
# last batch of each shape is partial and filled with dummy rows.
sizes = [(40, 60), (30, 62), (64, 30), (41, 59), (70, 33), (38, 61), (20, 20), (39, 58),
         (66, 31), (40, 60), (33, 29)]
split = RandomSplit(sizes, 4, name="synthetic")
out = {"devices": jax.local_device_count()}
for mode, settings in (("whole", EvalSettings(img_scale=(64, 32), size_divisor=32)),
                       ("slide", EvalSettings(img_scale=(64, 32), size_divisor=32, mode="slide",
                                              crop=32, stride=16))):
    one, every = compare(config, split, settings)
    out[mode] = {"same": bool(np.array_equal(one["confusion_matrix"], every["confusion_matrix"])),
                 "pixels": int(one["confusion_matrix"].sum()),
                 "compiles": [one["compiles"], every["compiles"]]}
print(json.dumps(out))
"""


def test_every_device_scores_exactly_as_image_by_image():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "PYTHONPATH": ROOT}
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["devices"] == 8
    pixels = sum(h * w for h, w in [(40, 60), (30, 62), (64, 30), (41, 59), (70, 33), (38, 61),
                                    (20, 20), (39, 58), (66, 31), (40, 60), (33, 29)])
    for mode in ("whole", "slide"):
        assert out[mode]["same"], mode
        assert out[mode]["pixels"] == pixels  # every real image counted once, no dummy row
    # One program per test shape, whether one image or eight run at a time.
    assert out["whole"]["compiles"] == [3, 3]


def _example(h, w, i):
    return {"image": np.zeros((1, h, w, 3), np.float32), "index": i}


def test_same_shape_groups_fill_batches_of_one_shape_and_flush_the_rest():
    shapes = [(32, 64), (64, 32), (32, 64), (32, 64), (64, 32), (32, 32), (32, 64)]
    examples = [_example(h, w, i) for i, (h, w) in enumerate(shapes)]
    groups = [[e["index"] for e in g] for g in same_shape_groups(examples, 3)]
    assert groups == [[0, 2, 3], [1, 4], [5], [6]]  # full ones first, then in order of shape
    # At most max_pending examples wait: past that, the fullest group leaves early, partial.
    bounded = [[e["index"] for e in g] for g in same_shape_groups(examples, 3, max_pending=2)]
    assert bounded == [[0, 2], [1, 4], [3, 6], [5]]
