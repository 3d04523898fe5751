"""Batch normalization in training mode (batch statistics).

Derivation section "Batch Normalization", statistics over the ``m`` positions
of each feature (``m = N`` for ``(N, D)``, ``m = N·H·W`` for ``(N, C, H, W)``):

    μ = (1/m) Σ x_i        σ² = (1/m) Σ (x_i − μ)²        s = √(σ² + ε)
    x̂ = (x − μ) / s        y = γ ⊙ x̂ + β

    δβ = Σ δy_i            δγ = Σ δy_i ⊙ x̂_i              δx̂ = δy ⊙ γ
    δx = (1/(m·s)) (m·δx̂ − Σ δx̂ − x̂ ⊙ Σ (δx̂ ⊙ x̂))      (NOTES.md, care 5)

The returned ``mean`` and ``var`` (for running averages) are differentiated
exactly too: ``δx += δμ / m + δσ² · 2 (x − μ) / m``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxbp import _checks
from jaxbp._op import carrier, like, with_twin


def _stat_dtype(dtype):
    # Statistics in at least float32, also for float16/bfloat16 inputs.
    return jnp.promote_types(dtype, jnp.float32)


def _normalize(x, eps, axis):
    """Return ``x̂``, ``1/s``, ``μ``, ``σ²`` (keepdims), in the statistics dtype."""
    red = tuple(a for a in range(x.ndim) if a != axis)
    xs = x.astype(_stat_dtype(x.dtype))
    # Two-pass variance about a shift (the first sample of each feature), so a
    # large mean does not swamp a small spread: x − shift is exact in floating
    # point when both are close. The result does not depend on the shift.
    shift = lax.stop_gradient(xs[tuple(slice(None) if a == axis else slice(0, 1)
                                       for a in range(x.ndim))])
    d = xs - shift
    d_mean = d.mean(axis=red, keepdims=True)
    c = d - d_mean
    var = (c * c).mean(axis=red, keepdims=True)
    inv_std = lax.rsqrt(var + eps)
    return c * inv_std, inv_std, shift + d_mean, var


def _feature(v, x, axis):
    return v.reshape([-1 if a == axis else 1 for a in range(x.ndim)])


def _batch_norm(x, gamma, beta, eps, axis):
    x_hat, _, mean, var = _normalize(x, eps, axis)
    y = x_hat * _feature(gamma, x, axis) + _feature(beta, x, axis)
    return y.astype(x.dtype), mean.reshape(-1), var.reshape(-1)


def _batch_norm_fwd(x, gamma, beta, eps, axis):
    x_hat, inv_std, mean, var = _normalize(x, eps, axis)
    y = x_hat * _feature(gamma, x, axis) + _feature(beta, x, axis)
    # Residuals: x̂ and 1/s (not x), and γ.
    res = (x_hat, inv_std, gamma, carrier(beta), carrier(x))
    return (y.astype(x.dtype), mean.reshape(-1), var.reshape(-1)), res


def _batch_norm_bwd(eps, axis, res, cotangents):
    x_hat, inv_std, gamma, beta, x_proto = res
    g, g_mean, g_var = cotangents
    red = tuple(a for a in range(x_hat.ndim) if a != axis)
    m = x_hat.size // x_hat.shape[axis]
    g = g.astype(x_hat.dtype)
    dbeta = g.sum(axis=red)
    dgamma = (g * x_hat).sum(axis=red)
    dx_hat = g * _feature(gamma, x_hat, axis).astype(x_hat.dtype)
    dx = (inv_std / m) * (m * dx_hat - dx_hat.sum(axis=red, keepdims=True)
                          - x_hat * (dx_hat * x_hat).sum(axis=red, keepdims=True))
    # The statistics' own cotangents: ∂μ/∂x_i = 1/m, ∂σ²/∂x_i = 2 (x_i − μ)/m.
    dx = dx + (_feature(g_mean, x_hat, axis)
               + _feature(g_var, x_hat, axis) * 2 * x_hat / inv_std) / m
    return like((dx, dgamma, dbeta), (x_proto, gamma, beta))


_batch_norm_vjp = jax.custom_vjp(_batch_norm, nondiff_argnums=(3, 4))
_batch_norm_vjp.defvjp(_batch_norm_fwd, _batch_norm_bwd)


@with_twin(_batch_norm_vjp, _batch_norm)
def batch_norm(impl, x, gamma, beta, eps=1e-5, *, axis=1):
    """Training-mode batch normalization: ``y = γ ⊙ (x − μ)/√(σ² + ε) + β``.

    Backward (derivation "Batch Normalization", compact form of ∂C/∂x_i):
    ``δγ = Σ δy ⊙ x̂``, ``δβ = Σ δy``,
    ``δx = (1/(m·s)) (m·δx̂ − Σδx̂ − x̂ ⊙ Σ(δx̂ ⊙ x̂))`` plus the exact terms
    of the returned statistics. Saves ``x̂`` and ``1/s`` (statistics dtype).

    Args:
      x: ``(N, D)`` or ``(N, C, H, W)``; ``axis`` (default 1) is the feature
        axis, the others are reduced (use ``axis=3`` for NHWC).
      gamma, beta: ``(D,)`` / ``(C,)`` scale and shift.
      eps: a Python number added to the variance.

    Returns:
      ``(y, mean, var)``: ``y`` like ``x``; ``mean`` and biased ``var`` of
      shape ``(D,)`` in at least float32 (two-pass variance), with exact
      gradients.
    """
    for name, a in (("x", x), ("gamma", gamma), ("beta", beta)):
        _checks.floating(name, a)
    _checks.rank("x", x, (2, 4), "N, D or N, C, H, W")
    if not isinstance(axis, int) or not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis must be an int in [-{x.ndim}, {x.ndim}), got {axis!r}")
    axis %= x.ndim
    _checks.shape("gamma", gamma, (x.shape[axis],), f"one entry per feature of x {tuple(x.shape)}")
    _checks.shape("beta", beta, (x.shape[axis],), f"one entry per feature of x {tuple(x.shape)}")
    eps = _checks.number("eps", eps)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    return impl(x, gamma, beta, eps, axis)
