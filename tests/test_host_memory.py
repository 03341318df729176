"""``host_memory.keep_freed_memory``: freed blocks above glibc's mmap threshold are kept, so
allocating the same large buffer again makes no page fault (what XLA:CPU does every step)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

PROBE = """
import ctypes, json, resource
from segformer_jax import host_memory
kept = host_memory.keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
faults = []
for _ in range(4):   # as XLA:CPU allocates: plain malloc (numpy would ask for huge pages)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(64 << 20)   # 64 MiB: above glibc's largest mmap threshold
    ctypes.memset(block, 1, 64 << 20)
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"kept": kept, "faults": faults}))
"""


def _probe(malloc: str) -> dict:
    env = dict(os.environ, SEGFORMER_MALLOC=malloc)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="glibc's mallopt")
def test_kept_memory_is_not_faulted_in_again():
    """64 MiB is 16 384 pages of 4 KiB: with glibc's defaults every allocation faults them
    all in again (munmap on free); kept, only the first does (a few pages of slack allowed
    for the interpreter's own allocations)."""
    system, kept = _probe("system"), _probe("keep")
    assert system["kept"] is False and kept["kept"] is True
    pages = (64 << 20) // 4096
    assert min(system["faults"][1:]) >= pages // 2
    assert max(kept["faults"][1:]) < pages // 100
