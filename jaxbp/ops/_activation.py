"""Elementwise activations ``a = f(z)``, backward ``δz = δa ⊙ f'(z)``.

docs/derivation.md §2 (``δz^l = δa^l ⊙ f'(z^l)``, from the source's "DNN"). Each saves the smallest
residual that determines ``f'(z)``: a boolean mask for the piecewise-linear
ones, the output ``a`` for sigmoid (``f' = a(1 − a)``) and tanh (``f' = 1 − a²``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxbp.ops import _checks
from jaxbp.ops._recipe import Check, Rule, op, saved


def _relu_forward(z):
    # `where`, not `maximum`: JAX's relu'(0) is 0; maximum's derivative at 0 is 1/2.
    # NaN passes through (as jax.nn.relu and torch.relu), its gradient does not
    # (jax.nn.relu's is 0 there): a diverging run must reach the non-finite guard.
    a = jnp.where(z > 0, z, jnp.where(jnp.isnan(z), lax.stop_gradient(z), 0))
    return a, saved(z > 0)


def _relu_backward(res, g):
    (mask,) = res
    return (jnp.where(mask, g, jnp.zeros_like(g)),)


def _leaky_relu_forward(z, *, negative_slope):
    # `>=` as in jax.nn.leaky_relu: the derivative at 0 is 1.
    return jnp.where(z >= 0, z, negative_slope * z), saved(z >= 0)


def _leaky_relu_backward(res, g, *, negative_slope):
    (mask,) = res
    return (jnp.where(mask, g, negative_slope * g),)


def _sigmoid_forward(z):
    a = jax.nn.sigmoid(z)
    return a, a


def _sigmoid_backward(a, g):
    return (g * a * (1 - a),)


def _tanh_forward(z):
    a = jnp.tanh(z)
    return a, a


def _tanh_backward(a, g):
    return (g * (1 - a * a),)


_relu = Rule(_relu_forward, _relu_backward)
_leaky_relu = Rule(_leaky_relu_forward, _leaky_relu_backward)
_sigmoid = Rule(_sigmoid_forward, _sigmoid_backward)
_tanh = Rule(_tanh_forward, _tanh_backward)


@op
def relu(z):
    """``max(z, 0)``; backward ``δz = δa ⊙ [z > 0]`` (so relu'(0) = 0, as in JAX).

    NaN propagates (``relu(nan) = nan``), with gradient 0 there, as ``jax.nn.relu``.

    Args: z: any shape, floating. Saves the boolean mask ``z > 0``.
    """
    _checks.floating("z", z)
    return _relu(z)


@op
def sigmoid(z):
    """``a = 1 / (1 + e^{−z})``; backward ``δz = δa ⊙ a ⊙ (1 − a)``.

    Args: z: any shape, floating. Saves the output ``a``.
    """
    _checks.floating("z", z)
    return _sigmoid(z)


@op
def tanh(z):
    """``a = tanh(z)``; backward ``δz = δa ⊙ (1 − a²)``.

    Args: z: any shape, floating. Saves the output ``a``.
    """
    _checks.floating("z", z)
    return _tanh(z)


@op
def leaky_relu(z, negative_slope=0.01):
    """``z`` where ``z ≥ 0``, else ``negative_slope·z``; backward
    ``δz = δa ⊙ (1 if z ≥ 0 else negative_slope)`` (as ``jax.nn.leaky_relu``,
    NaN included: it propagates, with gradient ``negative_slope·δa``).

    Args: z: any shape, floating; negative_slope: a Python number.
    Saves the boolean mask ``z ≥ 0``.
    """
    _checks.floating("z", z)
    return _leaky_relu(z, negative_slope=_checks.number("negative_slope", negative_slope))


__all__ = ["relu", "leaky_relu", "sigmoid", "tanh"]
CHECKS = {name: Check(name, lambda n: n((3, 4, 6, 5)), (0,)) for name in __all__}
