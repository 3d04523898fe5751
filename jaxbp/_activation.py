"""Elementwise activations ``a = f(z)``, backward ``δz = δa ⊙ f'(z)``.

docs/derivation.md §2 (``δz^l = δa^l ⊙ f'(z^l)``, from the source's "DNN"). Each saves the smallest
residual that determines ``f'(z)``: a boolean mask for the piecewise-linear
ones, the output ``a`` for sigmoid (``f' = a(1 − a)``) and tanh (``f' = 1 − a²``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxbp import _checks
from jaxbp._op import saved, with_twin


def _relu(z):
    # `where`, not `maximum`: JAX's relu'(0) is 0; maximum's derivative at 0 is 1/2.
    # NaN passes through (as jax.nn.relu and torch.relu), its gradient does not
    # (jax.nn.relu's is 0 there): a diverging run must reach the non-finite guard.
    return jnp.where(z > 0, z, jnp.where(jnp.isnan(z), lax.stop_gradient(z), 0))


def _relu_fwd(z):
    return _relu(z), saved(z > 0)[0]


def _relu_bwd(mask, g):
    return (jnp.where(mask, g, jnp.zeros_like(g)),)


def _sigmoid(z):
    return jax.nn.sigmoid(z)


def _sigmoid_fwd(z):
    a = _sigmoid(z)
    return a, a


def _sigmoid_bwd(a, g):
    return (g * a * (1 - a),)


def _tanh(z):
    return jnp.tanh(z)


def _tanh_fwd(z):
    a = _tanh(z)
    return a, a


def _tanh_bwd(a, g):
    return (g * (1 - a * a),)


def _leaky_relu(negative_slope, z):
    # `>=` as in jax.nn.leaky_relu: the derivative at 0 is 1.
    return jnp.where(z >= 0, z, negative_slope * z)


def _leaky_relu_fwd(negative_slope, z):
    return _leaky_relu(negative_slope, z), saved(z >= 0)[0]


def _leaky_relu_bwd(negative_slope, mask, g):
    return (jnp.where(mask, g, negative_slope * g),)


_relu_vjp = jax.custom_vjp(_relu)
_relu_vjp.defvjp(_relu_fwd, _relu_bwd)
_sigmoid_vjp = jax.custom_vjp(_sigmoid)
_sigmoid_vjp.defvjp(_sigmoid_fwd, _sigmoid_bwd)
_tanh_vjp = jax.custom_vjp(_tanh)
_tanh_vjp.defvjp(_tanh_fwd, _tanh_bwd)
_leaky_relu_vjp = jax.custom_vjp(_leaky_relu, nondiff_argnums=(0,))
_leaky_relu_vjp.defvjp(_leaky_relu_fwd, _leaky_relu_bwd)


@with_twin(_relu_vjp, _relu)
def relu(impl, z):
    """``max(z, 0)``; backward ``δz = δa ⊙ [z > 0]`` (so relu'(0) = 0, as in JAX).

    NaN propagates (``relu(nan) = nan``), with gradient 0 there, as ``jax.nn.relu``.

    Args: z: any shape, floating. Saves the boolean mask ``z > 0``.
    """
    _checks.floating("z", z)
    return impl(z)


@with_twin(_sigmoid_vjp, _sigmoid)
def sigmoid(impl, z):
    """``a = 1 / (1 + e^{−z})``; backward ``δz = δa ⊙ a ⊙ (1 − a)``.

    Args: z: any shape, floating. Saves the output ``a``.
    """
    _checks.floating("z", z)
    return impl(z)


@with_twin(_tanh_vjp, _tanh)
def tanh(impl, z):
    """``a = tanh(z)``; backward ``δz = δa ⊙ (1 − a²)``.

    Args: z: any shape, floating. Saves the output ``a``.
    """
    _checks.floating("z", z)
    return impl(z)


@with_twin(_leaky_relu_vjp, _leaky_relu)
def leaky_relu(impl, z, negative_slope=0.01):
    """``z`` where ``z ≥ 0``, else ``negative_slope·z``; backward
    ``δz = δa ⊙ (1 if z ≥ 0 else negative_slope)`` (as ``jax.nn.leaky_relu``,
    NaN included: it propagates, with gradient ``negative_slope·δa``).

    Args: z: any shape, floating; negative_slope: a Python number.
    Saves the boolean mask ``z ≥ 0``.
    """
    _checks.floating("z", z)
    return impl(_checks.number("negative_slope", negative_slope), z)
