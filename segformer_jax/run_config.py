"""The run config: an ``ml_collections.ConfigDict`` with the defaults, loaded the big_vision way.

A config file defines ``get_config(arg=None)`` and starts from ``default_config()``; the
command lines take it as ``--config FILE.py[:ARG] --config.key=value`` through
``ml_collections.config_flags`` (absl flags), which types every override by the value it
replaces. The config is locked, so an unknown key is an error, and ``load`` / ``parse_flags``
turn every such complaint into one ``ConfigError`` naming the key before any work starts.

The defaults live here once: the optimiser section *is* ``optim.Recipe``'s fields, and
``model.overrides`` has one typed slot per ``SegformerConfig`` architecture field (``None``:
the variant's value), so ``--config.model.overrides.sr_ratios='(1,1,1,1)'`` is typed like
any other key.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from ml_collections import config_dict

from segformer_jax.config import SegformerConfig
from segformer_jax.constants import CLASSIFY, SEMSEG, TASK_NAMES
from segformer_jax.data.presets import settings as dataset_settings
from segformer_jax.errors import ConfigError
from segformer_jax.optim import Recipe

# Set by the dataset (its classes, with model.binary), by model.num_channels, or by the run
# (total_steps), never by model.overrides.
_NOT_OVERRIDABLE = ("num_labels", "id2label", "num_channels")
_RECIPE_FROM_RUN = ("total_steps",)


def _model_overrides() -> ml_collections.ConfigDict:
    """One placeholder per SegformerConfig field, typed by its default (tuples stay tuples)."""
    slots = {}
    for f in dataclasses.fields(SegformerConfig):
        if f.name not in _NOT_OVERRIDABLE:
            slots[f.name] = config_dict.placeholder(type(f.default))
    return ml_collections.ConfigDict(slots)


def default_config() -> ml_collections.ConfigDict:
    """The NVlabs SegFormer recipe, with a data section for a config file to fill."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    # Devices: data x fsdp = all devices of all processes (data=-1: whatever fsdp leaves).
    # Leaves with fewer elements than fsdp_min_size stay replicated when fsdp > 1.
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "fsdp_min_size": 2 ** 14})
    # binary: one sigmoid output for a two-class dataset (background 0, the class 1), trained
    # with BCE; num_channels: the images' bands (RGB 3; RGB+NIR 4; Sentinel-2 13).
    # op_forms: the ops' forms (models/ops.py FORM_SETS): "auto" (the CPU forms on a CPU, the
    # XLA forms on a GPU or TPU), or "cpu" / "xla" forced, for experiments. dtype: the compute
    # dtype ("auto": float32 on a CPU, bfloat16 on a GPU or TPU; parameters, LayerNorm,
    # softmax and the loss stay float32 either way).
    c.model = ml_collections.ConfigDict({"variant": "b0", "dtype": "auto", "remat": False,
                                         "scan": False, "init": "scratch", "binary": False,
                                         "num_channels": 3, "op_forms": "auto",
                                         "overrides": _model_overrides()})
    ade = dataset_settings("ade20k")
    c.data = ml_collections.ConfigDict({
        "name": "synthetic", "data_dir": "", "manual_dir": "",
        "crop_size": ade.crop_size, "img_scale": ade.img_scale, "ratio_range": (0.5, 2.0),
        "cat_max_ratio": 0.75, "train_split": "train", "eval_split": "validation",
        "eval_scale": ade.test_scale, "eval_size_divisor": ade.size_divisor,
        # num_workers: input threads (0: one per core, at most 8); worker_processes > 0:
        # that many worker processes instead (data/pipeline.py ProcessBatches; same batches)
        "photometric": True, "num_workers": 2, "worker_processes": 0, "options": {},
        # None: the dataset's own (ADE20K's True, the others' False); True: stored label 0
        # means "unlabelled" (ignored) and label k trains as class k - 1 (mmseg's option).
        "reduce_zero_label": config_dict.placeholder(bool),
        # Per-band normalisation, one value per model.num_channels band in the units the
        # images are stored in; () is ImageNet's RGB mean/std (in 0..255).
        "mean": (), "std": ()})
    # image_classification (segformer_jax/tasks.py): the ImageNet recipe's augmentations and
    # targets; off here (configs/imagenet.py sets PVT v2's). The image size is data.crop_size.
    c.task = SEMSEG
    c.classification = ml_collections.ConfigDict({
        "label_smoothing": 0.0, "mixup_alpha": 0.0, "cutmix_alpha": 0.0, "mixup_prob": 1.0,
        "mixup_switch_prob": 0.5, "randaugment": "", "random_erase": 0.0,
        "crop_scale": (0.08, 1.0), "crop_ratio": (3 / 4, 4 / 3), "hflip": 0.5,
        "test_crop_pct": 0.875, "eval_batch_size": 64})
    recipe = {k: v for k, v in dataclasses.asdict(Recipe()).items() if k not in _RECIPE_FROM_RUN}
    c.optimizer = ml_collections.ConfigDict(recipe)
    # The recipe's learning rate belongs to a global batch of RECIPE_BATCH (NVlabs: 8 GPUs x
    # 2); True scales it linearly to batch_size (segmentation; ImageNet's recipe scales itself).
    c.optimizer.scale_lr_with_batch = False
    c.batch_size = 16
    c.accumulate_steps = 1
    c.total_steps = Recipe().total_steps
    c.loss_reduction = "valid"   # "all": mmseg 0.x's mean over every pixel
    # Segmentation losses (segformer_jax/losses.py): name is one of cross_entropy, ohem,
    # focal, dice, lovasz, or two joined by "+" (weights: one per term, default 1 each).
    # class_weight (cross_entropy, ohem): "" none, "median_frequency" (computed from the
    # training split's pixels at start), or one weight per class, "1,2.5,...".
    c.loss = ml_collections.ConfigDict({
        "name": "cross_entropy", "weights": (), "class_weight": "", "ohem_thresh": 0.7,
        "ohem_min_kept": 100_000, "focal_gamma": 2.0, "focal_alpha": config_dict.placeholder(float),
        "dice_smooth": 0.0})
    c.eval_every = 16_000
    c.checkpoint_every = 4000
    c.keep_checkpoints = 3
    c.log_every = 50
    # > 0: a jax.profiler trace of this many steps after the first (compiling) one, in
    # WORKDIR/tensorboard (TensorBoard's Profile tab)
    c.profile_steps = 0
    return c


# Variants whose training step runs each stage's blocks under nn.scan by default
# (``model.scan``), by measurement (``python -m experiments.compile_times``, XLA:CPU,
# 512², batch 2): B5 compiles 4.1× faster scanned (83 s against 342 s) and its step took
# half the time; B2 compiles about as fast either way and its scanned step was 1.9× slower.
# B3 and B4 have not been measured and stay unrolled.
SCAN_BY_DEFAULT = ("b5",)


def use_variant(config: ml_collections.ConfigDict, variant: str) -> None:
    """``model.variant`` and the ``model.scan`` that measured better for it."""
    config.model.variant = variant
    config.model.scan = variant in SCAN_BY_DEFAULT


def use_dataset(config: ml_collections.ConfigDict, name: str, crop: int | None = None) -> None:
    """Puts dataset ``name``'s train and test settings (``data.presets``) into ``config.data``."""
    s = dataset_settings(name, crop)
    config.data.name = name
    config.data.crop_size = s.crop_size
    config.data.img_scale = s.img_scale
    config.data.eval_scale = s.test_scale
    config.data.eval_size_divisor = s.size_divisor or 0   # 0: no alignment (keeps the int type)


IMAGENET_TRAIN_IMAGES = 1_281_167


def use_imagenet_recipe(config: ml_collections.ConfigDict, variant: str, batch: int = 1024,
                        train_images: int = IMAGENET_TRAIN_IMAGES) -> None:
    """MiT's ImageNet-1k pretraining recipe (PVT v2, whai362/PVT ``classification/main.py``
    and ``configs/pvt_v2/*.py``, itself DeiT's) for ``variant`` at global ``batch``, with
    epochs of ``train_images // batch`` steps; ``configs/imagenet.py`` lists it."""
    use_variant(config, variant)
    big = variant in ("b3", "b4", "b5")
    config.task = CLASSIFY
    config.data.crop_size = (224, 224)
    config.model.overrides.drop_path_rate = 0.3 if big else 0.1
    config.classification.update(label_smoothing=0.1, mixup_alpha=0.8, cutmix_alpha=1.0,
                                 mixup_prob=1.0, mixup_switch_prob=0.5,
                                 randaugment="rand-m9-mstd0.5-inc1", random_erase=0.25)
    epoch = max(train_images // batch, 1)
    config.batch_size = batch
    config.total_steps = 300 * epoch
    config.optimizer.update(schedule="cosine", no_decay="1d", learning_rate=5e-4 * batch / 512,
                            weight_decay=0.05, eps=1e-8, head_lr_mult=1.0, warmup_steps=5 * epoch,
                            warmup_lr=1e-6, min_lr=1e-5, clip_grad_norm=1.0 if big else 0.0)
    config.eval_every = 10 * epoch
    config.checkpoint_every = epoch


RECIPE_BATCH = 16  # the global batch the NVlabs recipe's learning rate was tuned for


def recipe(config: ml_collections.ConfigDict) -> Recipe:
    """The optimiser's hyper-parameters, the learning rate scaled by batch_size / 16 when
    ``optimizer.scale_lr_with_batch`` (segmentation)."""
    settings = config.optimizer.to_dict()
    scale = settings.pop("scale_lr_with_batch", False)
    out = Recipe(**settings, total_steps=config.total_steps)
    if scale and config.task == SEMSEG:
        out = dataclasses.replace(out, learning_rate=out.learning_rate * config.batch_size / RECIPE_BATCH)
    return out


def uses_ema(config: ml_collections.ConfigDict) -> bool:
    """Whether the run keeps an EMA of its weights (``optimizer.ema_decay`` > 0)."""
    return float(config.optimizer.get("ema_decay", 0.0) or 0.0) > 0.0


def batch_notes(config: ml_collections.ConfigDict) -> list[str]:
    """What a segmentation run says at start about its batch: a global batch other than
    the recipe's (and what the learning rate then is), and BatchNorm over one image."""
    if config.task != SEMSEG:
        return []
    notes = []
    lr = recipe(config).learning_rate
    if config.batch_size != RECIPE_BATCH:
        if config.optimizer.scale_lr_with_batch:
            notes.append(f"note: global batch {config.batch_size}, not the recipe's {RECIPE_BATCH}: "
                         f"learning rate scaled linearly to {lr:.3g} (optimizer.scale_lr_with_batch)")
        else:
            notes.append(f"note: global batch {config.batch_size}, not the recipe's {RECIPE_BATCH}; "
                         f"the learning rate stays {lr:.3g} as configured. "
                         "--config.optimizer.scale_lr_with_batch=True scales it linearly "
                         f"(to {lr * config.batch_size / RECIPE_BATCH:.3g})")
    if config.batch_size // config.accumulate_steps == 1:
        notes.append("warning: the decode head's BatchNorm sees one image per step "
                     "(batch_size / accumulate_steps = 1): its statistics are those of a single "
                     "image. Use a batch of at least 2; across devices the step's BatchNorm is "
                     "already synchronised (its statistics are over the whole batch)")
    return notes


MEDIAN_FREQUENCY = "median_frequency"


def given_class_weight(config: ml_collections.ConfigDict) -> tuple[float, ...] | None:
    """``loss.class_weight`` as numbers; None for "" and for "median_frequency" (which the
    trainer computes from the data)."""
    text = str(config.loss.class_weight).strip()
    if not text or text == MEDIAN_FREQUENCY:
        return None
    try:
        weights = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"loss.class_weight must be '', '{MEDIAN_FREQUENCY}' or comma-separated "
                          f"numbers, one per class; got {text!r}") from None
    if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
        raise ConfigError(f"loss.class_weight: weights must be >= 0 and not all 0; got {text!r}")
    return weights


def loss_settings(config: ml_collections.ConfigDict,
                  class_weight: Sequence[float] | None = None) -> Any:
    """``losses.LossSettings`` of ``config.loss`` (``class_weight``: the computed weights of
    "median_frequency", or the given ones when None)."""
    from segformer_jax.losses import LossSettings, parse_terms
    c = config.loss
    weight = given_class_weight(config) if class_weight is None else tuple(class_weight)
    try:
        terms = parse_terms(c.name, tuple(c.weights))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return LossSettings(terms=terms, class_weight=weight, reduction=config.loss_reduction,
                        ohem_thresh=float(c.ohem_thresh), ohem_min_kept=int(c.ohem_min_kept),
                        focal_gamma=float(c.focal_gamma), focal_alpha=c.focal_alpha,
                        dice_smooth=float(c.dice_smooth), forms=op_forms(config))


def _validate_loss(config: ml_collections.ConfigDict) -> None:
    c = config.loss
    settings = loss_settings(config)
    names = {name for name, _ in settings.terms}
    if c.class_weight and not names & {"cross_entropy", "ohem"}:
        raise ConfigError(f"loss.class_weight weighs cross_entropy and ohem; loss.name={c.name!r} "
                          "has neither")
    if not 0 < c.ohem_thresh <= 1 or int(c.ohem_min_kept) < 1:
        raise ConfigError(f"loss.ohem_thresh must be in (0, 1] and loss.ohem_min_kept >= 1; got "
                          f"{c.ohem_thresh!r}, {c.ohem_min_kept!r}")
    if c.focal_gamma < 0 or (c.focal_alpha is not None and not 0 <= c.focal_alpha <= 1):
        raise ConfigError(f"loss.focal_gamma must be >= 0 and loss.focal_alpha in [0, 1] (or "
                          f"unset); got {c.focal_gamma!r}, {c.focal_alpha!r}")
    if c.dice_smooth < 0:
        raise ConfigError(f"loss.dice_smooth must be >= 0; got {c.dice_smooth!r}")
    if config.model.binary and (names != {"cross_entropy"} or c.class_weight):
        raise ConfigError(f"model.binary=True trains its one sigmoid output with BCE; loss.name="
                          f"{c.name!r}, loss.class_weight={c.class_weight!r} apply to softmax "
                          "models (for them, use two classes: model.binary=False)")


def normalisation(config: ml_collections.ConfigDict) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` per input band: ``data.mean`` / ``data.std``, or ImageNet's for RGB."""
    from segformer_jax.constants import MEAN_RGB, STD_RGB
    d = config.data
    mean, std = tuple(float(v) for v in d.get("mean", ())), tuple(float(v) for v in d.get("std", ()))
    bands = int(config.model.get("num_channels", 3))
    if not mean and not std and bands == 3:
        return MEAN_RGB, STD_RGB
    if len(mean) != bands or len(std) != bands:
        raise ConfigError(f"data.mean and data.std need one value per band (model.num_channels="
                          f"{bands}); got {len(mean)} and {len(std)}. python -m "
                          "segformer_jax.data.check prints the training images' per-band values")
    if any(v <= 0 for v in std):
        raise ConfigError(f"data.std must be positive; got {std}")
    return mean, std


def op_forms(config: ml_collections.ConfigDict) -> str:
    """``model.op_forms`` (configs written before the key: "auto")."""
    return str(config.model.get("op_forms", "auto"))


def compute_dtype(config: ml_collections.ConfigDict, platform: str | None = None) -> str:
    """``model.dtype``, "auto" resolved: float32 on a CPU (its bfloat16 is emulated, and the
    quickstart's figures are float32's), bfloat16 on ``platform`` (default JAX's default
    backend) otherwise, where the matrix units are bfloat16's."""
    import jax
    dtype = str(config.model.dtype)
    if dtype != "auto":
        return dtype
    return "float32" if (platform or jax.default_backend()) == "cpu" else "bfloat16"


def model_overrides(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The SegformerConfig fields ``model.overrides`` sets (the slots that are not None)."""
    return {k: v for k, v in config.model.overrides.items() if v is not None}


def model_config(config: ml_collections.ConfigDict, num_labels: int,
                 id2label: Mapping[int, str] | None = None) -> SegformerConfig:
    """The model of ``config`` for a dataset of ``num_labels`` classes. ``model.binary``: one
    output, the logit of class 1 (its name from ``id2label[1]``), for a two-class dataset."""
    if config.model.get("binary", False):  # .get: configs written before the key existed
        if num_labels != 2:
            raise ConfigError(f"model.binary=True needs a dataset of two classes (0 background, "
                              f"1 the class); this one has {num_labels}")
        num_labels, id2label = 1, {0: (id2label or {}).get(1, "LABEL_1")}
    return SegformerConfig.from_variant(config.model.variant, num_labels=num_labels,
                                        id2label=id2label, num_channels=int(config.model.get("num_channels", 3)),
                                        **model_overrides(config))


# --------------------------------------------------------------------------------------
# Checks


def validate(config: ml_collections.ConfigDict, process_count: int = 1) -> None:
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
    if config.batch_size % process_count:
        raise ConfigError(f"batch_size {config.batch_size} does not split over "
                          f"{process_count} processes")
    if config.model.dtype not in ("auto", "float32", "bfloat16"):
        raise ConfigError(f"model.dtype must be 'auto', 'float32' or 'bfloat16'; got {config.model.dtype!r}")
    from segformer_jax.models.ops import FORMS
    if op_forms(config) not in FORMS:
        raise ConfigError(f"model.op_forms must be one of {FORMS}; got {op_forms(config)!r}")
    if config.loss_reduction not in ("valid", "all"):
        raise ConfigError(f"loss_reduction must be 'valid' or 'all'; got {config.loss_reduction!r}")
    for key in ("crop_size", "img_scale", "ratio_range", "eval_scale"):
        value = config.data[key]
        if value is None and key == "eval_scale":  # the images' native size
            continue
        if not _positive_pair(value):
            raise ConfigError(f"data.{key} must be two positive numbers; got {value!r}")
    if int(config.get("profile_steps", 0)) < 0:
        raise ConfigError(f"profile_steps must be >= 0 (0: no profile); got {config.profile_steps}")
    if int(config.data.num_workers) < 0:
        raise ConfigError(f"data.num_workers must be >= 0 (the input threads; 0: one per core, "
                          f"at most 8); got {config.data.num_workers}")
    if int(config.data.get("worker_processes", 0)) < 0:
        raise ConfigError(f"data.worker_processes must be >= 0 (0: threads, data.num_workers); "
                          f"got {config.data.worker_processes}")
    _validate_task(config)
    _validate_loss(config)
    if config.model.binary and config.task != SEMSEG:
        raise ConfigError(f"model.binary=True is for semantic segmentation; task={config.task!r}")
    if int(config.model.num_channels) < 1:
        raise ConfigError(f"model.num_channels must be at least 1; got {config.model.num_channels!r}")
    if int(config.model.num_channels) != 3 and config.data.name != "folder":
        raise ConfigError(f"model.num_channels={config.model.num_channels}: data.name="
                          f"{config.data.name!r} has RGB images; K-band images come from a folder "
                          "dataset (data.name='folder')")
    normalisation(config)
    overrides = model_overrides(config)
    try:
        SegformerConfig.from_variant(config.model.variant, **overrides)
    except (TypeError, ConfigError) as e:
        given = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
        raise ConfigError(f"model.variant={config.model.variant!r}, model.overrides ({given}): "
                          f"{e}") from None


def _validate_task(config: ml_collections.ConfigDict) -> None:
    from segformer_jax.data import DATASETS, task_of_dataset
    from segformer_jax.optim import SCHEDULES
    if config.task not in TASK_NAMES:
        raise ConfigError(f"task must be one of {TASK_NAMES}; got {config.task!r}")
    if config.data.name not in DATASETS:
        raise ConfigError(f"data.name must be one of {DATASETS}; got {config.data.name!r}")
    if task_of_dataset(config.data.name) != config.task:
        raise ConfigError(f"data.name={config.data.name!r} is a {task_of_dataset(config.data.name)} "
                          f"dataset, but task={config.task!r}")
    if config.optimizer.schedule not in SCHEDULES:
        raise ConfigError(f"optimizer.schedule must be one of {sorted(SCHEDULES)}; "
                          f"got {config.optimizer.schedule!r}")
    if config.optimizer.no_decay not in ("norm", "1d"):
        raise ConfigError(f"optimizer.no_decay must be 'norm' or '1d'; got {config.optimizer.no_decay!r}")
    if not 0.0 <= float(config.optimizer.ema_decay) < 1.0:
        raise ConfigError(f"optimizer.ema_decay must be in [0, 1) (0: no EMA of the weights; "
                          f"timm's default 0.9998); got {config.optimizer.ema_decay!r}")
    c = config.classification
    for key, low, high, closed in (("label_smoothing", 0.0, 1.0, False), ("mixup_prob", 0.0, 1.0, True),
                                   ("mixup_switch_prob", 0.0, 1.0, True), ("random_erase", 0.0, 1.0, True),
                                   ("hflip", 0.0, 1.0, True)):
        value = c[key]
        if not (low <= value <= high) or (not closed and value == high):
            interval = f"[{low}, {high}]" if closed else f"[{low}, {high})"
            raise ConfigError(f"classification.{key} must be in {interval}; got {value!r}")
    for key in ("mixup_alpha", "cutmix_alpha"):
        if c[key] < 0:
            raise ConfigError(f"classification.{key} must be >= 0 (0: off); got {c[key]!r}")
    if not 0 < c.test_crop_pct <= 1:
        raise ConfigError(f"classification.test_crop_pct must be in (0, 1]; got {c.test_crop_pct!r}")
    if c.randaugment:
        from segformer_jax.data.randaugment import RandAugment
        try:
            RandAugment.from_string(c.randaugment)
        except ValueError as e:
            raise ConfigError(f"classification.randaugment: {e}") from None
    for key in ("crop_scale", "crop_ratio"):
        if not _positive_pair(c[key]) or c[key][0] > c[key][1]:
            raise ConfigError(f"classification.{key} must be two positive numbers, low <= high; "
                              f"got {c[key]!r}")


def _positive_pair(value: Any) -> bool:
    return (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value))


# --------------------------------------------------------------------------------------
# Loading


def _flag_values(argv: Sequence[str], lock: bool = True) -> Any:
    """Absl flags with ``--config``. ml_collections loads the file as the module
    ``config_config`` with importlib's ``load_module``, which executes it into the module
    already of that name: a second file loaded in the same process (a sweep, the tests)
    would keep the first file's ``get_config`` if it lacks one. The old module is dropped."""
    import sys

    from absl import flags
    from ml_collections import config_flags
    sys.modules.pop("config_config", None)
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "FILE.py[:ARG] defining get_config(arg)",
                                    flag_values=values, lock_config=lock, sys_argv=list(argv))
    return values


def _one_line(error: BaseException) -> str:
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def parse_flags(argv: Sequence[str], define: Any = None) -> tuple[ml_collections.ConfigDict, Any]:
    """``argv`` (program name first) -> (config, absl FlagValues).

    ``define(flag_values)`` adds the command's own flags (``--workdir``, ...). Every problem
    with the config file (missing, a syntax error, no ``get_config``, an exception inside it)
    or with an override (unknown key, wrong type) is one ``ConfigError`` naming it: when the
    parse fails, the file is loaded on its own, so a mistake in it is never reported as one
    of the overrides.
    """
    from absl import flags
    spec = _config_spec(argv)
    if spec is None:
        raise ConfigError("--config FILE.py[:ARG] is required")
    if not pathlib.Path(spec.split(":", 1)[0]).expanduser().is_file():
        raise ConfigError(f"--config {spec}: no such file {spec.split(':', 1)[0]!r}")
    values = _flag_values(argv)
    if define is not None:
        define(values)
    try:
        values(list(argv))
        config = values.config
    except flags.UnrecognizedFlagError as e:
        raise ConfigError(f"unrecognised flag --{e.flagname} (config overrides look like "
                          "--config.key=value)") from None
    except Exception as e:  # noqa: BLE001 - the file is arbitrary Python: anything can fail
        plain = load_file(spec)  # a mistake in the file itself is reported as the file's
        if isinstance(e, (KeyError, AttributeError, flags.Error)):  # a missing key, a wrong type
            raise ConfigError(_bad_override(argv, e, plain)) from None
        raise ConfigError(f"--config {spec}: {_one_line(e)}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"--config {spec}: get_config() returned a {type(config).__name__}, "
                          "not an ml_collections.ConfigDict")
    return config, values


def load_file(spec: str) -> ml_collections.ConfigDict:
    """``get_config(ARG)`` of ``FILE.py[:ARG]`` without overrides; any failure of the file is
    one ``ConfigError`` naming the file, the line and what went wrong there."""
    path = pathlib.Path(spec.split(":", 1)[0]).expanduser()
    if not path.is_file():
        raise ConfigError(f"--config {spec}: no such file {str(path)!r}")
    values = _flag_values(["load", f"--config={spec}"])
    try:
        values(["load", f"--config={spec}"])
        config = values.config
    except Exception as e:  # noqa: BLE001 - the file is arbitrary Python: anything can fail
        raise ConfigError(_file_error(spec, path, e)) from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"--config {spec}: get_config() returned a {type(config).__name__}, "
                          "not an ml_collections.ConfigDict")
    return config


def _file_error(spec: str, path: pathlib.Path, error: BaseException) -> str:
    """What went wrong in a config file: its line and the exception, in one line."""
    import traceback
    if isinstance(error, SyntaxError) and error.lineno:
        text = (error.text or "").strip()
        return (f"--config {spec}: line {error.lineno}: {error.msg}"
                + (f" ({text})" if text else "") + "; the file is not valid Python")
    if isinstance(error, AttributeError) and "get_config" in str(error):
        return (f"--config {spec}: the file defines no get_config(arg=None); a config file "
                "returns its ml_collections.ConfigDict from get_config (see configs/quickstart.py)")
    here = [frame for frame in traceback.extract_tb(error.__traceback__)
            if pathlib.Path(frame.filename).resolve() == path.resolve()]
    cause = error.args[0] if isinstance(error, AttributeError) and error.args else error
    if isinstance(error, KeyError) and error.args:
        cause = repr(error.args[0])
    what = f"{type(error).__name__}: {_one_line(cause) if isinstance(cause, BaseException) else cause}"
    if here:
        line = here[-1]
        return f"--config {spec}: line {line.lineno} ({(line.line or '').strip()}) raised {what}"
    return f"--config {spec}: loading it raised {what}"


def _config_spec(argv: Sequence[str]) -> str | None:
    """The value of ``--config`` in ``argv`` (``--config X`` or ``--config=X``)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _bad_override(argv: Sequence[str], error: BaseException, config: ml_collections.ConfigDict) -> str:
    """The message for the first ``--config.KEY=VALUE`` of ``argv`` that the config file's
    own ``config`` refuses: an unknown key (with the valid ones), or a value of another type."""
    from absl import flags
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        key, _, text = arg[len("--config."):].partition("=")
        try:
            old = _lookup(config, key)
        except ConfigError as e:
            return f"--config.{key}: {e}"
        if not isinstance(error, flags.Error):
            continue
        if f"--config.{key}={text}" in str(error):  # the flag the error is about
            return f"--config.{key}={text}: {_expected(config, key, old)} ({_one_line(error)})"
    return f"--config: {_one_line(error)}"


def _lookup(config: ml_collections.ConfigDict, key: str) -> Any:
    """``config``'s value at a dotted key; ConfigError listing the valid keys if none."""
    node: Any = config
    parts = key.split(".")
    for depth, name in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or name not in node:
            section = ".".join(parts[:depth])
            prefix = f"{section}." if section else ""
            valid = leaf_keys(node, prefix) if isinstance(node, ml_collections.ConfigDict) else []
            raise ConfigError(f"unknown key; valid keys: {', '.join(valid) or '(none)'}")
        node = node[name]
    return node


def leaf_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every dotted key of ``config`` that holds a value (``model.overrides.sr_ratios``, ...)."""
    out = []
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict) and len(value):
            out += leaf_keys(value, f"{prefix}{key}.")
        else:
            out.append(prefix + key)
    return out


def _kind(value: Any) -> str:
    if isinstance(value, type):
        name = value.__name__
    elif isinstance(value, (tuple, list)):
        return f"a list of {len(value)}" if value else "a list"
    else:
        name = type(value).__name__
    return {"bool": "a bool (true or false)"}.get(name, f"{'an' if name[0] in 'aeiou' else 'a'} {name}")


def _expected(config: ml_collections.ConfigDict, key: str, old: Any) -> str:
    """What ``key`` takes: its type (a placeholder's declared one) and its current value."""
    *parents, leaf = key.split(".")
    section = _lookup(config, ".".join(parents)) if parents else config
    kind = _kind(section.get_type(leaf) if old is None else old)
    return f"{key} takes {kind}" + ("" if old is None else f" like {old!r}")


def load(spec: str, overrides: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
    """``get_config(ARG)`` of ``FILE.py[:ARG]``, then ``overrides`` ({dotted key: value}) set
    on the locked config: ml_collections types them (an int for a float is fine, a string for
    an int is not) and refuses unknown keys. Errors are ``ConfigError`` naming the key."""
    config = load_file(spec)
    for key, value in (overrides or {}).items():
        set_key(config, key, value)
    return config


def set_key(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
    """``config[key] = value`` for a dotted key, typed by ml_collections; ConfigError if not.

    A dict for a section with keys of its own (``model.overrides``, ``mesh``) sets those keys
    one by one, each typed; a free-form section (``data.options``: the dataset builder's
    keyword arguments, empty in ``default_config``) takes the dict whole.
    """
    try:
        old = _lookup(config, key)
    except ConfigError as e:
        raise ConfigError(f"{key}: {e}") from None
    if isinstance(value, Mapping) and isinstance(old, ml_collections.ConfigDict) \
            and not _free_form(key):
        for name, item in value.items():
            set_key(config, f"{key}.{name}", item)
        return
    *parents, leaf = key.split(".")
    section = _lookup(config, ".".join(parents)) if parents else config
    try:
        section[leaf] = tuple(value) if isinstance(value, list) else value
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} is {_kind(value)}; "
                          f"{_expected(config, key, old)}") from None


def _free_form(key: str) -> bool:
    """True for a section that ``default_config`` leaves empty (``data.options``)."""
    try:
        node = _lookup(default_config(), key)
    except ConfigError:
        return False
    return isinstance(node, ml_collections.ConfigDict) and not len(node)


# --------------------------------------------------------------------------------------
# The resolved config (workdir.record_start writes it into every workdir)


def to_json_data(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as plain JSON data (tuples as lists), for tracing and comparing runs."""
    return json.loads(json.dumps(config.to_dict(), sort_keys=True, default=repr))
