"""Losses, one value per example (shape ``(N,)``), as in optax.

Computed in at least float32 whatever the input dtype; gradients are cast back
to the inputs' dtypes.
"""
from __future__ import annotations

import numbers

import jax.numpy as jnp
from jax import lax

from jaxbp.ops import _checks
from jaxbp.ops._recipe import Check, Rule, op


def _wide(*xs):
    dtype = jnp.promote_types(jnp.result_type(*xs), jnp.float32)
    return [x.astype(dtype) for x in xs]


def _max_and_log_sum(o):
    """Row maximum ``m`` (a constant) and ``log Σ_k e^{o_k − m}``, both ``(N, 1)``:
    ``log softmax(o) = (o − m) − log Σ``, stable, and exact for large logits
    (one ``o − logsumexp`` would lose the small part of the sum in float32)."""
    m = lax.stop_gradient(o.max(axis=-1, keepdims=True))
    return m, jnp.log(jnp.exp(o - m).sum(axis=-1, keepdims=True))


def _soft_forward(logits, targets):
    o, y = _wide(logits, targets)
    m, log_sum = _max_and_log_sum(o)
    # Residuals: m and log Σ, (N, 1) each, besides the inputs (alive anyway):
    # log softmax(o) = (o − m) − log Σ is rebuilt from them.
    return -(y * ((o - m) - log_sum)).sum(axis=-1), (o, y, m, log_sum)


def _soft_backward(res, g):
    o, y, m, log_sum = res
    g = g[:, None].astype(o.dtype)
    # softmax(o)·Σy − y, softmax(o) = e^{o − m} / Σ as in the sparse rule below
    dlogits = jnp.exp(o - m) * (g * y.sum(axis=-1, keepdims=True) / jnp.exp(log_sum)) - g * y
    return dlogits, -g * ((o - m) - log_sum)  # δo, δy = −log softmax(o)


def _one_hot(labels, o):
    return (labels[:, None] == jnp.arange(o.shape[-1])[None, :]).astype(o.dtype)


def _label_rows(labels, k, ignore_index):
    """Per row: the label is a class id in ``[0, K)`` and counts; the row is ignored."""
    ignored = jnp.zeros(labels.shape, bool) if ignore_index is None else labels == ignore_index
    return (labels >= 0) & (labels < k) & ~ignored, ignored


def _sparse_forward(logits, labels, *, ignore_index):
    """Integer labels: the label's term ``−log softmax(o)_label``, gathered (a
    one-hot product would make ``0·(−∞) = NaN`` from another class's −∞ or
    overflowed logit). A row whose label is neither in ``[0, K)`` nor
    ``ignore_index`` has loss NaN (under ``jit`` a value cannot raise; NaN
    reaches the non-finite guard); an ignored row has loss 0. Both have the zero
    one-hot row, so gradient 0."""
    (o,) = _wide(logits)
    m, log_sum = _max_and_log_sum(o)
    counted, ignored = _label_rows(labels, o.shape[-1], ignore_index)
    at = jnp.where(counted, labels, 0)[:, None]
    loss = jnp.where(counted, log_sum[:, 0] - (jnp.take_along_axis(o, at, axis=-1) - m)[:, 0], 0)
    # Integer labels are kept as they are (N ints); the one-hot is rebuilt.
    return jnp.where(counted | ignored, loss, jnp.nan), (o, m, log_sum, labels)


def _sparse_backward(res, g, *, ignore_index):
    o, m, log_sum, labels = res
    # softmax(o)·Σy − y, with Σy = 1 for a counted label and 0 (a zero row) otherwise.
    counted, _ = _label_rows(labels, o.shape[-1], ignore_index)
    y = _one_hot(jnp.where(counted, labels, -1), o)
    # softmax(o) = e^{o − m} / Σ, e^{o − m} written as the forward pass wrote it:
    # XLA computes it once for both passes compiled together (its twin's speed).
    g = g[:, None].astype(o.dtype)
    dlogits = jnp.exp(o - m) * (g * counted[:, None] / jnp.exp(log_sum)) - g * y
    return dlogits, None


def _euclidean_forward(pred, target):
    r = jnp.subtract(*_wide(pred, target))
    ss = (r * r).reshape(r.shape[0], -1).sum(axis=1)
    # Double `where`: the value and JAX's derivative are both 0 at a zero residual;
    # `== 0`, not `> 0`, so that a NaN residual gives a NaN loss, not 0.
    zero = ss == 0
    loss = jnp.where(zero, 0, jnp.sqrt(jnp.where(zero, 1, ss)))
    return loss, (r, loss)


def _euclidean_backward(res, g):
    r, loss = res
    zero = loss == 0
    scale = jnp.where(zero, 0, g / jnp.where(zero, 1, loss)).astype(r.dtype)   # (o − y) / L
    dpred = scale.reshape((-1,) + (1,) * (r.ndim - 1)) * r
    return dpred, -dpred


def _mse_forward(pred, target):
    r = jnp.subtract(*_wide(pred, target))
    return (r * r).reshape(r.shape[0], -1).mean(axis=1), r


def _mse_backward(r, g):
    dpred = (2 * g.astype(r.dtype) / r[0].size).reshape((-1,) + (1,) * (r.ndim - 1)) * r
    return dpred, -dpred


_soft = Rule(_soft_forward, _soft_backward)
_sparse = Rule(_sparse_forward, _sparse_backward)
_euclidean = Rule(_euclidean_forward, _euclidean_backward)
_mse = Rule(_mse_forward, _mse_backward)


@op
def softmax_cross_entropy(logits, targets, *, ignore_index=None):
    """Cross-entropy of softmax, ``L = −Σ_k y_k log softmax(o)_k`` per example.

    Backward (docs/derivation.md §6, general form, corrected):
    ``δo = softmax(o)·Σ_k y_k − y`` — equal to ``softmax(o) − y`` only when the
    targets sum to 1, so smoothed or unnormalized targets stay correct;
    ``δy = −log softmax(o)``. Saves the row maximum and ``log Σ e^{o − max}``
    (``(N, 1)`` each) besides the inputs; integer labels are saved as they are.

    Args:
      logits: ``(N, K)``.
      targets: ``(N, K)`` non-negative floats (one-hot, probabilities or any
        weights), or ``(N,)`` integer class ids in ``[0, K)`` (as one-hot rows,
        with ``Σy = 1``). An id outside ``[0, K)`` gives that row a loss of
        NaN (and gradient 0), so a mean over the batch is NaN and the
        non-finite guard of training names the step.
      ignore_index: with integer ids, an id whose rows are left out (PyTorch's
        convention, e.g. ``-100`` for padding): loss 0 and gradient 0. The
        mean over the rows that count is
        ``loss.sum() / (targets != ignore_index).sum()``.

    Returns:
      ``(N,)`` losses, in at least float32.
    """
    _checks.floating("logits", logits)
    _checks.rank("logits", logits, 2, "N, K")
    if logits.shape[1] == 0:
        raise ValueError(f"logits must have at least one class (K >= 1), got shape {tuple(logits.shape)}")
    if hasattr(targets, "dtype") and jnp.issubdtype(targets.dtype, jnp.integer):
        _checks.shape("targets", targets, logits.shape[:1],
                      f"integer class ids, one per row of logits {tuple(logits.shape)}")
        if ignore_index is not None and (isinstance(ignore_index, bool)
                                         or not isinstance(ignore_index, numbers.Integral)):
            raise TypeError(f"ignore_index must be a Python int or None, got {ignore_index!r}")
        return _sparse(logits, targets, ignore_index=None if ignore_index is None else int(ignore_index))
    _checks.floating("targets", targets)
    _checks.shape("targets", targets, logits.shape, "like logits, or (N,) integer class ids")
    if ignore_index is not None:
        raise ValueError(f"ignore_index applies to integer class ids; targets are "
                         f"{targets.dtype} of shape {tuple(targets.shape)}")
    return _soft(logits, targets)


def _pred_target(pred, target):
    _checks.floating("pred", pred)
    _checks.floating("target", target)
    if pred.ndim < 1:
        raise ValueError(f"pred must have a batch axis (N, ...), got shape {tuple(pred.shape)}")
    _checks.shape("target", target, pred.shape, "like pred")


@op
def euclidean_loss(pred, target):
    """Euclidean norm of the residual per example, ``L = ‖y − o‖₂``.

    This is the source derivation's section titled "MSE" (docs/derivation.md §7): a norm,
    not a mean of squares (see :func:`mse`). Backward ``δo = (o − y)/L``,
    ``δy = −δo``, and exactly 0 where ``L = 0`` (never NaN). Saves ``o − y``, ``L``.

    Args:
      pred, target: ``(N, ...)``, same shape; reduced over all non-batch axes.

    Returns:
      ``(N,)``.
    """
    _pred_target(pred, target)
    return _euclidean(pred, target)


@op
def mse(pred, target):
    """Mean squared error per example, ``L = (1/D) Σ (o − y)²`` over non-batch axes.

    Backward (docs/derivation.md §7) ``δo = 2 (o − y) / D``, ``δy = −δo``. Saves ``o − y``.

    Args:
      pred, target: ``(N, ...)``, same shape (``D`` = entries per example).

    Returns:
      ``(N,)``.
    """
    _pred_target(pred, target)
    return _mse(pred, target)


__all__ = ["softmax_cross_entropy", "euclidean_loss", "mse"]
CHECKS = {
    "softmax_cross_entropy": Check("softmax_cross_entropy", lambda n: n((6, 4)) + (jnp.arange(6) % 4,), (0,)),
    "euclidean_loss": Check("euclidean_loss", lambda n: n((6, 5), (6, 5)), (0, 1)),
    "mse": Check("mse", lambda n: n((6, 5), (6, 5)), (0, 1)),
}
