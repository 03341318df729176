"""Scale-out: the same training on 1 device, 8 devices (data, data x FSDP) and 2 processes.

Both tests run in subprocesses: the device count is fixed when jax starts
(``--xla_force_host_platform_device_count``), and ``jax.distributed`` once per process.

Tolerances. The meshes compute the same float32 function with reductions split
differently, so results differ by reassociation: ~1e-7 relative per reduction (measured: losses
equal to 1.2e-7, BN statistics to 4e-7 relative, parameters to 5e-6 after 3 AdamW steps).
Adam divides by the gradient's RMS, so a parameter whose gradient is zero up to rounding
(the decode head's linear_c biases and the last LayerNorm bias are followed by BatchNorm,
which removes any constant; attention key biases shift all logits of a query by the same
amount, which softmax ignores) moves by +-lr in a direction set by rounding noise. Those
leaves are found from the reference run's Adam second moment (below 1e-12 of the largest)
and are only held to that bound; every other leaf must agree to 2e-5, 500x below one
AdamW step of the head (lr 1e-2): a wrong sharding (per-device BatchNorm, a per-device loss
mean, a lost gradient reduction) changes parameters by O(lr).
"""

import json
import os
import pathlib
import pickle
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import FAST_COMPILE_FLAG
from test_train import ROOT, _run, train_args


def _env(devices: int) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE_FLAG}"}


def _flat(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree.leaves_with_path(tree)}


def _second_moments(opt_state) -> dict[str, np.ndarray]:
    """Adam's ``nu`` per parameter, keyed like ``_flat(params)``, from any optimiser-state tree
    (optax namedtuples or the dicts Orbax restores them as)."""
    out = {}
    for key, value in _flat(opt_state).items():
        for marker in ("['nu']", ".nu"):
            if marker in key:
                out[key.split(marker, 1)[1]] = value
    return out


def _compare_params(reference: dict, other: dict, nu: dict, bound_for_zero_grad: float,
                    limit_others: float = 2e-5) -> None:
    ref, oth = _flat(reference), _flat(other)
    assert ref.keys() == oth.keys()
    largest = max(float(v.max()) for v in nu.values())
    zero_grad = {k for k, v in nu.items() if float(v.max()) < 1e-12 * largest}
    assert 0 < len(zero_grad) < len(ref) // 3, zero_grad  # the analysis above, not half the model
    for key in ref:
        diff = float(np.max(np.abs(ref[key].astype(np.float64) - oth[key])))
        limit = bound_for_zero_grad if key in zero_grad else limit_others
        assert diff <= limit, f"{key}: differs by {diff:.3g} (limit {limit:.3g})"


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded")
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "sharded_steps.py"), str(out)],
                          env=_env(8), capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out / "results.pkl", "rb") as f:
        return pickle.load(f)


@pytest.mark.slow
@pytest.mark.parametrize("mesh", ["data 8", "data 4 x fsdp 2"])
def test_sharded_steps_match_one_device(sharded, mesh):
    reference, run = sharded["runs"]["1 device"], sharded["runs"][mesh]
    np.testing.assert_allclose(run["losses"], reference["losses"], rtol=1e-5)
    # SyncBN: the running statistics after one step are those of the global batch of 8
    # different images (each device holds one), as on one device.
    for key, value in _flat(reference["bn_after_first"]).items():
        np.testing.assert_allclose(_flat(run["bn_after_first"])[key], value, rtol=1e-5, atol=1e-7,
                                   err_msg=key)
    # 3 steps of AdamW, head lr 1e-3 x 10: a zero-gradient leaf moves at most 1e-2 per step.
    _compare_params(reference["state"]["params"], run["state"]["params"],
                    _second_moments(reference["state"]["opt_state"]), bound_for_zero_grad=2 * 3 * 1e-2)
    for key, value in _flat(reference["state"]["batch_stats"]).items():
        np.testing.assert_allclose(_flat(run["state"]["batch_stats"])[key], value, rtol=1e-4, atol=1e-3,
                                   err_msg=key)


@pytest.mark.slow
def test_fsdp_really_shards_the_state(sharded):
    run = sharded["runs"]["data 4 x fsdp 2"]
    specs = _flat(jax.tree.map(lambda s: "fsdp" in s, run["specs"], is_leaf=lambda x: isinstance(x, tuple)))
    params = _flat(run["state"]["params"])
    shards = _flat(jax.tree.map(np.zeros, run["shard_shapes"], is_leaf=lambda x: isinstance(x, tuple)))
    sharded_keys = [k for k in params if shards[k].shape != params[k].shape]
    # Every parameter of 64+ elements with a dimension divisible by 2 is split in two.
    expected = [k for k, v in params.items() if v.size >= 64 and any(d % 2 == 0 for d in v.shape)]
    assert sorted(sharded_keys) == sorted(expected)
    for k in sharded_keys:
        assert shards[k].size * 2 == params[k].size
    assert any(specs.values())


@pytest.mark.slow
def test_bf16_steps_stay_finite_and_close_to_float32(sharded):
    reference, run = sharded["runs"]["1 device"], sharded["runs"]["bf16 1 device"]
    for key, value in _flat(run["state"]).items():
        assert np.all(np.isfinite(value)), key
        if value.dtype.kind == "f":  # parameters, moments and BN statistics stay float32
            assert value.dtype == np.float32, key
    # bfloat16 keeps 8 significant bits (relative rounding 2**-9 = 2e-3 per operation); the
    # loss is a mean over 8x32x32 pixels, where rounding errors average out: measured 4e-5.
    np.testing.assert_allclose(run["losses"], reference["losses"], rtol=2e-3)


@pytest.mark.slow
def test_checkpoints_restore_on_another_mesh(sharded):
    runs = sharded["runs"]
    for name, source in [("fsdp 4x2 -> 1 device", "data 4 x fsdp 2"), ("1 device -> fsdp 1x8", "1 device")]:
        trip = sharded["trips"][name]
        assert trip["mismatched_shardings"] == [], name
        for key, value in _flat(runs[source]["state"]).items():
            np.testing.assert_array_equal(_flat(trip["state"])[key], value, err_msg=f"{name}: {key}")


# --------------------------------------------------------------------------------------
# Two real processes (jax.distributed over localhost, gloo CPU collectives)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _state(step_dir: pathlib.Path):
    """A training state restored in this (single-device) process, whatever wrote it."""
    import orbax.checkpoint as ocp

    from segformer_jax.checkpoint import local_target
    with ocp.StandardCheckpointer() as c:
        tree = c.metadata(step_dir / "state")
        tree = getattr(getattr(tree, "item_metadata", None), "tree", tree)
        return c.restore(step_dir / "state", local_target(tree))


def _losses(workdir: pathlib.Path) -> list[float]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["train/loss"] for line in lines if "train/loss" in line]


@pytest.mark.slow
def test_two_processes_train_like_one_and_their_checkpoint_resumes_in_one(tmp_path):
    common = ("--config.batch_size=8", "--config.checkpoint_every=4")
    single = _run(tmp_path / "single", tmp_path / "tfds", *common, total=8, env=_env(1))
    assert single.returncode == 0, single.stderr[-3000:]

    port = _free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "segformer_jax.train", *train_args(tmp_path / "multi", tmp_path / "tfds", 8),
         *common, "--config.mesh.fsdp=2", "--config.mesh.fsdp_min_size=64",
         f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
        env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    # Process 0 alone reports (and writes metrics.jsonl, read below).
    assert "validation mIoU" in outputs[0][0] and "validation mIoU" not in outputs[1][0]

    # 2 processes x 2 devices, fsdp 2: the same 8 steps as one process on one device. The
    # first steps agree to ~1e-6 (summation order across devices); from step 4, at the peak
    # learning rate, AdamW amplifies those differences in near-zero gradients (the bound
    # below), measured up to 5e-5. A sharding mistake (a missing all-reduce, a batch counted
    # twice) moves the loss by percent.
    np.testing.assert_allclose(_losses(tmp_path / "multi"), _losses(tmp_path / "single"), rtol=2e-4)
    reference = _state(tmp_path / "single" / "checkpoints" / "8")
    nu = _second_moments(reference["opt_state"])
    # 8 steps, peak head lr 6e-4 x 10: a zero-gradient leaf moves at most 6e-3 per step. The
    # other leaves: 8 steps at the peak learning rate amplify the reassociation noise more
    # than 3 steps do (measured up to 8e-5, in the decode head's linear_c kernels); 4e-4 is
    # still 15x below one AdamW step of the head, which any sharding mistake moves them by.
    _compare_params(reference["params"], _state(tmp_path / "multi" / "checkpoints" / "8")["params"],
                    nu, bound_for_zero_grad=2 * 8 * 6e-3, limit_others=4e-4)

    # The step-4 checkpoint the two processes wrote resumes in one process, on one device.
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    os.rename(tmp_path / "multi" / "checkpoints" / "4", resumed / "checkpoints" / "4")
    done = _run(resumed, tmp_path / "tfds", *common, total=8, env=_env(1))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stdout
    _compare_params(reference["params"], _state(resumed / "checkpoints" / "8")["params"], nu,
                    bound_for_zero_grad=2 * 8 * 6e-3, limit_others=4e-4)


# --------------------------------------------------------------------------------------
# The pieces, without compiling anything


def test_leaf_spec_splits_the_largest_divisible_dimension():
    from segformer_jax.sharding import leaf_spec
    assert leaf_spec((256, 1024), fsdp=8) == jax.P(None, "fsdp")
    assert leaf_spec((1024, 256), fsdp=8) == jax.P("fsdp", None)
    assert leaf_spec((3, 3, 1, 2000), fsdp=8) == jax.P(None, None, None, "fsdp")
    assert leaf_spec((150, 250), fsdp=8, min_size=1) == jax.P()       # nothing divides: replicate
    assert leaf_spec((150, 256), fsdp=8, min_size=1) == jax.P(None, "fsdp")
    assert leaf_spec((256,), fsdp=8) == jax.P()                       # below min_size
    assert leaf_spec((1024, 256), fsdp=1) == jax.P()


def test_mesh_and_batch_errors_name_the_keys():
    from segformer_jax.config import ConfigError
    from segformer_jax.sharding import check_batch, make_mesh
    devices = jax.devices()[:1]
    with pytest.raises(ConfigError, match="mesh.fsdp=2"):
        make_mesh(-1, 2, devices=devices)
    with pytest.raises(ConfigError, match="mesh.data=3"):
        make_mesh(3, 1, devices=devices)
    mesh = make_mesh(devices=devices)
    check_batch(5, mesh)  # one device takes any batch
    fake = type("Mesh", (), {"devices": np.empty(8), "shape": {"data": 4, "fsdp": 2}})()
    with pytest.raises(ConfigError, match="batch_size=12 must be a multiple of the 8 devices"):
        check_batch(12, fake)


def test_process_rows_are_this_process_slice_of_the_batch():
    from segformer_jax.sharding import batch_sharding, make_mesh, process_rows
    assert process_rows(batch_sharding(make_mesh(devices=jax.devices()[:1])), 6) == range(0, 6)


def test_distributed_initialisation_is_chosen_from_flags_and_environment(monkeypatch):
    from segformer_jax import distributed
    from segformer_jax.config import ConfigError
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    assert distributed.cluster_detected({}) is None
    assert distributed.cluster_detected({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
    assert distributed.cluster_detected({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}) == "SLURM"
    assert distributed.cluster_detected({"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}) == "TPU pod slice"
    assert distributed.cluster_detected({"TPU_WORKER_HOSTNAMES": "t0"}) is None

    assert distributed.initialize(environ={}) is False and calls == []
    assert distributed.initialize(environ={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2"}) is True
    assert calls.pop() == {}  # JAX reads SLURM's variables itself
    assert distributed.initialize("h:1", 2, 1, environ={}) is True
    assert calls.pop() == {"coordinator_address": "h:1", "num_processes": 2, "process_id": 1}
    with pytest.raises(ConfigError, match="--num_processes, --process_id missing"):
        distributed.initialize("h:1", environ={})
    with pytest.raises(ConfigError, match="--process_id 2 is not in 0..1"):
        distributed.initialize("h:1", 2, 2, environ={})
    assert calls == []
