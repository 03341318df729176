"""The conversion command line: Hub -> Orbax -> Hub, end to end in subprocesses."""

import os
import subprocess
import sys

import numpy as np

import segformer_jax as sj
from segformer_jax.checkpoint import load_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _convert(*args):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "segformer_jax.convert", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=600)


def test_hub_to_orbax_and_back(b0_hub_dir, tmp_path):
    hub, _ = b0_hub_dir
    done = _convert("to-orbax", hub, tmp_path / "orbax")
    assert done.returncode == 0, done.stderr
    config, variables, task = load_model(tmp_path / "orbax")
    ref_config, ref = sj.from_pretrained(hub)
    assert config == ref_config and task == "semantic_segmentation"
    import jax
    jax.tree.map(np.testing.assert_array_equal, variables, ref)

    done = _convert("to-hub", tmp_path / "orbax", tmp_path / "hub")
    assert done.returncode == 0, done.stderr
    from safetensors.numpy import load_file
    ours, theirs = load_file(tmp_path / "hub" / "model.safetensors"), load_file(hub / "model.safetensors")
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)

    # Refusals: one line naming the path, and nothing already there is touched.
    before = sorted(p.name for p in (tmp_path / "orbax").iterdir())
    done = _convert("to-orbax", hub, tmp_path / "orbax")
    assert done.returncode == 1 and "exists and is not empty" in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in (tmp_path / "orbax").iterdir()) == before
    done = _convert("to-hub", tmp_path / "missing", tmp_path / "x")
    assert done.returncode == 1 and "missing" in done.stderr and "Traceback" not in done.stderr
    done = _convert("to-orbax", tmp_path / "missing", tmp_path / "y")
    assert done.returncode == 1 and "no such checkpoint" in done.stderr
