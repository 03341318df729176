"""Host memory: let glibc keep the memory XLA:CPU frees, so a step does not fault it back in.

XLA:CPU allocates each execution's temporaries (2 GiB for B0's classification step at batch
32) and its outputs with ``malloc`` and frees them when the step ends. glibc serves blocks
above 32 MiB with a fresh ``mmap`` and returns them with ``munmap``, so every step touches
its whole working set as new pages: 524 000 page faults and 0.9 s of kernel time per B0
classification step on this project's 2-core machine (1.61 s a step). ``keep_freed_memory``
makes glibc serve every block from its heap (``M_MMAP_MAX`` 0), keep up to 2 GiB of freed
space at its top (``M_TRIM_THRESHOLD``) and use one arena (``M_ARENA_MAX`` 1: XLA's pool
threads would otherwise each grow their own); the same step then makes no page fault and
takes 1.21 s. The cost: the process keeps its peak memory until it exits.

A command-line choice, made by ``train``, ``evaluate`` and ``predict`` before JAX starts its
threads, never on import: a library has no business changing its host's allocator. Set
``SEGFORMER_MALLOC=system`` to keep glibc's defaults. Elsewhere than Linux with glibc it does
nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD = -1   # glibc's malloc.h
M_MMAP_MAX = -4
M_ARENA_MAX = -8
KEEP = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1), (M_ARENA_MAX, 1))


def keep_freed_memory(announce: bool = False) -> bool:
    """Sets glibc's ``mallopt`` as the module docstring says; whether it was set (False on
    other C libraries, or with ``SEGFORMER_MALLOC=system``). ``announce``: print which."""
    kept = False
    if (os.environ.get("SEGFORMER_MALLOC", "keep") != "system" and platform.system() == "Linux"
            and platform.libc_ver()[0] == "glibc"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        kept = all(libc.mallopt(option, value) == 1 for option, value in KEEP)
    if announce:
        print("host memory: " + ("glibc keeps freed memory (segformer_jax.host_memory; "
                                 "SEGFORMER_MALLOC=system for its defaults)" if kept
                                 else "the C library's defaults"))
    return kept
