"""Layer normalization (docs/derivation.md §9): batch normalization's rule with
the roles of examples and features swapped — statistics per example over its
``D`` features, ``γ`` and ``β`` per feature.

    δx̂ = γ ⊙ δy
    δx = (1/(D·s)) (D·δx̂ − Σ_f δx̂ − x̂ ⊙ Σ_f δx̂ ⊙ x̂)
    δγ = Σ_examples δy ⊙ x̂        δβ = Σ_examples δy
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jaxbp.ops import _checks
from jaxbp.ops._norm import _feature, _scale_shift, _stat_dtype
from jaxbp.ops._recipe import Check, Rule, op


def _layer_norm_forward(x, gamma, beta, *, eps, axis):
    """Statistics per example over the features along ``axis``; residuals x̂, 1/s, γ.

    As batch norm's: a two-pass variance about a shift (each example's first
    feature: ``x − shift`` is exact when both are close, so a large mean does
    not swamp a small spread), and here also at a power-of-two scale ``k``
    (``c/k`` is exact; ``(c/k)²`` cannot overflow where ``c²`` would, as for
    ``x ~ 1e20`` in float32): ``x̂ = (c/k) / √(σ²/k² + ε/k²)``, ``1/s = that / k``.
    Neither constant changes the value, so the twin differentiates the same
    function with both held fixed."""
    xs = x.astype(_stat_dtype(x.dtype))
    first = tuple(slice(0, 1) if a == axis else slice(None) for a in range(x.ndim))
    d = xs - lax.stop_gradient(xs[first])
    c = d - d.mean(axis=axis, keepdims=True)
    peak = lax.stop_gradient(jnp.abs(c).max(axis=axis, keepdims=True))
    k = jnp.where(peak > 0, jnp.exp2(jnp.floor(jnp.log2(jnp.where(peak > 0, peak, 1)))), 1)
    c_k = c / k
    inv_std_k = lax.rsqrt((c_k * c_k).mean(axis=axis, keepdims=True) + eps / (k * k))
    return _scale_shift(x, c_k * inv_std_k, inv_std_k / k, gamma, beta, axis)


def _layer_norm_backward(res, g, *, eps, axis):
    x_hat, inv_std, gamma = res
    g = g.astype(x_hat.dtype)
    others = tuple(a for a in range(x_hat.ndim) if a != axis)
    d = x_hat.shape[axis]
    # δγ = Σ δy ⊙ x̂, δβ = Σ δy over every example; δx̂ = γ δy does not factor
    # out of the sums over features (γ varies along them), so they take δx̂.
    dx_hat = g * _feature(gamma, x_hat, axis).astype(x_hat.dtype)
    sum_d = dx_hat.sum(axis=axis, keepdims=True)
    sum_dx = (dx_hat * x_hat).sum(axis=axis, keepdims=True)
    dx = inv_std / d * (d * dx_hat - sum_d - x_hat * sum_dx)
    return dx, (g * x_hat).sum(axis=others), g.sum(axis=others)


_layer_norm = Rule(_layer_norm_forward, _layer_norm_backward)


@op
def layer_norm(x, gamma, beta, eps=1e-5, *, axis=-1):
    """Layer normalization: ``y = γ ⊙ (x − μ)/√(σ² + ε) + β`` with ``μ``, ``σ²``
    per example over the features along ``axis``.

    Backward (docs/derivation.md §9: §5 with the roles of examples and features
    swapped): ``δx = (1/(D·s)) (D·δx̂ − Σ_f δx̂ − x̂ ⊙ Σ_f δx̂ ⊙ x̂)``,
    ``δx̂ = γ δy``, ``δγ = Σ_examples δy ⊙ x̂``, ``δβ = Σ_examples δy``.
    Saves ``x̂``, ``1/s`` and ``γ``.

    Args:
      x: any shape with at least one axis; ``axis`` (default −1) holds the ``D`` features.
      gamma, beta: ``(D,)``.
      eps: a Python number added to the variance.

    Returns:
      ``y`` of ``x``'s shape, in the promoted dtype of ``x``, ``gamma``, ``beta``.
    """
    for name, a in (("x", x), ("gamma", gamma), ("beta", beta)):
        _checks.floating(name, a)
    axis = _checks.nonempty_axis("x", x, _checks.axis("axis", axis, x), "feature")
    _checks.shape("gamma", gamma, (x.shape[axis],), f"one entry per feature of x {tuple(x.shape)} along axis {axis}")
    _checks.shape("beta", beta, (x.shape[axis],), f"one entry per feature of x {tuple(x.shape)} along axis {axis}")
    eps = _checks.number("eps", eps)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    return _layer_norm(*_checks.promote(x, gamma, beta), eps=eps, axis=axis)


__all__ = ["layer_norm"]
CHECKS = {"layer_norm": Check("layer_norm", lambda n: n((3, 4, 6, 5), (5,), (5,)), (0, 1, 2)),
          "layer_norm axis 1": Check("layer_norm", lambda n: n((3, 4, 6), (4,), (4,)), (0, 1, 2), {"axis": 1})}
