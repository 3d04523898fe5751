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
