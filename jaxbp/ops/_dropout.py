"""Inverted dropout (docs/derivation.md §9).

    forward   y = x ⊙ m / (1 − p),   m_i ~ Bernoulli(1 − p)
    backward  δx = δy ⊙ m / (1 − p)

The mask is drawn from ``key`` in the front, outside the differentiated
function, so the twin and the custom rule see the same mask; it is the only
residual (one byte per entry).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxbp.ops import _checks
from jaxbp.ops._recipe import Check, Rule, bitwise_where, op, pack_mask, saved, unpack_mask


def _forward(x, keep, *, rate):
    return jnp.where(keep, x / (1 - rate), 0).astype(x.dtype), saved(pack_mask(keep))


def _backward(res, g, *, rate):
    (keep,) = res
    scaled = (g / (1 - rate)).astype(g.dtype)
    return bitwise_where(unpack_mask(keep, g.shape), scaled, jnp.zeros_like(scaled)), None


_rule = Rule(_forward, _backward)


@op
def dropout(x, rate, key):
    """Zero each entry with probability ``rate`` and scale the others by
    ``1/(1 − rate)`` (training-time dropout; for evaluation do not call it).

    Backward ``δx = δy ⊙ m / (1 − rate)`` with the same mask ``m``. Saves ``m``, one bit per entry.

    Args:
      x: any shape, floating.
      rate: a Python number in ``[0, 1)``.
      key: a JAX PRNG key (``jax.random.key`` or ``PRNGKey``).
    """
    _checks.floating("x", x)
    rate = _checks.number("rate", rate)
    if not 0 <= rate < 1:
        raise ValueError(f"rate must be in [0, 1), got {rate}")
    if not (hasattr(key, "dtype") and (jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
                                       or (key.dtype == jnp.uint32 and key.shape == (2,)))):
        raise TypeError(f"key must be a JAX PRNG key, got {getattr(key, 'dtype', type(key).__name__)} "
                        f"of shape {getattr(key, 'shape', ())}")
    # p as float32: a Python float would draw float64 uniforms under x64, another mask.
    keep = jax.random.bernoulli(key, jnp.float32(1 - rate), x.shape)
    return _rule(x, keep, rate=rate)


__all__ = ["dropout"]
CHECKS = {"dropout": Check("dropout", lambda n: n((3, 4, 6, 5)) + (0.3, jax.random.key(0)), (0,))}
