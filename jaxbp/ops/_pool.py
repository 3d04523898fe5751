"""Max and average pooling by window extraction (the im2col of ``_windows``);
docs/derivation.md §4.

    forward   Y[n,c,h',w'] = max_k  X̃[n,c,k,h',w']     or  (1/K) Σ_k X̃[n,c,k,h',w']
    backward  δX̃ = δY routed to the arg-max entry       or  δY / K to every entry
              δX = col2im(δX̃)                           (overlaps add, as for conv)

Max ties: the gradient goes to the *first* maximal entry of the window in
row-major ``(fh, fw)`` order (as ``argmax``), never split. Average pooling
divides by the full window size ``K = KH·KW``, padded zeros included.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jaxbp.ops import _checks, _windows
from jaxbp.ops._recipe import Check, Rule, op, saved


def _windows_of(x, window, stride, pads, layout, fill):
    (ah, aw), _ = _windows.LAYOUTS[layout]
    out = _windows.out_hw((x.shape[ah], x.shape[aw]), window, stride, pads, "window")
    return _windows.im2col(_windows.pad(x, pads, layout, fill), window, stride, out, layout)


def _first_max(cols, layout, index_dtype):
    """One-hot of the first maximal entry along the window axis, and its index
    in ``index_dtype``: computed so, not narrowed from ``argmax``'s int32, which
    XLA:CPU keeps in its place, the narrowing moved into the backward pass."""
    k_axis = _windows.WINDOW_AXIS[layout]
    idx = jnp.expand_dims(lax.argmax(cols, k_axis, index_dtype), k_axis)
    return _window_index(cols.shape[k_axis], k_axis, cols.ndim) == idx, idx


def _window_index(kk, k_axis, ndim):
    """``0..kk-1`` along the window axis, broadcastable against the windows."""
    return jnp.arange(kk).reshape([-1 if a == k_axis else 1 for a in range(ndim)])


def _max_pool_forward(x, *, window, stride, pads, layout, in_hw):
    cols = _windows_of(x, window, stride, pads, layout, -jnp.inf)
    # Residual: the arg-max index in one byte per output (K ≤ 127), not x.
    hot, idx = _first_max(cols, layout, jnp.int8 if window[0] * window[1] <= 127 else jnp.int32)
    # Select, then sum one entry: autodiff of this routes δY to the first max too.
    y = jnp.where(hot, cols, 0).sum(axis=_windows.WINDOW_AXIS[layout])
    return y, saved(idx)


def _max_pool_backward(res, g, *, window, stride, pads, layout, in_hw):
    (idx,) = res
    k_axis = _windows.WINDOW_AXIS[layout]
    k = _window_index(window[0] * window[1], k_axis, g.ndim + 1)
    dcols = jnp.where(k == idx, jnp.expand_dims(g, k_axis), 0)
    return (_scatter_back(dcols, in_hw, window, stride, pads, layout),)


def _avg_pool_forward(x, *, window, stride, pads, layout, in_hw):
    cols = _windows_of(x, window, stride, pads, layout, 0)
    return cols.sum(axis=_windows.WINDOW_AXIS[layout]) / (window[0] * window[1]), ()


def _avg_pool_backward(res, g, *, window, stride, pads, layout, in_hw):
    k_axis = _windows.WINDOW_AXIS[layout]
    kk = window[0] * window[1]
    dcols = jnp.broadcast_to(jnp.expand_dims(g / kk, k_axis),
                             g.shape[:k_axis] + (kk,) + g.shape[k_axis:])
    return (_scatter_back(dcols, in_hw, window, stride, pads, layout),)


def _scatter_back(dcols, in_hw, window, stride, pads, layout):
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(in_hw, pads))
    return _windows.unpad(_windows.col2im(dcols, window, stride, padded, layout),
                          pads, in_hw, layout)


_max_pool = Rule(_max_pool_forward, _max_pool_backward)
_avg_pool = Rule(_avg_pool_forward, _avg_pool_backward)


def _pool_args(x, window, stride, padding, layout):
    (ah, aw), _ = _windows.check_layout(layout)
    _checks.floating("x", x)
    _checks.rank("x", x, 4, " ".join(layout))
    window = _checks.pair("window", window, 1)
    stride = window if stride is None else _checks.pair("stride", stride, 1)
    in_hw = (x.shape[ah], x.shape[aw])
    pads = _windows.resolve_padding(padding, in_hw, window, stride)
    if any(n == 0 for n in in_hw):
        raise ValueError(f"x has an empty spatial size {in_hw} (shape {tuple(x.shape)}, {layout}): "
                         "every window would be padding alone")
    if any(2 * p > k for pp, k in zip(pads, window) for p in pp):
        raise ValueError(f"padding {pads} must be at most half the window {window} on each side "
                         "(as in PyTorch), so that no window is padding alone")
    _windows.out_hw(in_hw, window, stride, pads, "window")
    return dict(window=window, stride=stride, pads=pads, layout=layout, in_hw=in_hw)


_POOL_DOC = """

    Args:
      x: ``(N, C, H, W)`` (``(N, H, W, C)`` when ``layout="NHWC"``), floating.
      window: int or ``(kh, kw)``.
      stride: int or pair; defaults to the window.
      padding: int, pair, ``((top, bottom), (left, right))``, ``"SAME"`` or ``"VALID"``;
        at most half the window on each side, so that no window is padding alone.
      layout: ``"NCHW"`` or ``"NHWC"``.

    Returns:
      ``(N, C, H', W')``, ``H' = (H + pads − kh) // sh + 1``.
    """


def max_pool2d(x, window, stride=None, padding=0, *, layout="NCHW"):
    return _max_pool(x, **_pool_args(x, window, stride, padding, layout))


def avg_pool2d(x, window, stride=None, padding=0, *, layout="NCHW"):
    return _avg_pool(x, **_pool_args(x, window, stride, padding, layout))


max_pool2d.__doc__ = ("Max pooling over ``window``; padding counts as −∞.\n\n    Backward: δY goes to "
                      "the first maximal entry of each window (row-major), then col2im.\n    "
                      "Saves the arg-max index (int8 per output when the window has ≤ 127 entries)."
                      + _POOL_DOC)
avg_pool2d.__doc__ = ("Average pooling over ``window``; divides by the full window size.\n\n    "
                      "Backward: δY / K to every entry of the window, then col2im. Saves nothing."
                      + _POOL_DOC)
max_pool2d = op(max_pool2d)
avg_pool2d = op(avg_pool2d)


__all__ = ["max_pool2d", "avg_pool2d"]
CHECKS = {name: Check(name, lambda n: n((3, 4, 6, 5)) + (2,), (0,)) for name in __all__}
