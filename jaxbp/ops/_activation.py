"""Activations. Elementwise ``a = f(z)``, backward ``δz = δa ⊙ f'(z)``
(docs/derivation.md §2, from the source's "DNN"); softmax and log-softmax along
an axis (§9). Each saves the smallest residual that determines the backward
pass: a mask, one bit per entry, for the piecewise-linear ones, the output ``a`` for
sigmoid (``f' = a(1 − a)``), tanh (``f' = 1 − a²``) and the softmaxes, the
input for GELU and SiLU.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from jaxbp.ops import _checks
from jaxbp.ops._recipe import Check, Rule, bitwise_where, op, pack_mask, saved, unpack_mask


RELU_KEEPS = ("mask", "output")   # what relu's rule can keep: relu(z, keep=...)


def _relu_forward(z, *, keep):
    # `where`, not `maximum`: JAX's relu'(0) is 0; maximum's derivative at 0 is 1/2.
    # NaN passes through (as jax.nn.relu and torch.relu), its gradient does not
    # (jax.nn.relu's is 0 there): a diverging run must reach the non-finite guard.
    a = jnp.where(z > 0, z, jnp.where(jnp.isnan(z), lax.stop_gradient(z), 0))
    return a, saved(pack_mask(z > 0) if keep == "mask" else a)


def _relu_backward(res, g, *, keep):
    # [a > 0] = [z > 0], NaN included (a is NaN there). A select on the output,
    # not bitwise_where, which was slower here in a train step (BENCHMARKS.md).
    (r,) = res
    if keep == "output":
        return (jnp.where(r > 0, g, jnp.zeros_like(g)),)
    return (bitwise_where(unpack_mask(r, g.shape), g, jnp.zeros_like(g)),)


def _leaky_relu_forward(z, *, negative_slope):
    # `>=` as in jax.nn.leaky_relu: the derivative at 0 is 1.
    return jnp.where(z >= 0, z, negative_slope * z), saved(pack_mask(z >= 0))


def _leaky_relu_backward(res, g, *, negative_slope):
    (mask,) = res
    return (bitwise_where(unpack_mask(mask, g.shape), g, negative_slope * g),)


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
def relu(z, *, keep="mask"):
    """``max(z, 0)``; backward ``δz = δa ⊙ [z > 0]`` (so relu'(0) = 0, as in JAX).

    NaN propagates (``relu(nan) = nan``), with gradient 0 there, as ``jax.nn.relu``.

    Args:
      z: any shape, floating.
      keep: what the rule saves for the backward pass. ``"mask"`` (default):
        ``z > 0``, one bit per entry. ``"output"``: ``a`` itself, read as
        ``[a > 0] = [z > 0]`` (docs/derivation.md §2): no memory of its own
        where the next op keeps its input anyway (a conv or dense layer, which
        keeps ``x``), 32× the mask's (float32) where nothing else keeps it;
        the models choose it so (:mod:`jaxbp.layers`).
    """
    _checks.floating("z", z)
    if not (isinstance(keep, str) and keep in RELU_KEEPS):
        raise ValueError(f"keep must be one of {', '.join(map(repr, RELU_KEEPS))}; got {keep!r}")
    return _relu(z, keep=keep)


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
    Saves the mask ``z ≥ 0``, one bit per entry.
    """
    _checks.floating("z", z)
    return _leaky_relu(z, negative_slope=_checks.number("negative_slope", negative_slope))



_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


def _gelu_forward(z, *, approximate):
    if approximate:  # 0.5 z (1 + tanh(√(2/π) (z + 0.044715 z³)))
        return 0.5 * z * (1 + jnp.tanh(_SQRT_2_OVER_PI * (z + 0.044715 * z ** 3))), (z,)
    return 0.5 * z * (1 + lax.erf(z / math.sqrt(2))), (z,)  # z Φ(z)


def _gelu_backward(res, g, *, approximate):
    (z,) = res
    if approximate:
        t = jnp.tanh(_SQRT_2_OVER_PI * (z + 0.044715 * z ** 3))
        return (g * (0.5 * (1 + t) + 0.5 * z * (1 - t * t) * _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * z * z)),)
    cdf = 0.5 * (1 + lax.erf(z / math.sqrt(2)))
    pdf = jnp.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return (g * (cdf + z * pdf),)  # Φ(z) + z φ(z)


def _silu_forward(z):
    return z * jax.nn.sigmoid(z), (z,)


def _silu_backward(res, g):
    (z,) = res
    s = jax.nn.sigmoid(z)
    return (g * s * (1 + z * (1 - s)),)  # σ(z) (1 + z (1 − σ(z)))


def _softmax_forward(z, *, axis):
    a = jnp.exp(z - lax.stop_gradient(z.max(axis=axis, keepdims=True)))
    a = a / a.sum(axis=axis, keepdims=True)
    # behind the barrier: else XLA rebuilt a in the backward pass, 1.6x the twin's time (BENCHMARKS.md)
    return a, saved(a)


def _softmax_backward(res, g, *, axis):
    (a,) = res
    return (a * (g - (g * a).sum(axis=axis, keepdims=True)),)  # a ⊙ (δa − Σ δa ⊙ a)


def _log_softmax_forward(z, *, axis):
    shifted = z - lax.stop_gradient(z.max(axis=axis, keepdims=True))
    a = shifted - jnp.log(jnp.exp(shifted).sum(axis=axis, keepdims=True))
    return a, (a,)


def _log_softmax_backward(res, g, *, axis):
    (a,) = res
    return (g - jnp.exp(a) * g.sum(axis=axis, keepdims=True),)  # δa − softmax(z) Σ δa


_gelu = Rule(_gelu_forward, _gelu_backward)
_silu = Rule(_silu_forward, _silu_backward)
_softmax = Rule(_softmax_forward, _softmax_backward)
_log_softmax = Rule(_log_softmax_forward, _log_softmax_backward)


@op
def gelu(z, approximate=False):
    """GELU, ``z Φ(z)`` (``Φ`` the standard normal CDF), or with
    ``approximate=True`` its tanh form (PyTorch's ``approximate="tanh"``;
    ``jax.nn.gelu``'s default). Backward (docs/derivation.md §9)
    ``δz = δa ⊙ (Φ(z) + z φ(z))``, or the derivative of the tanh form.

    Args: z: any shape, floating; approximate: a Python bool. Saves ``z``.
    """
    _checks.floating("z", z)
    if not isinstance(approximate, bool):
        raise TypeError(f"approximate must be a Python bool, got {approximate!r}")
    return _gelu(z, approximate=approximate)


@op
def silu(z):
    """SiLU (swish), ``z σ(z)``; backward (docs/derivation.md §9)
    ``δz = δa ⊙ σ(z) (1 + z (1 − σ(z)))``.

    Args: z: any shape, floating. Saves ``z``.
    """
    _checks.floating("z", z)
    return _silu(z)


@op
def softmax(z, axis=-1):
    """``a = e^{z} / Σ e^{z}`` along ``axis`` (stable: the maximum is subtracted);
    backward (docs/derivation.md §9) ``δz = a ⊙ (δa − Σ δa ⊙ a)``.

    Args: z: at least 1-D, floating; axis: an int. Saves the output ``a``.
    """
    _checks.floating("z", z)
    return _softmax(z, axis=_checks.nonempty_axis("z", z, _checks.axis("axis", axis, z)))


@op
def log_softmax(z, axis=-1):
    """``a = z − log Σ e^{z}`` along ``axis`` (stable); backward
    (docs/derivation.md §9) ``δz = δa − softmax(z) Σ δa``.

    Args: z: at least 1-D, floating; axis: an int. Saves the output ``a``.
    """
    _checks.floating("z", z)
    return _log_softmax(z, axis=_checks.nonempty_axis("z", z, _checks.axis("axis", axis, z)))


__all__ = ["relu", "leaky_relu", "sigmoid", "tanh", "gelu", "silu", "softmax", "log_softmax"]
CHECKS = {name: Check(name, lambda n: n((3, 4, 6, 5)), (0,)) for name in __all__}
CHECKS["relu keeping its output"] = Check("relu", lambda n: n((3, 4, 6, 5)), (0,), {"keep": "output"})
CHECKS["gelu approximate"] = Check("gelu", lambda n: n((3, 4, 6, 5)), (0,), {"approximate": True})
CHECKS["softmax axis 1"] = Check("softmax", lambda n: n((3, 4, 6, 5)), (0,), {"axis": 1})
