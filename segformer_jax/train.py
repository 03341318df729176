"""Training: ``python -m segformer_jax.train --config configs/FILE.py[:ARG] --workdir DIR``.

One pure, jitted update function that donates its state; the state is a plain dict
``{'step', 'params', 'batch_stats', 'opt_state'}``, created already laid out on the device
mesh (``config.mesh``, see :mod:`segformer_jax.sharding`). Every batch and every random
number is a function of (seed, step) alone, so a run resumed from a checkpoint at step k
replays exactly what an uninterrupted run would have done after step k, on any mesh.

Phases of ``train``: check the config and the workdir, build the run (mesh, data, model,
optimiser, evaluator: ``build_run``), create or restore the state (``resume``), then the loop
(``run_loop``: steps, logs, validation, checkpoints, the NaN and SIGTERM stops). The resolved
config is written to ``workdir/config.json``.

Multi-process runs (TPU pods, GPU clusters; :mod:`segformer_jax.distributed`): every process
runs this same program, reads only its rows of each global batch and saves and restores
checkpoints together with the others; only process 0 writes logs and metrics.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import shutil
import signal
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from segformer_jax import run_config, sharding, tasks
from segformer_jax.checkpoint import TrainCheckpoints
from segformer_jax.config import SegformerConfig
from segformer_jax.errors import SegformerError, TrainingError
from segformer_jax.evaluation import Evaluator
from segformer_jax.models.segformer import TASKS, init_variables
from segformer_jax.optim import learning_rate, make_optimizer
from segformer_jax.tasks import SEMSEG

State = dict[str, Any]
METRICS = "metrics.jsonl"


# --------------------------------------------------------------------------------------
# The state


def initial_state(seg_config: SegformerConfig, tx, seed: int,
                  pretrained: Mapping[str, Any] | None = None, task: str = SEMSEG) -> State:
    """``{'step', 'params', 'batch_stats', 'opt_state'}`` (``batch_stats`` is empty for the
    classification model, which has no BatchNorm)."""
    variables = (pretrained if pretrained is not None
                 else init_variables(seg_config, task=task, seed=seed))
    params = jax.tree.map(jnp.asarray, variables["params"])
    return {"step": jnp.zeros((), jnp.int32), "params": params,
            "batch_stats": jax.tree.map(jnp.asarray, dict(variables.get("batch_stats", {}))),
            "opt_state": tx.init(params)}


def model_for_run(config: ml_collections.ConfigDict, seg_config: SegformerConfig) -> Any:
    """The model a run config trains (``TASKS[config.task]``): ``seg_config`` in
    ``model.dtype``, with ``model.remat`` and ``model.scan`` (each stage's blocks under
    ``nn.scan``; the same parameter tree)."""
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[config.model.dtype]
    return TASKS[config.task](seg_config, dtype=dtype, remat=config.model.remat,
                              scan=config.model.scan)


def state_layout(seg_config: SegformerConfig, tx, seed: int, mesh: Mesh,
                 fsdp_min_size: int | None = None, task: str = SEMSEG) -> tuple[State, Any]:
    """The state's shapes (``ShapeDtypeStruct``s carrying their shardings) and the shardings
    of its leaves on ``mesh``, computed without materialising anything."""
    shapes = jax.eval_shape(lambda: initial_state(seg_config, tx, seed, task=task))
    shardings = sharding.state_shardings(shapes, mesh, fsdp_min_size or sharding.MIN_FSDP_SIZE)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            shapes, shardings)
    return abstract, shardings


def create_state(seg_config: SegformerConfig, tx, seed: int, mesh: Mesh,
                 pretrained: Mapping[str, Any] | None = None,
                 fsdp_min_size: int | None = None, task: str = SEMSEG) -> tuple[State, Any]:
    """The initial state born sharded on ``mesh`` (shapes first, no full host copy of a
    fresh model), and the shardings of its leaves."""
    _, shardings = state_layout(seg_config, tx, seed, mesh, fsdp_min_size, task)
    if pretrained is None:
        return jax.jit(lambda: initial_state(seg_config, tx, seed, task=task),
                       out_shardings=shardings)(), shardings
    variables = {k: dict(pretrained.get(k, {})) for k in ("params", "batch_stats")}
    variables = jax.device_put(variables, {k: shardings[k] for k in variables})
    build = jax.jit(lambda v: initial_state(seg_config, tx, seed, v, task), out_shardings=shardings)
    return build(variables), shardings


# --------------------------------------------------------------------------------------
# The steps


def make_train_step(model: Any, tx, seed: int,
                    objective: tasks.Objective) -> Callable[[State, dict], tuple[State, dict]]:
    """The update: the task's inputs (``objective``: a mixed batch, soft targets), forward in
    train mode, the task's loss, AdamW, new BN stats."""

    def train_step(state: State, batch: dict) -> tuple[State, dict]:
        dropout_key = jax.random.fold_in(jax.random.key(seed), state["step"])
        images, targets = objective.inputs(batch, state["step"])

        def loss_fn(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": state["batch_stats"]}, images,
                train=True, rngs={"dropout": dropout_key}, mutable=["batch_stats"])
            return objective.loss(logits, targets), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        changes, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], changes)
        new_state = {"step": state["step"] + 1, "params": params,
                     "batch_stats": updates.get("batch_stats", state["batch_stats"]),
                     "opt_state": opt_state}
        return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads)}

    return train_step


def jit_train_step(model: Any, tx, config: ml_collections.ConfigDict,
                   seg_config: SegformerConfig, mesh: Mesh, state_sharding: Any,
                   class_weight: tuple[float, ...] | None = None) -> Callable:
    """The step ``train`` runs: jitted with the state's and the batch's shardings, donating
    the state (the sweeps, the benchmarks and the memory report time this very program)."""
    objective = tasks.objective(config, seg_config.num_labels, seg_config.semantic_loss_ignore_index,
                                class_weight)
    step = make_train_step(model, tx, config.seed, objective)
    return jax.jit(step, in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
                   out_shardings=(state_sharding, sharding.replicated(mesh)), donate_argnums=0)


def host_variables(state: State, mesh: Mesh) -> dict[str, Any]:
    """The model's variables, whole, on this process's first device (for evaluation, which
    scores each process's share of the split on that process's devices)."""
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    whole = jax.jit(lambda v: v, out_shardings=sharding.replicated(mesh))(variables)
    return jax.device_put(jax.tree.map(np.asarray, whole), jax.local_devices()[0])


# --------------------------------------------------------------------------------------
# Logging


class MetricWriter:
    """One JSON record per step in ``workdir/metrics.jsonl`` and TensorBoard event files
    (process 0 only).

    A run resumed at step k first drops the records after k (written by the run that died
    after its last checkpoint), so every step appears once, and TensorBoard is told to purge
    its events after k too.
    """

    def __init__(self, workdir: pathlib.Path, start_step: int = 0, enabled: bool = True):
        self.enabled = enabled
        self._jsonl = self._tb = None
        if not enabled:
            return
        path = workdir / METRICS
        if path.is_file():  # a run killed before its first checkpoint restarts at 0
            kept = [line for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
                    if line.strip() and _record_step(line) <= start_step]
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text("".join(kept), encoding="utf-8")
            os.replace(tmp, path)
        self._jsonl = open(path, "a", encoding="utf-8")
        try:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(str(workdir / "tensorboard"), purge_step=start_step + 1)
        except ImportError:  # TensorBoard files are optional; the JSON lines are not.
            pass

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled or not scalars:
            return
        record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, float(value), int(step))
            self._tb.flush()

    def close(self) -> None:
        if self._jsonl:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def _record_step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):  # a line cut short by the crash
        return sys.maxsize


class Progress:
    """Step, loss, learning rate, images/s and ETA: one refreshed line on a terminal, one
    line per log step otherwise (log files)."""

    def __init__(self, total: int, start: int, batch_size: int, enabled: bool = True):
        self.total, self.start, self.batch = total, start, batch_size
        self.enabled = enabled
        self.tty = sys.stdout.isatty()
        self.t0 = time.perf_counter()

    def update(self, step: int, loss: float, lr: float) -> str:
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        done = step - self.start
        rate = done * self.batch / elapsed
        eta = (self.total - step) * elapsed / max(done, 1)
        line = (f"step {step:>6d}/{self.total}  loss {loss:.4f}  lr {lr:.2e}  "
                f"{rate:6.1f} img/s  ETA {int(eta) // 60:d}:{int(eta) % 60:02d}")
        if self.enabled:
            print("\r" + line if self.tty else line, end="" if self.tty else "\n", flush=True)
        return line


# --------------------------------------------------------------------------------------
# The run: phases


@dataclasses.dataclass
class Run:
    """Everything a run is built from, before any state exists."""

    config: ml_collections.ConfigDict
    workdir: pathlib.Path
    mesh: Mesh
    micro_batch: int
    train_split: Any
    train_transform: Any
    seg_config: SegformerConfig
    model: Any
    tx: optax.GradientTransformation
    evaluator: Evaluator | None
    class_weight: tuple[float, ...] | None = None   # computed for loss.class_weight

    @property
    def is_main(self) -> bool:
        return jax.process_index() == 0


def check_workdir(workdir: pathlib.Path, needed_bytes: int) -> None:
    """Unwritable or full work directories are reported before any training happens."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".write-test-{jax.process_index()}"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as e:
        raise TrainingError(f"workdir {workdir} is not writable: {e.strerror or e}") from None
    free = shutil.disk_usage(workdir).free
    if free < needed_bytes:
        raise TrainingError(f"workdir {workdir} has {free / 2**20:.0f} MiB free; checkpoints of "
                            f"this run need at least {needed_bytes / 2**20:.0f} MiB")


def build_run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> Run:
    """The mesh, the data, the model, the optimiser and the evaluator of ``config``."""
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    micro_batch = config.batch_size // config.accumulate_steps
    sharding.check_batch(micro_batch, mesh, "batch_size / accumulate_steps")
    d = config.data
    kwargs = dict(data_dir=d.data_dir or None, manual_dir=d.manual_dir or None, **dict(d.options))
    train_split = _load_split(config, d.train_split, **kwargs)
    eval_split = _load_split(config, d.eval_split, **kwargs) if d.eval_split else None
    if config.task == SEMSEG:
        _preflight(config, train_split)
    class_weight = _class_weight(config, train_split)
    train_tf = tasks.train_transform(config, train_split)
    seg_config = run_config.model_config(config, train_split.num_labels, train_split.id2label)
    model = model_for_run(config, seg_config)
    tx = make_optimizer(run_config.recipe(config), config.accumulate_steps)
    evaluator = tasks.make_evaluator(config, model, eval_split) if eval_split is not None else None
    return Run(config, workdir, mesh, micro_batch, train_split, train_tf, seg_config, model, tx,
               evaluator, class_weight)


def _preflight(config: ml_collections.ConfigDict, split: Any) -> None:
    """``data.check.preflight`` on the records of the run's first batches: an out-of-range
    label stops the run before its first step, naming the file and the value."""
    from segformer_jax.data import global_batch_indices
    from segformer_jax.data.check import PREFLIGHT_BATCHES, preflight
    first = [global_batch_indices(len(split), config.batch_size, config.seed, step)
             for step in range(PREFLIGHT_BATCHES)]
    preflight(split.source, sorted(set(np.concatenate(first).tolist())), split.num_labels,
              split.reduce_zero_label)


def _class_weight(config: ml_collections.ConfigDict, split: Any) -> tuple[float, ...] | None:
    """``loss.class_weight`` checked against the classes, or computed from the training
    split for "median_frequency" (a pass over its masks, printed)."""
    if config.task != SEMSEG or not config.loss.class_weight:
        return None
    given = run_config.given_class_weight(config)
    if given is not None:
        if len(given) != split.num_labels:
            raise TrainingError(f"loss.class_weight has {len(given)} weights; the dataset has "
                                f"{split.num_labels} classes ({', '.join(split.class_names[:8])}"
                                f"{', …' if split.num_labels > 8 else ''})")
        return given
    from segformer_jax.data.check import class_pixel_statistics
    from segformer_jax.losses import median_frequency_weights
    start = time.perf_counter()
    weights = median_frequency_weights(*class_pixel_statistics(
        split.source, split.num_labels, split.reduce_zero_label))
    if jax.process_index() == 0:
        shown = ", ".join(f"{n} {w:.3g}" for n, w in zip(split.class_names, weights))
        print(f"loss.class_weight=median_frequency over {len(split)} training masks "
              f"({time.perf_counter() - start:.1f} s): {shown}", flush=True)
    return tuple(float(w) for w in weights)


def _load_split(config: ml_collections.ConfigDict, split: str, **kwargs: Any) -> Any:
    """``data.load_split`` with the config's ``data.reduce_zero_label`` when it is set, of
    ``model.num_channels`` bands."""
    from segformer_jax import data
    if int(config.model.num_channels) != 3:
        kwargs["num_channels"] = int(config.model.num_channels)
    loaded = data.load_split(config.data.name, split, **kwargs)
    if config.data.reduce_zero_label is None or loaded.task != SEMSEG:
        return loaded
    return dataclasses.replace(loaded, reduce_zero_label=bool(config.data.reduce_zero_label))


def _meta(step: int, run: Run, metrics: Mapping[str, float] | None = None) -> dict[str, Any]:
    from segformer_jax.hub import config_summary
    return {"step": int(step), "task": run.config.task, "model": run.seg_config.to_dict(),
            "model_summary": config_summary(run.seg_config), "seed": int(run.config.seed),
            "batch_size": int(run.config.batch_size),
            "metrics": {k: float(v) for k, v in (metrics or {}).items()}}


def _check_compatible(meta: Mapping[str, Any], run: Run, where: str) -> None:
    saved_task = meta.get("task", SEMSEG)  # checkpoints from before the classification task
    if saved_task != run.config.task:
        raise TrainingError(f"{where}: a checkpoint of the {saved_task} task, and this config trains "
                            f"{run.config.task} (task); use a fresh --workdir, or model.init to start "
                            f"from its encoder")
    saved, seg_config = SegformerConfig.from_dict(meta["model"]), run.seg_config
    if saved.id2label != seg_config.id2label:
        before, now = list(saved.id2label.values()), list(seg_config.id2label.values())
        gone, new = [c for c in before if c not in now], [c for c in now if c not in before]
        raise TrainingError(
            f"{where}: trained on other classes than the {run.config.data.name} dataset has "
            f"({len(before)} in the checkpoint, {len(now)} in the dataset"
            + (f"; only in the checkpoint: {', '.join(gone[:8])}" if gone else "")
            + (f"; only in the dataset: {', '.join(new[:8])}" if new else "")
            + ("; same names, another order" if not gone and not new else "")
            + "); resuming would train the classifier on shifted labels. Restore the dataset, or "
            "use a fresh --workdir with model.init to start from this checkpoint")
    if saved != seg_config:
        diff = [f"{f}: checkpoint {getattr(saved, f)!r} vs config {getattr(seg_config, f)!r}"
                for f in ("hidden_sizes", "depths", "decoder_hidden_size", "num_labels", "sr_ratios",
                          "num_attention_heads", "mlp_ratios", "id2label", "mix_ffn_conv")
                if getattr(saved, f) != getattr(seg_config, f)]
        raise TrainingError(f"{where}: written by a different model ({'; '.join(diff) or 'config differs'}); "
                            "use a fresh --workdir for this config")
    for key in ("seed", "batch_size"):
        if int(meta[key]) != int(run.config[key]):
            raise TrainingError(f"{where}: written with {key}={meta[key]}, this config has "
                                f"{key}={run.config[key]}; resuming would not replay the same run")


def initial_run_state(run: Run) -> tuple[State, Any]:
    """A fresh state (from scratch or ``model.init``), sharded on the run's mesh."""
    from segformer_jax.hub import from_pretrained
    config = run.config
    pretrained = None
    if config.model.init != "scratch":
        from segformer_jax.checkpoint import encoder_init
        pretrained = encoder_init(config.model.init, run.seg_config, config.task, config.seed)
        if pretrained is None:  # a Hub or NVlabs checkpoint
            _, pretrained = from_pretrained(config.model.init, task=config.task,
                                            num_labels=run.seg_config.num_labels, seed=config.seed,
                                            num_channels=run.seg_config.num_channels)
    return create_state(run.seg_config, run.tx, config.seed, run.mesh, pretrained,
                        config.mesh.fsdp_min_size, config.task)


def resume(run: Run, checkpoints: TrainCheckpoints, state: State,
           state_sharding: Any) -> tuple[State, int]:
    """The latest checkpoint's state (checked against this run first) or ``state``, and the
    optimiser step to continue from."""
    start = checkpoints.latest_step()
    if start is not None:
        where = str(checkpoints.directory / str(start))
        _check_compatible(checkpoints.meta(start), run, where)
        # The target's shardings are this run's mesh: a checkpoint from any mesh fits.
        abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                state, state_sharding)
        del state
        state = checkpoints.restore(start, abstract)
        if run.is_main:
            print(f"resuming from {where} (step {start})", flush=True)
    # state["step"] counts micro-batches (it seeds dropout); the loop counts optimiser steps.
    return state, int(state["step"]) // run.config.accumulate_steps


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """Runs (or resumes) training; returns the final evaluation summary (or {})."""
    run_config.validate(config, jax.process_count())
    workdir = pathlib.Path(workdir).absolute()
    check_workdir(workdir, needed_bytes=0)  # unwritable: say so before building any dataset
    run = build_run(config, workdir)
    if run.is_main:
        for note in run_config.batch_notes(config):
            print(note, flush=True)
    state, state_sharding = initial_run_state(run)
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    check_workdir(workdir, needed_bytes=(config.keep_checkpoints + 2) * state_bytes + (64 << 20))
    best = run.evaluator.best_metric if run.evaluator is not None else None
    checkpoints = TrainCheckpoints(workdir, config.checkpoint_every, config.keep_checkpoints,
                                   best_metric=best)
    try:
        state, start = resume(run, checkpoints, state, state_sharding)
        if run.is_main:
            run_config.write_json(config, workdir)
    except BaseException:
        checkpoints.close()
        raise
    return run_loop(run, checkpoints, state, state_sharding, start)


def run_loop(run: Run, checkpoints: TrainCheckpoints, state: State, state_sharding: Any,
             start: int) -> dict[str, Any]:
    """Steps ``start + 1 … total_steps``: logs, validation, checkpoints, NaN and SIGTERM stops."""
    from segformer_jax.data.pipeline import TrainBatches
    config, is_main = run.config, run.is_main
    images_sharding = sharding.batch_sharding(run.mesh)
    train_step = jit_train_step(run.model, run.tx, config, run.seg_config, run.mesh,
                                state_sharding, run.class_weight)
    schedule = learning_rate(run_config.recipe(config))  # the backbone's lr, for the logs
    writer = MetricWriter(run.workdir, start, enabled=is_main)
    multi_process = jax.process_count() > 1
    stop = {"signal": None}
    # One process: our own SIGTERM handler. Several: JAX's preemption service (started by
    # jax.distributed) agrees on one step at which every process saves and stops.
    previous = None if multi_process else signal.signal(
        signal.SIGTERM, lambda signum, _: stop.__setitem__("signal", signum))
    batches = TrainBatches(run.train_split.source, run.train_transform, run.micro_batch,
                           seed=config.seed, start_step=start * config.accumulate_steps,
                           rows=sharding.process_rows(images_sharding, run.micro_batch),
                           num_threads=config.data.num_workers)
    progress = Progress(config.total_steps, start, config.batch_size, enabled=is_main)
    pending_losses: list[tuple[int, jax.Array]] = []
    last_good = start
    summary: dict[str, Any] = {}

    def check_losses() -> float:
        """Fetches the losses since the last check; a NaN or Inf stops the run."""
        nonlocal pending_losses
        values = [(s, float(v)) for s, v in jax.device_get(pending_losses)]
        pending_losses = []
        for s, v in values:
            if not math.isfinite(v):
                raise TrainingError(f"loss is {v} at step {s}; training stopped. The last good "
                                    f"checkpoint (step {checkpoints.latest_step()}) is kept in "
                                    f"{checkpoints.directory}")
        return values[-1][1] if values else float("nan")

    try:
        for step in range(start + 1, config.total_steps + 1):
            micro_losses = []
            for _ in range(config.accumulate_steps):
                state, out = train_step(state, sharding.global_batch(next(batches), images_sharding))
                micro_losses.append(out["loss"])
            pending_losses.append((step, sum(micro_losses) / len(micro_losses)))
            scalars: dict[str, float] = {}
            if step % config.log_every == 0 or step == config.total_steps:
                loss = check_losses()
                lr = float(schedule(step - 1))
                progress.update(step, loss, lr)
                scalars.update({"train/loss": loss, "train/lr": lr,
                                "train/grad_norm": float(out["grad_norm"])})
            evaluated = None
            if run.evaluator is not None and (step % config.eval_every == 0
                                              or step == config.total_steps):
                check_losses()
                evaluated = run.evaluator(host_variables(state, run.mesh))
                scores = run.evaluator.scalars(evaluated)
                scalars.update({f"val/{k}": v for k, v in scores.items()})
                if is_main:
                    print(f"\nstep {step}: validation {run.evaluator.headline(evaluated)}",
                          flush=True)
            writer.write(step, scalars)
            if multi_process and checkpoints.reached_preemption(step):
                stop["signal"] = "SIGTERM (preemption)"
            final = step == config.total_steps or stop["signal"] is not None
            if final or step % config.checkpoint_every == 0:
                check_losses()
                best = run.evaluator.best_metric if run.evaluator is not None else None
                metrics = ({best: evaluated[best]} if evaluated and math.isfinite(evaluated[best])
                           else None)
                checkpoints.save(step, state, _meta(step, run, metrics), metrics, force=final)
                last_good = step
            if stop["signal"] is not None:
                checkpoints.wait()
                raise TrainingError(f"stopped by signal {stop['signal']} at step {step}; "
                                    f"checkpoint {last_good} saved in {checkpoints.directory}")
            if evaluated is not None and step == config.total_steps:
                summary = evaluated
    finally:
        checkpoints.wait()
        checkpoints.close()
        batches.close()
        writer.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if summary and is_main:
        print(run.evaluator.table(summary))
    return summary


# --------------------------------------------------------------------------------------
# Command line


def _define_flags(flag_values: Any) -> None:
    """``--workdir`` and the multi-process flags (segformer_jax/distributed.py; SLURM and
    TPU pods need none)."""
    from absl import flags
    flags.DEFINE_string("workdir", None, "checkpoints, metrics and logs go here",
                        flag_values=flag_values)
    flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0",
                        flag_values=flag_values)
    flags.DEFINE_integer("num_processes", None, "processes in the job", flag_values=flag_values)
    flags.DEFINE_integer("process_id", None, "this process's index", flag_values=flag_values)
    flags.DEFINE_bool("distributed", False,
                      "call jax.distributed.initialize() and let JAX detect the cluster",
                      flag_values=flag_values)


def main(argv: list[str] | None = None) -> int:
    """``python -m segformer_jax.train --config FILE.py[:ARG] --workdir DIR [--config.k=v]``."""
    from segformer_jax import distributed
    argv = ["python -m segformer_jax.train", *(sys.argv[1:] if argv is None else argv)]
    try:
        config, flag_values = run_config.parse_flags(argv, define=_define_flags)
        run_config.validate(config)  # again in train(), with the process count
        if not flag_values.workdir:
            raise TrainingError("--workdir DIR is required (checkpoints, metrics and logs go there)")
    except SegformerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        distributed.initialize(flag_values.coordinator_address, flag_values.num_processes,
                               flag_values.process_id, force=flag_values.distributed)
        start = time.perf_counter()
        train(config, flag_values.workdir)
        if jax.process_index() == 0:
            print(f"done in {time.perf_counter() - start:.0f} s; workdir {flag_values.workdir}")
    except SegformerError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
