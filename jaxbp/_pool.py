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

import jax
import jax.numpy as jnp

from jaxbp import _checks, _windows
from jaxbp._op import carrier, like, saved, with_twin


def _windows_of(x, window, stride, pads, layout, fill):
    (ah, aw), _ = _windows.LAYOUTS[layout]
    out = _windows.out_hw((x.shape[ah], x.shape[aw]), window, stride, pads, "window")
    return _windows.im2col(_windows.pad(x, pads, layout, fill), window, stride, out, layout)


def _first_max(cols, layout):
    """One-hot of the first maximal entry along the window axis, and its index."""
    k_axis = _windows.WINDOW_AXIS[layout]
    idx = jnp.argmax(cols, axis=k_axis, keepdims=True)
    return _window_index(cols.shape[k_axis], k_axis, cols.ndim) == idx, idx


def _window_index(kk, k_axis, ndim):
    """``0..kk-1`` along the window axis, broadcastable against the windows."""
    return jnp.arange(kk).reshape([-1 if a == k_axis else 1 for a in range(ndim)])


def _max_pool_with_index(x, window, stride, pads, layout):
    """The forward, and the arg-max index the backward pass needs."""
    cols = _windows_of(x, window, stride, pads, layout, -jnp.inf)
    hot, idx = _first_max(cols, layout)
    # Select, then sum one entry: autodiff of this routes δY to the first max too.
    return jnp.where(hot, cols, 0).sum(axis=_windows.WINDOW_AXIS[layout]), idx


def _max_pool(x, window, stride, pads, layout):
    return _max_pool_with_index(x, window, stride, pads, layout)[0]


def _max_pool_fwd(x, window, stride, pads, layout):
    y, idx = _max_pool_with_index(x, window, stride, pads, layout)
    # Residual: the arg-max index in one byte per output (K ≤ 127), not x.
    small = jnp.int8 if window[0] * window[1] <= 127 else jnp.int32
    return y, (saved(idx.astype(small))[0], carrier(x, shape=True))


def _max_pool_bwd(window, stride, pads, layout, res, g):
    idx, proto = res
    k_axis = _windows.WINDOW_AXIS[layout]
    k = _window_index(window[0] * window[1], k_axis, g.ndim + 1)
    dcols = jnp.where(k == idx, jnp.expand_dims(g, k_axis), 0)
    return like((_scatter_back(dcols, proto.shape[1:], window, stride, pads, layout),), (proto,))


def _avg_pool(x, window, stride, pads, layout):
    cols = _windows_of(x, window, stride, pads, layout, 0)
    return cols.sum(axis=_windows.WINDOW_AXIS[layout]) / (window[0] * window[1])


def _avg_pool_fwd(x, window, stride, pads, layout):
    return _avg_pool(x, window, stride, pads, layout), carrier(x, shape=True)


def _avg_pool_bwd(window, stride, pads, layout, res, g):
    proto = res
    k_axis = _windows.WINDOW_AXIS[layout]
    kk = window[0] * window[1]
    dcols = jnp.broadcast_to(jnp.expand_dims(g / kk, k_axis),
                             g.shape[:k_axis] + (kk,) + g.shape[k_axis:])
    return like((_scatter_back(dcols, proto.shape[1:], window, stride, pads, layout),), (proto,))


def _scatter_back(dcols, shape, window, stride, pads, layout):
    (ah, aw), _ = _windows.LAYOUTS[layout]
    in_hw = (shape[ah], shape[aw])
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(in_hw, pads))
    return _windows.unpad(_windows.col2im(dcols, window, stride, padded, layout),
                          pads, in_hw, layout)


_max_pool_vjp = jax.custom_vjp(_max_pool, nondiff_argnums=(1, 2, 3, 4))
_max_pool_vjp.defvjp(_max_pool_fwd, _max_pool_bwd)
_avg_pool_vjp = jax.custom_vjp(_avg_pool, nondiff_argnums=(1, 2, 3, 4))
_avg_pool_vjp.defvjp(_avg_pool_fwd, _avg_pool_bwd)


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
    return x, window, stride, pads, layout


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


def max_pool2d(impl, x, window, stride=None, padding=0, *, layout="NCHW"):
    return impl(*_pool_args(x, window, stride, padding, layout))


def avg_pool2d(impl, x, window, stride=None, padding=0, *, layout="NCHW"):
    return impl(*_pool_args(x, window, stride, padding, layout))


max_pool2d.__doc__ = ("Max pooling over ``window``; padding counts as −∞.\n\n    Backward: δY goes to "
                      "the first maximal entry of each window (row-major), then col2im.\n    "
                      "Saves the arg-max index (int8 per output when the window has ≤ 127 entries)."
                      + _POOL_DOC)
avg_pool2d.__doc__ = ("Average pooling over ``window``; divides by the full window size.\n\n    "
                      "Backward: δY / K to every entry of the window, then col2im. Saves nothing."
                      + _POOL_DOC)
max_pool2d = with_twin(_max_pool_vjp, _max_pool)(max_pool2d)
avg_pool2d = with_twin(_avg_pool_vjp, _avg_pool)(avg_pool2d)
