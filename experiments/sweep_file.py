"""A sweep file, read and checked: its points (name, base config, changes, full config) and
its MEASURE settings. Nothing here trains or writes; ``experiments.sweep`` runs the points.

A sweep file is a Python file (it may compute its values) that names a base config and the
points to run::

    BASE = "configs/quickstart.py"            # FILE.py[:ARG], as --config takes it
    BASE_OVERRIDES = {"total_steps": 200}     # optional: applied to every point
    GRID = {"model.variant": ["b0", "b1"]}    # optional: every combination is a point
    POINTS = [                                # optional: named points (one-factor ablations)
        {"name": "b0-dec128", "model.overrides.decoder_hidden_size": 128},
    ]
    MEASURE = {"size": (512, 512)}            # optional: see MEASURE_DEFAULTS
    SEEDS = [0, 1, 2]                         # optional: every point once per seed
    PRETRAIN = {"config": "configs/classification_quickstart.py", "total_steps": 300}

Keys are the run config's keys with dots (``total_steps``, ``data.crop_size``,
``model.variant``, ``model.overrides.sr_ratios``), set by ``segformer_jax.run_config.set_key``:
typed by ml_collections, an unknown key or a value of the wrong type is an error. A point
may name its own ``config`` instead of BASE, and a ``name`` (else one is made from its
values). Every point is built and checked before anything runs, so that a malformed sweep
fails at once, naming the file, the point and the key, having created nothing.

``SEEDS`` makes every point ``len(SEEDS)`` points, ``NAME-seedS`` with ``seed = S`` (data
order, initialisation, dropout and augmentation all follow it); the report gives each
point's mean and standard deviation over its seeds.

A point with ``"pretrain": True`` has two stages: first the PRETRAIN config (an image
classification config, its keys set as BASE_OVERRIDES are) trains the point's own encoder
(its ``model.variant``, the encoder's ``model.overrides`` and its seed, copied from the
point's config), then the point's config fine-tunes from it (``model.init`` is the first
stage's workdir). Both stages resume after an interruption.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
import pathlib
import re
import runpy
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

REPO = pathlib.Path(__file__).resolve().parents[1]
SWEEP_NAMES = ("BASE", "BASE_OVERRIDES", "GRID", "POINTS", "MEASURE", "SEEDS", "PRETRAIN")
MEASURE_DEFAULTS: dict[str, Any] = {
    "size": None,        # (H, W) of the inference measurements; None: the training crop size
    "batch": 1,          # inference batch
    "warmup": 2,         # untimed forward passes
    "repeats": 5,        # timed forward passes (median)
    "train_warmup": 1,   # untimed training steps (after the first)
    "train_repeats": 5,  # timed training steps (median)
    # None, or robustness columns: {"corruptions": "paper" | "all" | "noise,fog" | [...],
    # "severities": "1,2,3,4,5" | "paper" | [...], "max_examples": None | N, "seed": 0}
    # (segformer_jax.robustness on the point's validation split; its results in the point's
    # robustness/ folder, one row per point in the sweep's robustness tables)
    "robustness": None,
}
ROBUSTNESS_DEFAULTS: dict[str, Any] = {"corruptions": "paper", "severities": "paper",
                                       "max_examples": None, "seed": 0}
SPECIAL_KEYS = ("name", "config", "pretrain")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class SweepError(ValueError):
    """A sweep file that cannot be run, or a workdir that holds another sweep's points."""


@dataclasses.dataclass
class Point:
    name: str
    config_spec: str                     # FILE.py[:ARG] of its base config
    changes: dict[str, Any]              # the keys this point sets (BASE_OVERRIDES excluded)
    config: ml_collections.ConfigDict    # the full config it trains with
    pretrain: ml_collections.ConfigDict | None = None  # its first stage's config, if any
    group: str = ""                      # the name without its seed suffix (SEEDS)


@dataclasses.dataclass
class Sweep:
    file: pathlib.Path
    points: list[Point]
    measure: dict[str, Any]


def resolve_spec(spec: str) -> str:
    """Relative config files are taken from the repository root (whatever the cwd is)."""
    path, sep, arg = spec.partition(":")
    file = pathlib.Path(path).expanduser()
    if not file.is_absolute():
        file = REPO / file
    return f"{file}{sep}{arg}"


def set_key(config: ml_collections.ConfigDict, key: str, value: Any, where: str) -> None:
    """``run_config.set_key`` (a dict for a typed section sets its keys one by one), its
    ConfigError prefixed with ``where`` (file and point)."""
    from segformer_jax.errors import ConfigError
    from segformer_jax.run_config import set_key as set_config_key
    if not isinstance(key, str) or not key:
        raise SweepError(f"{where}: keys are dotted config keys (strings); got {key!r}")
    try:
        set_config_key(config, key, value)
    except ConfigError as e:
        raise SweepError(f"{where}: {e}") from None


def _auto_name(changes: Mapping[str, Any]) -> str:
    parts = []
    for key, value in changes.items():
        leaf = key.rsplit(".", 1)[-1]
        if key == "model.variant":
            parts.append(str(value))
        elif key == "config":  # FILE.py:ARG -> ARG (or the file's stem)
            path, _, arg = str(value).partition(":")
            parts.append(arg or pathlib.Path(path).stem)
        elif isinstance(value, bool):
            parts.append(leaf if value else f"no_{leaf}")
        elif isinstance(value, (tuple, list)):
            parts.append(leaf + "x".join(str(v) for v in value))
        else:
            parts.append(f"{leaf}{value}")
    name = "-".join(parts) or "base"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _read(file: pathlib.Path) -> dict[str, Any]:
    """The sweep file's top-level names (it is data: run from its path, not imported)."""
    if not file.is_file():
        raise SweepError(f"sweep file: no such file {str(file)!r}")
    try:
        return runpy.run_path(str(file), run_name=f"_sweep_{file.stem}")
    except Exception as e:  # noqa: BLE001 - a sweep file can raise anything
        raise SweepError(f"sweep file: {file}: failed to load ({type(e).__name__}: {e})") from None


def _measure_settings(measure_in: Mapping[str, Any], file: pathlib.Path) -> dict[str, Any]:
    """MEASURE_DEFAULTS updated by the sweep's MEASURE, each value checked."""
    measure = dict(MEASURE_DEFAULTS)
    for key, value in measure_in.items():
        if key not in MEASURE_DEFAULTS:
            raise SweepError(f"{file}: unknown MEASURE key {key!r}; valid: {', '.join(MEASURE_DEFAULTS)}")
        if key == "robustness":
            measure[key] = None if value is None else _robustness_settings(value, file)
            continue
        if key == "size":
            if value is not None and (not isinstance(value, (tuple, list)) or len(value) != 2
                                      or not all(isinstance(v, int) and v >= 32 for v in value)):
                raise SweepError(f"{file}: MEASURE['size'] must be (height, width), each >= 32; "
                                 f"got {value!r}")
            measure[key] = tuple(value) if value is not None else None
            continue
        least = 1 if key in ("batch", "repeats", "train_repeats") else 0
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise SweepError(f"{file}: MEASURE[{key!r}] must be a whole number >= {least}; "
                             f"got {value!r}")
        measure[key] = value
    return measure


def _robustness_settings(value: Any, file: pathlib.Path) -> dict[str, Any]:
    """MEASURE['robustness'] with ROBUSTNESS_DEFAULTS, names and severities checked (and
    kept as given, so that results.json records what was asked)."""
    from segformer_jax import robustness
    from segformer_jax.errors import EvaluationError
    if not isinstance(value, Mapping):
        raise SweepError(f"{file}: MEASURE['robustness'] must be None or a dict with keys "
                         f"{', '.join(ROBUSTNESS_DEFAULTS)}; got {value!r}")
    unknown = [k for k in value if k not in ROBUSTNESS_DEFAULTS]
    if unknown:
        raise SweepError(f"{file}: unknown MEASURE['robustness'] key {unknown[0]!r}; valid: "
                         f"{', '.join(ROBUSTNESS_DEFAULTS)}")
    settings = {**ROBUSTNESS_DEFAULTS, **value}
    for key in ("corruptions", "severities"):
        given = settings[key]
        if not isinstance(given, (str, list, tuple)):
            raise SweepError(f"{file}: MEASURE['robustness'][{key!r}]: expected a string or a list; "
                             f"got {given!r}")
        text = given if isinstance(given, str) else ",".join(map(str, given))
        select = robustness.select_corruptions if key == "corruptions" else robustness.select_severities
        try:
            select(text)
        except EvaluationError as e:
            raise SweepError(f"{file}: MEASURE['robustness'][{key!r}]: {e}") from None
        settings[key] = text
    n = settings["max_examples"]
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise SweepError(f"{file}: MEASURE['robustness']['max_examples'] must be None or a whole "
                         f"number >= 1; got {n!r}")
    if isinstance(settings["seed"], bool) or not isinstance(settings["seed"], int):
        raise SweepError(f"{file}: MEASURE['robustness']['seed'] must be an integer; got {settings['seed']!r}")
    return settings


def _raw_points(file: pathlib.Path, grid: Mapping[str, Any], points_in: Sequence[Any]
                ) -> list[tuple[str | None, dict[str, Any], str]]:
    """(name or None, changes, where) of the GRID's combinations, then of the POINTS."""
    for key, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise SweepError(f"{file}: GRID[{key!r}] must be a non-empty list of values; got {values!r}")
        if key in SPECIAL_KEYS and key not in ("config", "pretrain"):
            raise SweepError(f"{file}: GRID cannot vary {key!r} (names are made from the values)")
    raw: list[tuple[str | None, dict[str, Any], str]] = []
    for combo in itertools.product(*grid.values()) if grid else ():
        raw.append((None, dict(zip(grid.keys(), combo)), "GRID"))
    for i, entry in enumerate(points_in):
        if not isinstance(entry, Mapping):
            raise SweepError(f"{file}: POINTS[{i}] must be a dict of config keys; got {entry!r}")
        entry = dict(entry)
        name = entry.pop("name", None)
        if name is not None and not isinstance(name, str):
            raise SweepError(f"{file}: POINTS[{i}]: name must be a string; got {name!r}")
        raw.append((name, entry, f"POINTS[{i}]"))
    if not raw:
        raise SweepError(f"{file}: defines no points (give GRID and/or POINTS)")
    return raw


def _check(config: ml_collections.ConfigDict, where: str) -> None:
    """What ``train`` would refuse, refused now: a variant, a model, a config value."""
    from segformer_jax.config import VARIANTS
    from segformer_jax.errors import ConfigError
    from segformer_jax.run_config import validate
    variant = config.model.variant
    if variant not in VARIANTS:
        raise SweepError(f"{where}: model.variant={variant!r} is not a SegFormer variant; "
                         f"choose one of {', '.join(sorted(VARIANTS))}")
    try:
        validate(config)
    except (ConfigError, TypeError) as e:  # TypeError: a None where validate compares numbers
        raise SweepError(f"{where}: {e}") from None
    if not config.data.eval_split:
        raise SweepError(f"{where}: data.eval_split is empty; a sweep scores every point on "
                         "its validation split")


def _seeds(value: Any, file: pathlib.Path) -> list[int] | None:
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or not value
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
            or len(set(value)) != len(value)):
        raise SweepError(f"{file}: SEEDS must be a non-empty list of distinct whole numbers "
                         f"(>= 0); got {value!r}")
    return list(value)


def _pretrain_base(value: Any, file: pathlib.Path) -> ml_collections.ConfigDict | None:
    """The PRETRAIN config (a classification config, its keys set), or None."""
    from segformer_jax.errors import ConfigError
    from segformer_jax.run_config import load
    if value is None:
        return None
    if not isinstance(value, Mapping) or not isinstance(value.get("config"), str):
        raise SweepError(f"{file}: PRETRAIN must be a dict with a 'config' (an image "
                         f"classification config file) and config keys; got {value!r}")
    value = dict(value)
    spec = value.pop("config")
    try:
        config = load(resolve_spec(spec))
    except ConfigError as e:
        raise SweepError(f"{file}: PRETRAIN: {e}") from None
    if config.task != "image_classification":
        raise SweepError(f"{file}: PRETRAIN: {spec} trains {config.task}; the pretraining stage "
                         "is an image_classification config (e.g. configs/classification_quickstart.py)")
    for key, v in value.items():
        set_key(config, key, v, f"{file}: PRETRAIN")
    return config


def pretrain_config(pretrain: ml_collections.ConfigDict, config: ml_collections.ConfigDict
                    ) -> ml_collections.ConfigDict:
    """The first stage of ``config``'s point: ``pretrain`` with ``config``'s encoder (the
    fields the fine-tune stage's ``model.init`` checks) and seed. The input bands stay the
    pretraining data's (RGB): a K-band fine-tune inflates the first kernel."""
    from segformer_jax.checkpoint import ENCODER_FIELDS
    stage = copy.deepcopy(pretrain)
    stage.model.variant = config.model.variant
    for key in ENCODER_FIELDS:
        if key != "num_channels":
            stage.model.overrides[key] = config.model.overrides[key]
    stage.seed = config.seed
    return stage


def load_sweep(path: str | os.PathLike) -> Sweep:
    """Reads and checks a sweep file; every error names the file, the point and the key."""
    from segformer_jax.errors import ConfigError
    from segformer_jax.run_config import load

    file = pathlib.Path(path).expanduser().absolute()
    names = _read(file)
    unknown = [n for n in names if n.isupper() and not n.startswith("_") and n not in SWEEP_NAMES]
    if unknown:
        raise SweepError(f"{file}: unknown name(s) {unknown}; a sweep file defines "
                         f"{', '.join(SWEEP_NAMES)}")
    base = names.get("BASE")
    if not isinstance(base, str) or not base:
        raise SweepError(f"{file}: BASE must name a config file, e.g. BASE = 'configs/quickstart.py'")
    base_overrides = names.get("BASE_OVERRIDES") or {}
    grid = names.get("GRID") or {}
    points_in = names.get("POINTS") or []
    measure_in = names.get("MEASURE") or {}
    for label, value, kind in (("BASE_OVERRIDES", base_overrides, Mapping), ("GRID", grid, Mapping),
                               ("POINTS", points_in, (list, tuple)), ("MEASURE", measure_in, Mapping)):
        if not isinstance(value, kind):
            raise SweepError(f"{file}: {label} must be a {'dict' if kind is Mapping else 'list'}; "
                             f"got {type(value).__name__}")
    raw = _raw_points(file, grid, points_in)
    measure = _measure_settings(measure_in, file)
    seeds = _seeds(names.get("SEEDS"), file)
    pretrain = _pretrain_base(names.get("PRETRAIN"), file)

    bases: dict[str, ml_collections.ConfigDict] = {}
    points: list[Point] = []
    seen: dict[str, str] = {}
    for name, changes, where in raw:
        name = name if name is not None else _auto_name(changes)
        spec = changes.pop("config", base)
        pretrained = changes.pop("pretrain", False)
        if not isinstance(spec, str) or not spec:
            raise SweepError(f"{file}: {where}: config must name a config file; got {spec!r}")
        where = f"{file}: point {name!r} ({where})"
        if not isinstance(pretrained, bool) or (pretrained and pretrain is None):
            raise SweepError(f"{where}: pretrain must be True or False, and True needs a PRETRAIN "
                             f"config in the sweep file; got {pretrained!r}")
        if not _NAME.match(name):
            raise SweepError(f"{where}: a point name is a directory name: letters, digits, '.', "
                             "'_' and '-' (not first)")
        if name in seen:
            raise SweepError(f"{where}: the name {name!r} is already used by {seen[name]}")
        seen[name] = where
        resolved = resolve_spec(spec)
        if resolved not in bases:
            try:
                bases[resolved] = load(resolved)
            except ConfigError as e:
                raise SweepError(f"{where}: {e}") from None
            for key, value in base_overrides.items():
                set_key(bases[resolved], key, value, f"{file}: BASE_OVERRIDES")
        for seed in seeds or [None]:
            config = copy.deepcopy(bases[resolved])  # locked and typed, as the base
            for key, value in changes.items():
                set_key(config, key, value, where)
            if seed is not None:
                if "seed" in changes:
                    raise SweepError(f"{where}: sets seed, and SEEDS runs every point once per seed")
                config.seed = seed
            _check(config, where)
            stage = None
            if pretrained:
                if config.model.init != "scratch":
                    raise SweepError(f"{where}: pretrain is True and model.init is "
                                     f"{config.model.init!r}; the fine-tune stage starts from the "
                                     "pretraining stage, so give one or the other")
                stage = pretrain_config(pretrain, config)
                _check(stage, f"{where} (its PRETRAIN stage)")
            point_changes = {**changes, **({"pretrain": True} if pretrained else {})}
            points.append(Point(name if seed is None else f"{name}-seed{seed}", spec,
                                point_changes, config, stage, name))
    return Sweep(file, points, measure)
