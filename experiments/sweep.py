"""Sweeps: train and measure every point of an ablation, resumably, and tabulate the results.

    python -m experiments.sweep experiments/variants_quickstart.py [--workdir DIR]
        [--launcher 'sbatch --wrap {cmd}'] [--only NAME,...] [--dry-run] [--collect]

(from the repository root, or with it on ``PYTHONPATH``). The sweep file names a base config
and the points (``experiments.sweep_file`` reads it and checks every point before anything
runs: a malformed sweep creates nothing).

Each point trains in its own workdir ``DIR/points/NAME`` (a process of its own,
``python -m experiments.sweep FILE --point NAME``, or one job of ``--launcher``), then is
measured (``experiments.sweep_measure``), and is finished when its ``result.json`` exists.
Run the same command again after an interruption: finished points are skipped, an
interrupted one resumes from its own last checkpoint. The tables (``results.json``,
``results.csv``, ``results.md``) and ``plot.png`` in DIR (``experiments.sweep_report``) are
rewritten after every point. See experiments/README.md.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing a sweep does may touch the network
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import datetime
import json
import pathlib
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

from experiments.sweep_file import REPO, Point, Sweep, SweepError, load_sweep

PARENT_ENV = "SEGFORMER_SWEEP_PARENT_PID"  # set for the point processes of a local sweep
RESULT, POINT_CONFIG, SUMMARY, LOG, SUBMITTED = (
    "result.json", "point_config.json", "train_summary.json", "log.txt", "submitted.json")
PRETRAIN = "pretrain"  # a two-stage point's first stage: its workdir inside the point's

__all__ = ["Point", "Sweep", "SweepError", "load_sweep", "main"]


# --------------------------------------------------------------------------------------
# Point workdirs


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def write_json(path: pathlib.Path, data: Any) -> None:
    """Atomically: a reader (or a restarted sweep) sees the old file or the new, never half."""
    from segformer_jax.files import atomic_write
    atomic_write(path, (json.dumps(data, indent=2, allow_nan=False) + "\n").encode())


def point_dir(workdir: pathlib.Path, point: Point) -> pathlib.Path:
    return workdir / "points" / point.name


def check_workdir(workdir: pathlib.Path, sweep: Sweep) -> None:
    """A point directory written with another config is refused, before anything runs."""
    from segformer_jax.run_config import to_json_data
    stages = [(p, POINT_CONFIG, p.config) for p in sweep.points]
    stages += [(p, f"{PRETRAIN}/{POINT_CONFIG}", p.pretrain) for p in sweep.points if p.pretrain]
    for point, file, config in stages:
        saved_file = point_dir(workdir, point) / file
        if not saved_file.is_file():
            continue
        saved = _flatten(json.loads(saved_file.read_text(encoding="utf-8")))
        now = _flatten(to_json_data(config))
        diff = [f"{k}: {saved.get(k)!r} there, {now.get(k)!r} now" for k in sorted(set(saved) | set(now))
                if saved.get(k) != now.get(k)]
        if diff:
            raise SweepError(f"point {point.name!r}: {saved_file.parent} holds a run of another config "
                             f"({'; '.join(diff[:5])}{' …' if len(diff) > 5 else ''}); use another "
                             "--workdir or remove that directory")


def status(workdir: pathlib.Path, point: Point) -> str:
    """finished (result.json), submitted (to a launcher), started (trained some) or pending."""
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
    evaluator, variables, _ = _final_evaluator(point, directory)
    return _final_summary(point, directory, evaluator(variables))


def _final_evaluator(point: Point, directory: pathlib.Path, max_examples: int | None = None
                     ) -> tuple[Any, Any, Any]:
    """The evaluator train() validates with, the variables of the point's final checkpoint
    and its validation split."""
    from segformer_jax import data as data_lib
    from segformer_jax.checkpoint import load_for_inference
    from segformer_jax.tasks import make_evaluator
    from segformer_jax.train import model_for_run
    d = point.config.data
    seg_config, variables = load_for_inference(directory)
    split = data_lib.load_split(d.name, d.eval_split, data_dir=d.data_dir or None,
                                manual_dir=d.manual_dir or None, **dict(d.options))
    model = model_for_run(point.config, seg_config)
    return make_evaluator(point.config, model, split, max_examples=max_examples), variables, split


def measure_robustness(point: Point, directory: pathlib.Path, spec: dict[str, Any]) -> dict[str, Any]:
    """The robustness report of the point's final checkpoint on its validation split, with
    the evaluator train() validates with (``segformer_jax.robustness``; resumable, its files
    in ``directory/robustness``)."""
    import jax

    from segformer_jax import robustness
    evaluator, variables, split = _final_evaluator(point, directory, spec["max_examples"])
    robustness.check_labelled(split)
    pairs = robustness.plan(robustness.select_corruptions(spec["corruptions"]),
                            robustness.select_severities(spec["severities"]))
    identity = {"point": point.name, "checkpoint": str(directory), "split": point.config.data.eval_split,
                "max_examples": spec["max_examples"], "settings": evaluator.settings.as_dict()}
    result = robustness.run(evaluator, jax.device_put(dict(variables)), pairs, directory / "robustness",
                            seed=spec["seed"], identity=identity, label=point.name,
                            log=lambda line: print(f"[{point.name}] {line}", flush=True))
    result.pop("computed")
    return result


def pretrain_point(point: Point, directory: pathlib.Path) -> dict[str, Any]:
    """The first stage of a two-stage point: trains (or resumes) its encoder on the PRETRAIN
    task in ``directory/pretrain``; returns (and records there) its final top-1/top-5."""
    from segformer_jax.run_config import to_json_data
    from segformer_jax.train import train
    stage = directory / PRETRAIN
    if (stage / RESULT).is_file():
        return json.loads((stage / RESULT).read_text(encoding="utf-8"))
    stage.mkdir(parents=True, exist_ok=True)
    if not (stage / POINT_CONFIG).is_file():
        write_json(stage / POINT_CONFIG, to_json_data(point.pretrain))
    print(f"[{point.name}] stage 1: pretraining the encoder ({point.pretrain.data.name})", flush=True)
    start = time.perf_counter()
    summary = train(point.pretrain, stage)
    result = {"top1": float(summary["top1"]) if summary else None,
              "top5": float(summary["top5"]) if summary else None,
              "total_steps": int(point.pretrain.total_steps), "train_call_s": round(time.perf_counter() - start, 1)}
    write_json(stage / RESULT, _json_safe(result))
    return result


def fine_tune_config(point: Point, directory: pathlib.Path) -> Any:
    """The point's config; a two-stage point's starts from its own pretraining stage."""
    if point.pretrain is None:
        return point.config
    import copy
    config = copy.deepcopy(point.config)
    config.model.init = str(directory / PRETRAIN)
    return config


def run_point(sweep: Sweep, point: Point, workdir: pathlib.Path) -> dict[str, Any]:
    """Trains (or resumes) one point (its pretraining stage first, if it has one), measures
    it and writes its result.json."""
    from experiments import sweep_measure
    from segformer_jax.run_config import to_json_data
    from segformer_jax.train import train

    directory = point_dir(workdir, point)
    directory.mkdir(parents=True, exist_ok=True)
    lock = _lock(directory)
    try:
        if (directory / RESULT).is_file():
            return json.loads((directory / RESULT).read_text(encoding="utf-8"))
        if not (directory / POINT_CONFIG).is_file():
            write_json(directory / POINT_CONFIG, to_json_data(point.config))
        pretrained = pretrain_point(point, directory) if point.pretrain is not None else None
        if pretrained is not None:
            print(f"[{point.name}] stage 2: fine-tuning from {directory / PRETRAIN}", flush=True)
        start = time.perf_counter()
        summary = _final_summary(point, directory, train(fine_tune_config(point, directory), directory))
        train_s = time.perf_counter() - start
        print(f"[{point.name}] measuring", flush=True)
        measured = sweep_measure.measure_point(point.config, sweep.measure, list(summary["class_names"]))
        if sweep.measure.get("robustness"):
            print(f"[{point.name}] robustness", flush=True)
            measured["robustness"] = measure_robustness(point, directory, sweep.measure["robustness"])
        result = {"name": point.name, "group": point.group or point.name,
                  "seed": int(point.config.seed), "pretrain": pretrained,
                  "variant": point.config.model.variant,
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
    from segformer_jax.errors import SegformerError
    try:
        run_point(sweep, point, workdir)
    except (SegformerError, SweepError) as e:
        print(f"\nerror: point {point.name!r}: {e}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------------------
# The whole sweep


def _pythonpath() -> str:
    """The repository root first, so that ``-m experiments.sweep`` imports from any cwd."""
    return os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))


def point_command(sweep: Sweep, point: Point, workdir: pathlib.Path, cache: str | None) -> list[str]:
    """The process that trains and measures one point (run with ``_pythonpath()``)."""
    cmd = [sys.executable, "-m", "experiments.sweep", str(sweep.file),
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
    env = {**os.environ, "PYTHONPATH": _pythonpath(), PARENT_ENV: str(os.getpid())}
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
    """One cluster job: ``template`` with {cmd}, {name}, {workdir} and {log} filled in; {cmd}
    sets PYTHONPATH itself (``env``), as the job may start in any directory."""
    directory = point_dir(workdir, point)
    directory.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["env", f"PYTHONPATH={_pythonpath()}",
                          *point_command(sweep, point, workdir, cache)])
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
    from experiments import sweep_report
    results = [json.loads((point_dir(workdir, p) / RESULT).read_text(encoding="utf-8"))
               for p in sweep.points if status(workdir, p) == "finished"]
    if results:
        sweep_report.write_all(results, workdir, sweep.file, sweep.measure)
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.sweep", description=__doc__,
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
        cache = None if args.no_compilation_cache else str(pathlib.Path(
            args.compilation_cache or os.environ.get("JAX_COMPILATION_CACHE_DIR")
            or workdir / "jax_cache").absolute())
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
