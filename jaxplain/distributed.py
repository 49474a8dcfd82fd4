"""Multi-process jobs through ``jax.distributed``, the engine JAX clusters already use.

Nothing here starts a process or a server of its own: :func:`initialize` calls
:func:`jax.distributed.initialize`, which detects the cluster it runs in (Slurm, Open MPI, Cloud TPU, ...)
or takes an explicit coordinator, process count and process id for a job started by hand. It runs only
when asked (``--distributed`` on the commands); a program that never calls it is one process.

Each process then works on its own parts of the input (:func:`jaxplain.jobs.parts_for_process`) and
writes its own output parts; the processes meet only where a computation needs them all (a bank
sharded across hosts, the final manifest), through :func:`allgather` and :func:`barrier`.
"""

from __future__ import annotations

import io
import os

import jax
import numpy as np

from jaxplain.errors import InputError

ENV_COORDINATOR = "JAXPLAIN_COORDINATOR"
ENV_NUM_PROCESSES = "JAXPLAIN_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXPLAIN_PROCESS_ID"


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: list[int] | None = None,
    timeout: int = 300,
) -> None:
    """Join a multi-process job: :func:`jax.distributed.initialize`, once, before any computation.

    Args:
      coordinator_address: ``host:port`` of process 0's coordinator; default ``$JAXPLAIN_COORDINATOR``, or
        JAX's cluster auto-detection when neither is set.
      num_processes: processes in the job (default ``$JAXPLAIN_NUM_PROCESSES`` or auto-detected).
      process_id: this process's index (default ``$JAXPLAIN_PROCESS_ID`` or auto-detected).
      local_device_ids: the devices this process uses (default: all of its local devices).
      timeout: seconds to wait for every process to join.

    A second call in the same process does nothing.
    """
    if jax.distributed.is_initialized():
        return
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR)
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            local_device_ids=local_device_ids,
            initialization_timeout=timeout,
        )
    except (ValueError, RuntimeError) as e:
        raise InputError(
            f"cannot join a jax.distributed job ({str(e).splitlines()[0] if str(e) else type(e).__name__}); outside "
            f"a cluster JAX detects, set ${ENV_COORDINATOR} (host:port of process 0), ${ENV_NUM_PROCESSES} and "
            f"${ENV_PROCESS_ID}"
        ) from None


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InputError(f"${name}={value!r}: expected an integer") from None


def process_index() -> int:
    """This process's index in the job (0 for a single process)."""
    return jax.process_index()


def process_count() -> int:
    """The number of processes in the job (1 for a single process)."""
    return jax.process_count()


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (nothing to wait for in one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def allgather(arrays: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Every process's ``arrays`` (a dict of NumPy arrays of any shapes, possibly different on each
    process), as a list in process order. In one process: ``[arrays]``.

    The dicts travel as ``.npz`` bytes (numbers only: nothing is pickled), padded to the longest, through
    :func:`jax.experimental.multihost_utils.process_allgather`.
    """
    if jax.process_count() == 1:
        return [arrays]
    from jax.experimental import multihost_utils

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = np.frombuffer(buf.getvalue(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.asarray([data.size], np.int64))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: data.size] = data
    everyone = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
    out = []
    for row, size in zip(everyone, sizes):
        with np.load(io.BytesIO(row[:size].tobytes()), allow_pickle=False) as z:
            out.append({k: z[k] for k in z.files})
    return out
