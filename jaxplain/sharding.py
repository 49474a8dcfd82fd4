"""Device meshes and the movement of host rows onto them, in one process or several (``jax.distributed``).

jaxplain shards its compute stages along one mesh axis at a time:

* :data:`DATA` — pairs (or images, or texts) split over devices; the model, the bank and the class
  embeddings replicated (the encoders, the solver, the verifier);
* :data:`BANK` — a bank's rows split over devices; the pairs or queries replicated (the exact index and
  the oracle), each device searching its rows and the per-device bests merged.

Both are 1-D meshes over the same devices, made by :func:`make_mesh`; a stage takes the mesh as an
optional ``mesh=`` argument (``None``: today's single-device code path).

Two ways to put host rows on a mesh:

* :func:`shard_rows` — each process feeds *its own* rows (its share of the pairs): the global array is
  the concatenation of every process's local rows, in process order. Every process must pass the same
  number of rows (pad to a common bucket first; the returned mask marks the real ones), and reads its
  own rows of a result back with :func:`local_rows`.
* :func:`shard_global` — every process holds the *whole* array (a bank, e.g. memory-mapped) and each
  device takes its slice of it.

:func:`replicate` puts a pytree (params, classes) whole on every device. In one process all of this is
plain ``device_put`` with a sharding; the multi-process forms cost nothing extra there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxplain.batching import pad_edge

DATA = "data"  # the axis pairs, images and texts are split along
BANK = "bank"  # the axis a bank's rows are split along


def make_mesh(axis: str = DATA, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh ``(axis,)`` over ``devices`` (default: every device of every process, ordered by process,
    so each process's devices are one contiguous block of the axis and :func:`shard_rows` lays the
    processes' rows out in process order).

    The axis is ``Auto`` (the classic sharding-propagation behaviour): with ``Explicit`` axes, the default
    of ``jax.make_mesh`` in this JAX, a gather of a replicated table by a sharded index fails. The mesh is
    built from the device list as given (``jax.make_mesh`` may reorder devices for a physical topology,
    which could interleave processes).
    """
    if devices is None:
        devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    return Mesh(np.asarray(list(devices), dtype=object), (axis,), axis_types=(jax.sharding.AxisType.Auto,))


def process_index() -> int:
    """This process's index in a ``jax.distributed`` job (0 in a single process)."""
    return jax.process_index()


def process_count() -> int:
    """The number of processes of a ``jax.distributed`` job (1 in a single process)."""
    return jax.process_count()


def row_sharding(mesh: Mesh, axis: str = DATA) -> NamedSharding:
    """Rows (axis 0) split over ``axis``, the other dimensions whole (and replicated over other mesh axes)."""
    return NamedSharding(mesh, PartitionSpec(axis))


def local_blocks(mesh: Mesh, axis: str = DATA) -> int:
    """How many of the ``mesh.shape[axis]`` row blocks of a row-sharded array this process's devices hold."""
    i = mesh.axis_names.index(axis)
    me = jax.process_index()
    positions = {idx[i] for idx, d in np.ndenumerate(mesh.devices) if d.process_index == me}
    if not positions:
        raise ValueError(f"process {me} holds no device of the mesh {mesh}")
    return len(positions)


def local_row_count(n: int, mesh: Mesh, axis: str = DATA) -> int:
    """``n`` local rows rounded up to a multiple of this process's row blocks (:func:`local_blocks`): the
    fewest rows :func:`shard_rows` can feed. In one process, ``n`` rounded up to the axis size."""
    b = local_blocks(mesh, axis)
    return -(-n // b) * b


class Rows(NamedTuple):
    """Rows sharded over a mesh axis by :func:`shard_rows`.

    Attributes:
      arrays: the pytree of global arrays ``[P, ...]``, rows split over the axis, where ``P`` is the padded
        local row count times the number of processes feeding the axis.
      valid: ``[P]`` bool, sharded as the rows: False on padding rows.
      count: the number of real rows this process fed (before padding).
    """

    arrays: Any
    valid: jax.Array
    count: int


def shard_rows(arrays: Any, mesh: Mesh, axis: str = DATA, rows: int | None = None) -> Rows:
    """This process's rows of a pytree, as global arrays split over ``axis``.

    Args:
      arrays: a pytree of host arrays ``[n, ...]`` (``n ≥ 1``, the same ``n`` for every leaf): this process's
        rows. In a multi-process job the global array is the concatenation of the processes' rows in process
        order, so process ``p``'s row ``j`` is global row ``p · rows + j``.
      mesh: the mesh; axis: the mesh axis the rows are split along (replicated over any other axis).
      rows: pad the local rows to this many (a multiple of :func:`local_blocks`; default: the fewest,
        :func:`local_row_count`). Every process of a job must pass the same ``rows`` (pad to a common
        bucket): the collectives of a sharded function need equal shapes everywhere.

    Padding repeats the last row (as :func:`jaxplain.batching.pad_edge`), so padded rows are valid inputs of
    any function; :attr:`Rows.valid` tells them apart.
    """
    leaves = [np.asarray(a) for a in jax.tree.leaves(arrays)]
    sizes = {len(a) for a in leaves}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"shard_rows needs arrays with the same number (≥ 1) of rows, got {sorted(sizes)}")
    (n,) = sizes
    rows = local_row_count(n, mesh, axis) if rows is None else rows
    blocks = local_blocks(mesh, axis)
    if rows < n or rows % blocks:
        raise ValueError(f"rows={rows} must be ≥ {n} (the local rows) and a multiple of {blocks} (the local blocks)")
    sharding = row_sharding(mesh, axis)
    total = rows * mesh.shape[axis] // blocks

    def put(a):
        return jax.make_array_from_process_local_data(sharding, pad_edge(np.asarray(a), rows), (total, *a.shape[1:]))

    valid = np.arange(rows) < n
    return Rows(jax.tree.map(put, arrays), put(valid), n)


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a row-sharded global array ``[P, ...]`` (the inverse of :func:`shard_rows`), in
    order, as a host array. In one process: all of ``x``."""
    if x.is_fully_addressable:
        return np.asarray(x)
    starts = {}
    for s in x.addressable_shards:
        starts.setdefault(s.index[0].start or 0, s.data)
    return np.concatenate([np.asarray(starts[k]) for k in sorted(starts)])


def shard_global(x: np.ndarray, mesh: Mesh, axis: str, rows: int) -> jax.Array:
    """A host array ``[n, ...]`` that every process holds whole (it may be memory-mapped: each device reads
    only its slice) as a global array ``[rows, ...]`` split over ``axis``, zero-padded after row ``n``.

    ``rows`` must be a multiple of ``mesh.shape[axis]`` and at least ``n``.
    """
    n = len(x)
    if rows < n or rows % mesh.shape[axis]:
        raise ValueError(f"rows={rows} must be ≥ {n} and a multiple of {mesh.shape[axis]} (the axis size)")

    def block(index):
        s = index[0]
        start, stop = s.start or 0, rows if s.stop is None else s.stop
        got = np.asarray(x[min(start, n) : min(stop, n)])
        pad = np.zeros((stop - start - len(got), *x.shape[1:]), x.dtype)
        return np.concatenate([got, pad]) if len(pad) else got

    return jax.make_array_from_callback((rows, *x.shape[1:]), row_sharding(mesh, axis), block)


def spans_processes(mesh: Mesh) -> bool:
    """Whether ``mesh`` holds devices of other processes (work on it is then collective: every process calls)."""
    return any(d.process_index != jax.process_index() for d in mesh.devices.flat)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """A pytree whole on every device of ``mesh``. In a multi-process job every process must pass the same
    values (each one fills its own devices)."""
    sharding = NamedSharding(mesh, PartitionSpec())
    if not spans_processes(mesh):
        return jax.device_put(tree, sharding)

    def put(a):
        if isinstance(a, jax.Array) and a.sharding == sharding:
            return a
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

    return jax.tree.map(put, tree)


def max_over_processes(n: int) -> int:
    """The largest of one integer across the processes of a job (``n`` itself in a single process); every
    process must call it. For shapes the processes must agree on (a batch's token length)."""
    if jax.process_count() == 1:
        return int(n)
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.asarray(n, np.int64))))


MIN_SHARD_CHUNK = 128  # the narrowest chunk a bank split over devices is scored in


def spread_chunk(n: int, devices: int, chunk: int) -> int:
    """The chunk width for ``n`` bank rows split over ``devices``: ``chunk`` (the single-device width),
    narrowed to the power of two that holds one device's share, ``bucket(⌈n / devices⌉)``, so a bank of
    fewer than ``devices · chunk`` rows still reaches every device; never below :data:`MIN_SHARD_CHUNK` (nor
    above ``chunk``). From ``n ≥ devices · chunk / 2`` on it is ``chunk`` itself: each device then runs the
    single-device program's products, shape for shape."""
    share = max(1, -(-n // devices))
    return min(chunk, max(1 << (share - 1).bit_length(), MIN_SHARD_CHUNK))
