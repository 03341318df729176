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
import errno
import json
import logging
import math
import os
import pathlib
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from segformer_jax import host_memory, run_config, sharding, tasks
from segformer_jax import workdir as workdirs
from segformer_jax.checkpoint import TrainCheckpoints
from segformer_jax.config import SegformerConfig
from segformer_jax.constants import SEMSEG
from segformer_jax.errors import DamagedCheckpointError, NonFiniteError, SegformerError, TrainingError, one_line
from segformer_jax.evaluators import Evaluator
from segformer_jax.files import atomic_write
from segformer_jax.models.segformer import TASKS, init_variables
from segformer_jax.optim import Recipe, ema_decay, ema_update, learning_rate, make_optimizer
from segformer_jax.progress import Progress

State = dict[str, Any]
METRICS = "metrics.jsonl"


# --------------------------------------------------------------------------------------
# The state


def initial_state(seg_config: SegformerConfig, tx, seed: int,
                  pretrained: Mapping[str, Any] | None = None, task: str = SEMSEG,
                  ema: bool = False) -> State:
    """``{'step', 'params', 'batch_stats', 'opt_state'}`` (``batch_stats`` is empty for the
    classification model, which has no BatchNorm), and with ``ema`` an ``'ema'`` copy of
    ``params`` and ``batch_stats`` (``optimizer.ema_decay``), which the steps average."""
    variables = (pretrained if pretrained is not None
                 else init_variables(seg_config, task=task, seed=seed))
    params = jax.tree.map(jnp.asarray, variables["params"])
    state = {"step": jnp.zeros((), jnp.int32), "params": params,
             "batch_stats": jax.tree.map(jnp.asarray, dict(variables.get("batch_stats", {}))),
             "opt_state": tx.init(params)}
    if ema:
        state["ema"] = {"params": params, "batch_stats": state["batch_stats"]}
    return state


def model_for_run(config: ml_collections.ConfigDict, seg_config: SegformerConfig) -> Any:
    """The model a run config trains (``TASKS[config.task]``): ``seg_config`` in
    ``model.dtype`` (``run_config.compute_dtype``), with ``model.remat``, ``model.scan`` (each stage's blocks under
    ``nn.scan``; the same parameter tree) and ``model.op_forms``."""
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[run_config.compute_dtype(config)]
    return TASKS[config.task](seg_config, dtype=dtype, remat=config.model.remat,
                              scan=config.model.scan, forms=run_config.op_forms(config))


def state_layout(seg_config: SegformerConfig, tx, seed: int, mesh: Mesh,
                 fsdp_min_size: int | None = None, task: str = SEMSEG,
                 ema: bool = False) -> tuple[State, Any]:
    """The state's shapes (``ShapeDtypeStruct``s carrying their shardings) and the shardings
    of its leaves on ``mesh``, computed without materialising anything."""
    shapes = jax.eval_shape(lambda: initial_state(seg_config, tx, seed, task=task, ema=ema))
    shardings = sharding.state_shardings(shapes, mesh, fsdp_min_size or sharding.MIN_FSDP_SIZE)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            shapes, shardings)
    return abstract, shardings


def create_state(seg_config: SegformerConfig, tx, seed: int, mesh: Mesh,
                 pretrained: Mapping[str, Any] | None = None,
                 fsdp_min_size: int | None = None, task: str = SEMSEG,
                 ema: bool = False) -> tuple[State, Any]:
    """The initial state born sharded on ``mesh`` (shapes first, no full host copy of a
    fresh model), and the shardings of its leaves."""
    _, shardings = state_layout(seg_config, tx, seed, mesh, fsdp_min_size, task, ema)
    if pretrained is None:
        return jax.jit(lambda: initial_state(seg_config, tx, seed, task=task, ema=ema),
                       out_shardings=shardings)(), shardings
    variables = {k: dict(pretrained.get(k, {})) for k in ("params", "batch_stats")}
    variables = jax.device_put(variables, {k: shardings[k] for k in variables})
    build = jax.jit(lambda v: initial_state(seg_config, tx, seed, v, task, ema), out_shardings=shardings)
    return build(variables), shardings


# --------------------------------------------------------------------------------------
# The steps


def make_train_step(model: Any, tx, seed: int, objective: tasks.Objective,
                    recipe: Recipe | None = None,
                    accumulate_steps: int = 1) -> Callable[[State, dict], tuple[State, dict]]:
    """The update: the task's inputs (``objective``: a mixed batch, soft targets), forward in
    train mode, the task's loss, AdamW, new BN stats; with an ``'ema'`` in the state, its
    average moved towards the new weights (``optim.ema_update`` at ``recipe``'s decay) once
    per optimiser step (every ``accumulate_steps`` micro-batches)."""

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
        if "ema" in state:
            current = {"params": params, "batch_stats": new_state["batch_stats"]}
            opt_step, micro = jnp.divmod(new_state["step"], accumulate_steps)
            moved = ema_update(state["ema"], current, ema_decay(opt_step, recipe))
            new_state["ema"] = (moved if accumulate_steps == 1 else
                                jax.tree.map(lambda m, e: jnp.where(micro == 0, m, e), moved, state["ema"]))
        return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads)}

    return train_step


def jit_train_step(model: Any, tx, config: ml_collections.ConfigDict,
                   seg_config: SegformerConfig, mesh: Mesh, state_sharding: Any,
                   class_weight: tuple[float, ...] | None = None) -> Callable:
    """The step ``train`` runs: jitted with the state's and the batch's shardings, donating
    the state (the sweeps, the benchmarks and the memory report time this very program)."""
    objective = tasks.objective(config, seg_config.num_labels, seg_config.semantic_loss_ignore_index,
                                class_weight)
    step = make_train_step(model, tx, config.seed, objective, run_config.recipe(config),
                           config.accumulate_steps)
    return jax.jit(step, in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
                   out_shardings=(state_sharding, sharding.replicated(mesh)), donate_argnums=0)


def host_variables(state: State, mesh: Mesh, ema: bool = False) -> dict[str, Any]:
    """The model's variables (``ema``: their average), whole, on this process's first
    device (for evaluation, which scores each process's share of the split on that
    process's devices)."""
    source = state["ema"] if ema else state
    variables = {"params": source["params"], "batch_stats": source["batch_stats"]}
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
            atomic_write(path, "".join(kept))
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


def check_workdir(workdir: pathlib.Path, needed_bytes: int, already_held: int = 0) -> None:
    """Unwritable or full work directories are reported before any training happens
    (``already_held``: what the run's own checkpoints hold on the disk now)."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".write-test-{jax.process_index()}"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as e:
        raise TrainingError(f"workdir {workdir} is not writable: {e.strerror or e}") from None
    workdirs.check_space(workdir, needed_bytes, already_held)


def lock_workdir(workdir: pathlib.Path) -> workdirs.WorkdirLock | None:
    """``WORKDIR/train.lock`` taken by process 0 before anything is written; every process
    of a multi-process run stops when it could not be (None on the other processes)."""
    lock = None
    error: SegformerError | None = None
    if jax.process_index() == 0:
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            lock = workdirs.WorkdirLock(workdir)
            note = lock.acquire()
            if note:
                print(note, flush=True)
        except OSError as e:
            error = TrainingError(f"workdir {workdir} is not writable: {e.strerror or e}")
        except SegformerError as e:
            error = e
    stop_together(error)
    return lock


def stop_together(error: SegformerError | None) -> None:
    """Raises ``error``; in a multi-process run every process stops when any found one (a
    check that only some processes fail would leave the others waiting in the next
    collective)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        failed = multihost_utils.process_allgather(np.int32(error is not None))
        if error is None and np.any(failed):
            raise TrainingError("another process of this run stopped before training (its log says why)")
    if error is not None:
        raise error


def check_host_memory(config: ml_collections.ConfigDict, resuming: bool = False) -> None:
    """A batch the input pipeline cannot hold in this host's memory is refused before the
    run builds or writes anything: the batches in flight (this process's rows, float32
    images and int32 labels; prefetched, in transfer, being built) and one rescaled image per
    input thread. Linux only (``MemAvailable``); the step's own device memory is XLA's to
    report (``_out_of_memory``)."""
    try:
        meminfo = pathlib.Path("/proc/meminfo").read_text()
        available = int(next(line.split()[1] for line in meminfo.splitlines()
                             if line.startswith("MemAvailable:"))) * 1024
    except (OSError, StopIteration, ValueError):
        return
    from segformer_jax.data.pipeline import default_num_threads
    d, bands = config.data, int(config.model.num_channels)
    rows = max(config.batch_size // config.accumulate_steps // jax.process_count(), 1)
    height, width = (int(v) for v in d.crop_size)
    batches = 4 * rows * height * width * (4 * bands + 4)
    threads = int(d.num_workers) or default_num_threads()
    scale = max(float(v) for v in d.ratio_range) if config.task == SEMSEG else 1.0
    rescaled = (threads * 2 * int(max(d.img_scale) * scale) * int(min(d.img_scale) * scale)
                * (bands if bands == 3 else 4 * bands)) if config.task == SEMSEG else 0
    if batches + rescaled > available:
        raise TrainingError(
            f"the input pipeline needs about {(batches + rescaled) / 2**30:.1f} GiB of memory "
            f"(batches of {rows} {height}x{width} crops: {batches / 2**30:.1f} GiB"
            + (f"; images rescaled to data.img_scale={tuple(d.img_scale)} x {scale:g} by {threads} "
               f"threads: {rescaled / 2**30:.1f} GiB" if rescaled else "")
            + f") and this host has {available / 2**30:.1f} GiB available; " + _smaller(resuming))


def _smaller(resuming: bool) -> str:
    """What makes a step smaller; a resume cannot change its batch."""
    if resuming:
        return ("lower data.crop_size or data.img_scale, or use model.remat=True or "
                "model.dtype='bfloat16' (a resume keeps batch_size and accumulate_steps)")
    return ("lower data.crop_size, data.img_scale or batch_size (accumulate_steps splits a "
            "batch), or use model.remat=True or model.dtype='bfloat16'")


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
    """``pipeline.preflight`` on the records of the run's first batches: an out-of-range
    label stops the run before its first step, naming the file and the value."""
    from segformer_jax.data import global_batch_indices
    from segformer_jax.data.pipeline import PREFLIGHT_BATCHES, preflight
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
    from segformer_jax.data.pipeline import class_pixel_statistics
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
    """A checkpoint of another task, classes, model, seed or batch size is refused, naming
    what differs (the model: every field of its config, as the checkpoint records it)."""
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
        diff = [f"{f.name}: checkpoint {getattr(saved, f.name)!r} vs config {getattr(seg_config, f.name)!r}"
                for f in dataclasses.fields(SegformerConfig)
                if getattr(saved, f.name) != getattr(seg_config, f.name)]
        raise TrainingError(f"{where}: written by a different model ({'; '.join(diff) or 'config differs'}); "
                            "a resume keeps the checkpoint's model: use a fresh --workdir for this config")
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
                        config.mesh.fsdp_min_size, config.task, run_config.uses_ema(config))


def resume(run: Run, checkpoints: TrainCheckpoints, state: State,
           state_sharding: Any) -> tuple[State, int]:
    """The newest intact checkpoint's state (checked against this run first) or ``state``,
    and the optimiser step to continue from.

    A damaged step (files lost or changed, found by its fingerprint) is moved to
    ``workdir/damaged_checkpoints/`` and the next older one is tried, each named; a
    checkpoint of another model or run is refused (``_check_compatible``, ``RESUME_REFUSED``).
    """
    steps = checkpoints.all_steps()
    if not steps:
        return state, 0
    try:  # the checkpoint's own record first: its task and model, in its own words
        _check_compatible(checkpoints.meta(steps[-1]), run, str(checkpoints.directory / str(steps[-1])))
    except DamagedCheckpointError:
        pass  # found again, and dealt with, below
    changed = _check_config_changes(run)
    # The target's shardings are this run's mesh: a checkpoint from any mesh fits.
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            state, state_sharding)
    del state
    damaged: list[tuple[int, str]] = []
    restored = None
    for step in reversed(steps):
        where = str(checkpoints.directory / str(step))
        error: SegformerError | None = None
        try:
            meta = checkpoints.meta(step)
            _check_compatible(meta, run, where)
            restored = checkpoints.restore(step, abstract, meta)
        except SegformerError as e:
            error = e
        error = _same_on_every_process(error, where)
        if isinstance(error, DamagedCheckpointError):
            damaged.append((step, str(error)))
            restored = None
            continue
        if error is not None:
            raise error
        break
    for bad, reason in damaged:
        aside = checkpoints.set_aside(bad)
        if run.is_main:
            print(f"warning: {reason}; moved to {aside}", file=sys.stderr, flush=True)
    if restored is None:
        raise TrainingError(f"no intact checkpoint in {checkpoints.directory} (the damaged ones are "
                            f"in {checkpoints.workdir / 'damaged_checkpoints'}); to start this run "
                            "again from step 0, use a fresh --workdir")
    if changed and run.is_main:
        print(f"resuming with changed settings (recorded in {workdirs.CONFIG_HISTORY}): "
              + "; ".join(changed), flush=True)
    if run.is_main:
        print(f"resuming from {where} (step {step})"
              + (f", the newest intact checkpoint (step {damaged[0][0]} is damaged)" if damaged else ""),
              flush=True)
    # state["step"] counts micro-batches (it seeds dropout); the loop counts optimiser steps.
    return restored, int(restored["step"]) // run.config.accumulate_steps


def _same_on_every_process(error: SegformerError | None, where: str) -> SegformerError | None:
    """The outcome of reading one checkpoint, agreed by every process of a multi-process run
    (each reads its own part): damaged anywhere is damaged everywhere, any other error stops
    them all; one process alone: ``error``."""
    if jax.process_count() == 1:
        return error
    from jax.experimental import multihost_utils
    code = 0 if error is None else 1 if isinstance(error, DamagedCheckpointError) else 2
    worst = int(np.max(multihost_utils.process_allgather(np.int32(code))))
    if worst > code:
        return (DamagedCheckpointError(f"{where}: damaged where another process reads it (its log "
                                       "says which file)") if worst == 1 else
                TrainingError(f"{where}: another process could not restore it (its log says why)"))
    return error


def _check_config_changes(run: Run) -> list[str]:
    """A resume that changes a ``workdir.RESUME_REFUSED`` key since the run's last start is
    refused, naming each; the other changes are returned, to be printed (the config history
    keeps them)."""
    before = workdirs.previous_config(run.workdir)
    if before is None:
        return []
    refused, accepted = workdirs.config_changes(before, run_config.to_json_data(run.config))
    if refused:
        raise TrainingError(f"workdir {run.workdir}: a resume cannot change {'; '.join(refused)}. "
                            "Restore these values, or use a fresh --workdir (model.init starts it "
                            "from this run's checkpoint)")
    return accepted


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """Runs (or resumes) training; returns the final evaluation summary (or {})."""
    run_config.validate(config, jax.process_count())
    workdir = pathlib.Path(workdir).absolute()
    lock = lock_workdir(workdir)  # before anything is written, by this run or a second one
    try:
        return _train(config, workdir)
    finally:
        if lock is not None:
            lock.release()


def _train(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict[str, Any]:
    check_workdir(workdir, needed_bytes=0)  # unwritable: say so before building any dataset
    resuming = any(p.name.isdigit() for p in (workdir / "checkpoints").glob("*"))
    error = None
    try:
        check_host_memory(config, resuming)
    except SegformerError as e:
        error = e
    stop_together(error)
    run = build_run(config, workdir)
    if run.is_main:
        for note in run_config.batch_notes(config):
            print(note, flush=True)
    state, state_sharding = initial_run_state(run)
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    check_workdir(workdir, needed_bytes=(config.keep_checkpoints + 2) * state_bytes + (64 << 20),
                  already_held=workdirs.directory_bytes(workdir / "checkpoints"))
    best = run.evaluator.best_metric if run.evaluator is not None else None
    checkpoints = TrainCheckpoints(workdir, config.checkpoint_every, config.keep_checkpoints,
                                   best_metric=best)
    try:
        state, start = resume(run, checkpoints, state, state_sharding)
        if start >= config.total_steps:
            where = checkpoints.directory / str(checkpoints.latest_step())
            if start > config.total_steps:
                raise TrainingError(f"total_steps={config.total_steps} is below the step of the "
                                    f"checkpoint {where} ({start}): nothing to train. Set total_steps "
                                    f"above {start} to train on")
            if run.is_main:
                print(f"the run is already at step {start} of total_steps={config.total_steps} "
                      f"({where}): nothing to train", flush=True)
            checkpoints.close()
            return {}
        if run.is_main:
            workdirs.record_start(workdir, run_config.to_json_data(config), start)
    except BaseException:
        checkpoints.close()
        raise
    return run_loop(run, checkpoints, state, state_sharding, start)


def run_loop(run: Run, checkpoints: TrainCheckpoints, state: State, state_sharding: Any,
             start: int) -> dict[str, Any]:
    """Steps ``start + 1 … total_steps``: logs, validation, checkpoints, and the stops: a
    NaN or Inf (loss or weights), SIGTERM and Ctrl-C (saved first), a checkpoint that cannot
    be written (a full disk), a step that does not fit in memory."""
    from segformer_jax.data.pipeline import ProcessBatches, TrainBatches
    config, is_main = run.config, run.is_main
    images_sharding = sharding.batch_sharding(run.mesh)
    train_step = jit_train_step(run.model, run.tx, config, run.seg_config, run.mesh,
                                state_sharding, run.class_weight)
    schedule = learning_rate(run_config.recipe(config))  # the backbone's lr, for the logs
    writer = MetricWriter(run.workdir, start, enabled=is_main)
    multi_process = jax.process_count() > 1
    stop = _StopSignals(enabled=not multi_process)
    common = dict(seed=config.seed, start_step=start * config.accumulate_steps,
                  # the run's last batch is the last made: nothing is left in flight at the end
                  num_steps=(config.total_steps - start) * config.accumulate_steps,
                  rows=sharding.process_rows(images_sharding, run.micro_batch),
                  num_labels=run.train_split.num_labels if config.task == SEMSEG else None,
                  reduce_zero_label=run.train_split.reduce_zero_label)
    processes = int(config.data.get("worker_processes", 0))
    batches = (ProcessBatches(run.train_split.source, run.train_transform, run.micro_batch,
                              num_workers=processes, **common) if processes else
               TrainBatches(run.train_split.source, run.train_transform, run.micro_batch,
                            num_threads=config.data.num_workers, **common))
    progress = Progress(config.total_steps, start, config.batch_size, enabled=is_main)
    profiler = StepProfiler(run.workdir / "tensorboard", start, int(config.get("profile_steps", 0)), is_main)
    pending_losses: list[tuple[int, jax.Array]] = []
    saving = None   # the step whose checkpoint is being written
    summary: dict[str, Any] = {}

    def last_good() -> str:
        """The newest checkpoint, each of which was checked finite before it was saved."""
        try:
            checkpoints.wait()
        except Exception:  # noqa: BLE001 - a save that failed is not one of them
            checkpoints.manager.reload()
        latest = checkpoints.latest_step()
        if latest is None:
            return ("No checkpoint had been saved yet: the same command starts again from "
                    "step 0")
        return (f"The last good checkpoint, step {latest}, is kept in {checkpoints.directory}. "
                "Resuming replays the same batches: change the run first (e.g. a lower "
                "optimizer.learning_rate or more optimizer.warmup_steps; a resume accepts both)")

    def check_losses() -> float:
        """Fetches the losses since the last check; a NaN or Inf stops the run."""
        nonlocal pending_losses
        values = [(s, float(v)) for s, v in jax.device_get(pending_losses)]
        pending_losses = []
        for s, v in values:
            if not math.isfinite(v):
                raise TrainingError(f"loss is {v} at step {s}; training stopped. {last_good()}")
        return values[-1][1] if values else float("nan")

    try:
        with stop:
            for step in range(start + 1, config.total_steps + 1):
                micro_losses = []
                for _ in range(config.accumulate_steps):
                    batch = sharding.global_batch(next(batches), images_sharding)
                    try:
                        state, out = train_step(state, batch)
                    except Exception as e:  # noqa: BLE001 - XLA reports memory as a runtime error
                        raise _out_of_memory(e, config, start > 0) from None
                    micro_losses.append(out["loss"])
                pending_losses.append((step, sum(micro_losses) / len(micro_losses)))
                if step == start + 1:   # compiled and run: the clock starts here
                    jax.block_until_ready(micro_losses[-1])
                    progress.first_step_done(step)
                profiler.after(step, state)
                saving = _check_save(checkpoints, saving)
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
                    with progress.paused():
                        evaluated = run.evaluator(host_variables(state, run.mesh))
                    scores = run.evaluator.scalars(evaluated)
                    scalars.update({f"val/{k}": v for k, v in scores.items()})
                    if is_main:
                        print(f"\nstep {step}: validation {run.evaluator.headline(evaluated)}",
                              flush=True)
                    if "ema" in state:   # the average scored too, logged beside (val_ema/)
                        with progress.paused():
                            averaged = run.evaluator(host_variables(state, run.mesh, ema=True))
                        scalars.update({f"val_ema/{k}": v
                                        for k, v in run.evaluator.scalars(averaged).items()})
                        if is_main:
                            print(f"step {step}: validation, EMA of the weights "
                                  f"{run.evaluator.headline(averaged)}", flush=True)
                writer.write(step, scalars)
                if multi_process and checkpoints.reached_preemption(step):
                    stop.received = "SIGTERM (preemption)"
                final = step == config.total_steps or stop.received is not None
                if final or step % config.checkpoint_every == 0:
                    check_losses()
                    best = run.evaluator.best_metric if run.evaluator is not None else None
                    metrics = ({best: evaluated[best]} if evaluated and math.isfinite(evaluated[best])
                               else None)
                    try:
                        with progress.paused():
                            if checkpoints.save(step, state, _meta(step, run, metrics), metrics, force=final):
                                saving = step
                    except NonFiniteError as e:
                        raise TrainingError(f"{e}; training stopped, nothing saved for it. "
                                            f"{last_good()}") from None
                    except Exception as e:  # noqa: BLE001 - the step before's, or this one's
                        if not _write_failure(e):
                            raise
                        raise _save_failed(e, checkpoints, saving or step) from None
                if stop.received is not None:
                    _check_save(checkpoints, saving, wait=True)
                    raise TrainingError(f"stopped by {stop.received} at step {step}; checkpoint "
                                        f"{checkpoints.latest_step()} saved in {checkpoints.directory}. "
                                        "Run the same command to resume")
                if evaluated is not None and step == config.total_steps:
                    summary = evaluated
            _check_save(checkpoints, saving, wait=True)
    finally:
        in_flight = sys.exc_info()[1]   # the error already on its way, if any
        try:
            try:
                checkpoints.wait()
            finally:
                checkpoints.close()
        except Exception as e:  # noqa: BLE001 - orbax and TensorStore raise many types
            if in_flight is None:
                raise _save_failed(e, checkpoints, saving or config.total_steps) from e
        finally:
            profiler.stop()
            batches.close()
            writer.close()
    if summary and is_main:
        print(run.evaluator.table(summary))
    return summary


class StepProfiler:
    """``profile_steps`` = N > 0: a ``jax.profiler`` trace of the N steps after the first
    (compiling) one, written where TensorBoard's profile plugin finds it
    (``directory/plugins/profile/<run>/``)."""

    def __init__(self, directory: pathlib.Path, start: int, steps: int, announce: bool = True):
        self.directory, self.steps, self.announce = directory, steps, announce
        self.first, self.last = start + 1, start + 1 + steps   # traced: (first, last]
        self.tracing = False

    def after(self, step: int, state: Any) -> None:
        """Called after each step is dispatched: starts after the first, stops after the last."""
        if self.steps <= 0:
            return
        if step == self.first:
            jax.block_until_ready(state)
            jax.profiler.start_trace(str(self.directory))
            self.tracing = True
        elif step == self.last and self.tracing:
            jax.block_until_ready(state)
            self.stop()
            if self.announce:
                print(f"\nprofile of steps {self.first + 1}-{self.last} written to {self.directory} "
                      "(TensorBoard: its Profile tab)", flush=True)

    def stop(self) -> None:
        if self.tracing:
            self.tracing = False
            jax.profiler.stop_trace()


class _StopSignals:
    """SIGTERM (a preempting scheduler) and the first Ctrl-C set ``received``: the loop saves
    a checkpoint at the end of the step and stops. A second Ctrl-C stops at once
    (``KeyboardInterrupt``). Multi-process runs leave SIGTERM to JAX's preemption service."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        self.received = f"signal {signum} ({name})"
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, self._previous[signal.SIGINT])  # the second one: at once
            print(f"\n{name}: saving a checkpoint at the end of this step, then stopping "
                  "(Ctrl-C again stops at once, without saving)", file=sys.stderr, flush=True)

    def __enter__(self) -> _StopSignals:
        if self.enabled:
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _disk_full(error: BaseException) -> bool:
    text = str(error)
    return (getattr(error, "errno", None) == errno.ENOSPC or "No space left" in text
            or "RESOURCE_EXHAUSTED" in text and "writ" in text)


def _write_failure(error: BaseException) -> bool:
    """An error of writing files (the OS's, or TensorStore's as Orbax passes them on), not
    a bug in what was asked to be written."""
    text = str(error)
    return isinstance(error, OSError) or _disk_full(error) or any(
        word in text for word in ("Error writing", "Failed writing", "PERMISSION_DENIED", "UNAVAILABLE",
                                  "DEADLINE_EXCEEDED", "commit"))


def _save_failed(error: BaseException, checkpoints: TrainCheckpoints, step: int) -> TrainingError:
    """One line for a checkpoint that could not be written: why, what is kept, what to do.

    The run stops with that line. Orbax's other writes of the step are abandoned, and a
    coroutine of theirs that was never started warns so when it is collected, often at
    exit, after the line ("coroutine 'async_serialize_from_host.<locals>.write_fragment'
    was never awaited"); from here on that warning is hidden (the warning carries no module
    of its own to filter by)."""
    warnings.filterwarnings("ignore", message=r"coroutine '.*' was never awaited", category=RuntimeWarning)
    checkpoints.manager.reload()
    kept = checkpoints.all_steps()
    reason = ("the disk is full (No space left on device)" if _disk_full(error)
              else one_line(error))
    return TrainingError(
        f"the checkpoint of step {step} could not be written to {checkpoints.directory}: {reason}. "
        + (f"Checkpoints kept: {', '.join(map(str, kept))}; " if kept else "No checkpoint is kept; ")
        + ("free space, then " if _disk_full(error) else "")
        + ("run the same command to resume from step " + str(kept[-1]) if kept
           else "run the same command to start again"))


def _check_save(checkpoints: TrainCheckpoints, step: int | None, wait: bool = False) -> int | None:
    """Raises the error of the checkpoint of ``step`` if its asynchronous write failed;
    returns ``step`` while it is still being written, None once it is written. Orbax keeps
    a finished save's error for the next ``wait``, which returns at once when it is done."""
    if step is None:
        return None
    if not wait and checkpoints.manager.is_saving_in_progress():
        return step
    try:
        checkpoints.wait()
    except Exception as e:  # noqa: BLE001 - orbax and TensorStore raise many types
        raise _save_failed(e, checkpoints, step) from None
    return None


def _out_of_memory(error: Exception, config: ml_collections.ConfigDict, resuming: bool) -> Exception:
    """A step that does not fit in (device or host) memory as one ``TrainingError``; any
    other error as it is."""
    text = str(error)
    if not (isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in text
            or "Out of memory" in text or "out of memory" in text):
        return error
    first = next((line for line in text.splitlines() if line.strip()), type(error).__name__)
    return TrainingError(
        f"a training step of batch_size={config.batch_size} at data.crop_size="
        f"{tuple(config.data.crop_size)} does not fit in memory ({first[:200]}); " + _smaller(resuming))


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


def _repeated_save_error(record: logging.LogRecord) -> bool:
    """False (hide) for Orbax's logs of a write that failed for want of space: logged by
    Orbax, or by asyncio about a future whose exception was raised in Orbax's code (its
    "Future exception was never retrieved", logged when the future is collected, at exit)."""
    text = record.getMessage() + (str(record.exc_info[1]) if record.exc_info else "")
    where = [record.pathname]
    if record.exc_info and record.exc_info[2] is not None:
        where += [frame.filename for frame in traceback.extract_tb(record.exc_info[2])]
    from_orbax = "orbax" in text or any(f"{os.sep}orbax{os.sep}" in path for path in where)
    return not (from_orbax and ("RESOURCE_EXHAUSTED" in text or "No space left" in text))


def _late_write_callback(unraisable: Any) -> None:
    """Hides TensorStore's "Event loop is closed" of writes that end after Orbax closed its
    event loop (a failed save); anything else goes to Python's own hook."""
    frames = traceback.extract_tb(unraisable.exc_traceback)
    if not (unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"
            and frames and frames[0].name == "call_soon_threadsafe"):
        sys.__unraisablehook__(unraisable)


def _hide_repeated_save_errors() -> None:
    """A checkpoint write that fails for want of space fails in each of Orbax's writer
    threads and tasks, and each logs its traceback (hundreds, some at exit); ``run_loop``
    reports it once (``_save_failed``), so this command hides those copies. Installed once
    per process; a hook someone else set (a test runner's) is left alone."""
    for name in ("absl", "asyncio"):
        if _repeated_save_error not in logging.getLogger(name).filters:
            logging.getLogger(name).addFilter(_repeated_save_error)
    if sys.unraisablehook is sys.__unraisablehook__:
        sys.unraisablehook = _late_write_callback


def main(argv: list[str] | None = None) -> int:
    """``python -m segformer_jax.train --config FILE.py[:ARG] --workdir DIR [--config.k=v]``."""
    from segformer_jax import distributed
    _hide_repeated_save_errors()
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
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the first step
        print(f"\nerror: interrupted (Ctrl-C); the checkpoints saved before are kept in "
              f"{pathlib.Path(flag_values.workdir).absolute() / 'checkpoints'}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    host_memory.keep_freed_memory()
    sys.exit(main())
