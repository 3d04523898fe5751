"""Dense (fully connected) layer: ``Z = X Wᵀ + b``.

docs/derivation.md §1 (the source's "DNN"). One sample is a column vector, ``z = W a + b`` with
``W`` of shape ``(out, in)``; a batch stacks samples as rows, so
``Z = X Wᵀ + b``. Per sample the rules are ``δa = Wᵀ δz``, ``δW = δz aᵀ``,
``δb = δz``; over a batch the ``δW`` and ``δb`` terms are summed over samples:

    δX = δZ W        (N, in)
    δW = δZᵀ X       (out, in)
    δb = Σ_rows δZ   (out,)
"""
from __future__ import annotations

import jax

from jaxbp import _checks
from jaxbp._op import like, with_twin


def _dense(x, w, b):
    z = x @ w.T
    return z if b is None else z + b[None, :]


def _dense_fwd(x, w, b):
    # Residuals: the inputs of the matmuls in the backward pass.
    return _dense(x, w, b), (x, w, b)


def _dense_bwd(res, g):
    x, w, b = res
    dx = g @ w
    dw = g.T @ x
    db = None if b is None else g.sum(axis=0)
    return like((dx, dw, db), (x, w, b))


_dense_vjp = jax.custom_vjp(_dense)
_dense_vjp.defvjp(_dense_fwd, _dense_bwd)


@with_twin(_dense_vjp, _dense)
def dense(impl, x, w, b=None):
    """Affine map of a batch of row vectors, ``Z = X Wᵀ + b``.

    Backward (docs/derivation.md §1, summed over the batch): ``δX = δZ W``,
    ``δW = δZᵀ X``, ``δb = Σ_rows δZ``. Saves ``x`` and ``w``.

    Args:
      x: ``(N, in)`` inputs, one sample per row.
      w: ``(out, in)`` weights.
      b: ``(out,)`` bias, or ``None``.

    Returns:
      ``(N, out)``.
    """
    for name, a in (("x", x), ("w", w)) + ((("b", b),) if b is not None else ()):
        _checks.floating(name, a)
    _checks.rank("x", x, 2, "N, in")
    _checks.rank("w", w, 2, "out, in")
    if w.shape[1] != x.shape[1]:
        raise ValueError(f"w must have shape (out, {x.shape[1]}) to match x of shape "
                         f"{tuple(x.shape)}, got {tuple(w.shape)}")
    if b is not None:
        _checks.shape("b", b, (w.shape[0],), "one entry per output of w")
    return impl(*_checks.promote(x, w, b))
