"""Training: a tiny run end to end, exact resume after SIGKILL, and the refusals."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import FAST_COMPILE

import segformer_jax as sj
from segformer_jax import tasks
from segformer_jax.optim import Recipe, make_optimizer
from segformer_jax.run_config import default_config
from segformer_jax.train import initial_state, make_train_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_OVERRIDES = ["--config.model.overrides.hidden_sizes=(8, 16, 24, 32)",
                  "--config.model.overrides.num_attention_heads=(1, 2, 3, 4)",
                  "--config.model.overrides.depths=(1, 1, 1, 1)",
                  "--config.model.overrides.decoder_hidden_size=16"]


def test_a_few_steps_lower_the_loss():
    config = sj.SegformerConfig.from_variant("b0", num_labels=3, hidden_sizes=(8, 16, 24, 32),
                                             num_attention_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1),
                                             decoder_hidden_size=16)
    model = sj.SegformerForSemanticSegmentation(config)
    tx = make_optimizer(Recipe(learning_rate=1e-3, warmup_steps=0, total_steps=100))
    state = initial_state(config, tx, seed=0)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((2, 32, 32, 3), dtype=np.float32)
    labels = (images[..., 0] > 0).astype(np.int32) + (images[..., 1] > 1)  # learnable from pixels
    step = jax.jit(make_train_step(model, tx, seed=0, objective=tasks.objective(default_config(), 3, 255)),
                   compiler_options=FAST_COMPILE)
    losses = []
    for _ in range(8):
        state, out = step(state, {"image": images, "label": labels})
        losses.append(float(out["loss"]))
    # Eight AdamW steps at lr 1e-3 on one batch: measured 1.085 -> 0.924, falling every step.
    assert losses[-1] < 0.9 * losses[0], losses
    assert int(state["step"]) == 8


def train_args(workdir, data_dir, total):
    """The training command line for a tiny model on a tiny synthetic split."""
    return ["--config", os.path.join(ROOT, "configs/quickstart.py"), "--workdir", str(workdir),
            f"--config.total_steps={total}", "--config.batch_size=4",
            "--config.checkpoint_every=4", "--config.eval_every=1000", "--config.log_every=1",
            "--config.data.crop_size=(32, 32)", "--config.data.img_scale=(64, 32)",
            f"--config.data.data_dir={data_dir}", "--config.data.options.num_train=16",
            "--config.data.options.num_validation=2", "--config.data.eval_scale=(64, 32)",
            "--config.optimizer.warmup_steps=2", "--config.data.num_workers=1", *TINY_OVERRIDES]


def _run(workdir, data_dir, *overrides, total=12, wait=True, env=None, **popen):
    """The training command in a subprocess (``env``: variables set over this process's)."""
    args = [sys.executable, "-m", "segformer_jax.train", *train_args(workdir, data_dir, total), *overrides]
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    if wait:
        return subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    return subprocess.Popen(args, env=env, text=True, **popen)


def _final_state(workdir, step):
    import orbax.checkpoint as ocp
    with ocp.StandardCheckpointer() as c:
        return c.restore(workdir / "checkpoints" / str(step) / "state")


def _kill_once_saved(proc: subprocess.Popen, checkpoint) -> None:
    """SIGKILL a training process (stdout piped) once ``checkpoint`` is in place (Orbax
    renames it there when complete): no chance to save anything, a real crash."""
    for line in proc.stdout:
        if line.startswith("step ") and checkpoint.is_dir():
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    done = _run(root / "a", root / "tfds")
    assert done.returncode == 0, done.stderr[-3000:]
    return root, _final_state(root / "a", 12), done.stdout


@pytest.mark.slow
def test_resume_after_sigkill_is_exact(uninterrupted):
    root, reference, _ = uninterrupted
    proc = _run(root / "b", root / "tfds", wait=False, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    _kill_once_saved(proc, root / "b" / "checkpoints" / "4")
    saved = sorted(int(p.name) for p in (root / "b" / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and max(saved) < 12

    done = _run(root / "b", root / "tfds")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stdout and f"(step {max(saved)})" in done.stdout
    resumed = _final_state(root / "b", 12)
    leaves_a, tree_a = jax.tree.flatten(reference)
    leaves_b, tree_b = jax.tree.flatten(resumed)
    assert tree_a == tree_b
    for a, b in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(a, b)  # bitwise: same batches, same random numbers
    # The steps the killed run logged after its last checkpoint are not repeated.
    steps = [json.loads(line)["step"] for line in (root / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13)), steps


def test_run_writes_metrics_and_progress(uninterrupted):
    root, state, stdout = uninterrupted
    assert "step     12/12  loss" in stdout and "img/s" in stdout and "ETA" in stdout
    assert "mIoU" in stdout and "background" in stdout  # final per-class table
    lines = (root / "a" / "metrics.jsonl").read_text().splitlines()
    assert any('"train/loss"' in line for line in lines) and any('"val/mIoU"' in line for line in lines)
    assert [json.loads(line)["step"] for line in lines] == list(range(1, 13))  # one record a step
    resolved = json.loads((root / "a" / "config.json").read_text())
    assert resolved["total_steps"] == 12 and resolved["batch_size"] == 4
    assert resolved["model"]["overrides"]["depths"] == [1, 1, 1, 1]
    assert any(p.name.startswith("events") for p in (root / "a" / "tensorboard").iterdir())
    assert int(state["step"]) == 12


def test_checkpoint_of_another_model_is_refused(uninterrupted):
    root, _, _ = uninterrupted
    done = _run(root / "a", root / "tfds", "--config.model.overrides.decoder_hidden_size=24",
                total=16)
    assert done.returncode == 1
    assert "written by a different model (decoder_hidden_size: checkpoint 16 vs config 24)" in done.stderr
    assert "Traceback" not in done.stderr


def test_nan_loss_stops_and_keeps_last_good_checkpoint(uninterrupted, tmp_path):
    root, _, _ = uninterrupted
    done = _run(tmp_path, root / "tfds", "--config.optimizer.learning_rate=1e30",
                "--config.checkpoint_every=1", "--config.optimizer.warmup_steps=0")
    assert done.returncode == 1, done.stdout[-2000:]
    assert "training stopped" in done.stderr and "at step" in done.stderr
    kept = [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    bad_step = int(done.stderr.split("at step ")[1].split(";")[0])
    assert kept and all(int(k) < bad_step for k in kept)


def test_bad_command_lines(tmp_path):
    done = _run(tmp_path / "w", tmp_path / "tfds", "--config.optimzer.learning_rate=1")
    assert done.returncode == 2 and "--config.optimzer.learning_rate: unknown key; valid keys:" in done.stderr
    assert "optimizer.learning_rate" in done.stderr
    done = _run(tmp_path / "w", tmp_path / "tfds", "--config.batch_size=many")
    assert done.returncode == 2 and "--config.batch_size=many: batch_size takes an int like 8" in done.stderr
    assert not (tmp_path / "w").exists()
    (tmp_path / "file").write_text("")
    done = _run(tmp_path / "file" / "w", tmp_path / "tfds")
    assert done.returncode == 1 and "is not writable" in done.stderr


@pytest.mark.slow
def test_sigterm_saves_before_exit(uninterrupted):
    root, _, _ = uninterrupted
    proc = _run(root / "c", root / "tfds", total=500, wait=False, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE)
    for line in proc.stdout:
        if line.startswith("step      3/500"):
            proc.send_signal(signal.SIGTERM)  # what a preempting scheduler sends
            break
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr[-2000:]
    step = int(stderr.split("stopped by signal 15 (SIGTERM) at step ")[1].split(";")[0])
    assert 3 <= step < 500 and f"checkpoint {step} saved" in stderr
    assert (root / "c" / "checkpoints" / str(step) / "state").is_dir()


def test_final_checkpoint_exports_to_transformers(uninterrupted, tmp_path):
    import torch
    import transformers

    from segformer_jax.checkpoint import load_for_inference
    root, _, _ = uninterrupted
    done = subprocess.run([sys.executable, "-m", "segformer_jax.convert", "to-hub", str(root / "a"),
                           str(tmp_path / "hub")], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 0, done.stderr
    config, variables = load_for_inference(root / "a")
    torch_model = transformers.SegformerForSemanticSegmentation.from_pretrained(
        tmp_path / "hub", attn_implementation="eager").eval()
    images = np.random.default_rng(0).standard_normal((1, 40, 56, 3), dtype=np.float32)
    with jax.default_matmul_precision("highest"):
        ours = jax.jit(sj.SegformerForSemanticSegmentation(config).apply)(variables, images)
    with torch.no_grad():
        theirs = torch_model(torch.from_numpy(images.transpose(0, 3, 1, 2))).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours), theirs.transpose(0, 2, 3, 1), atol=1e-4)  # see test_parity


def test_metric_writer_keeps_one_record_per_step_across_restarts(tmp_path):
    """A restart at step k drops what the crashed run logged after k (k = 0: everything)."""
    from segformer_jax.train import METRICS, MetricWriter

    def run(start, steps):
        writer = MetricWriter(tmp_path, start)
        for step in steps:
            writer.write(step, {"train/loss": float(step)})
        writer.close()
        return [json.loads(line)["step"] for line in (tmp_path / METRICS).read_text().splitlines()]

    assert run(0, range(1, 6)) == [1, 2, 3, 4, 5]
    assert run(0, range(1, 3)) == [1, 2]            # killed before its first checkpoint
    assert run(1, range(2, 5)) == [1, 2, 3, 4]      # resumed from step 1


def test_progress_counts_training_time_only():
    """Images/s and the ETA start after the first (compiling) step and leave out the time
    paused for evaluations and checkpoints, as big_vision's Chrono does."""
    from segformer_jax.progress import Progress
    now = [0.0]
    progress = Progress(total=104, start=0, batch_size=8, enabled=False, clock=lambda: now[0])
    now[0] = 30.0                                      # the first step compiled for 30 s
    assert "(compiling)" in progress.update(1, 1.0, 1e-4)
    progress.first_step_done(1)
    now[0] += 2.0                                      # steps 2 and 3: 1 s each
    with progress.paused():
        now[0] += 100.0                                # an evaluation
    now[0] += 2.0                                      # steps 4 and 5
    line = progress.update(5, 1.0, 1e-4)
    assert "8.0 img/s" in line and "ETA 1:39" in line  # 4 steps of 8 in 4 s; 99 steps to go


def test_profile_steps_writes_a_trace_tensorboard_reads(tmp_path, capsys):
    from segformer_jax import train
    args = train_args(tmp_path / "w", tmp_path / "tfds", 5)
    assert train.main([*args, "--config.profile_steps=2", "--config.data.options.num_train=8"]) == 0
    traces = list((tmp_path / "w" / "tensorboard" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    assert "profile of steps 2-3 written to" in capsys.readouterr().out
