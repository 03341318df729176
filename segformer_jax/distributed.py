"""Joining a multi-process (multi-host) run: ``jax.distributed.initialize`` when there is one.

Three ways in, in this order:

1. Explicit flags (any GPU cluster, or several processes on one machine):
   ``--coordinator_address HOST:PORT --num_processes N --process_id I``.
2. ``--distributed``: let JAX detect the cluster (Cloud TPU pod slices, SLURM, Open MPI,
   Kubernetes) from the environment.
3. Automatically, without flags, inside a SLURM step with more than one task
   (``srun``: ``SLURM_NTASKS`` > 1) or on a multi-host TPU slice (``TPU_WORKER_HOSTNAMES``
   lists more than one host): JAX reads the coordinator, the process count and this
   process's id from those variables.

Anything else is a single-process run and nothing is initialised.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax

from segformer_jax.errors import ConfigError


def cluster_detected(environ: Mapping[str, str] = os.environ) -> str | None:
    """The multi-process environment JAX will detect by itself, or None."""
    if environ.get("SLURM_JOB_ID") and int(environ.get("SLURM_NTASKS", "1") or 1) > 1:
        return "SLURM"
    hosts = [h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(hosts) > 1:
        return "TPU pod slice"
    return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, force: bool = False,
               environ: Mapping[str, str] = os.environ) -> bool:
    """Initialises ``jax.distributed`` when the run is multi-process; returns whether it did.

    Call before anything touches a device.
    """
    given = {"--coordinator_address": coordinator_address, "--num_processes": num_processes,
             "--process_id": process_id}
    if any(v is not None for v in given.values()):
        missing = [k for k, v in given.items() if v is None]
        if missing:
            raise ConfigError(f"{', '.join(missing)} missing: --coordinator_address, "
                              "--num_processes and --process_id go together")
        if not 0 <= process_id < num_processes:
            raise ConfigError(f"--process_id {process_id} is not in 0..{num_processes - 1}")
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=num_processes, process_id=process_id)
        return True
    if force or cluster_detected(environ):
        jax.distributed.initialize()
        return True
    return False
