"""Data parallelism on JAX's SPMD engine: a 1-D ``("batch",)`` mesh over the
devices of every process, the batch sharded along it, the state replicated."""
from __future__ import annotations

import jax
import numpy as np


def make_mesh(cfg):
    """A 1-D mesh ``("batch",)`` over the first ``cfg.devices`` devices (all processes')."""
    return jax.sharding.Mesh(np.array(jax.devices()[:cfg.num_devices()]), ("batch",))


def replicated(mesh):
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def replicate(tree, mesh):
    """Place a pytree of host or device arrays, identical on every process, replicated."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda a: jax.make_array_from_callback(np.shape(a), sharding,
                                                               lambda i, a=np.asarray(fetch(a)): a[i]), tree)


def batched(mesh, axis=0):
    """Arrays split along ``axis`` over the mesh's ``"batch"`` axis."""
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*[None] * axis, "batch"))


def shard_batch(mesh, *arrays, axis=0):
    """Global arrays split along ``axis`` over the mesh. Every process passes the
    same global batch and contributes only its own rows (its shard of the data)."""
    sharding = batched(mesh, axis)
    p, count = jax.process_index(), jax.process_count()
    out = []
    for a in arrays:
        rows = a.shape[axis] // count
        local = np.take(a, np.arange(p * rows, (p + 1) * rows), axis=axis)
        out.append(jax.make_array_from_process_local_data(sharding, local, a.shape))
    return out


def fetch(x):
    """A device value as numpy, also when it is spread over several processes
    (replicated values are read from this process's copy)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


class PeerError(RuntimeError):
    """A multi-process run lost (or never found) one of its processes."""


def join(coordinator, num_processes, process_id, timeout=60):
    """Join a run of ``num_processes`` processes (``jax.distributed``) within
    ``timeout`` seconds, and declare a process dead after ``timeout`` seconds
    without its heartbeat (JAX's defaults: 300 s and 100 s, in which a run whose
    peer died shows nothing). Raises :class:`PeerError` when the others do not
    join in time."""
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id, initialization_timeout=timeout,
                                   heartbeat_timeout_seconds=timeout, shutdown_timeout_seconds=timeout)
    except Exception as e:  # JAX's own error: a deadline, a refused connection
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PeerError(f"process {process_id} of {num_processes}: the other processes did not join at "
                        f"{coordinator} within {timeout} s ({first[:200]})") from None
