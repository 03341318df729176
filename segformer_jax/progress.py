"""Progress lines: the trainer's step line, and a ``report(done, total)`` for the commands
that go through a known number of items (evaluated images, predicted windows).

Both print one line refreshed in place on a terminal and whole lines in a log file (every
tenth item, and the last, for ``reporter``), so a log stays readable.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator


class Progress:
    """Step, loss, learning rate, images/s and ETA: one refreshed line on a terminal, one
    line per log step otherwise (log files).

    Images/s and the ETA count training alone, as big_vision's ``Chrono`` does: from the
    end of the run's first step (which compiles the program: ``first_step_done``) on,
    without the time spent in ``paused()`` blocks (evaluations, checkpoint writes).
    """

    def __init__(self, total: int, start: int, batch_size: int, enabled: bool = True,
                 clock: Callable[[], float] = time.perf_counter):
        self.total, self.start, self.batch = total, start, batch_size
        self.enabled = enabled
        self.tty = sys.stdout.isatty()
        self.clock = clock
        self.timed_from: int | None = None   # the step after which the clock runs
        self.t0 = 0.0
        self.excluded = 0.0

    def first_step_done(self, step: int) -> None:
        self.timed_from, self.t0, self.excluded = step, self.clock(), 0.0

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time inside is not training time."""
        begin = self.clock()
        try:
            yield
        finally:
            if self.timed_from is not None:
                self.excluded += self.clock() - begin

    def update(self, step: int, loss: float, lr: float) -> str:
        done = 0 if self.timed_from is None else step - self.timed_from
        if done > 0:
            elapsed = max(self.clock() - self.t0 - self.excluded, 1e-9)
            eta = int((self.total - step) * elapsed / done)
            speed = f"{done * self.batch / elapsed:6.1f} img/s  ETA {eta // 60:d}:{eta % 60:02d}"
        else:
            speed = "   ... img/s  ETA -:-- (compiling)"
        line = f"step {step:>6d}/{self.total}  loss {loss:.4f}  lr {lr:.2e}  {speed}"
        if self.enabled:
            print("\r" + line if self.tty else line, end="" if self.tty else "\n", flush=True)
        return line


def reporter(describe: Callable[[int, int, float], str]) -> Callable[[int, int], None]:
    """``report(done, total)`` printing ``describe(done, total, items per second)`` on stderr:
    in place on a terminal, every tenth item and the last one in a log."""
    start = time.perf_counter()
    tty = sys.stderr.isatty()

    def report(done: int, total: int) -> None:
        if not (tty or done == total or done % max(1, total // 10) == 0):
            return
        line = describe(done, total, done / max(time.perf_counter() - start, 1e-9))
        print(("\r" + line) if tty else line, end="\n" if not tty or done == total else "",
              file=sys.stderr, flush=True)

    return report


def bar(label: str, width: int = 30) -> Callable[[int, int], None]:
    """``reporter`` drawing ``label [#####-----] 50% 10/20 (rate/s)``."""
    def describe(done: int, total: int, rate: float) -> str:
        filled = width * done // max(total, 1)
        return (f"{label} [{'#' * filled}{'-' * (width - filled)}] {100 * done // max(total, 1):3d}% "
                f"{done}/{total} ({rate:.1f}/s)")
    return reporter(describe)
