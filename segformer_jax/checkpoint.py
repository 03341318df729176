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
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np

from segformer_jax.config import SegformerConfig
from segformer_jax.errors import CheckpointError, ConfigError
from segformer_jax.hub import ARCHITECTURES, SEMSEG, WEIGHT_FILES, task_of

log = logging.getLogger(__name__)

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
        self.directory = pathlib.Path(workdir).absolute() / CHECKPOINTS
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


# --------------------------------------------------------------------------------------
# Reading a training run's checkpoints back (for inference, evaluation, conversion)


def finished_steps(checkpoints: str | os.PathLike) -> list[int]:
    """The steps Orbax's ``CheckpointManager`` has finished in ``checkpoints``, oldest first
    (a step still being written, or interrupted, is not one)."""
    import orbax.checkpoint as ocp
    with _quiet_absl():
        options = ocp.CheckpointManagerOptions(read_only=True, create=False)
        with ocp.CheckpointManager(pathlib.Path(checkpoints).absolute(), options=options,
                                   item_names=("state", "meta")) as manager:
            return sorted(int(s) for s in manager.all_steps())


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
    """Orbax's absl warnings about what reading on purpose does (a read-only manager, a
    step item without step metadata) are hidden while we read."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl.setLevel(level)


def training_step_dir(path: str | os.PathLike) -> pathlib.Path | None:
    """The checkpoint a training-run path points to, or None if it is not one.

    Accepts the workdir (its latest step), ``workdir/checkpoints`` (the same) or one step
    directory ``workdir/checkpoints/<step>``.
    """
    path = pathlib.Path(path)
    if not path.is_dir():
        return None
    if path.name.isdigit() and (path / "state").is_dir() and (path / "meta").is_dir():
        return path
    if (path / CHECKPOINTS).is_dir():
        checkpoints = path / CHECKPOINTS
    elif path.name == CHECKPOINTS:
        checkpoints = path
    else:
        return None
    steps = finished_steps(checkpoints)
    if not steps:
        raise CheckpointError(f"{path}: a training workdir without a finished checkpoint in "
                              f"{checkpoints} (the run has saved none yet)")
    return checkpoints / str(steps[-1])


def local_target(metadata_tree: Any) -> Any:
    """Restore target from a checkpoint's metadata: its shapes and dtypes on the local device.

    Restoring with the saved shardings fails when the checkpoint was written on other devices
    (trained on a GPU, read on a CPU); this puts every array on ``jax.devices()[0]``.
    """
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def is_array(m: Any) -> bool:
        return hasattr(m, "shape") and hasattr(m, "dtype")

    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device)
                        if is_array(m) else m, metadata_tree, is_leaf=is_array)


def load_training_checkpoint(step_dir: str | os.PathLike) -> tuple[SegformerConfig, dict[str, Any]]:
    """``(config, {'params', 'batch_stats'})`` of a ``TrainCheckpoints`` step directory."""
    import orbax.checkpoint as ocp
    step_dir = pathlib.Path(step_dir).absolute()
    try:
        meta = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(step_dir / "meta")
    except Exception as e:  # noqa: BLE001 - orbax raises many types for damaged files
        raise CheckpointError(f"{step_dir / 'meta'}: cannot read the run's record ({e})") from None
    if not isinstance(meta, Mapping) or not isinstance(meta.get("model"), Mapping):
        raise CheckpointError(f"{step_dir / 'meta'}: holds no 'model' config; not written by "
                              "segformer_jax.train")
    config = SegformerConfig.from_dict(meta["model"], source=str(step_dir / "meta"))
    try:
        with _quiet_absl(), ocp.StandardCheckpointer() as checkpointer:
            tree = checkpointer.metadata(step_dir / "state")
            tree = getattr(getattr(tree, "item_metadata", None), "tree", tree)
            state = checkpointer.restore(step_dir / "state", local_target(tree))
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{step_dir / 'state'}: cannot be restored "
                              f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if not isinstance(state, Mapping) or "params" not in state:
        raise CheckpointError(f"{step_dir / 'state'}: not a training state (expected params "
                              "and batch_stats)")
    # A classification state has no BatchNorm: its empty batch_stats may not be stored.
    return config, {"params": state["params"], "batch_stats": state.get("batch_stats") or {}}


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
        step_dir = training_step_dir(path) if path.is_dir() else None
        if step_dir is None:
            return None
        saved, variables = load_training_checkpoint(step_dir)
        path = step_dir
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


def normalisation_of(path: str | os.PathLike, num_channels: int
                     ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-band ``(mean, std)`` a checkpoint's model was trained with, in the units its
    images are stored in: a training run's ``data.mean`` / ``data.std`` (its workdir's
    ``config.json``), or a ``preprocessor_config.json`` beside the weights (transformers'
    ``image_mean`` / ``image_std``, divided by ``rescale_factor`` when ``do_rescale``); for
    RGB, ImageNet's when neither says otherwise. A K-band model without them is an error."""
    from segformer_jax.constants import MEAN_RGB, STD_RGB
    path = pathlib.Path(path).expanduser()
    start = path if path.is_dir() else path.parent
    for directory in (start, *list(start.parents)[:3]):
        run = directory / "config.json"
        data = _json(run).get("data") if run.is_file() else None
        if isinstance(data, dict):  # a training run's config: its data.mean/std or the default
            if data.get("mean") or data.get("std"):
                return _stats(tuple(data.get("mean", ())), tuple(data.get("std", ())), num_channels, run)
            break
        pre = directory / "preprocessor_config.json"
        if pre.is_file():
            d = _json(pre)
            scale = 1.0 / float(d.get("rescale_factor", 1 / 255)) if d.get("do_rescale", True) else 1.0
            mean, std = d.get("image_mean", MEAN_RGB), d.get("image_std", STD_RGB)
            mean = (mean,) * num_channels if isinstance(mean, (int, float)) else mean
            std = (std,) * num_channels if isinstance(std, (int, float)) else std
            return _stats(tuple(m * scale for m in mean), tuple(v * scale for v in std),
                          num_channels, pre)
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


def load_checkpoint(path: str | os.PathLike) -> tuple[SegformerConfig, dict[str, Any], str]:
    """``(config, variables, task)`` of the model in any checkpoint we read, of either task.

    ``path`` is one of:

    * a Hub-layout directory (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``,
      or one NVlabs ``*.pth``) or a weight file: read by ``hub.from_pretrained``, the task
      being the head the checkpoint has;
    * a model checkpoint (``config.json`` + ``variables/``): ``load_model``;
    * a training workdir (its latest finished step), its ``checkpoints/`` directory, or one
      step directory ``checkpoints/<step>``: ``params`` + ``batch_stats`` of the state, the
      config from the step's ``meta`` record.

    Raises ``CheckpointError`` (or ``ConfigError``) naming ``path`` otherwise.
    """
    path = pathlib.Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or directory")
    if path.is_dir() and is_model_checkpoint(path):
        return load_model(path)
    if path.is_file() and path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise CheckpointError(f"{path}: not a weight file (expected "
                              f"{', '.join(WEIGHT_SUFFIXES)}) nor a checkpoint directory")
    if path.is_file() or any((path / n).is_file() for n in WEIGHT_FILES):
        return _load_hub(path)
    step_dir = training_step_dir(path)
    if step_dir is not None:
        config, variables = load_training_checkpoint(step_dir)
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
