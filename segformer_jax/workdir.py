"""A training workdir's guards: one trainer at a time, room for its checkpoints, and the
config of every start kept.

* ``WorkdirLock``: ``WORKDIR/train.lock``, taken before the trainer writes anything. Two
  trainers on one workdir (a scheduler's requeue while the first still runs) would overwrite
  each other's checkpoints, metrics and config; the second is refused, naming the first's
  process id and host. The lock is an ``flock`` on the file, which the kernel drops when its
  process dies however it dies, so a lock left by a killed trainer on this host never
  blocks. The file's record (process id, host, start time) covers file systems whose
  ``flock`` does not reach across hosts: a record from another host blocks, and the
  message says how to clear it once no trainer runs there.
* ``check_space``: the free space a run's checkpoints need, counting what its own
  checkpoints already hold on the disk.
* ``record_start`` / ``config_changes``: ``WORKDIR/config.json`` is the config the run now
  goes on with; ``WORKDIR/config_history.jsonl`` keeps every start's config (one JSON record
  each: the step it started from, when, where), so a resume with another learning rate
  keeps the first run's config. ``RESUME_REFUSED`` is the one statement of which config
  changes a resume refuses; every other change is accepted and printed.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import pathlib
import shutil
import socket
from collections.abc import Iterator, Mapping
from typing import Any

from segformer_jax.errors import TrainingError
from segformer_jax.files import atomic_write

LOCK = "train.lock"
CONFIG_JSON = "config.json"
CONFIG_HISTORY = "config_history.jsonl"


# --------------------------------------------------------------------------------------
# One trainer per workdir


def _process_start(pid: int) -> str | None:
    """The kernel's start time of process ``pid`` (``/proc/PID/stat`` field 22), to tell a
    live trainer from a new process that reused its id; None where there is no /proc."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    now = _process_start(pid)
    return start is None or now is None or now == start


class WorkdirLock:
    """``WORKDIR/train.lock`` held from ``acquire`` to ``release`` (or the process's end).

    ``acquire`` returns a note when it took over a lock left by a trainer that is gone,
    None otherwise, and raises ``TrainingError`` when another trainer holds the workdir.
    """

    def __init__(self, workdir: str | os.PathLike):
        self.path = pathlib.Path(workdir) / LOCK
        self._fd: int | None = None

    def acquire(self) -> str | None:
        import fcntl
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES):  # ENOLCK: no flock here
                    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                    break
                raise TrainingError(self._busy(_holder(self.path))) from None
            try:  # the file we locked may have been released and removed meanwhile
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            note = self._take_over(_read_record(fd))
            record = {"pid": os.getpid(), "host": socket.gethostname(),
                      "process_start": _process_start(os.getpid()),
                      "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)  # and with it the flock
            raise
        self._fd = fd
        return note

    def _take_over(self, holder: Mapping[str, Any] | None) -> str | None:
        """What the lock's record says once its ``flock`` is ours: nothing, a trainer on this
        host that is gone (a note), or one that may still run (``TrainingError``)."""
        if not holder or holder.get("pid") == os.getpid():
            return None
        if holder.get("host") != socket.gethostname():
            raise TrainingError(self._busy(holder, other_host=True))
        try:
            pid = int(holder.get("pid", 0))
        except (TypeError, ValueError):
            pid = 0
        if pid > 0 and _alive(pid, holder.get("process_start")):
            raise TrainingError(self._busy(holder))  # a file system without working flock
        return (f"note: {self.path} was left by process {holder.get('pid')} on this host "
                f"(started {holder.get('started', '?')}), which is no longer running; "
                "taking it over")

    def _busy(self, holder: Mapping[str, Any] | None, other_host: bool = False) -> str:
        who = (f"process {holder.get('pid')} on host {holder.get('host')} (since "
               f"{holder.get('started', '?')})" if holder else "another process")
        message = (f"workdir {self.path.parent} is in use by {who}: one workdir takes one "
                   "trainer, and a second would overwrite the first's checkpoints and metrics. "
                   "Wait for it to finish, stop it, or use another --workdir")
        if other_host:
            message += (f". If no trainer runs there any more (it was killed, or the host is "
                        f"gone), delete {self.path} and start again")
        return message

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _holder(path: pathlib.Path, wait: float = 1.0) -> dict[str, Any] | None:
    """The record of a lock another process holds; it may take a moment to write it."""
    import time
    deadline = time.monotonic() + wait
    while True:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            record = _read_record(fd)
        finally:
            os.close(fd)
        if record is not None or time.monotonic() > deadline:
            return record
        time.sleep(0.05)


def _read_record(fd: int) -> dict[str, Any] | None:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "null")
    except (ValueError, UnicodeDecodeError, OSError):
        return None
    return data if isinstance(data, dict) else None


# --------------------------------------------------------------------------------------
# Room for checkpoints


def directory_bytes(path: pathlib.Path) -> int:
    """Bytes of the files under ``path`` (0 when it does not exist)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def check_space(workdir: pathlib.Path, needed_bytes: int, already_held: int = 0) -> None:
    """Refuses a run whose checkpoints cannot fit: ``needed_bytes`` is what the run's
    checkpoints hold at their peak, ``already_held`` what its checkpoints on the disk hold
    now (a resumed run replaces them rather than adding to them)."""
    free = shutil.disk_usage(workdir).free
    missing = needed_bytes - already_held
    if free < missing:
        raise TrainingError(f"workdir {workdir} has {free / 2**20:.0f} MiB free; checkpoints of "
                            f"this run need {needed_bytes / 2**20:.0f} MiB"
                            + (f", of which its checkpoints already hold {already_held / 2**20:.0f} MiB"
                               if already_held else "")
                            + "; free space or use another --workdir")


# --------------------------------------------------------------------------------------
# Every start's config, and what a resume may change

# Config keys a resume refuses to change, and why: they make the resumed run replay other
# batches or lay the optimiser's state out otherwise. The model itself is compared field by
# field with the checkpoint's own record (every SegformerConfig field: the architecture,
# the classes, drop_path_rate, ...; ``train._check_compatible``). Every other key may
# change on a resume (the learning rate and its schedule, total_steps, crops and scales,
# losses, evaluation, logging and checkpoint cadence, workers, the mesh, dtype, remat,
# scan); each change is printed and recorded in config_history.jsonl.
RESUME_REFUSED = {
    "task": "the checkpoint is of another task",
    "seed": "every batch and random number is a function of (seed, step)",
    "batch_size": "every batch is a function of (seed, step) at this batch size",
    "accumulate_steps": "the optimiser's state and the step counter count micro-batches",
    "data.name": "the checkpoint learnt another dataset's classes",
    "data.reduce_zero_label": "the checkpoint learnt the labels read the other way (k or k - 1)",
    "data.mean": "the checkpoint learnt images normalised with the other values (and its workdir's "
                 "config.json gives predict and evaluate one normalisation)",
    "data.std": "the checkpoint learnt images normalised with the other values (and its workdir's "
                "config.json gives predict and evaluate one normalisation)",
    "optimizer.no_decay": "the optimiser's state is laid out by it",
}
# optimizer.clip_grad_norm and optimizer.ema_decay may change their value, not be switched on
# or off (one more transformation in the optimiser's state; an average in the train state).
_SWITCHES = {"optimizer.clip_grad_norm": "switching gradient clipping on or off changes the "
                                          "optimiser's state",
             "optimizer.ema_decay": "switching the EMA of the weights on or off changes the "
                                    "train state (it holds the average)"}


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def config_changes(before: Mapping[str, Any], now: Mapping[str, Any]
                   ) -> tuple[list[str], list[str]]:
    """``(refused, accepted)``: one ``key: old -> new (why)`` line per changed key of two
    run configs (``run_config.to_json_data``), split by ``RESUME_REFUSED``."""
    old, new = flatten(before), flatten(now)
    refused, accepted = [], []
    for key in sorted(set(old) | set(new)):
        if key not in old or key not in new or old[key] == new[key]:
            continue  # a key one of them lacks is a config written before it existed
        line = f"{key}: {old[key]!r} -> {new[key]!r}"
        why = RESUME_REFUSED.get(key)
        if why is None and key in _SWITCHES and (float(old[key] or 0) > 0) != (float(new[key] or 0) > 0):
            why = _SWITCHES[key]
        (refused if why else accepted).append(f"{line} ({why})" if why else line)
    return refused, accepted


def history(workdir: pathlib.Path) -> Iterator[dict[str, Any]]:
    """The records of ``config_history.jsonl``, oldest first (a line cut short skipped)."""
    path = workdir / CONFIG_HISTORY
    if not path.is_file():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("config"), dict):
            yield record


def previous_config(workdir: pathlib.Path) -> dict[str, Any] | None:
    """The config the run last started with: the history's last record, or a
    ``config.json`` written before the history was kept; None for a new workdir."""
    records = list(history(workdir))
    if records:
        return records[-1]["config"]
    path = workdir / CONFIG_JSON
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def record_start(workdir: pathlib.Path, config: Mapping[str, Any], step: int) -> None:
    """Appends this start (its config, the step it starts from, when and where) to the
    history and writes ``config.json`` (atomically); a ``config.json`` written before the
    history was kept goes into the history first, so no start's config is lost."""
    path = workdir / CONFIG_HISTORY
    lines = []
    if not path.is_file() and (workdir / CONFIG_JSON).is_file():
        legacy = previous_config(workdir)
        if legacy is not None:
            lines.append({"start_step": None, "note": "config.json of a start before the "
                          "history was kept", "config": legacy})
    lines.append({"start_step": int(step), "host": socket.gethostname(), "pid": os.getpid(),
                  "time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                  "config": dict(config)})
    with open(path, "a", encoding="utf-8") as f:
        for record in lines:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    atomic_write(workdir / CONFIG_JSON, json.dumps(config, indent=2) + "\n")
