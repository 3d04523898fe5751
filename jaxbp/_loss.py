"""Losses, one value per example (shape ``(N,)``), as in optax.

Computed in at least float32 whatever the input dtype; gradients are cast back
to the inputs' dtypes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxbp import _checks
from jaxbp._op import carrier, like, with_twin


def _wide(*xs):
    dtype = jnp.promote_types(jnp.result_type(*xs), jnp.float32)
    return [x.astype(dtype) for x in xs]


def _log_softmax(o):
    # Stable: shift by the (constant) row maximum before exponentiating.
    s = o - lax.stop_gradient(o.max(axis=-1, keepdims=True))
    return s - jnp.log(jnp.exp(s).sum(axis=-1, keepdims=True))


def _softmax_cross_entropy(logits, targets):
    o, y = _wide(logits, targets)
    return -(y * _log_softmax(o)).sum(axis=-1)


def _softmax_cross_entropy_fwd(logits, targets):
    o, y = _wide(logits, targets)
    log_p = _log_softmax(o)
    # Residual: log softmax (softmax = exp of it; −log softmax is δtargets).
    return -(y * log_p).sum(axis=-1), (log_p, y, carrier(logits), carrier(targets))


def _softmax_cross_entropy_bwd(res, g):
    log_p, y, logits, targets = res
    g = g[:, None].astype(log_p.dtype)
    dlogits = g * (jnp.exp(log_p) * y.sum(axis=-1, keepdims=True) - y)  # softmax(o)·Σy − y
    dtargets = -g * log_p
    return like((dlogits, dtargets), (logits, targets))


def _euclidean(pred, target):
    r = jnp.subtract(*_wide(pred, target))
    ss = (r * r).reshape(r.shape[0], -1).sum(axis=1)
    # Double `where`: the value and JAX's derivative are both 0 at a zero residual.
    pos = ss > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, ss, 1)), 0)


def _euclidean_fwd(pred, target):
    loss = _euclidean(pred, target)
    return loss, (jnp.subtract(*_wide(pred, target)), loss, carrier(pred), carrier(target))


def _euclidean_bwd(res, g):
    r, loss, pred, target = res
    pos = loss > 0
    scale = jnp.where(pos, g / jnp.where(pos, loss, 1), 0).astype(r.dtype)   # (o − y) / L
    dpred = scale.reshape((-1,) + (1,) * (r.ndim - 1)) * r
    return like((dpred, -dpred), (pred, target))


def _mse(pred, target):
    r = jnp.subtract(*_wide(pred, target))
    return (r * r).reshape(r.shape[0], -1).mean(axis=1)


def _mse_fwd(pred, target):
    r = jnp.subtract(*_wide(pred, target))
    return (r * r).reshape(r.shape[0], -1).mean(axis=1), (r, carrier(pred), carrier(target))


def _mse_bwd(res, g):
    r, pred, target = res
    d = r[0].size
    dpred = (2 * g.astype(r.dtype) / d).reshape((-1,) + (1,) * (r.ndim - 1)) * r
    return like((dpred, -dpred), (pred, target))


_softmax_cross_entropy_vjp = jax.custom_vjp(_softmax_cross_entropy)
_softmax_cross_entropy_vjp.defvjp(_softmax_cross_entropy_fwd, _softmax_cross_entropy_bwd)
_euclidean_vjp = jax.custom_vjp(_euclidean)
_euclidean_vjp.defvjp(_euclidean_fwd, _euclidean_bwd)
_mse_vjp = jax.custom_vjp(_mse)
_mse_vjp.defvjp(_mse_fwd, _mse_bwd)


@with_twin(_softmax_cross_entropy_vjp, _softmax_cross_entropy)
def softmax_cross_entropy(impl, logits, targets):
    """Cross-entropy of softmax, ``L = −Σ_k y_k log softmax(o)_k`` per example.

    Backward (derivation "Cross Entropy-Softmax", general form, NOTES.md care 4):
    ``δo = softmax(o)·Σ_k y_k − y`` — equal to ``softmax(o) − y`` only when the
    targets sum to 1, so smoothed or unnormalized targets stay correct;
    ``δy = −log softmax(o)``. Saves ``log softmax(o)``.

    Args:
      logits: ``(N, K)``.
      targets: ``(N, K)`` non-negative floats (one-hot, probabilities or any
        weights), or ``(N,)`` integer class ids in ``[0, K)`` (turned into
        one-hot rows; an id outside the range gives a zero row and loss 0).

    Returns:
      ``(N,)`` losses, in at least float32.
    """
    _checks.floating("logits", logits)
    _checks.rank("logits", logits, 2, "N, K")
    if hasattr(targets, "dtype") and jnp.issubdtype(targets.dtype, jnp.integer):
        _checks.shape("targets", targets, logits.shape[:1],
                      f"integer class ids, one per row of logits {tuple(logits.shape)}")
        targets = jax.nn.one_hot(targets, logits.shape[1], dtype=logits.dtype)
    else:
        _checks.floating("targets", targets)
        _checks.shape("targets", targets, logits.shape,
                      "like logits, or (N,) integer class ids")
    return impl(logits, targets)


def _pred_target(pred, target):
    _checks.floating("pred", pred)
    _checks.floating("target", target)
    if pred.ndim < 1:
        raise ValueError(f"pred must have a batch axis (N, ...), got shape {tuple(pred.shape)}")
    _checks.shape("target", target, pred.shape, "like pred")


@with_twin(_euclidean_vjp, _euclidean)
def euclidean_loss(impl, pred, target):
    """Euclidean norm of the residual per example, ``L = ‖y − o‖₂``.

    This is the derivation's section titled "MSE" (NOTES.md care 3): a norm,
    not a mean of squares (see :func:`mse`). Backward ``δo = (o − y)/L``,
    ``δy = −δo``, and exactly 0 where ``L = 0`` (never NaN). Saves ``o − y``, ``L``.

    Args:
      pred, target: ``(N, ...)``, same shape; reduced over all non-batch axes.

    Returns:
      ``(N,)``.
    """
    _pred_target(pred, target)
    return impl(pred, target)


@with_twin(_mse_vjp, _mse)
def mse(impl, pred, target):
    """Mean squared error per example, ``L = (1/D) Σ (o − y)²`` over non-batch axes.

    Backward ``δo = 2 (o − y) / D``, ``δy = −δo``. Saves ``o − y``.

    Args:
      pred, target: ``(N, ...)``, same shape (``D`` = entries per example).

    Returns:
      ``(N,)``.
    """
    _pred_target(pred, target)
    return impl(pred, target)
