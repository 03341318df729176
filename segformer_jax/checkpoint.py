"""Our model checkpoints: a config.json (Hub format) and the variables as an Orbax pytree.

    DIR/config.json      the SegformerConfig, with ``architectures`` naming the task
    DIR/variables/       Orbax StandardCheckpointer output ({'params', 'batch_stats'})

This is what ``python -m segformer_jax.convert`` writes and what inference reads.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
from typing import Any, Mapping

import jax
import numpy as np

from segformer_jax.config import ConfigError, SegformerConfig
from segformer_jax.hub import ARCHITECTURES, CheckpointError, SEMSEG, task_of

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
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            variables = checkpointer.restore(path / "variables")
    except (ValueError, FileNotFoundError, OSError) as e:
        raise CheckpointError(f"{path / 'variables'}: cannot be restored ({e})") from None
    if task_of(variables) != task:
        raise ConfigError(f"{path / 'config.json'}: architectures say {task} but the variables "
                          f"hold a {task_of(variables)} model")
    return config, variables, task


# --------------------------------------------------------------------------------------
# Training checkpoints: the train state + a JSON record, managed by Orbax


class TrainCheckpoints:
    """Orbax ``CheckpointManager`` for a training run in ``workdir/checkpoints``.

    Saves asynchronously every ``every`` steps (and whenever ``force`` is given: the end of
    a run, a preemption), keeps the latest ``keep`` and the one with the best ``best_metric``.
    Each checkpoint holds two items: ``state`` (the train-state pytree) and ``meta`` (JSON:
    the step, the run's model config and the metrics at that step). The input pipeline's
    position is the step itself: batches are a pure function of (seed, step).
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
            enable_async_checkpointing=True)
        self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
        self._ocp = ocp
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: Mapping[str, Any],
             metrics: Mapping[str, float] | None = None, force: bool = False) -> bool:
        args = self._ocp.args.Composite(state=self._ocp.args.StandardSave(state),
                                        meta=self._ocp.args.JsonSave(dict(meta)))
        return self.manager.save(step, args=args, metrics=dict(metrics) if metrics else None,
                                 force=force)

    def meta(self, step: int) -> dict[str, Any]:
        """The JSON record of ``step``: read it to check a checkpoint before restoring it."""
        ocp = self._ocp
        try:
            return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:  # noqa: BLE001 - orbax raises many types for damaged files
            raise CheckpointError(f"{self.directory / str(step)}: cannot read its meta record ({e})") from None

    def restore(self, step: int, abstract_state: Any) -> Any:
        """The state at ``step``, laid out (dtypes, shardings) as ``abstract_state``."""
        ocp = self._ocp
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
        except Exception as e:  # noqa: BLE001 - orbax raises many types for mismatches
            raise CheckpointError(f"{self.directory / str(step)}: does not fit this run's model and "
                                  f"optimiser: {str(e).splitlines()[0]}") from None
        return restored["state"]

    def reached_preemption(self, step: int) -> bool:
        """True on every process at the same step once any was told to stop (multi-process
        runs; JAX's preemption service decides the step)."""
        return self.manager.reached_preemption(step)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
