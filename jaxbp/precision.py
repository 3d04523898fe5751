"""The precision policy: which dtype parameters, computation and outputs use.

Built once from a name (``--dtype``) and passed down; nothing below it
rediscovers precision. The ops' own rule (docs/derivation.md §8) is the only
other one: an op promotes its floating arguments together (JAX's type
promotion), losses and batch-norm statistics are computed in at least float32,
and every gradient has its argument's dtype.

=========== ========== ========= ==========================================
name        params     compute   outputs (logits into the loss, statistics)
=========== ========== ========= ==========================================
float32     float32    float32   float32
bfloat16    float32    bfloat16  float32 (mixed precision: float32 master weights)
float64     float64    float64   float64 (needs ``jax_enable_x64``)
=========== ========== ========= ==========================================
"""
from __future__ import annotations

import typing

import jax
import jax.numpy as jnp

NAMES = ("float32", "bfloat16", "float64")


class Policy(typing.NamedTuple):
    params: jnp.dtype
    compute: jnp.dtype
    output: jnp.dtype

    @classmethod
    def named(cls, name):
        if name not in NAMES:
            raise ValueError(f"dtype must be one of {', '.join(NAMES)}, got {name!r}")
        if name == "float64" and not jax.config.jax_enable_x64:
            raise ValueError("dtype float64 needs jax_enable_x64 (set JAX_ENABLE_X64=1)")
        dt = jnp.dtype(name)
        return cls(jnp.dtype(jnp.float32) if name == "bfloat16" else dt, dt, jnp.promote_types(dt, jnp.float32))

    def stored(self, tree):
        """Parameters (and state) as kept and updated."""
        return jax.tree.map(lambda a: a.astype(self.params), tree)

    def computed(self, tree):
        """Parameters or inputs as the model computes with them: one cast per step,
        at the model's edge, not one per layer call."""
        return jax.tree.map(lambda a: a.astype(self.compute), tree)


def enable(name):
    """What a command line does before building a policy: float64 needs x64."""
    if name == "float64":
        jax.config.update("jax_enable_x64", True)
