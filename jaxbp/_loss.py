"""Losses, one value per example (shape ``(N,)``), as in optax.

Computed in at least float32 whatever the input dtype; gradients are cast back
to the inputs' dtypes.
"""
from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
from jax import lax

from jaxbp import _checks
from jaxbp._op import carrier, like, with_twin


def _wide(*xs):
    dtype = jnp.promote_types(jnp.result_type(*xs), jnp.float32)
    return [x.astype(dtype) for x in xs]


def _max_and_log_sum(o):
    """Row maximum ``m`` (a constant) and ``log Σ_k e^{o_k − m}``, both ``(N, 1)``:
    ``log softmax(o) = (o − m) − log Σ``, stable, and exact for large logits
    (one ``o − logsumexp`` would lose the small part of the sum in float32)."""
    m = lax.stop_gradient(o.max(axis=-1, keepdims=True))
    return m, jnp.log(jnp.exp(o - m).sum(axis=-1, keepdims=True))


def _softmax_cross_entropy_parts(logits, targets):
    """The loss, and ``(o, y, m, log Σ)`` for the backward pass."""
    o, y = _wide(logits, targets)
    m, log_sum = _max_and_log_sum(o)
    return -(y * ((o - m) - log_sum)).sum(axis=-1), (o, y, m, log_sum)


def _softmax_cross_entropy(logits, targets):
    return _softmax_cross_entropy_parts(logits, targets)[0]


def _softmax_cross_entropy_fwd(logits, targets):
    loss, (o, y, m, log_sum) = _softmax_cross_entropy_parts(logits, targets)
    # Residuals: m and log Σ, (N, 1) each; the logits and targets are the inputs,
    # alive anyway, and log softmax(o) = (o − m) − log Σ is rebuilt from them.
    return loss, (o, m, log_sum, y, carrier(logits), carrier(targets))


def _softmax_cross_entropy_bwd(res, g):
    o, m, log_sum, y, logits, targets = res
    g = g[:, None].astype(o.dtype)
    log_p = (o - m) - log_sum
    dlogits = g * (jnp.exp(log_p) * y.sum(axis=-1, keepdims=True) - y)  # softmax(o)·Σy − y
    dtargets = -g * log_p
    return like((dlogits, dtargets), (logits, targets))


def _one_hot(labels, o):
    return (labels[:, None] == jnp.arange(o.shape[-1])[None, :]).astype(o.dtype)


def _label_rows(labels, k, ignore_index):
    """Per row: the label is a class id in ``[0, K)`` and counts; the row is ignored."""
    ignored = jnp.zeros(labels.shape, bool) if ignore_index is None else labels == ignore_index
    return (labels >= 0) & (labels < k) & ~ignored, ignored


def _sparse_cross_entropy_parts(logits, labels, ignore_index):
    """The loss for integer labels, and ``(o, m, log Σ)`` for the backward pass.

    A row whose label is neither in ``[0, K)`` nor ``ignore_index`` has loss NaN
    (under ``jit`` a value cannot raise; NaN reaches the non-finite guard); an
    ignored row has loss 0. Both have the zero one-hot row, so gradient 0."""
    (o,) = _wide(logits)
    m, log_sum = _max_and_log_sum(o)
    counted, ignored = _label_rows(labels, o.shape[-1], ignore_index)
    loss = -(_one_hot(jnp.where(counted, labels, -1), o) * ((o - m) - log_sum)).sum(axis=-1)
    return jnp.where(counted | ignored, loss, jnp.nan), (o, m, log_sum)


def _sparse_cross_entropy(logits, labels, ignore_index):
    return _sparse_cross_entropy_parts(logits, labels, ignore_index)[0]


def _sparse_cross_entropy_fwd(logits, labels, ignore_index):
    loss, (o, m, log_sum) = _sparse_cross_entropy_parts(logits, labels, ignore_index)
    # Integer labels are kept as they are (N ints); the one-hot is rebuilt.
    return loss, (o, m, log_sum, labels, carrier(logits))


def _sparse_cross_entropy_bwd(ignore_index, res, g):
    o, m, log_sum, labels, logits = res
    # softmax(o)·Σy − y, with Σy = 1 for a counted label and 0 (a zero row) otherwise.
    counted, _ = _label_rows(labels, o.shape[-1], ignore_index)
    y_sum = counted[:, None].astype(o.dtype)
    y = _one_hot(jnp.where(counted, labels, -1), o)
    dlogits = g[:, None].astype(o.dtype) * (jnp.exp((o - m) - log_sum) * y_sum - y)
    return like((dlogits,), (logits,)) + (None,)


def _euclidean_parts(pred, target):
    """The loss, and the residual ``r = o − y`` for the backward pass."""
    r = jnp.subtract(*_wide(pred, target))
    ss = (r * r).reshape(r.shape[0], -1).sum(axis=1)
    # Double `where`: the value and JAX's derivative are both 0 at a zero residual;
    # `== 0`, not `> 0`, so that a NaN residual gives a NaN loss, not 0.
    zero = ss == 0
    return jnp.where(zero, 0, jnp.sqrt(jnp.where(zero, 1, ss))), r


def _euclidean(pred, target):
    return _euclidean_parts(pred, target)[0]


def _euclidean_fwd(pred, target):
    loss, r = _euclidean_parts(pred, target)
    return loss, (r, loss, carrier(pred), carrier(target))


def _euclidean_bwd(res, g):
    r, loss, pred, target = res
    zero = loss == 0
    scale = jnp.where(zero, 0, g / jnp.where(zero, 1, loss)).astype(r.dtype)   # (o − y) / L
    dpred = scale.reshape((-1,) + (1,) * (r.ndim - 1)) * r
    return like((dpred, -dpred), (pred, target))


def _mse_parts(pred, target):
    """The loss, and the residual ``r = o − y`` for the backward pass."""
    r = jnp.subtract(*_wide(pred, target))
    return (r * r).reshape(r.shape[0], -1).mean(axis=1), r


def _mse(pred, target):
    return _mse_parts(pred, target)[0]


def _mse_fwd(pred, target):
    loss, r = _mse_parts(pred, target)
    return loss, (r, carrier(pred), carrier(target))


def _mse_bwd(res, g):
    r, pred, target = res
    d = r[0].size
    dpred = (2 * g.astype(r.dtype) / d).reshape((-1,) + (1,) * (r.ndim - 1)) * r
    return like((dpred, -dpred), (pred, target))


_softmax_cross_entropy_vjp = jax.custom_vjp(_softmax_cross_entropy)
_softmax_cross_entropy_vjp.defvjp(_softmax_cross_entropy_fwd, _softmax_cross_entropy_bwd)
_sparse_cross_entropy_vjp = jax.custom_vjp(_sparse_cross_entropy, nondiff_argnums=(2,))
_sparse_cross_entropy_vjp.defvjp(_sparse_cross_entropy_fwd, _sparse_cross_entropy_bwd)


def _targets_kind(custom):
    soft, sparse = ((_softmax_cross_entropy_vjp, _sparse_cross_entropy_vjp) if custom
                    else (_softmax_cross_entropy, _sparse_cross_entropy))
    def impl(logits, targets, ignore_index):
        if jnp.issubdtype(targets.dtype, jnp.integer):
            return sparse(logits, targets, ignore_index)
        return soft(logits, targets)
    return impl
_euclidean_vjp = jax.custom_vjp(_euclidean)
_euclidean_vjp.defvjp(_euclidean_fwd, _euclidean_bwd)
_mse_vjp = jax.custom_vjp(_mse)
_mse_vjp.defvjp(_mse_fwd, _mse_bwd)


@with_twin(_targets_kind(True), _targets_kind(False))
def softmax_cross_entropy(impl, logits, targets, *, ignore_index=None):
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
    if hasattr(targets, "dtype") and jnp.issubdtype(targets.dtype, jnp.integer):
        _checks.shape("targets", targets, logits.shape[:1],
                      f"integer class ids, one per row of logits {tuple(logits.shape)}")
        if ignore_index is not None and (isinstance(ignore_index, bool)
                                         or not isinstance(ignore_index, numbers.Integral)):
            raise TypeError(f"ignore_index must be a Python int or None, got {ignore_index!r}")
    else:
        _checks.floating("targets", targets)
        _checks.shape("targets", targets, logits.shape,
                      "like logits, or (N,) integer class ids")
        if ignore_index is not None:
            raise ValueError(f"ignore_index applies to integer class ids; targets are "
                             f"{targets.dtype} of shape {tuple(targets.shape)}")
    return impl(logits, targets, None if ignore_index is None else int(ignore_index))


def _pred_target(pred, target):
    _checks.floating("pred", pred)
    _checks.floating("target", target)
    if pred.ndim < 1:
        raise ValueError(f"pred must have a batch axis (N, ...), got shape {tuple(pred.shape)}")
    _checks.shape("target", target, pred.shape, "like pred")


@with_twin(_euclidean_vjp, _euclidean)
def euclidean_loss(impl, pred, target):
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
    return impl(pred, target)


@with_twin(_mse_vjp, _mse)
def mse(impl, pred, target):
    """Mean squared error per example, ``L = (1/D) Σ (o − y)²`` over non-batch axes.

    Backward (docs/derivation.md §7) ``δo = 2 (o − y) / D``, ``δy = −δo``. Saves ``o − y``.

    Args:
      pred, target: ``(N, ...)``, same shape (``D`` = entries per example).

    Returns:
      ``(N,)``.
    """
    _pred_target(pred, target)
    return impl(pred, target)
