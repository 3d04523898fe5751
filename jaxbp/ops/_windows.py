"""Sliding windows over the two spatial axes: im2col and col2im.

Shared by convolution and pooling. Only static slices and pads are used (no
gather or scatter with index arrays, which are slow on GPUs in current XLA).

Layouts: ``"NCHW"`` (spatial axes 2, 3) and ``"NHWC"`` (spatial axes 1, 2).
The window axis of length ``K = FH·FW`` (ordered ``(fh, fw)``, row-major) is
inserted after the channel axis for NCHW — ``N,C,H,W -> N,C,K,H',W'`` — and
before it for NHWC — ``N,H,W,C -> N,H',W',K,C`` — so that in both layouts one
patch is contiguous along the axes that the following contraction reduces.
"""
from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxbp.ops import _checks

LAYOUTS = {"NCHW": ((2, 3), 1), "NHWC": ((1, 2), 3)}  # spatial axes, channel axis
WINDOW_AXIS = {"NCHW": 2, "NHWC": 3}


def check_layout(layout):
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    return LAYOUTS[layout]


def resolve_padding(padding, in_hw, window, stride):
    """``padding`` (int, pair, pair of pairs, 'SAME', 'VALID') -> ((top, bottom), (left, right))."""
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            return ((0, 0), (0, 0))
        if mode == "SAME":
            # As lax/TensorFlow: output ceil(in / stride), the odd extra row at the end.
            pads = []
            for n, k, s in zip(in_hw, window, stride):
                total = max((-(-n // s) - 1) * s + k - n, 0)
                pads.append((total // 2, total - total // 2))
            return tuple(pads)
        raise ValueError(f"padding must be an int, a pair, 'SAME' or 'VALID', got {padding!r}")
    if (isinstance(padding, (tuple, list)) and len(padding) == 2
            and all(isinstance(p, (tuple, list)) for p in padding)):
        return tuple(_checks.pair("padding", p, 0) for p in padding)
    ph, pw = _checks.pair("padding", padding, 0)
    return ((ph, ph), (pw, pw))


def out_hw(in_hw, window, stride, pads, what="kernel"):
    """Output size ``(H', W')``, checking that the window fits the padded input."""
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(in_hw, pads))
    if any(k > p for k, p in zip(window, padded)):
        raise ValueError(f"{what} of size {tuple(window)} is larger than the padded input "
                         f"{padded} (input {tuple(in_hw)}, padding {pads})")
    return tuple((p - k) // s + 1 for p, k, s in zip(padded, window, stride))


def pad(x, pads, layout, value=0):
    (ah, aw), _ = LAYOUTS[layout]
    config = [(0, 0)] * x.ndim
    config[ah], config[aw] = pads
    return jnp.pad(x, config, constant_values=value)


def unpad(xp, pads, in_hw, layout):
    (ah, aw), _ = LAYOUTS[layout]
    start, limit = [0] * xp.ndim, list(xp.shape)
    for a, (lo, _), n in zip((ah, aw), pads, in_hw):
        start[a], limit[a] = lo, lo + n
    return lax.slice(xp, start, limit)


def _tiles(window, stride, dilation):
    """Whether the windows tile the input: stride = window, no dilation (e.g. 2×2
    pooling), so that every position is in at most one window."""
    return tuple(stride) == tuple(window) and tuple(dilation) == (1, 1)


# Axis orders between the windows (``N,H',W',FH,FW,C`` / ``N,C,FH,FW,H',W'``) and
# the image cut into tiles (``N,H',FH,W',FW,C`` / ``N,C,H',FH,W',FW``).
_TILE_ORDER = {"NHWC": (0, 1, 3, 2, 4, 5), "NCHW": (0, 1, 4, 2, 5, 3)}


def _tile(xp, window, out, layout):
    """:func:`im2col` of tiling windows: the image, less the rows and columns no
    window reaches, cut into tiles by a reshape and one transpose (the inverse
    of :func:`_untile`'s)."""
    (ah, aw), _ = LAYOUTS[layout]
    (fh, fw), (ho, wo) = window, out
    x = lax.slice(xp, [0] * 4, [ho * fh if a == ah else wo * fw if a == aw else n for a, n in enumerate(xp.shape)])
    tiles = x.reshape(x.shape[:ah] + (ho, fh, wo, fw) + x.shape[aw + 1:])
    cols = tiles.transpose(np.argsort(_TILE_ORDER[layout]))
    k_axis = WINDOW_AXIS[layout]
    return cols.reshape(cols.shape[:k_axis] + (fh * fw,) + cols.shape[k_axis + 2:])


def _untile(cols, window, padded_hw, layout):
    """:func:`col2im` of tiling windows: each position gets at most one entry, so
    putting them back is a reshape and one transpose — no sums — then zeros for
    the rows and columns no window reaches."""
    (ah, aw), _ = LAYOUTS[layout]
    fh, fw = window
    k_axis = WINDOW_AXIS[layout]
    split = cols.reshape(cols.shape[:k_axis] + (fh, fw) + cols.shape[k_axis + 1:])
    x = split.transpose(_TILE_ORDER[layout])
    x = x.reshape(x.shape[:ah] + (x.shape[ah] * fh, x.shape[ah + 2] * fw) + x.shape[ah + 4:])
    config = [(0, 0)] * 4
    config[ah], config[aw] = (0, padded_hw[0] - x.shape[ah]), (0, padded_hw[1] - x.shape[aw])
    return jnp.pad(x, config)


def window_entry(xp, i, j, stride, out, layout):
    """Entry ``(i, j)`` of every window: ``xp[..., i + s·h', j + s·w', ...]``, shape like the
    output with the input's channels — one block of ``C`` columns of ``X̃``."""
    (ah, aw), _ = LAYOUTS[layout]
    start, limit, strides = [0] * xp.ndim, list(xp.shape), [1] * xp.ndim
    for a, o, s, k in ((ah, out[0], stride[0], i), (aw, out[1], stride[1], j)):
        start[a], limit[a], strides[a] = k, k + s * (o - 1) + 1, s
    return lax.slice(xp, start, limit, strides)


def place_entry(part, i, j, stride, padded_hw, layout):
    """Adjoint of :func:`window_entry`: spread ``part`` to stride ``s`` (interior
    padding) and shift it by ``(i, j)`` (edge padding) into the padded input's shape."""
    (ah, aw), _ = LAYOUTS[layout]
    return _place(part, ((ah, i, stride[0], padded_hw[0]), (aw, j, stride[1], padded_hw[1])))


def _place(part, placements):
    """For each ``(axis, offset, stride, size)``: spread ``part`` to ``stride``
    along ``axis`` and shift it by ``offset`` into ``size`` (one ``lax.pad``)."""
    config = [(0, 0, 0)] * part.ndim
    for axis, offset, s, size in placements:
        span = s * (part.shape[axis] - 1) + 1
        config[axis] = (offset, size - offset - span, s - 1)
    return lax.pad(part, jnp.zeros((), part.dtype), config)


def entries(window):
    """Window entries ``(k, (i, j))`` in row-major order, ``k = i·FW + j``."""
    return enumerate(itertools.product(range(window[0]), range(window[1])))


def effective(window, dilation):
    """The extent ``d·(k − 1) + 1`` of a window of ``k`` entries ``d`` apart."""
    return tuple(d * (k - 1) + 1 for k, d in zip(window, dilation))


def im2col(xp, window, stride, out, layout, dilation=(1, 1)):
    """Padded input -> every window, stacked on a new axis.

    NCHW: ``N,C,Hp,Wp -> N,C,K,H',W'``; NHWC: ``N,Hp,Wp,C -> N,H',W',K,C``;
    entry ``k = fh·FW + fw`` holds ``xp[..., d·fh + s·h', d·fw + s·w', ...]``
    (dilation ``d``: the window's entries are ``d`` apart, a strided window).
    """
    if _tiles(window, stride, dilation):
        return _tile(xp, window, out, layout)
    dh, dw = dilation
    cols = [window_entry(xp, dh * i, dw * j, stride, out, layout) for _, (i, j) in entries(window)]
    return jnp.stack(cols, axis=WINDOW_AXIS[layout])


def col2im(cols, window, stride, padded_hw, layout, dilation=(1, 1)):
    """Adjoint of :func:`im2col`: put each window entry back, *adding* overlaps.

    NCHW: ``N,C,K,H',W' -> N,C,Hp,Wp``; NHWC: ``N,H',W',K,C -> N,Hp,Wp,C``.
    Separably: the ``FW`` entries of each kernel row are placed along W and
    added, then the ``FH`` row sums along H, so no sum has more than
    ``max(FH, FW)`` terms (XLA keeps each term of a long sum of pads as its own
    padded buffer).
    """
    if _tiles(window, stride, dilation):
        return _untile(cols, window, padded_hw, layout)
    (ah, aw), _ = LAYOUTS[layout]
    k_axis = WINDOW_AXIS[layout]
    fh, fw = window

    def entry(k):
        return lax.index_in_dim(cols, k, k_axis, keepdims=False)

    dh, dw = dilation
    rows = (sum(_place(entry(i * fw + j), ((aw, dw * j, stride[1], padded_hw[1]),)) for j in range(fw))
            for i in range(fh))
    return sum(_place(row, ((ah, dh * i, stride[0], padded_hw[0]),)) for i, row in enumerate(rows))



def geometry(x, w, g, layout):
    """A convolution's kernel size, channel axis, input and output spatial sizes."""
    (ah, aw), ch = LAYOUTS[layout]
    return w.shape[2:], ch, (x.shape[ah], x.shape[aw]), (g.shape[ah], g.shape[aw])
