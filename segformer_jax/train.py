"""Training: ``python -m segformer_jax.train --config configs/FILE.py[:ARG] --workdir DIR``.

One pure, jitted update function that donates its state; the state is a plain dict
``{'step', 'params', 'batch_stats', 'opt_state'}``, created already laid out on the device
mesh (``config.mesh``, see :mod:`segformer_jax.sharding`). Every batch and every random
number is a function of (seed, step) alone, so a run resumed from a checkpoint at step k
replays exactly what an uninterrupted run would have done after step k, on any mesh.

Multi-process runs (TPU pods, GPU clusters; :mod:`segformer_jax.distributed`): every process
runs this same program, reads only its rows of each global batch and saves and restores
checkpoints together with the others; only process 0 writes logs and metrics.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from segformer_jax.config import ConfigError, SegformerConfig
from segformer_jax.hub import CheckpointError
from segformer_jax.losses import segmentation_loss
from segformer_jax.models.ops import resize_bilinear
from segformer_jax.models.segformer import SegformerForSemanticSegmentation, init_variables
from segformer_jax.optim import Recipe, make_optimizer

State = dict[str, Any]


class TrainingError(RuntimeError):
    """A run that cannot start or continue; the message says why and what was kept."""


# --------------------------------------------------------------------------------------
# Model and optimiser from the config


def model_config(config: ml_collections.ConfigDict, num_labels: int,
                 id2label: Mapping[int, str] | None = None) -> SegformerConfig:
    overrides = dict(config.model.get("overrides", {}) or {})
    return SegformerConfig.from_variant(config.model.variant, num_labels=num_labels,
                                        id2label=id2label, **overrides)


def recipe(config: ml_collections.ConfigDict) -> Recipe:
    o = config.optimizer
    return Recipe(learning_rate=o.learning_rate, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay,
                  head_lr_mult=o.head_lr_mult, total_steps=config.total_steps,
                  warmup_steps=o.warmup_steps, warmup_ratio=o.warmup_ratio, power=o.power)


def initial_state(seg_config: SegformerConfig, tx, seed: int,
                  pretrained: Mapping[str, Any] | None = None) -> State:
    variables = pretrained if pretrained is not None else init_variables(seg_config, seed=seed)
    params = jax.tree.map(jnp.asarray, variables["params"])
    return {"step": jnp.zeros((), jnp.int32), "params": params,
            "batch_stats": jax.tree.map(jnp.asarray, variables["batch_stats"]),
            "opt_state": tx.init(params)}


def create_state(seg_config: SegformerConfig, tx, seed: int, mesh: Mesh,
                 pretrained: Mapping[str, Any] | None = None,
                 fsdp_min_size: int | None = None) -> tuple[State, Any]:
    """The initial state born sharded on ``mesh`` (shapes first, no full host copy of a
    fresh model), and the shardings of its leaves."""
    from segformer_jax import sharding
    abstract = jax.eval_shape(lambda: initial_state(seg_config, tx, seed))
    shardings = sharding.state_shardings(abstract, mesh, fsdp_min_size or sharding.MIN_FSDP_SIZE)
    if pretrained is None:
        return jax.jit(lambda: initial_state(seg_config, tx, seed), out_shardings=shardings)(), shardings
    variables = {k: pretrained[k] for k in ("params", "batch_stats")}
    variables = jax.device_put(variables, {k: shardings[k] for k in variables})
    build = jax.jit(lambda v: initial_state(seg_config, tx, seed, v), out_shardings=shardings)
    return build(variables), shardings


# --------------------------------------------------------------------------------------
# The steps


def make_train_step(model: SegformerForSemanticSegmentation, tx, seed: int,
                    ignore_index: int, loss_reduction: str) -> Callable[[State, dict], tuple[State, dict]]:
    """The update: forward in train mode, loss on upsampled logits, AdamW, new BN stats."""

    def train_step(state: State, batch: dict) -> tuple[State, dict]:
        dropout_key = jax.random.fold_in(jax.random.key(seed), state["step"])

        def loss_fn(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": state["batch_stats"]}, batch["image"],
                train=True, rngs={"dropout": dropout_key}, mutable=["batch_stats"])
            return segmentation_loss(logits, batch["label"], ignore_index, loss_reduction), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        changes, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = jax.tree.map(jnp.add, state["params"], changes)
        new_state = {"step": state["step"] + 1, "params": params,
                     "batch_stats": updates["batch_stats"], "opt_state": opt_state}
        return new_state, {"loss": loss, "grad_norm": _global_norm(grads)}

    return train_step


def jit_train_step(model: SegformerForSemanticSegmentation, tx, config: ml_collections.ConfigDict,
                   seg_config: SegformerConfig, mesh: Mesh, state_sharding: Any) -> Callable:
    """The step ``train`` runs: jitted with the state's and the batch's shardings, donating
    the state (experiments/sweep_measure.py times this very program)."""
    from segformer_jax import sharding
    step = make_train_step(model, tx, config.seed, seg_config.semantic_loss_ignore_index,
                           config.loss_reduction)
    return jax.jit(step, in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
                   out_shardings=(state_sharding, sharding.replicated(mesh)), donate_argnums=0)


def _global_norm(tree: Any) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def make_predict(model: SegformerForSemanticSegmentation) -> Callable:
    """mmseg's whole-image test: logits resized to the (test-resized) input on the device,
    then to the label's original size on the host, then argmax.

    Only the first part is jitted: test sizes are few (aligned to 32), original sizes many.
    """
    from segformer_jax.inference import whole_inference
    logits_at_input = jax.jit(lambda variables, images: whole_inference(model.apply, variables, images))

    def predict(variables: dict, images: np.ndarray, label_size: tuple[int, int]) -> np.ndarray:
        logits = np.asarray(logits_at_input(variables, images))
        return resize_bilinear(logits, label_size).argmax(-1)

    return predict


def evaluate_split(predict: Callable, variables: dict, examples: Iterator[dict],
                   num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """The split's confusion matrix, accumulated exactly in int64 on the host."""
    from segformer_jax import metrics
    total = metrics.zeros(num_classes)
    for example in examples:
        label = np.asarray(example["label"])
        pred = predict(variables, example["image"], label.shape[1:3])
        total = metrics.update(total, metrics.confusion_matrix_host(pred, label, num_classes,
                                                                    ignore_index))
    return sum_over_processes(total)


def sum_over_processes(counts: np.ndarray) -> np.ndarray:
    """Exact int64 sum of every process's counts (JAX's collectives carry 32-bit ints, so
    the counts travel as two 30-bit halves)."""
    if jax.process_count() == 1:
        return counts
    from jax.experimental import multihost_utils
    counts = np.asarray(counts, np.int64)
    halves = np.stack([counts >> 30, counts & (2 ** 30 - 1)]).astype(np.int32)
    gathered = np.asarray(multihost_utils.process_allgather(halves), np.int64)
    return (gathered[:, 0].sum(0) << 30) + gathered[:, 1].sum(0)


def host_variables(state: State, mesh: Mesh) -> dict[str, Any]:
    """The model's variables, whole, on this process's first device (for evaluation, which
    runs image by image on each process's share of the split)."""
    from segformer_jax import sharding
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    whole = jax.jit(lambda v: v, out_shardings=sharding.replicated(mesh))(variables)
    return jax.device_put(jax.tree.map(np.asarray, whole), jax.local_devices()[0])


# --------------------------------------------------------------------------------------
# Logging


class MetricWriter:
    """Scalars to ``workdir/metrics.jsonl`` and TensorBoard event files (process 0 only)."""

    def __init__(self, workdir: pathlib.Path, enabled: bool = True):
        self.enabled = enabled
        self._jsonl = open(workdir / "metrics.jsonl", "a", encoding="utf-8") if enabled else None
        self._tb = None
        if enabled:
            try:
                from tensorboardX import SummaryWriter
                self._tb = SummaryWriter(str(workdir / "tensorboard"))
            except ImportError:  # TensorBoard files are optional; the JSON lines are not.
                pass

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
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
# Config


def default_config() -> ml_collections.ConfigDict:
    """The NVlabs recipe (spec §7) with a data section to be filled by a config file."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    # Devices: data x fsdp = all devices of all processes (data=-1: whatever fsdp leaves).
    # Leaves with fewer elements than fsdp_min_size stay replicated when fsdp > 1.
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "fsdp_min_size": 2 ** 14})
    c.model = ml_collections.ConfigDict({"variant": "b0", "dtype": "float32", "remat": False,
                                         "init": "scratch", "overrides": {}})
    c.data = ml_collections.ConfigDict({"name": "synthetic", "data_dir": "", "manual_dir": "",
                                        "crop_size": (512, 512), "img_scale": (2048, 512),
                                        "ratio_range": (0.5, 2.0), "cat_max_ratio": 0.75,
                                        "train_split": "train", "eval_split": "validation",
                                        "eval_scale": (2048, 512), "eval_size_divisor": 32,
                                        "photometric": True, "num_workers": 2, "options": {}})
    c.optimizer = ml_collections.ConfigDict({"learning_rate": 6e-5, "b1": 0.9, "b2": 0.999,
                                             "weight_decay": 0.01, "head_lr_mult": 10.0,
                                             "warmup_steps": 1500, "warmup_ratio": 1e-6,
                                             "power": 1.0})
    c.batch_size = 16
    c.accumulate_steps = 1
    c.total_steps = 160_000
    c.loss_reduction = "valid"   # "all": mmseg 0.x's mean over every pixel
    c.eval_every = 16_000
    c.checkpoint_every = 4000
    c.keep_checkpoints = 3
    c.log_every = 50
    return c


# --------------------------------------------------------------------------------------
# The run


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


def _data(config: ml_collections.ConfigDict):
    from segformer_jax import data
    from segformer_jax.data.transforms import EvalTransform, TrainTransform
    d = config.data
    options = dict(d.options)
    kwargs = dict(data_dir=d.data_dir or None, manual_dir=d.manual_dir or None, **options)
    train_split = data.load_split(d.name, d.train_split, **kwargs)
    eval_split = data.load_split(d.name, d.eval_split, **kwargs) if d.eval_split else None
    reduce = train_split.reduce_zero_label
    train_tf = TrainTransform(img_scale=tuple(d.img_scale), ratio_range=tuple(d.ratio_range),
                              crop_size=tuple(d.crop_size), cat_max_ratio=d.cat_max_ratio,
                              reduce_zero_label=reduce, photometric=d.photometric)
    eval_tf = EvalTransform(img_scale=tuple(d.eval_scale) if d.eval_scale else None,
                            size_divisor=d.eval_size_divisor or None, reduce_zero_label=reduce)
    return train_split, eval_split, train_tf, eval_tf


def _meta(step: int, seg_config: SegformerConfig, config: ml_collections.ConfigDict,
          metrics: Mapping[str, float] | None = None) -> dict[str, Any]:
    from segformer_jax.hub import config_summary
    return {"step": int(step), "model": seg_config.to_dict(), "model_summary": config_summary(seg_config),
            "seed": int(config.seed), "batch_size": int(config.batch_size),
            "metrics": {k: float(v) for k, v in (metrics or {}).items()}}


def _check_compatible(meta: Mapping[str, Any], seg_config: SegformerConfig, config, where: str) -> None:
    saved = SegformerConfig.from_dict(meta["model"])
    if saved != seg_config:
        diff = [f"{f}: checkpoint {getattr(saved, f)!r} vs config {getattr(seg_config, f)!r}"
                for f in ("hidden_sizes", "depths", "decoder_hidden_size", "num_labels", "sr_ratios",
                          "num_attention_heads", "mlp_ratios", "id2label", "mix_ffn_conv")
                if getattr(saved, f) != getattr(seg_config, f)]
        raise TrainingError(f"{where}: written by a different model ({'; '.join(diff) or 'config differs'}); "
                            "use a fresh --workdir for this config")
    for key in ("seed", "batch_size"):
        if int(meta[key]) != int(config[key]):
            raise TrainingError(f"{where}: written with {key}={meta[key]}, this config has "
                                f"{key}={config[key]}; resuming would not replay the same run")


def validate(config: ml_collections.ConfigDict) -> None:
    """Config values that would fail deep inside a run fail here, naming the key."""
    def positive(key: str) -> None:
        if int(config[key]) < 1:
            raise ConfigError(f"config {key} must be at least 1; got {config[key]}")
    for key in ("batch_size", "accumulate_steps", "total_steps", "eval_every", "checkpoint_every",
                "log_every", "keep_checkpoints"):
        positive(key)
    if config.batch_size % config.accumulate_steps:
        raise ConfigError(f"batch_size {config.batch_size} is not a multiple of accumulate_steps "
                          f"{config.accumulate_steps}")
    if config.batch_size % jax.process_count():
        raise ConfigError(f"batch_size {config.batch_size} does not split over "
                          f"{jax.process_count()} processes")
    if config.model.dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"model.dtype must be 'float32' or 'bfloat16'; got {config.model.dtype!r}")
    if config.loss_reduction not in ("valid", "all"):
        raise ConfigError(f"loss_reduction must be 'valid' or 'all'; got {config.loss_reduction!r}")
    if config.model.remat not in (True, False):
        raise ConfigError(f"model.remat must be true or false; got {config.model.remat!r}")


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """Runs (or resumes) training; returns the final evaluation summary (or {})."""
    validate(config)
    from segformer_jax import metrics as metrics_lib
    from segformer_jax import sharding
    from segformer_jax.checkpoint import TrainCheckpoints
    from segformer_jax.hub import from_pretrained

    workdir = pathlib.Path(workdir).absolute()
    check_workdir(workdir, needed_bytes=0)  # unwritable: say so before building any dataset
    is_main = jax.process_index() == 0
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    micro_batch = config.batch_size // config.accumulate_steps
    sharding.check_batch(micro_batch, mesh, "batch_size / accumulate_steps")
    train_split, eval_split, train_tf, eval_tf = _data(config)
    seg_config = model_config(config, train_split.num_labels, train_split.id2label)
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[config.model.dtype]
    model = SegformerForSemanticSegmentation(seg_config, dtype=dtype, remat=config.model.remat)
    tx = make_optimizer(recipe(config), config.accumulate_steps)

    pretrained = None
    if config.model.init != "scratch":
        _, pretrained = from_pretrained(config.model.init, task="semantic_segmentation",
                                        num_labels=seg_config.num_labels, seed=config.seed)
    state, state_sharding = create_state(seg_config, tx, config.seed, mesh, pretrained,
                                          config.mesh.fsdp_min_size)
    del pretrained
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    check_workdir(workdir, needed_bytes=(config.keep_checkpoints + 2) * state_bytes + (64 << 20))

    checkpoints = TrainCheckpoints(workdir, config.checkpoint_every, config.keep_checkpoints)
    start = checkpoints.latest_step()
    if start is not None:
        try:
            _check_compatible(checkpoints.meta(start), seg_config, config,
                              str(checkpoints.directory / str(start)))
            # The target's shardings are this run's mesh: a checkpoint from any mesh fits.
            abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                    state, state_sharding)
            del state
            state = checkpoints.restore(start, abstract)
        except BaseException:
            checkpoints.close()
            raise
        if is_main:
            print(f"resuming from {checkpoints.directory / str(start)} (step {start})", flush=True)
    # state["step"] counts micro-batches (it seeds dropout); the loop counts optimiser steps.
    start = int(state["step"]) // config.accumulate_steps

    images_sharding = sharding.batch_sharding(mesh)
    train_step = jit_train_step(model, tx, config, seg_config, mesh, state_sharding)
    schedule = make_lr_probe(config)
    predict = make_predict(model)
    writer = MetricWriter(workdir, enabled=is_main)
    multi_process = jax.process_count() > 1
    stop = {"signal": None}
    # One process: our own SIGTERM handler. Several: JAX's preemption service (started by
    # jax.distributed) agrees on one step at which every process saves and stops.
    previous = None if multi_process else signal.signal(
        signal.SIGTERM, lambda signum, _: stop.__setitem__("signal", signum))
    from segformer_jax.data.pipeline import TrainBatches
    batches = TrainBatches(train_split.source, train_tf, micro_batch, seed=config.seed,
                           start_step=start * config.accumulate_steps,
                           rows=sharding.process_rows(images_sharding, micro_batch),
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

    def run_eval(step: int) -> dict[str, Any]:
        from segformer_jax.data.pipeline import eval_batches
        examples = eval_batches(eval_split.source, eval_tf, 1,
                                process_index=jax.process_index(), process_count=jax.process_count())
        cm = evaluate_split(predict, host_variables(state, mesh),
                            ({"image": e["image"], "label": e["label"]} for e in examples),
                            seg_config.num_labels, seg_config.semantic_loss_ignore_index)
        result = metrics_lib.summarize(cm, [seg_config.id2label[i] for i in range(seg_config.num_labels)])
        writer.write(step, {"val/mIoU": result["mIoU"], "val/aAcc": result["aAcc"], "val/mAcc": result["mAcc"]})
        return result

    try:
        step = start
        for step in range(start + 1, config.total_steps + 1):
            micro_losses = []
            for _ in range(config.accumulate_steps):
                state, out = train_step(state, sharding.global_batch(next(batches), images_sharding))
                micro_losses.append(out["loss"])
            pending_losses.append((step, sum(micro_losses) / len(micro_losses)))
            if step % config.log_every == 0 or step == config.total_steps:
                loss = check_losses()
                lr = float(schedule(step - 1))
                progress.update(step, loss, lr)
                writer.write(step, {"train/loss": loss, "train/lr": lr,
                                    "train/grad_norm": float(out["grad_norm"])})
            evaluated = None
            if eval_split is not None and (step % config.eval_every == 0 or step == config.total_steps):
                check_losses()
                evaluated = run_eval(step)
                if is_main:
                    print(f"\nstep {step}: validation mIoU {100 * evaluated['mIoU']:.2f} "
                          f"aAcc {100 * evaluated['aAcc']:.2f}", flush=True)
            if multi_process and checkpoints.reached_preemption(step):
                stop["signal"] = "SIGTERM (preemption)"
            final = step == config.total_steps or stop["signal"] is not None
            if final or step % config.checkpoint_every == 0:
                check_losses()
                metrics = {"mIoU": evaluated["mIoU"]} if evaluated and math.isfinite(evaluated["mIoU"]) else None
                checkpoints.save(step, state, _meta(step, seg_config, config, metrics), metrics, force=final)
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
        print(metrics_lib.format_table(summary))
    return summary


def make_lr_probe(config: ml_collections.ConfigDict) -> Callable[[int], float]:
    """The base (backbone) learning rate at a step, for the logs."""
    from segformer_jax.optim import poly_with_warmup
    return poly_with_warmup(recipe(config))


# --------------------------------------------------------------------------------------
# Command line


def distributed_flags(parser) -> None:
    """Multi-process runs: see segformer_jax/distributed.py (SLURM and TPU pods need none)."""
    group = parser.add_argument_group("multi-process")
    group.add_argument("--coordinator_address", default=None, help="HOST:PORT of process 0")
    group.add_argument("--num_processes", type=int, default=None)
    group.add_argument("--process_id", type=int, default=None)
    group.add_argument("--distributed", action="store_true",
                       help="call jax.distributed.initialize() and let JAX detect the cluster")


def main(argv: list[str] | None = None) -> int:
    from segformer_jax.cli_config import parse_args
    from segformer_jax.data.common import DatasetError
    from segformer_jax import distributed
    config, args = parse_args(sys.argv[1:] if argv is None else argv, prog="python -m segformer_jax.train",
                              add_flags=distributed_flags)
    try:
        distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                               force=args.distributed)
        start = time.perf_counter()
        train(config, args.workdir)
        if jax.process_index() == 0:
            print(f"done in {time.perf_counter() - start:.0f} s; workdir {args.workdir}")
    except (TrainingError, ConfigError, CheckpointError, DatasetError) as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
