"""The device mesh and where every array lives on it.

The mesh has two axes, ``('data', 'fsdp')``. Images are split over both: every device
trains on different rows of the global batch. Parameters, optimiser moments and BatchNorm
statistics are split over ``'fsdp'`` only (ZeRO-3 / FSDP): a leaf with at least
``min_fsdp_size`` elements is cut along its largest dimension that the axis divides;
smaller leaves (biases, norms, counters) are replicated. With ``fsdp == 1`` everything is
replicated: plain data parallelism. The step itself is ordinary ``jax.jit`` code with these
shardings on its inputs and outputs; XLA inserts the all-gathers, reduce-scatters and
all-reduces, so the BatchNorm statistics are those of the global batch (SyncBN) whatever the
device count.

Axes are ``AxisType.Auto`` (sharding propagation by the compiler): the model has no
per-device code, and explicit-mode typing would make every reshape of the batch an error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from segformer_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp")
# Leaves below this many elements are replicated: sharding a bias saves nothing and costs
# a collective. 2**14 keeps every B0 kernel above 64x256 sharded.
MIN_FSDP_SIZE = 2 ** 14


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``(data, fsdp)`` mesh over ``devices`` (all devices of all processes by default).

    ``data=-1`` takes whatever the devices leave after ``fsdp``.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if fsdp < 1 or n % fsdp:
        raise ConfigError(f"mesh.fsdp={fsdp} must be a positive divisor of the {n} devices")
    if data == -1:
        data = n // fsdp
    if data < 1 or data * fsdp != n:
        raise ConfigError(f"mesh.data={data} x mesh.fsdp={fsdp} must equal the {n} devices")
    return jax.make_mesh((data, fsdp), MESH_AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device of the mesh."""
    return NamedSharding(mesh, P(MESH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def leaf_spec(shape: Sequence[int], fsdp: int, min_size: int = MIN_FSDP_SIZE) -> P:
    """The partition of one state leaf: its largest dimension divisible by ``fsdp``, or none."""
    if fsdp == 1 or math.prod(shape) < min_size:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp == 0:
            return P(*[("fsdp" if d == dim else None) for d in range(len(shape))])
    return P()


def state_shardings(abstract_state: Any, mesh: Mesh, min_size: int = MIN_FSDP_SIZE) -> Any:
    """A ``NamedSharding`` for every leaf of a (shape-only) train state.

    The rule depends on the shape alone, so a parameter and its Adam moments are always
    split the same way.
    """
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, leaf_spec(x.shape, fsdp, min_size)),
                        abstract_state)


def process_rows(sharding: NamedSharding, global_batch_size: int) -> range:
    """The rows of a global batch that this process's devices hold under ``sharding``.

    This process must supply exactly these rows to ``make_array_from_process_local_data``;
    they are contiguous for any mesh ``jax.make_mesh`` builds.
    """
    index_map = sharding.addressable_devices_indices_map((global_batch_size,))
    spans = sorted({(s[0].start or 0, global_batch_size if s[0].stop is None else s[0].stop)
                    for s in index_map.values()})
    start, stop = spans[0][0], spans[0][1]
    for lo, hi in spans[1:]:
        if lo != stop:
            raise ValueError(f"this process's batch rows are not contiguous: {spans}")
        stop = hi
    return range(start, stop)


def global_batch(local: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """One global array per field from this process's rows (``process_rows``)."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def check_batch(global_batch_size: int, mesh: Mesh, key: str = "batch_size") -> None:
    devices = mesh.devices.size
    if global_batch_size % devices:
        raise ConfigError(f"config {key}={global_batch_size} must be a multiple of the "
                          f"{devices} devices of the mesh (data={mesh.shape['data']} x "
                          f"fsdp={mesh.shape['fsdp']})")
