"""Writing a file so that a reader, a restarted run or a crash never sees half of it.

One convention for every file the package writes in place of an older one (a workdir's
``config.json``, metrics, robustness tables, a tiled mask, the sweeps' records): the new
content goes to ``.NAME.tmp-PID`` beside the file, then one ``os.replace`` puts it in place.
A failure removes the temporary file and leaves the old one as it was. (Directories — model
checkpoints, Hub exports, export artefacts — are staged in a temporary directory and renamed
the same way by their writers.)
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from collections.abc import Iterator


def temporary_name(path: str | os.PathLike) -> pathlib.Path:
    """The temporary file ``path``'s new content is written to: hidden, beside it, per process."""
    path = pathlib.Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Yields the temporary path to write; on success it replaces ``path`` in one rename, on
    an exception it is removed and ``path`` is untouched."""
    path = pathlib.Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """``path`` replaced by ``data`` (text as UTF-8) in one rename."""
    with replacing(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
