"""Batch normalization: ``batch_norm`` in training mode (batch statistics, below)
and ``batch_norm_eval`` in inference mode (given statistics, §9).

docs/derivation.md §5 (the source's "Batch Normalization"), statistics over the ``m`` positions
of each feature (``m = N`` for ``(N, D)``, ``m = N·H·W`` for ``(N, C, H, W)``):

    μ = (1/m) Σ x_i        σ² = (1/m) Σ (x_i − μ)²        s = √(σ² + ε)
    x̂ = (x − μ) / s        y = γ ⊙ x̂ + β

    δβ = Σ δy_i            δγ = Σ δy_i ⊙ x̂_i              δx̂ = δy ⊙ γ
    δx = (1/(m·s)) (m·δx̂ − Σ δx̂ − x̂ ⊙ Σ (δx̂ ⊙ x̂))      (docs/derivation.md §5)
       = (γ/(m·s)) (m·δy − δβ − x̂ ⊙ δγ)           (δx̂ = γ δy: two sums, not four)

The returned ``mean`` and ``var`` (for running averages) are differentiated
exactly too: ``δx += δμ / m + δσ² · 2 (x − μ) / m``.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jaxbp.ops import _checks
from jaxbp.ops._recipe import Check, Rule, op, saved, varying


def _stat_dtype(dtype):
    # Statistics in at least float32, also for float16/bfloat16 inputs.
    return jnp.promote_types(dtype, jnp.float32)


def _sum(v, axis, axis_name):
    """Sum over every axis but ``axis``, and over the devices of ``axis_name``."""
    s = v.sum(axis=tuple(a for a in range(v.ndim) if a != axis), keepdims=True)
    return s if axis_name is None else lax.psum(s, axis_name)


def _count(x, axis, axis_name):
    """``m``: positions per feature, over all devices of ``axis_name``."""
    m = x.size // x.shape[axis]
    return m if axis_name is None else m * lax.psum(1, axis_name)


def _normalize(x, eps, axis, axis_name):
    """Return ``x̂``, ``1/s``, the shift and ``μ − shift``, ``σ²`` (keepdims), in
    the statistics dtype."""
    xs = x.astype(_stat_dtype(x.dtype))
    m = _count(x, axis, axis_name)
    # Two-pass variance about a shift (the first sample of each feature), so a
    # large mean does not swamp a small spread: x − shift is exact in floating
    # point when both are close. The result does not depend on the shift, which
    # only has to be the same on every device.
    shift = lax.stop_gradient(xs[tuple(slice(None) if a == axis else slice(0, 1)
                                       for a in range(x.ndim))])
    if axis_name is not None:
        shift = lax.pmean(shift, axis_name)
    d = xs - shift
    d_mean = _sum(d, axis, axis_name) / m
    c = d - d_mean
    var = _sum(c * c, axis, axis_name) / m
    inv_std = lax.rsqrt(var + eps)
    return c * inv_std, inv_std, shift, d_mean, var


def _total(c, axis_name):
    """A statistic's cotangent summed over the devices of ``axis_name`` where it varies."""
    return lax.psum(c, axis_name) if axis_name is not None and axis_name in varying(c) else c


def _scale_shift(x, x_hat, inv_std, gamma, beta, axis):
    """``y = γ ⊙ x̂ + β`` in x's dtype, and the residuals of layer norm and the
    inference-mode batch norm: x̂, 1/s, γ."""
    y = x_hat * _feature(gamma, x, axis) + _feature(beta, x, axis)
    return y.astype(x.dtype), saved(x_hat, inv_std, gamma)


def _feature(v, x, axis):
    return v.reshape([-1 if a == axis else 1 for a in range(x.ndim)])


def _forward(x, gamma, beta, *, eps, axis, axis_name):
    """The forward ``(y, μ, σ²)``; residuals ``x`` (the caller's array), the
    shift and ``μ − shift``, ``1/s`` and ``γ``: not ``x̂``, rebuilt in the backward."""
    x_hat, inv_std, shift, d_mean, var = _normalize(x, eps, axis, axis_name)
    y = x_hat * _feature(gamma, x, axis) + _feature(beta, x, axis)
    mean = (shift + d_mean).reshape(-1)
    return (y.astype(x.dtype), mean, var.reshape(-1)), saved(x, shift, d_mean, inv_std, gamma)


def _backward(res, cotangents, *, eps, axis, axis_name):
    x, shift, d_mean, inv_std, gamma = res
    g, g_mean, g_var = (None if isinstance(c, SymbolicZero) else c for c in cotangents)
    red = tuple(a for a in range(x.ndim) if a != axis)
    m = _count(x, axis, axis_name)
    xs = x.astype(inv_std.dtype)
    # x̂ is rebuilt in two different expressions, one per use, each as exact as
    # the forward's (x − shift) − (μ − shift): as one shared array, XLA:CPU
    # computes it in the forward pass and keeps it beside x (BENCHMARKS.md).
    # For δx: x − μ = (x − μ̃) − e, where μ̃ = shift + (μ − shift) rounded and
    # e = (μ − shift) − (μ̃ − shift) its rounding error (exact near a large mean).
    mean = shift + d_mean
    centered = (xs - mean) - (d_mean - (mean - shift))
    dx = jnp.zeros_like(xs)
    dgamma = dbeta = jnp.zeros_like(gamma)
    if g is not None:
        g = g.astype(xs.dtype)
        # δβ = Σ δy, δγ = Σ δy ⊙ x̂ = (Σ δy ⊙ (x − shift) − (μ − shift) Σ δy) / s
        # (about the shift, as the variance, so that no large mean cancels):
        # this device's share (the recipe sums it over the mesh axes where γ,
        # β are replicated).
        sum_g = g.sum(axis=red, keepdims=True)
        sum_gx = ((g * (xs - shift)).sum(axis=red, keepdims=True) - d_mean * sum_g) * inv_std
        dbeta, dgamma = sum_g.reshape(-1), sum_gx.reshape(-1)
        # δx̂ = γ δy, so Σ δx̂ = γ Σ δy and Σ δx̂ ⊙ x̂ = γ Σ δy ⊙ x̂: the same two
        # sums, over the *global* batch.
        if axis_name is not None:
            sum_g, sum_gx = lax.psum(sum_g, axis_name), lax.psum(sum_gx, axis_name)
        scale = _feature(gamma, x, axis).astype(xs.dtype) * inv_std / m
        dx = scale * (m * g - sum_g - centered * (inv_std * sum_gx))
    # The statistics' own cotangents (zero, and skipped, when only y is used):
    # ∂μ/∂x_i = 1/m, ∂σ²/∂x_i = 2 (x_i − μ)/m. μ and σ² are the same on every
    # device, so their cotangent is the total over devices: shard_map already
    # summed it when it arrives invariant over ``axis_name``; a varying one is
    # this device's share, summed here.
    if g_mean is not None:
        dx = dx + _feature(_total(g_mean, axis_name), x, axis).astype(xs.dtype) / m
    if g_var is not None:
        dx = dx + _feature(_total(g_var, axis_name), x, axis).astype(xs.dtype) * 2 * centered / m
    return dx, dgamma, dbeta


# symbolic_zeros: unused outputs (mean, var when only y is used) arrive as
# SymbolicZero, and their terms are skipped rather than multiplied by zeros.
_rule = Rule(_forward, _backward, symbolic_zeros=True)


@op
def batch_norm(x, gamma, beta, eps=1e-5, *, axis=1, axis_name=None):
    """Training-mode batch normalization: ``y = γ ⊙ (x − μ)/√(σ² + ε) + β``.

    Backward (docs/derivation.md §5, compact form of ∂C/∂x_i):
    ``δγ = Σ δy ⊙ x̂``, ``δβ = Σ δy``,
    ``δx = (1/(m·s)) (m·δx̂ − Σδx̂ − x̂ ⊙ Σ(δx̂ ⊙ x̂))`` plus the exact terms
    of the returned statistics. Saves ``x`` itself (in its dtype; ``x̂`` is
    rebuilt from it) and, per feature, ``1/s``, the shift and ``μ − shift``.

    Args:
      x: ``(N, D)``, ``(N, C, L)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``;
        ``axis`` (default 1) is the feature axis, the others are reduced (use
        ``axis=-1`` for channels-last).
      gamma, beta: ``(D,)`` / ``(C,)`` scale and shift.
      eps: a Python number added to the variance.
      axis_name: inside ``shard_map``, the mesh axis the batch is split over:
        the statistics and the batch sums of the backward pass are ``psum``-ed
        over it, so they are those of the global batch, and the gradients are
        those of the total loss (the sum of the devices' losses, differentiated
        outside ``shard_map``). The ``gamma``/``beta`` cotangents are summed
        over the mesh axis where they are replicated. Under
        plain ``jit`` with a sharded batch leave it ``None``: XLA already
        reduces globally.

    Returns:
      ``(y, mean, var)``: ``y`` of ``x``'s shape, in the promoted dtype of
      ``x``, ``gamma``, ``beta`` (jaxbp's dtype rule); ``mean`` and biased ``var`` of
      shape ``(D,)`` in at least float32 (two-pass variance), with exact
      gradients.
    """
    for name, a in (("x", x), ("gamma", gamma), ("beta", beta)):
        _checks.floating(name, a)
    _checks.rank("x", x, (2, 3, 4, 5), "N, D or N, C with up to three spatial axes")
    if not isinstance(axis, int) or not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis must be an int in [-{x.ndim}, {x.ndim}), got {axis!r}")
    axis %= x.ndim
    _checks.shape("gamma", gamma, (x.shape[axis],), f"one entry per feature of x {tuple(x.shape)}")
    _checks.shape("beta", beta, (x.shape[axis],), f"one entry per feature of x {tuple(x.shape)}")
    if x.size == 0:
        raise ValueError(f"x must have at least one position per feature to take batch statistics, "
                         f"got shape {tuple(x.shape)}")
    eps = _checks.number("eps", eps)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    return _rule(*_checks.promote(x, gamma, beta), eps=eps, axis=axis, axis_name=axis_name)



def _eval_forward(x, gamma, beta, mean, var, *, eps, axis):
    """Inference mode: the given statistics, an affine map of x."""
    dtype = _stat_dtype(x.dtype)
    inv_std = lax.rsqrt(_feature(var, x, axis).astype(dtype) + eps)
    x_hat = (x.astype(dtype) - _feature(mean, x, axis).astype(dtype)) * inv_std
    return _scale_shift(x, x_hat, inv_std, gamma, beta, axis)


def _eval_backward(res, g, *, eps, axis):
    x_hat, inv_std, gamma = res
    g = g.astype(x_hat.dtype)
    red = tuple(a for a in range(x_hat.ndim) if a != axis)
    gamma_s = _feature(gamma, x_hat, axis).astype(x_hat.dtype) * inv_std   # γ/s
    dbeta, dgamma = g.sum(axis=red), (g * x_hat).sum(axis=red)
    inv_s = inv_std.reshape(-1)
    dmean = -gamma * dbeta * inv_s                           # δμ = −γ/s Σ δy
    dvar = -0.5 * gamma * dgamma * inv_s * inv_s            # δσ² = −γ/(2s²) Σ δy ⊙ x̂
    return g * gamma_s, dgamma, dbeta, dmean, dvar


_eval = Rule(_eval_forward, _eval_backward)


@op
def batch_norm_eval(x, gamma, beta, mean, var, eps=1e-5, *, axis=1):
    """Batch normalization in inference mode, with given statistics (PyTorch's
    ``F.batch_norm(..., training=False)``): ``y = γ ⊙ (x − μ)/√(σ² + ε) + β``.

    Backward (docs/derivation.md §9): ``δx = δy ⊙ γ/s``, ``δγ = Σ δy ⊙ x̂``,
    ``δβ = Σ δy``, ``δμ = −(γ/s) Σ δy``, ``δσ² = −(γ/(2s²)) Σ δy ⊙ x̂``
    (sums over every axis but ``axis``). Saves ``x̂``, ``1/s`` and ``γ``.

    Args:
      x: ``(N, C, ...)`` (rank 2 to 5); ``axis`` (default 1) is the feature axis.
      gamma, beta, mean, var: ``(C,)``.
      eps: a Python number added to the variance.
    """
    names = ("x", "gamma", "beta", "mean", "var")
    for name, a in zip(names, (x, gamma, beta, mean, var)):
        _checks.floating(name, a)
    _checks.rank("x", x, (2, 3, 4, 5), "N, D or N, C with up to three spatial axes")
    axis = _checks.axis("axis", axis, x)
    for name, a in zip(names[1:], (gamma, beta, mean, var)):
        _checks.shape(name, a, (x.shape[axis],), f"one entry per feature of x {tuple(x.shape)}")
    eps = _checks.number("eps", eps)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    return _eval(*_checks.promote(x, gamma, beta, mean, var), eps=eps, axis=axis)


__all__ = ["batch_norm", "batch_norm_eval"]
CHECKS = {"batch_norm": Check("batch_norm", lambda n: n((3, 4, 6, 5), (4,), (4,)), (0, 1, 2)),
          "batch_norm NCL": Check("batch_norm", lambda n: n((3, 4, 5), (4,), (4,)), (0, 1, 2)),
          "batch_norm_eval": Check("batch_norm_eval", lambda n: n((3, 4, 6, 5), (4,), (4,), (4,))
                                   + (1.0 + n((4,))[0] ** 2,), (0, 1, 2, 3, 4))}
