"""Checkpoints: writing, finding and reading every kind this library makes or reads.

* Model checkpoints, what ``python -m segformer_jax.convert`` writes::

      DIR/config.json      the SegformerConfig, with ``architectures`` naming the task
      DIR/variables/       Orbax StandardCheckpointer output ({'params', 'batch_stats'})

* Training checkpoints (``TrainCheckpoints``): an Orbax ``CheckpointManager`` in
  ``workdir/checkpoints/<step>/{state,meta}``.
* ``load_checkpoint``: the model of any of these, or of a Hub / NVlabs weight file
  (``load_for_inference``: the same, segmentation only).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import jax
import numpy as np

from segformer_jax.config import SegformerConfig
from segformer_jax.constants import SEMSEG
from segformer_jax.errors import CheckpointError, ConfigError, DamagedCheckpointError, NonFiniteError, one_line
from segformer_jax.hub import ARCHITECTURES, WEIGHT_FILES, task_of

log = logging.getLogger(__name__)
_T = TypeVar("_T")

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")
CHECKPOINTS = "checkpoints"   # a training workdir's Orbax directory

_TASK_OF_ARCHITECTURE = {v: k for k, v in ARCHITECTURES.items()}


def is_model_checkpoint(path: str | os.PathLike) -> bool:
    path = pathlib.Path(path)
    return (path / "variables").is_dir() and (path / "config.json").is_file()


def save_model(path: str | os.PathLike, config: SegformerConfig, variables: Mapping[str, Any],
               task: str | None = None, overwrite: bool = False) -> pathlib.Path:
    """Writes a model checkpoint; a finished one replaces ``path`` only at the very end."""
    import orbax.checkpoint as ocp
    task = task or task_of(variables)
    path = pathlib.Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path}: exists and is not a directory")
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise CheckpointError(f"{path}: exists and is not empty; choose another directory "
                              "or pass overwrite=True (--overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        config.to_json_file(staging / "config.json", ARCHITECTURES[task])
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(staging / "variables", jax.tree.map(np.asarray, dict(variables)))
        if path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def load_model(path: str | os.PathLike) -> tuple[SegformerConfig, dict[str, Any], str]:
    """Reads ``(config, variables, task)`` of a checkpoint written by ``save_model``."""
    import orbax.checkpoint as ocp
    path = pathlib.Path(path).absolute()
    if not is_model_checkpoint(path):
        raise CheckpointError(f"{path}: not a segformer_jax model checkpoint (expected "
                              "config.json and a variables/ directory)")
    config = SegformerConfig.from_json_file(path / "config.json")
    architectures = json.loads((path / "config.json").read_text()).get("architectures") or []
    task = next((_TASK_OF_ARCHITECTURE[a] for a in architectures if a in _TASK_OF_ARCHITECTURE), SEMSEG)
    def restore() -> Any:
        with ocp.StandardCheckpointer() as checkpointer:
            return checkpointer.restore(path / "variables")
    variables = read_orbax(f"{path / 'variables'}: cannot be restored", restore)
    if task_of(variables) != task:
        raise ConfigError(f"{path / 'config.json'}: architectures say {task} but the variables "
                          f"hold a {task_of(variables)} model")
    return config, variables, task


# --------------------------------------------------------------------------------------
# Fingerprints: what a training step's arrays were when they were saved
#
# Per leaf, two sums of its 32-bit words, wrapping modulo 2**32: the plain sum and the sum
# weighted by each word's (odd-mixed) position. Integer addition is exact in any order, so
# the device computes them on the sharded state when saving and again on whatever mesh
# restores it (or numpy on the host, for inference) and gets the same two numbers; a
# missing, truncated or changed file that Orbax still reads shows as a different fingerprint.

_MIX = np.uint32(0x9E3779B1)  # Knuth's multiplicative hash constant: odd, so a bijection


def leaf_name(path: Any) -> str:
    """A pytree path as ``opt_state/inner_states/default/0/mu/...``: the same for the live
    state (optax's named tuples) and the tree Orbax restores (dicts and lists)."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _words_device(x: jax.Array) -> jax.Array:
    import jax.numpy as jnp
    size = np.dtype(x.dtype).itemsize
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    if size == 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    if size < 4:
        kind = {1: jnp.uint8, 2: jnp.uint16}[size]
        return jax.lax.bitcast_convert_type(x, kind).astype(jnp.uint32)
    return jax.lax.bitcast_convert_type(x, jnp.uint32)  # 8 bytes: (..., 2) words


def _leaf_print_device(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    import jax.numpy as jnp
    words = _words_device(x)
    index = jnp.zeros(words.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(words.ndim)):  # the C-order position, without a reshape
        index = index + jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis) * np.uint32(stride % 2**32)
        stride *= words.shape[axis]
    sums = jnp.stack([jnp.sum(words, dtype=jnp.uint32),
                      jnp.sum(words * (index * _MIX + np.uint32(1)), dtype=jnp.uint32)])
    finite = (jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact)
              else jnp.array(True))
    return sums, finite


def _leaf_print_host(x: np.ndarray) -> tuple[np.ndarray, bool]:
    x = np.ascontiguousarray(x)
    if x.dtype == np.bool_:
        words = x.astype(np.uint32)
    elif x.dtype.itemsize < 4:
        words = x.view({1: np.uint8, 2: np.uint16}[x.dtype.itemsize]).astype(np.uint32)
    else:
        words = x.reshape(-1).view(np.uint32)
    words = words.reshape(-1)
    index = np.arange(words.size, dtype=np.uint32)
    with np.errstate(over="ignore"):
        sums = np.array([np.sum(words, dtype=np.uint32),
                         np.sum(words * (index * _MIX + np.uint32(1)), dtype=np.uint32)], np.uint32)
    finite = bool(np.all(np.isfinite(x))) if np.issubdtype(x.dtype, np.inexact) else True
    return sums, finite


def _fingerprint_program(leaves: list[jax.Array]) -> tuple[jax.Array, jax.Array]:
    import jax.numpy as jnp
    prints = [_leaf_print_device(x) for x in leaves]
    return jnp.stack([p[0] for p in prints]), jnp.stack([p[1] for p in prints])


def fingerprint(tree: Any) -> tuple[dict[str, list[int]], list[str]]:
    """``({leaf name: [sum, weighted sum]}, [names of leaves holding NaN or Inf])`` of a
    pytree of arrays: computed on the devices for ``jax.Array`` leaves (one small program,
    its result replicated), with numpy for host arrays."""
    named = jax.tree_util.tree_flatten_with_path(tree)[0]
    names = [leaf_name(path) for path, _ in named]
    leaves = [leaf for _, leaf in named]
    if leaves and all(isinstance(leaf, jax.Array) for leaf in leaves):
        mesh = next((leaf.sharding.mesh for leaf in leaves
                     if isinstance(leaf.sharding, jax.sharding.NamedSharding)), None)
        out = (None if mesh is None else
               jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
        # One function, not a closure: jit traces and compiles it once per state layout.
        sums, finite = jax.device_get(jax.jit(_fingerprint_program, out_shardings=out)(leaves))
    else:
        prints = [_leaf_print_host(np.asarray(leaf)) for leaf in leaves]
        sums = np.stack([p[0] for p in prints]) if prints else np.zeros((0, 2), np.uint32)
        finite = np.array([p[1] for p in prints], bool)
    return ({n: [int(a), int(b)] for n, (a, b) in zip(names, np.asarray(sums))},
            [n for n, ok in zip(names, np.asarray(finite)) if not ok])


def check_fingerprint(tree: Any, saved: Mapping[str, Any] | None, where: str,
                      prefixes: tuple[str, ...] = ("",)) -> None:
    """Raises ``DamagedCheckpointError`` when a leaf of ``tree`` (under ``prefixes``) differs
    from the fingerprint saved with it, or holds NaN or Inf; ``saved`` None (a checkpoint
    from before fingerprints were kept) checks finiteness only."""
    prints, non_finite = fingerprint(tree)
    non_finite = [n for n in non_finite if n.startswith(prefixes)]
    if non_finite:
        raise DamagedCheckpointError(f"{where}: {len(non_finite)} array(s) hold NaN or Inf "
                                     f"({', '.join(non_finite[:3])}{', …' if len(non_finite) > 3 else ''})")
    if not saved:
        return
    differ = [n for n, p in prints.items() if n.startswith(prefixes) and n in saved
              and list(saved[n]) != p]
    missing = [n for n in saved if n.startswith(prefixes) and n not in prints]
    if differ or missing:
        shown = ", ".join((differ + missing)[:3])
        raise DamagedCheckpointError(
            f"{where}: {len(differ)} array(s) differ from the fingerprint saved with them"
            + (f" and {len(missing)} are missing" if missing else "")
            + f" ({shown}{', …' if len(differ) + len(missing) > 3 else ''}): its files were "
            "changed after they were written")


# --------------------------------------------------------------------------------------
# Training checkpoints: the train state + a JSON record, managed by Orbax


class TrainCheckpoints:
    """Orbax ``CheckpointManager`` for a training run in ``workdir/checkpoints``.

    Saves asynchronously every ``every`` steps (and whenever ``force`` is given: the end of
    a run, a preemption), keeps the latest ``keep`` and the one with the best ``best_metric``.
    Each checkpoint holds two items: ``state`` (the train-state pytree) and ``meta`` (JSON:
    the step, the run's model config, the metrics at that step and the state's
    ``fingerprint``). The input pipeline's position is the step itself: batches are a pure
    function of (seed, step).

    A state holding NaN or Inf is never saved (``NonFiniteError``); ``restore`` checks what
    it reads against the fingerprint and raises ``DamagedCheckpointError`` for a step whose
    files were lost or changed, ``CheckpointError`` for one of another model or optimiser.
    """

    def __init__(self, workdir: str | os.PathLike, every: int, keep: int = 3,
                 best_metric: str | None = "mIoU"):
        import orbax.checkpoint as ocp
        policies = ocp.checkpoint_managers
        preserve = [policies.LatestN(n=max(keep, 1))]
        if best_metric:
            preserve.append(policies.BestN(get_metric_fn=lambda m: m[best_metric], n=1,
                                           keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=policies.FixedIntervalPolicy(max(every, 1)),
            preservation_policy=policies.AnyPreservationPolicy(preserve),
            enable_async_checkpointing=True,
            cleanup_tmp_directories=True)  # what a save cut short (a full disk) left behind
        self.workdir = pathlib.Path(workdir).absolute()
        self.directory = self.workdir / CHECKPOINTS
        self._ocp = ocp
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """The finished steps, oldest first."""
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: Mapping[str, Any],
             metrics: Mapping[str, float] | None = None, force: bool = False) -> bool:
        """Starts writing ``state`` as ``step`` (asynchronously), its fingerprint in ``meta``;
        ``NonFiniteError`` naming the arrays if it holds NaN or Inf (nothing is written)."""
        prints, non_finite = fingerprint(state)
        if non_finite:
            raise NonFiniteError(f"the state after step {step} holds NaN or Inf in "
                                 f"{len(non_finite)} of {len(prints)} arrays "
                                 f"({', '.join(non_finite[:3])}{', …' if len(non_finite) > 3 else ''})")
        args = self._ocp.args.Composite(
            state=self._ocp.args.StandardSave(state),
            meta=self._ocp.args.JsonSave({**meta, "fingerprint": prints}))
        return self.manager.save(step, args=args, metrics=dict(metrics) if metrics else None,
                                 force=force)

    def meta(self, step: int) -> dict[str, Any]:
        """The JSON record of ``step``: read it to check a checkpoint before restoring it."""
        ocp = self._ocp
        meta = read_orbax(f"{self.directory / str(step)}: cannot read its meta record",
                          lambda: self.manager.restore(
                              step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
        if not isinstance(meta, Mapping):
            raise DamagedCheckpointError(f"{self.directory / str(step)}: its meta record is not a "
                                         "JSON object")
        return dict(meta)

    def restore(self, step: int, abstract_state: Any, meta: Mapping[str, Any] | None = None) -> Any:
        """The state at ``step``, laid out (dtypes, shardings) as ``abstract_state``, checked
        against the fingerprint in ``meta`` (read when not given)."""
        ocp = self._ocp
        where = self.directory / str(step)
        meta = self.meta(step) if meta is None else meta
        check_layout(where / "state", abstract_state)
        restored = read_orbax(f"{where}: its files cannot be read back", lambda: self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))))
        check_fingerprint(restored["state"], meta.get("fingerprint"), str(where))
        return restored["state"]

    def set_aside(self, step: int) -> pathlib.Path:
        """Moves a damaged ``step`` out of the manager's sight, to
        ``workdir/damaged_checkpoints/<step>`` (kept, never deleted), and returns where."""
        aside = self.workdir / DAMAGED
        target = aside / str(step)
        if jax.process_index() == 0:
            aside.mkdir(exist_ok=True)
            k = 0
            while target.exists():
                k += 1
                target = aside / f"{step}-{k}"
            os.replace(self.directory / str(step), target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"segformer_jax set aside {step}")
        self.manager.reload()
        return target

    def check_for_errors(self) -> None:
        """Raises the error of an asynchronous save that failed since the last call."""
        self.manager.check_for_errors()

    def reached_preemption(self, step: int) -> bool:
        """True on every process at the same step once any was told to stop (multi-process
        runs; JAX's preemption service decides the step)."""
        return self.manager.reached_preemption(step)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


DAMAGED = "damaged_checkpoints"  # a workdir's damaged steps, moved out of checkpoints/


# What says the file system or the device refused or ran out, not that the files are wrong:
# such a step is not set aside as damaged (another try, or another machine, reads it).
_NOT_DAMAGE = ("RESOURCE_EXHAUSTED", "PERMISSION_DENIED", "UNAVAILABLE", "DEADLINE_EXCEEDED",
               "Out of memory", "out of memory", "Permission denied", "timed out")


def unreadable(error: BaseException, what: str) -> CheckpointError:
    """A checkpoint Orbax could not read: ``DamagedCheckpointError`` when its files are wrong
    (missing, cut short, changed: TensorStore's NOT_FOUND, OUT_OF_RANGE, DATA_LOSS, ...),
    a plain ``CheckpointError`` for an access or system error anywhere in the chain."""
    chain, seen = [], error
    while seen is not None and len(chain) < 8:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    text = " ".join(str(e) for e in chain)
    if any(isinstance(e, (PermissionError, MemoryError, TimeoutError)) for e in chain) \
            or any(word in text for word in _NOT_DAMAGE):
        return CheckpointError(f"{what} now ({one_line(error)}): an access or system error, not "
                               "damage; nothing was moved. Check the file system and memory and try again")
    cause = next((e for e in chain[1:] if str(e)), None)
    return DamagedCheckpointError(f"{what}: a file is missing, cut short or changed ({one_line(error)}"
                                  + (f"; {one_line(cause, 160)}" if cause is not None else "") + ")")


def _is_array(m: Any) -> bool:
    return hasattr(m, "shape") and hasattr(m, "dtype")


def saved_layout(state_dir: pathlib.Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{leaf name: (shape, dtype)}`` of a saved state, from its metadata;
    ``DamagedCheckpointError`` when that cannot be read."""
    import orbax.checkpoint as ocp
    if any(state_dir.glob("ocdbt.process_*")) and not (state_dir / "manifest.ocdbt").is_file():
        # Checked first: TensorStore's reads of a missing index leave callbacks that print
        # tracebacks at exit.
        raise DamagedCheckpointError(f"{state_dir}: its index of arrays (manifest.ocdbt) is missing")
    def metadata() -> Any:
        with ocp.StandardCheckpointer() as checkpointer:
            tree = checkpointer.metadata(state_dir)
        return getattr(getattr(tree, "item_metadata", None), "tree", tree)
    tree = read_orbax(f"{state_dir}: its metadata cannot be read", metadata)
    named = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_array)[0]
    if not named or not all(_is_array(m) for _, m in named):
        raise DamagedCheckpointError(f"{state_dir}: its metadata lists no arrays")
    return {leaf_name(path): (tuple(m.shape), np.dtype(m.dtype)) for path, m in named}


def check_layout(state_dir: pathlib.Path, abstract_state: Any) -> None:
    """``CheckpointError`` naming the arrays when the saved state is not laid out as
    ``abstract_state`` (another model or optimiser), before anything is read."""
    saved = saved_layout(state_dir)
    wanted = {leaf_name(path): (tuple(x.shape), np.dtype(x.dtype))
              for path, x in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
    if saved == wanted:
        return
    only_saved = sorted(set(saved) - set(wanted))
    only_wanted = sorted(set(wanted) - set(saved))
    other = [f"{n} {saved[n][0]} vs {wanted[n][0]}" for n in sorted(set(saved) & set(wanted))
             if saved[n] != wanted[n]]
    parts = ([f"only in the checkpoint: {', '.join(only_saved[:3])}"] if only_saved else []) \
        + ([f"only in this run: {', '.join(only_wanted[:3])}"] if only_wanted else []) \
        + ([f"other shapes: {', '.join(other[:3])}"] if other else [])
    raise CheckpointError(f"{state_dir.parent}: does not fit this run's model and optimiser "
                          f"({'; '.join(parts)})")


# --------------------------------------------------------------------------------------
# Reading a training run's checkpoints back (for inference, evaluation, conversion)


def finished_steps(checkpoints: str | os.PathLike) -> list[int]:
    """The steps Orbax's ``CheckpointManager`` has finished in ``checkpoints``, oldest first
    (a step still being written, or interrupted, is not one)."""
    import orbax.checkpoint as ocp
    with _quiet_orbax():
        options = ocp.CheckpointManagerOptions(read_only=True, create=False)
        with ocp.CheckpointManager(pathlib.Path(checkpoints).absolute(), options=options,
                                   item_names=("state", "meta")) as manager:
            return sorted(int(s) for s in manager.all_steps())


_ORBAX_WORDS = ("orbax", "TensorStore", "tensorstore", "OCDBT", "Event loop is closed")


def _from_orbax(*parts: Any) -> bool:
    return any(word in str(part) for part in parts if part is not None for word in _ORBAX_WORDS)


@contextlib.contextmanager
def _quiet_orbax(hidden: list[str] | None = None) -> Iterator[None]:
    """Orbax's logs while we read are hidden (their first lines appended to ``hidden``: text
    only, which holds none of their frames alive): its absl warnings about
    what reading on purpose does (a read-only manager, a step item without step metadata),
    and what the reads of a damaged step leave behind (see ``read_orbax``): asyncio's
    "exception was never retrieved" records, unraisable errors of abandoned coroutines and
    TensorStore callbacks, "coroutine was never awaited" warnings. Anything not from Orbax
    or TensorStore passes."""
    import sys
    import warnings
    hidden = [] if hidden is None else hidden

    def ours(record: logging.LogRecord) -> bool:
        if _from_orbax(record.getMessage(), record.exc_info and record.exc_info[1]):
            hidden.append(record.getMessage()[:200])
            return False
        return True

    previous_hook = sys.unraisablehook

    def unraisable(u: Any) -> None:
        if _from_orbax(u.exc_value, repr(u.object)):
            hidden.append(one_line(u.exc_value))
        else:
            previous_hook(u)

    absl, tasks = logging.getLogger("absl"), logging.getLogger("asyncio")
    level = absl.level
    absl.setLevel(logging.CRITICAL)
    tasks.addFilter(ours)
    sys.unraisablehook = unraisable
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
            yield
    finally:
        sys.unraisablehook = previous_hook
        tasks.removeFilter(ours)
        absl.setLevel(level)


def read_orbax(what: str, read: Callable[[], _T]) -> _T:
    """``read()``, an Orbax read, quietly; ``unreadable(error, what)`` when it fails.

    When one read of a step fails, Orbax's others are still in flight: its event loop is
    closed without waiting for them, and they fail in TensorStore's threads afterwards, each
    leaving an error with kilobytes of TensorStore spec, logged or printed when the garbage
    collector finds it, which may be much later (a flaky line on stderr). So the failure is
    dropped first (nothing may hold its frames), then the leftovers are collected inside the
    filters, until three rounds in a row find nothing new (at most 50 rounds, each a 20 ms
    wait and a collection; only after a failed read)."""
    import gc
    import time
    hidden: list[str] = []
    with _quiet_orbax(hidden):
        try:
            return read()
        except Exception as failure:  # noqa: BLE001 - orbax raises many types for damaged files
            error = unreadable(failure, what)
        quiet, before = 0, -1
        for _ in range(50):
            gc.collect()
            quiet = quiet + 1 if len(hidden) == before else 0
            if quiet == 3:
                break
            before = len(hidden)
            time.sleep(0.02)
    raise error


def _training_steps(path: pathlib.Path) -> tuple[pathlib.Path, list[int]] | None:
    """``(checkpoints directory, finished steps oldest first)`` of a workdir or its
    ``checkpoints/``; None when ``path`` is neither."""
    if (path / CHECKPOINTS).is_dir():
        checkpoints = path / CHECKPOINTS
    elif path.name == CHECKPOINTS and path.is_dir():
        checkpoints = path
    else:
        return None
    steps = finished_steps(checkpoints)
    if not steps:
        raise CheckpointError(f"{path}: a training workdir without a finished checkpoint in "
                              f"{checkpoints} (the run has saved none yet)")
    return checkpoints, steps


def _is_step_dir(path: pathlib.Path) -> bool:
    return path.name.isdigit() and (path / "state").is_dir() and (path / "meta").is_dir()


def training_step_dir(path: str | os.PathLike) -> pathlib.Path | None:
    """The checkpoint a training-run path points to, or None if it is not one.

    Accepts the workdir (its latest step), ``workdir/checkpoints`` (the same) or one step
    directory ``workdir/checkpoints/<step>``.
    """
    path = pathlib.Path(path)
    if not path.is_dir():
        return None
    if _is_step_dir(path):
        return path
    found = _training_steps(path)
    return None if found is None else found[0] / str(found[1][-1])


def load_training_run(path: str | os.PathLike, ema: bool = False
                      ) -> tuple[SegformerConfig, dict[str, Any], pathlib.Path] | None:
    """``(config, variables, step directory)`` of a training-run path (None if it is not
    one): a step directory as it is; for a workdir, its newest intact step. A damaged newest
    step (files lost or changed, NaN weights) is reported by a warning naming it and the
    step used instead; ``DamagedCheckpointError`` when no step is intact. ``ema``: the EMA
    of the weights the run kept (``optimizer.ema_decay``) instead of the weights."""
    path = pathlib.Path(path).absolute()
    if not path.is_dir():
        return None
    if _is_step_dir(path):
        return (*load_training_checkpoint(path, ema), path)
    found = _training_steps(path)
    if found is None:
        return None
    checkpoints, steps = found
    damaged: list[str] = []
    for step in reversed(steps):
        try:
            config, variables = load_training_checkpoint(checkpoints / str(step), ema)
        except DamagedCheckpointError as e:
            damaged.append(str(e))
            continue
        if damaged:
            log.warning("%s; using step %d (%s), the newest intact one", "; ".join(damaged), step,
                        checkpoints / str(step))
        return config, variables, checkpoints / str(step)
    raise DamagedCheckpointError(f"{checkpoints}: no intact checkpoint: {'; '.join(damaged)}")


def local_target(metadata_tree: Any) -> Any:
    """Restore target from a checkpoint's metadata: its shapes and dtypes on the local device.

    Restoring with the saved shardings fails when the checkpoint was written on other devices
    (trained on a GPU, read on a CPU); this puts every array on ``jax.devices()[0]``.
    """
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device)
                        if _is_array(m) else m, metadata_tree, is_leaf=_is_array)


def load_training_checkpoint(step_dir: str | os.PathLike,
                             ema: bool = False) -> tuple[SegformerConfig, dict[str, Any]]:
    """``(config, {'params', 'batch_stats'})`` of a ``TrainCheckpoints`` step directory (with
    ``ema``, of the EMA of the weights the run kept), the weights checked against the
    fingerprint saved with them (``DamagedCheckpointError``)."""
    import orbax.checkpoint as ocp
    step_dir = pathlib.Path(step_dir).absolute()
    meta = read_orbax(f"{step_dir / 'meta'}: cannot read the run's record",
                      lambda: ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(step_dir / "meta"))
    if not isinstance(meta, Mapping) or not isinstance(meta.get("model"), Mapping):
        raise CheckpointError(f"{step_dir / 'meta'}: holds no 'model' config; not written by "
                              "segformer_jax.train")
    config = SegformerConfig.from_dict(meta["model"], source=str(step_dir / "meta"))
    layout = saved_layout(step_dir / "state")
    if not any(name.startswith("params/") for name in layout):
        raise CheckpointError(f"{step_dir / 'state'}: not a training state (expected params "
                              "and batch_stats)")
    def restore() -> Any:
        with ocp.StandardCheckpointer() as checkpointer:
            tree = checkpointer.metadata(step_dir / "state")
            tree = getattr(getattr(tree, "item_metadata", None), "tree", tree)
            return checkpointer.restore(step_dir / "state", local_target(tree))
    state = read_orbax(f"{step_dir}: its files cannot be read back", restore)
    if ema:
        if "ema" not in state:
            raise CheckpointError(f"{step_dir}: the run kept no EMA of the weights (train with "
                                  "--config.optimizer.ema_decay=0.9998, say, to have one)")
        check_fingerprint({"ema": state["ema"]}, meta.get("fingerprint"), str(step_dir), ("ema/",))
        state = state["ema"]
    # A classification state has no BatchNorm: its empty batch_stats may not be stored.
    variables = {"params": state["params"], "batch_stats": state.get("batch_stats") or {}}
    if not ema:
        check_fingerprint(variables, meta.get("fingerprint"), str(step_dir), ("params/", "batch_stats/"))
    return config, variables


ENCODER_FIELDS = ("num_channels", "num_encoder_blocks", "depths", "sr_ratios", "hidden_sizes",
                  "patch_sizes", "strides", "num_attention_heads", "mlp_ratios", "mix_ffn_conv")


def encoder_init(path: str | os.PathLike, config: SegformerConfig, task: str,
                 seed: int = 0) -> dict[str, Any] | None:
    """``model.init`` from a training workdir or a model checkpoint of *either* task: its
    encoder, and the head of ``task`` (for ``config``'s labels) freshly initialised (``seed``)
    unless the checkpoint is of the same task and label count. None when ``path`` is neither
    (a Hub or NVlabs checkpoint: ``hub.from_pretrained`` reads those). So a pretrained
    classification run starts a segmentation run, as ImageNet MiT starts NVlabs' recipe."""
    from segformer_jax.models.segformer import init_head_variables
    path = pathlib.Path(path).expanduser()
    if path.is_dir() and is_model_checkpoint(path):
        saved, variables, _ = load_model(path)
    else:
        run = load_training_run(path)
        if run is None:
            return None
        saved, variables, path = run
    different = [f"{f}: checkpoint {getattr(saved, f)!r} vs config {getattr(config, f)!r}"
                 for f in ENCODER_FIELDS if getattr(saved, f) != getattr(config, f)
                 and f != "num_channels"]
    if different:
        raise CheckpointError(f"{path}: its encoder differs from the configured one "
                              f"({'; '.join(different)})")
    if saved.num_channels != config.num_channels:
        variables = _inflated(variables, config.num_channels, path)
    head = "classifier" if task != SEMSEG else "decode_head"
    if task_of(variables) == task and saved.num_labels == config.num_labels:
        return variables
    fresh = init_head_variables(config, task, seed)
    params = {"encoder": variables["params"]["encoder"], head: fresh["params"][head]}
    batch_stats = {head: fresh["batch_stats"][head]} if head in fresh.get("batch_stats", {}) else {}
    log.warning("%s: encoder kept; the %s (%s) freshly initialised (seed %d)", path, head, task, seed)
    return {"params": params, "batch_stats": batch_stats}


def _inflated(variables: dict[str, Any], num_channels: int, path: pathlib.Path) -> dict[str, Any]:
    """``variables`` with the first patch embedding's kernel inflated to ``num_channels``
    input bands (``inflate.inflate_input_kernel``), logged."""
    from segformer_jax.inflate import RULE, inflate_input_kernel
    params = dict(variables["params"])
    encoder = dict(params["encoder"])
    embed = dict(encoder["patch_embeddings_0"])
    proj = dict(embed["proj"])
    proj["kernel"] = inflate_input_kernel(np.asarray(proj["kernel"]), num_channels,
                                          f"{path}: patch_embeddings_0.proj.kernel")
    embed["proj"], encoder["patch_embeddings_0"], params["encoder"] = proj, embed, encoder
    log.warning("%s: the first patch embedding's kernel inflated to %d input channels (%s)",
                path, num_channels, RULE)
    return {**variables, "params": params}


def _run_workdir(path: pathlib.Path) -> pathlib.Path | None:
    """The workdir of a training-run path (the workdir, its ``checkpoints/`` or one step)."""
    if _is_step_dir(path) and path.parent.name == CHECKPOINTS:
        return path.parent.parent
    if path.name == CHECKPOINTS and path.is_dir():
        return path.parent
    if (path / CHECKPOINTS).is_dir():
        return path
    return None


def normalisation_of(path: str | os.PathLike, num_channels: int
                     ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-band ``(mean, std)`` a checkpoint's model was trained with, in the units its
    images are stored in: for a training run, its workdir's ``config.json`` (``data.mean`` /
    ``data.std``); for any other checkpoint, a ``preprocessor_config.json`` in its own
    directory (transformers' ``image_mean`` / ``image_std``, divided by ``rescale_factor``
    when ``do_rescale``); for RGB, ImageNet's when neither says otherwise. Nothing outside
    the checkpoint's own directory is read: a config.json above it belongs to something
    else. A K-band model without them is an error."""
    from segformer_jax.constants import MEAN_RGB, STD_RGB
    path = pathlib.Path(path).expanduser().absolute()
    workdir = _run_workdir(path) if path.is_dir() else None
    if workdir is not None and (workdir / "config.json").is_file():
        run = workdir / "config.json"
        data = _json(run).get("data")
        if not isinstance(data, dict):
            raise CheckpointError(f"{run}: the run's config has no data section (its data.mean "
                                  "and data.std normalise the images)")
        if data.get("mean") or data.get("std"):
            return _stats(tuple(data.get("mean", ())), tuple(data.get("std", ())), num_channels, run)
    elif workdir is None:
        pre = (path if path.is_dir() else path.parent) / "preprocessor_config.json"
        if pre.is_file():
            d = _json(pre)
            try:
                scale = 1.0 / float(d.get("rescale_factor", 1 / 255)) if d.get("do_rescale", True) else 1.0
                mean, std = d.get("image_mean", MEAN_RGB), d.get("image_std", STD_RGB)
                mean = (mean,) * num_channels if isinstance(mean, (int, float)) else mean
                std = (std,) * num_channels if isinstance(std, (int, float)) else std
                mean, std = tuple(float(m) * scale for m in mean), tuple(float(v) * scale for v in std)
            except (TypeError, ValueError, ZeroDivisionError):
                raise CheckpointError(f"{pre}: image_mean, image_std and rescale_factor must be "
                                      f"numbers; got {d.get('image_mean')!r}, {d.get('image_std')!r}, "
                                      f"{d.get('rescale_factor')!r}") from None
            return _stats(mean, std, num_channels, pre)
    if num_channels == 3:
        return MEAN_RGB, STD_RGB
    raise CheckpointError(f"{path}: a {num_channels}-band model, but no per-band mean/std beside it "
                          "(a training workdir's config.json data.mean/std, or a "
                          "preprocessor_config.json with image_mean/image_std)")


def _json(path: pathlib.Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read it as JSON ({e})") from None
    return data if isinstance(data, dict) else {}


def _stats(mean: tuple, std: tuple, num_channels: int, where: pathlib.Path
           ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    from segformer_jax.constants import MEAN_RGB, STD_RGB
    if len(mean) != num_channels or len(std) != num_channels:
        raise CheckpointError(f"{where}: {len(mean)} mean(s) and {len(std)} std(s) for a "
                              f"{num_channels}-band model")
    if num_channels == 3 and np.allclose(mean, MEAN_RGB, atol=1e-4) and np.allclose(std, STD_RGB, atol=1e-4):
        return MEAN_RGB, STD_RGB  # ImageNet's, written as 0..1 values times 255
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _load_hub(path: pathlib.Path) -> tuple[SegformerConfig, dict[str, Any], str]:
    from segformer_jax.hub import from_pretrained
    config, variables, report = from_pretrained(path, report=True)
    task = task_of(variables)
    if report.initialised:
        raise CheckpointError(f"{path}: has no (complete) {task} head, so its predictions "
                              "would come from random weights; it is an encoder checkpoint: "
                              "fine-tune it first")
    return config, variables, task


def load_checkpoint(path: str | os.PathLike, ema: bool = False) -> tuple[SegformerConfig, dict[str, Any], str]:
    """``(config, variables, task)`` of the model in any checkpoint we read, of either task.

    ``path`` is one of:

    * a Hub-layout directory (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``,
      or one NVlabs ``*.pth``) or a weight file: read by ``hub.from_pretrained``, the task
      being the head the checkpoint has;
    * a model checkpoint (``config.json`` + ``variables/``): ``load_model``;
    * a training workdir (its latest finished step), its ``checkpoints/`` directory, or one
      step directory ``checkpoints/<step>``: ``params`` + ``batch_stats`` of the state, the
      config from the step's ``meta`` record.

    ``ema``: a training run's EMA of the weights (refused for any other kind of path).
    Raises ``CheckpointError`` (or ``ConfigError``) naming ``path`` otherwise.
    """
    path = pathlib.Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or directory")
    if ema:
        run = load_training_run(path, ema=True)
        if run is None:
            raise CheckpointError(f"{path}: --ema reads a training workdir or step directory "
                                  "(the EMA lives in the train state); this is not one")
        config, variables, _ = run
        return config, variables, task_of(variables)
    if path.is_dir() and is_model_checkpoint(path):
        return load_model(path)
    if path.is_file() and path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise CheckpointError(f"{path}: not a weight file (expected "
                              f"{', '.join(WEIGHT_SUFFIXES)}) nor a checkpoint directory")
    if path.is_file() or any((path / n).is_file() for n in WEIGHT_FILES):
        return _load_hub(path)
    run = load_training_run(path)
    if run is not None:
        config, variables, _ = run
        return config, variables, task_of(variables)
    if len(list(path.glob("*.pth")) + list(path.glob("*.pt"))) == 1:  # an NVlabs checkpoint
        return _load_hub(path)
    raise CheckpointError(
        f"{path}: not a checkpoint; expected a Hub directory (config.json + "
        f"{' or '.join(WEIGHT_FILES)}), a weight file, a segformer_jax model checkpoint "
        "(config.json + variables/) or a training workdir (checkpoints/<step>/); the directory "
        f"holds {sorted(p.name for p in path.iterdir())[:10]}")


def load_for_inference(path: str | os.PathLike) -> tuple[SegformerConfig, dict[str, Any]]:
    """``(config, variables)`` of a semantic segmentation model from any checkpoint
    ``load_checkpoint`` reads; a classification model is refused (its decode head would be
    random weights)."""
    config, variables, task = load_checkpoint(path)
    if task != SEMSEG:
        raise CheckpointError(f"{pathlib.Path(path).expanduser()}: an {task} model, not a "
                              "semantic segmentation one; fine-tune it first (model.init)")
    return config, variables
