"""Sweeps: train and measure every point of an ablation, resumably, and tabulate the results.

    python experiments/sweep.py experiments/variants_quickstart.py [--workdir DIR]
        [--launcher 'sbatch --wrap {cmd}'] [--only NAME,...] [--dry-run] [--collect]

A sweep file is a Python file that names a base config and the points to run::

    BASE = "configs/quickstart.py"            # FILE.py[:ARG], as --config takes it
    BASE_OVERRIDES = {"total_steps": 200}     # optional: applied to every point
    GRID = {"model.variant": ["b0", "b1"]}    # optional: every combination is a point
    POINTS = [                                # optional: named points (one-factor ablations)
        {"name": "b0-dec128", "model.overrides.decoder_hidden_size": 128},
    ]
    MEASURE = {"size": (512, 512)}            # optional: see MEASURE_DEFAULTS

Keys are config keys with dots (``total_steps``, ``data.crop_size``, ``model.variant``; a
section such as ``data.options`` may be given whole, as a dict);
``model.overrides.FIELD`` sets a ``SegformerConfig`` field (``decoder_hidden_size``,
``sr_ratios``, ``drop_path_rate``, ``mix_ffn_conv``, ...). A point may also name its own
``config`` (FILE.py[:ARG]) instead of BASE, and a ``name`` (else one is made from its
values). Every key, value type, variant and model of every point is checked before anything
runs: a malformed sweep creates nothing.

Each point trains in its own workdir ``DIR/points/NAME`` (a subprocess of this script, or one
job of ``--launcher``), then is measured, and is finished when its ``result.json`` exists.
Run the same command again after an interruption: finished points are skipped, an
interrupted one resumes from its own last checkpoint. The tables (``results.json``,
``results.csv``, ``results.md``) and ``plot.png`` in DIR are rewritten after every point.
See experiments/README.md.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing a sweep does may touch the network
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import dataclasses
import datetime
import itertools
import json
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python experiments/sweep.py` without PYTHONPATH=.
    sys.path.insert(0, str(REPO))

import ml_collections  # noqa: E402

SWEEP_NAMES = ("BASE", "BASE_OVERRIDES", "GRID", "POINTS", "MEASURE")
MEASURE_DEFAULTS: dict[str, Any] = {
    "size": None,        # (H, W) of the inference measurements; None: the training crop size
    "batch": 1,          # inference batch
    "warmup": 2,         # untimed forward passes
    "repeats": 5,        # timed forward passes (median)
    "train_warmup": 1,   # untimed training steps (after the first)
    "train_repeats": 5,  # timed training steps (median)
}
SPECIAL_KEYS = ("name", "config")
OVERRIDES = "model.overrides."
DATASET_FIELDS = ("num_labels", "id2label")  # set by the dataset, not by a sweep
PARENT_ENV = "SEGFORMER_SWEEP_PARENT_PID"  # set for the point processes of a local sweep
RESULT, POINT_CONFIG, SUMMARY, LOG, SUBMITTED = (
    "result.json", "point_config.json", "train_summary.json", "log.txt", "submitted.json")


class SweepError(ValueError):
    """A sweep file that cannot be run, or a workdir that holds another sweep's points."""


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for _siblings, when loaded by path
from _siblings import load_sibling  # noqa: E402


# --------------------------------------------------------------------------------------
# The sweep file


@dataclasses.dataclass
class Point:
    name: str
    config_spec: str                     # FILE.py[:ARG] of its base config
    changes: dict[str, Any]              # the keys this point sets (BASE_OVERRIDES excluded)
    config: ml_collections.ConfigDict    # the full config it trains with


@dataclasses.dataclass
class Sweep:
    file: pathlib.Path
    points: list[Point]
    measure: dict[str, Any]


def _resolve_spec(spec: str) -> str:
    """Relative config files are taken from the repository root (whatever the cwd is)."""
    path, sep, arg = spec.partition(":")
    file = pathlib.Path(path).expanduser()
    if not file.is_absolute():
        file = REPO / file
    return f"{file}{sep}{arg}"


def _leaf_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    out = []
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict) and key != "overrides":
            out += _leaf_keys(value, f"{prefix}{key}.")
        else:
            out.append(prefix + key)
    return out


def _model_fields() -> dict[str, Any]:
    """SegformerConfig fields a sweep may set, with their defaults (which type them)."""
    from segformer_jax.config import SegformerConfig
    return {f.name: f.default for f in dataclasses.fields(SegformerConfig)
            if f.name not in DATASET_FIELDS}


def _kind(old: Any) -> str:
    if isinstance(old, (tuple, list)):
        return f"a list of {len(old)}" if old else "a list"
    name = type(old).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _typed(value: Any, old: Any, key: str, where: str) -> Any:
    """``value`` converted to the type of the value it replaces, or a SweepError."""
    def wrong() -> SweepError:
        return SweepError(f"{where}: {key}={value!r} is {_kind(value)}; {key} takes "
                          f"{_kind(old)} like {old!r}")
    if old is None:
        return value
    if isinstance(old, bool):
        if not isinstance(value, bool):
            raise wrong()
        return value
    if isinstance(old, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong()
        return value
    if isinstance(old, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong()
        return float(value)
    if isinstance(old, str):
        if not isinstance(value, str):
            raise wrong()
        return value
    if isinstance(old, (tuple, list)):
        if not isinstance(value, (tuple, list)) or (old and len(value) != len(old)):
            raise wrong()
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in old)
        if numbers and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise wrong()
        return tuple(value)
    if isinstance(old, (dict, ml_collections.ConfigDict)):
        if not isinstance(value, Mapping):
            raise wrong()
        return dict(value)
    if not isinstance(value, type(old)):
        raise wrong()
    return value


def set_key(config: ml_collections.ConfigDict, key: str, value: Any, where: str) -> None:
    """``config[key] = value`` for a dotted key, typed and checked; ``model.overrides.FIELD``
    adds FIELD to the model overrides."""
    if not isinstance(key, str) or not key:
        raise SweepError(f"{where}: keys are dotted config keys (strings); got {key!r}")
    if key.startswith(OVERRIDES):
        field = key[len(OVERRIDES):]
        fields = _model_fields()
        if field not in fields:
            raise SweepError(f"{where}: unknown model field {key!r} (value {value!r}); "
                             f"valid: {', '.join(OVERRIDES + f for f in fields)}")
        overrides = dict(config.model.get("overrides") or {})
        overrides[field] = _typed(value, fields[field], key, where)
        config.model.overrides = overrides
        return
    *parents, leaf = key.split(".")
    node = config
    for name in parents:
        node = node.get(name) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        hint = ""
        if parents == ["model"] and leaf in _model_fields():
            hint = f" (a model field: did you mean {OVERRIDES}{leaf}?)"
        raise SweepError(f"{where}: unknown config key {key!r} (value {value!r}){hint}; valid "
                         f"keys: {', '.join(_leaf_keys(config))}, {OVERRIDES}<SegformerConfig field>")
    node[leaf] = _typed(value, node[leaf], key, where)


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


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _load_module(file: pathlib.Path) -> Any:
    from segformer_jax.cli_config import run_python_file
    try:
        return run_python_file(file, f"_sweep_{file.stem}")
    except ValueError as e:
        raise SweepError(f"sweep file: {e}") from None


def _measure_settings(measure_in: Mapping[str, Any], file: pathlib.Path) -> dict[str, Any]:
    """MEASURE_DEFAULTS updated by the sweep's MEASURE, each value checked."""
    measure = dict(MEASURE_DEFAULTS)
    for key, value in measure_in.items():
        if key not in MEASURE_DEFAULTS:
            raise SweepError(f"{file}: unknown MEASURE key {key!r}; valid: {', '.join(MEASURE_DEFAULTS)}")
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


def load_sweep(path: str | os.PathLike) -> Sweep:
    """Reads and checks a sweep file; every error names the file, the point and the key."""
    from segformer_jax.cli_config import load_config
    from segformer_jax.config import VARIANTS, ConfigError, SegformerConfig
    from segformer_jax.train import TrainingError, validate

    file = pathlib.Path(path).expanduser().absolute()
    module = _load_module(file)
    names = [n for n in vars(module) if n.isupper() and not n.startswith("_")]
    unknown = [n for n in names if n not in SWEEP_NAMES]
    if unknown:
        raise SweepError(f"{file}: unknown name(s) {unknown}; a sweep file defines "
                         f"{', '.join(SWEEP_NAMES)}")
    base = getattr(module, "BASE", None)
    if not isinstance(base, str) or not base:
        raise SweepError(f"{file}: BASE must name a config file, e.g. BASE = 'configs/quickstart.py'")
    base_overrides = getattr(module, "BASE_OVERRIDES", {}) or {}
    grid = getattr(module, "GRID", {}) or {}
    points_in = getattr(module, "POINTS", []) or []
    measure_in = getattr(module, "MEASURE", {}) or {}
    for label, value, kind in (("BASE_OVERRIDES", base_overrides, Mapping), ("GRID", grid, Mapping),
                               ("POINTS", points_in, (list, tuple)), ("MEASURE", measure_in, Mapping)):
        if not isinstance(value, kind):
            raise SweepError(f"{file}: {label} must be a {'dict' if kind is Mapping else 'list'}; "
                             f"got {type(value).__name__}")
    for key, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise SweepError(f"{file}: GRID[{key!r}] must be a non-empty list of values; got {values!r}")
        if key in SPECIAL_KEYS and key != "config":
            raise SweepError(f"{file}: GRID cannot vary {key!r} (names are made from the values)")

    raw: list[tuple[str | None, dict[str, Any], str]] = []  # (name, changes, where)
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

    measure = _measure_settings(measure_in, file)

    bases: dict[str, ml_collections.ConfigDict] = {}
    points: list[Point] = []
    seen: dict[str, str] = {}
    for name, changes, where in raw:
        name = name if name is not None else _auto_name(changes)
        spec = changes.pop("config", base)
        if not isinstance(spec, str) or not spec:
            raise SweepError(f"{file}: {where}: config must name a config file; got {spec!r}")
        where = f"{file}: point {name!r} ({where})"
        if not _NAME.match(name):
            raise SweepError(f"{where}: a point name is a directory name: letters, digits, '.', "
                             "'_' and '-' (not first)")
        if name in seen:
            raise SweepError(f"{where}: the name {name!r} is already used by {seen[name]}")
        seen[name] = where
        resolved = _resolve_spec(spec)
        if resolved not in bases:
            try:
                bases[resolved] = load_config(resolved)
            except ValueError as e:
                raise SweepError(f"{where}: {e}") from None
            for key, value in base_overrides.items():
                set_key(bases[resolved], key, value, f"{file}: BASE_OVERRIDES")
        config = ml_collections.ConfigDict(bases[resolved].to_dict())  # a deep copy
        for key, value in changes.items():
            set_key(config, key, value, where)
        variant = config.model.variant
        if variant not in VARIANTS:
            raise SweepError(f"{where}: model.variant={variant!r} is not a SegFormer variant; "
                             f"choose one of {', '.join(sorted(VARIANTS))}")
        try:
            SegformerConfig.from_variant(variant, **dict(config.model.get("overrides") or {}))
            validate(config)
        except (ConfigError, TrainingError, TypeError) as e:
            raise SweepError(f"{where}: {e}") from None
        if not config.data.eval_split:
            raise SweepError(f"{where}: data.eval_split is empty; a sweep scores every point on "
                             "its validation split")
        points.append(Point(name, spec, changes, config))
    return Sweep(file, points, measure)


# --------------------------------------------------------------------------------------
# Point workdirs


def config_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as plain JSON data (tuples as lists), for comparing runs."""
    return json.loads(json.dumps(config.to_dict(), sort_keys=True, default=repr))


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def write_json(path: pathlib.Path, data: Any) -> None:
    """Atomically: a reader (or a restarted sweep) sees the old file or the new, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def point_dir(workdir: pathlib.Path, point: Point) -> pathlib.Path:
    return workdir / "points" / point.name


def check_workdir(workdir: pathlib.Path, sweep: Sweep) -> None:
    """A point directory written with another config is refused, before anything runs."""
    for point in sweep.points:
        saved_file = point_dir(workdir, point) / POINT_CONFIG
        if not saved_file.is_file():
            continue
        saved = _flatten(json.loads(saved_file.read_text(encoding="utf-8")))
        now = _flatten(config_json(point.config))
        diff = [f"{k}: {saved.get(k)!r} there, {now.get(k)!r} now" for k in sorted(set(saved) | set(now))
                if saved.get(k) != now.get(k)]
        if diff:
            raise SweepError(f"point {point.name!r}: {saved_file.parent} holds a run of another config "
                             f"({'; '.join(diff[:5])}{' …' if len(diff) > 5 else ''}); use another "
                             "--workdir or remove that directory")


def status(workdir: pathlib.Path, point: Point) -> str:
    d = point_dir(workdir, point)
    if (d / RESULT).is_file():
        return "finished"
    if (d / SUBMITTED).is_file():
        return "submitted"
    if (d / "checkpoints").is_dir() or (d / POINT_CONFIG).is_file():
        return "started"
    return "pending"


# --------------------------------------------------------------------------------------
# One point: train, then measure (runs in its own process: ``--point NAME``)


def _enable_compilation_cache(directory: str | None) -> None:
    """XLA programs compiled by one point (or measurement) are reused by the next."""
    import jax
    if not directory:
        jax.config.update("jax_enable_compilation_cache", False)
        return
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _lock(directory: pathlib.Path) -> Any:
    """One process per point: a second one (an orphan of a killed sweep) is refused."""
    import fcntl
    handle = open(directory / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise SweepError(f"{directory} is being run by another process; wait for it or end it") from None
    return handle


def _final_summary(point: Point, directory: pathlib.Path, summary: dict[str, Any]) -> dict[str, Any]:
    """The final evaluation: train()'s, the one saved by an earlier run of this point, or
    (a run killed between its last checkpoint and the save) the final checkpoint's, anew."""
    if summary:
        data = _json_safe({"mIoU": float(summary["mIoU"]), "aAcc": float(summary["aAcc"]),
                           "mAcc": float(summary["mAcc"]), "class_names": list(summary["class_names"]),
                           "IoU": [float(v) for v in summary["IoU"]]})
        write_json(directory / SUMMARY, data)
        return data
    if (directory / SUMMARY).is_file():
        return json.loads((directory / SUMMARY).read_text(encoding="utf-8"))
    from segformer_jax import data as data_lib
    from segformer_jax.evaluate import evaluate
    from segformer_jax.predict import load_for_inference
    d = point.config.data
    seg_config, variables = load_for_inference(directory)
    split = data_lib.load_split(d.name, d.eval_split, data_dir=d.data_dir or None,
                                manual_dir=d.manual_dir or None, **dict(d.options))
    result = evaluate(seg_config, variables, split, "whole",
                      img_scale=tuple(d.eval_scale) if d.eval_scale else None,
                      size_divisor=d.eval_size_divisor or None)
    return _final_summary(point, directory, result)


def run_point(sweep: Sweep, point: Point, workdir: pathlib.Path) -> dict[str, Any]:
    """Trains (or resumes) one point, measures it and writes its result.json."""
    from segformer_jax.train import train
    measure = load_sibling("sweep_measure")

    directory = point_dir(workdir, point)
    directory.mkdir(parents=True, exist_ok=True)
    lock = _lock(directory)
    try:
        if (directory / RESULT).is_file():
            return json.loads((directory / RESULT).read_text(encoding="utf-8"))
        if not (directory / POINT_CONFIG).is_file():
            write_json(directory / POINT_CONFIG, config_json(point.config))
        start = time.perf_counter()
        summary = _final_summary(point, directory, train(point.config, directory))
        train_s = time.perf_counter() - start
        print(f"[{point.name}] measuring", flush=True)
        measured = measure.measure_point(point.config, sweep.measure, list(summary["class_names"]))
        result = {"name": point.name, "variant": point.config.model.variant,
                  "config": point.config_spec, "changes": point.changes,
                  **measured, "mIoU": summary["mIoU"], "aAcc": summary["aAcc"],
                  "mAcc": summary["mAcc"],
                  "IoU": dict(zip(summary["class_names"], summary["IoU"])),
                  "total_steps": int(point.config.total_steps),
                  "batch_size": int(point.config.batch_size),
                  "crop_size": list(point.config.data.crop_size),
                  "train_call_s": round(train_s, 1),
                  "finished_at": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        write_json(directory / RESULT, _json_safe(result))
        return result
    finally:
        lock.close()


def _json_safe(data: Any) -> Any:
    """NaN/inf become null (strict JSON), tuples lists."""
    if isinstance(data, Mapping):
        return {str(k): _json_safe(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_json_safe(v) for v in data]
    if isinstance(data, float) and (data != data or data in (float("inf"), float("-inf"))):
        return None
    return data


def _run_point_command(sweep: Sweep, point: Point, workdir: pathlib.Path) -> int:
    """``--point NAME``: known failures end with one line (and exit 1), not a traceback."""
    from segformer_jax.config import ConfigError
    from segformer_jax.data.common import DatasetError
    from segformer_jax.hub import CheckpointError
    from segformer_jax.train import TrainingError
    try:
        run_point(sweep, point, workdir)
    except (TrainingError, ConfigError, CheckpointError, DatasetError, SweepError) as e:
        print(f"\nerror: point {point.name!r}: {e}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------------------
# The whole sweep


def point_command(sweep: Sweep, point: Point, workdir: pathlib.Path, cache: str | None) -> list[str]:
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), str(sweep.file),
           "--workdir", str(workdir), "--point", point.name]
    return cmd + (["--compilation-cache", cache] if cache else ["--no-compilation-cache"])


def _die_with_parent() -> None:
    """Linux: a point started by a local sweep gets SIGTERM (``train`` saves a checkpoint and
    stops) when the sweep dies, so that a restarted sweep never finds it still running."""
    parent = os.environ.pop(PARENT_ENV, None)
    if parent is None or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # the sweep died before the line above
        os.kill(os.getpid(), signal.SIGTERM)


def run_local(command: list[str], log: pathlib.Path) -> int:
    """Runs one point as a subprocess; its output goes to the terminal and to ``log``."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, PARENT_ENV: str(os.getpid())}
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"\n$ {shlex.join(command)}\n")
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env)
        previous = signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
        try:
            for line in proc.stdout:
                out.write(line)
                out.flush()
                print(line, end="", flush=True)
            return proc.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)


def submit(template: str, sweep: Sweep, point: Point, workdir: pathlib.Path, cache: str | None) -> None:
    """One cluster job: ``template`` with {cmd}, {name}, {workdir} and {log} filled in."""
    directory = point_dir(workdir, point)
    directory.mkdir(parents=True, exist_ok=True)
    command = shlex.join(point_command(sweep, point, workdir, cache))
    line = template.format(cmd=command, name=point.name, workdir=directory, log=directory / LOG)
    print(f"[{point.name}] $ {line}", flush=True)
    done = subprocess.run(line, shell=True, text=True, capture_output=True)
    print(done.stdout, end="")
    if done.returncode != 0:
        raise SweepError(f"point {point.name!r}: the launcher failed (exit {done.returncode}): "
                         f"{done.stderr.strip()[-2000:]}")
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    write_json(directory / SUBMITTED, {"command": line, "stdout": done.stdout.strip()[-2000:], "at": now})


def collect(sweep: Sweep, workdir: pathlib.Path) -> list[dict[str, Any]]:
    """The results of the finished points, in sweep order; writes the tables and the plot."""
    report = load_sibling("sweep_report")
    results = [json.loads((point_dir(workdir, p) / RESULT).read_text(encoding="utf-8"))
               for p in sweep.points if status(workdir, p) == "finished"]
    if results:
        report.write_all(results, workdir, sweep.file, sweep.measure)
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python experiments/sweep.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", help="a sweep file, e.g. experiments/variants_quickstart.py")
    p.add_argument("--workdir", default=None,
                   help="where the points and the tables go (default workdirs/sweeps/<sweep file name>)")
    p.add_argument("--launcher", default=None,
                   help="submit one job per point: a shell command template with {cmd} (the "
                        "point's command line), {name}, {workdir}, {log}")
    p.add_argument("--resubmit", action="store_true",
                   help="with --launcher: submit unfinished points again, even if submitted before")
    p.add_argument("--only", default=None, help="comma-separated point names to run")
    p.add_argument("--dry-run", action="store_true", help="print the points and their state; run nothing")
    p.add_argument("--collect", action="store_true",
                   help="run nothing; write the tables and the plot of the finished points")
    p.add_argument("--compilation-cache", default=None,
                   help="XLA compilation cache shared by the points (default "
                        "$JAX_COMPILATION_CACHE_DIR, else WORKDIR/jax_cache)")
    p.add_argument("--no-compilation-cache", action="store_true")
    p.add_argument("--point", default=None, help=argparse.SUPPRESS)  # one point, in this process
    return p.parse_args(argv)


def _check_launcher(template: str) -> None:
    try:
        template.format(cmd="CMD", name="NAME", workdir="DIR", log="LOG")
    except (KeyError, IndexError, ValueError) as e:
        raise SweepError(f"--launcher {template!r}: {type(e).__name__} {e}; the template may use "
                         "{cmd}, {name}, {workdir} and {log} (write other braces as {{ and }})") from None
    if "{cmd}" not in template:
        raise SweepError(f"--launcher {template!r} does not contain {{cmd}}, the point's command")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.point is None:
        # This process only orchestrates: it must not take an accelerator (or its memory)
        # from the point processes it starts.
        import jax
        jax.config.update("jax_platforms", "cpu")
    try:
        if args.launcher:
            _check_launcher(args.launcher)
        sweep = load_sweep(args.sweep)
        workdir = pathlib.Path(args.workdir or REPO / "workdirs" / "sweeps" / sweep.file.stem).absolute()
        cache = None if args.no_compilation_cache else (
            args.compilation_cache or os.environ.get("JAX_COMPILATION_CACHE_DIR")
            or str(workdir / "jax_cache"))
        points = sweep.points
        if args.only:
            wanted = [n.strip() for n in args.only.split(",") if n.strip()]
            missing = [n for n in wanted if n not in {p.name for p in points}]
            if missing:
                raise SweepError(f"--only: no point(s) {missing} in {sweep.file}; points: "
                                 f"{', '.join(p.name for p in points)}")
            points = [p for p in points if p.name in wanted]
        check_workdir(workdir, sweep)
        if args.point is not None:
            match = [p for p in sweep.points if p.name == args.point]
            if not match:
                raise SweepError(f"--point: no point {args.point!r} in {sweep.file}")
            _die_with_parent()
            _enable_compilation_cache(cache)
            return _run_point_command(sweep, match[0], workdir)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    if args.dry_run:
        print(f"sweep {sweep.file}: {len(sweep.points)} points, workdir {workdir}")
        for p in points:
            changes = ", ".join(f"{k}={v!r}" for k, v in p.changes.items()) or "(the base config)"
            print(f"  {p.name:<24} {status(workdir, p):<9} {p.config_spec}: {changes}")
        return 0
    if args.collect:
        results = collect(sweep, workdir)
        print(f"{len(results)} of {len(sweep.points)} points finished; tables in {workdir}")
        return 0

    failed: list[str] = []
    start = time.perf_counter()
    for p in points:
        state = status(workdir, p)
        if state == "finished":
            print(f"[{p.name}] finished, skipped", flush=True)
            continue
        if args.launcher:
            if state == "submitted" and not args.resubmit:
                print(f"[{p.name}] submitted before, skipped (--resubmit to submit again)", flush=True)
                continue
            try:
                submit(args.launcher, sweep, p, workdir, cache)
            except SweepError as e:
                print(f"error: {e}", file=sys.stderr)
                failed.append(p.name)
            continue
        print(f"[{p.name}] {'resuming' if state == 'started' else 'starting'} "
              f"({', '.join(f'{k}={v!r}' for k, v in p.changes.items()) or 'the base config'})", flush=True)
        point_start = time.perf_counter()
        rc = run_local(point_command(sweep, p, workdir, cache), point_dir(workdir, p) / LOG)
        if rc != 0:
            print(f"[{p.name}] FAILED (exit {rc}); its log: {point_dir(workdir, p) / LOG}", flush=True)
            failed.append(p.name)
            continue
        print(f"[{p.name}] done in {time.perf_counter() - point_start:.0f} s", flush=True)
        collect(sweep, workdir)
    results = collect(sweep, workdir)
    print(f"\nsweep: {len(results)} of {len(sweep.points)} points finished "
          f"({time.perf_counter() - start:.0f} s this run); tables and plot in {workdir}")
    if results:
        print((workdir / "results.md").read_text(encoding="utf-8"))
    if args.launcher and len(results) < len(sweep.points):
        print("jobs submitted; when they are done, write the tables with the same command and --collect")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
