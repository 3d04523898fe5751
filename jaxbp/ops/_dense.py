"""Dense (fully connected) layer: ``Z = X Wᵀ + b``.

docs/derivation.md §1 (the source's "DNN"). One sample is a column vector, ``z = W a + b`` with
``W`` of shape ``(out, in)``; a batch stacks samples as rows, so
``Z = X Wᵀ + b``. Per sample the rules are ``δa = Wᵀ δz``, ``δW = δz aᵀ``,
``δb = δz``; over a batch the ``δW`` and ``δb`` terms are summed over samples:

    δX = δZ W        (N, in)
    δW = δZᵀ X       (out, in)
    δb = Σ_rows δZ   (out,)

Leading dimensions other than one batch axis (``x`` of shape ``(..., in)``,
e.g. tokens of a sequence) are rows too: the rules hold for ``X`` reshaped to
``(rows, in)``.
"""
from __future__ import annotations

from jaxbp.ops import _checks
from jaxbp.ops._recipe import Check, Rule, op


def _forward(x, w, b):
    z = x @ w.T
    # Residuals: the inputs of the backward pass's matmuls.
    return (z if b is None else z + b.reshape((1,) * (z.ndim - 1) + b.shape)), (x, w)


def _backward(res, g):
    x, w = res
    rows, rows_x = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])  # (..., k) -> (rows, k)
    return g @ w, rows.T @ rows_x, rows.sum(axis=0)  # δX, δW, δb (dropped when b is None)


_rule = Rule(_forward, _backward)


@op
def dense(x, w, b=None):
    """Affine map of a batch of row vectors, ``Z = X Wᵀ + b``.

    Backward (docs/derivation.md §1, summed over the batch): ``δX = δZ W``,
    ``δW = δZᵀ X``, ``δb = Σ_rows δZ``. Saves ``x`` and ``w``.

    Args:
      x: ``(..., in)`` inputs, one sample per row (any leading dimensions).
      w: ``(out, in)`` weights.
      b: ``(out,)`` bias, or ``None``.

    Returns:
      ``(..., out)``.
    """
    for name, a in (("x", x), ("w", w)) + ((("b", b),) if b is not None else ()):
        _checks.floating(name, a)
    if x.ndim < 1:
        raise ValueError(f"x must have at least one axis (..., in), got shape {tuple(x.shape)}")
    _checks.rank("w", w, 2, "out, in")
    if w.shape[1] != x.shape[-1]:
        raise ValueError(f"w must have shape (out, {x.shape[-1]}) to match x of shape "
                         f"{tuple(x.shape)}, got {tuple(w.shape)}")
    if b is not None:
        _checks.shape("b", b, (w.shape[0],), "one entry per output of w")
    return _rule(*_checks.promote(x, w, b))


__all__ = ["dense"]
CHECKS = {"dense": Check("dense", lambda n: n((4, 6), (5, 6), (5,)), (0, 1, 2))}
