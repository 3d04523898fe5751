"""conv2d's explicit algorithm: im2col, the patch matrix ``X̃`` built.

docs/derivation.md §3. With ``X̃ = im2col(X)`` — rows ``(n, h', w')``, columns
``(i, fh, fw)`` — and ``F̃ = reshape(F, O, I·FH·FW)ᵀ``:

    forward   Ỹ = X̃ F̃                       ((N·H'·W') × O, then to N×O×H'×W')
    backward  δF̃ = X̃ᵀ δỸ                     (§3, corrected: not δX̃ᵀ δỸ)
              δX = col2im(δỸ F̃ᵀ)             (col2im *adds* overlapping patches)

The products are written as ``einsum`` over named axes (NHWC: 2-D matmuls on
the patch matrix as laid out). The forward pass materializes ``X̃`` (``FH·FW``
times the input); the residuals are ``x`` and ``w``, not ``X̃``. The backward
pass rebuilds ``X̃`` from ``x`` and evaluates the two products either whole
(``X̃`` and ``δX̃`` materialized: on CPUs) or one window entry at a time
(``X̃_k``, a block of ``C`` columns: elsewhere), chosen when XLA compiles for
the platform.
"""
from __future__ import annotations

import functools

import jax.numpy as jnp
from jax import lax

from jaxbp.ops import _windows
from jaxbp.ops._recipe import after
from jaxbp.ops.conv.select import NARROW_PATCH, TRANSPOSED_PATCH

# einsum subscripts of the patch tensor X̃, the output Ỹ and the kernel F̃, per
# layout, with the channels split into groups g (a grouped convolution's F̃ is
# block-diagonal: group g's output channels see only group g's input channels).
# The kernel's (c, k) order follows the patch's, so that no contraction output
# needs a transpose of patch size: NCHW F̃ (G, O/G, C/G, FH·FW), NHWC (G, O/G, FH·FW, C/G).
_SUBSCRIPTS = {"NCHW": ("ngckhw", "ngohw", "gock"), "NHWC": ("nhwkgc", "nhwgo", "gokc")}
_GROUP_AXIS = {"NCHW": (1, 1), "NHWC": (4, 3)}  # the channel axis of X̃, of Y


def _kernel(w, layout, groups):
    """``F̃`` per group from ``w`` ``(O, C/G, FH, FW)``."""
    o, c, fh, fw = w.shape
    if layout == "NCHW":
        return w.reshape(groups, o // groups, c, fh * fw)
    return w.transpose(0, 2, 3, 1).reshape(groups, o // groups, fh * fw, c)


def _split(a, axis, groups):
    """Axis ``axis`` of ``a`` as ``(groups, size // groups)``."""
    return a.reshape(a.shape[:axis] + (groups, a.shape[axis] // groups) + a.shape[axis + 1:])


def _patches(x, window, stride, pads, dilation, layout):
    """``X̃`` (NCHW: ``N,C,K,H',W'``; NHWC: ``N,H',W',K,C``)."""
    (ah, aw), _ = _windows.LAYOUTS[layout]
    out = _windows.out_hw((x.shape[ah], x.shape[aw]), _windows.effective(window, dilation), stride, pads)
    return _windows.im2col(_windows.pad(x, pads, layout), window, stride, out, layout, dilation)


def _transposed_patches(x, window, stride, pads, dilation):
    """``X̃ᵀ`` of an NHWC ``x``, ``(FH·FW·C, N·H'·W')``, rows ``(fh, fw, i)``: each
    window entry's block of rows a strided slice of the channels-first padded
    input, written contiguously (a narrow ``X̃`` as laid out takes one row of a
    few entries from as many places)."""
    (ah, aw), _ = _windows.LAYOUTS["NHWC"]
    out = _windows.out_hw((x.shape[ah], x.shape[aw]), _windows.effective(window, dilation), stride, pads)
    xt = _windows.pad(x, pads, "NHWC").transpose(3, 0, 1, 2)
    cols_t = jnp.stack([_windows.window_entry(xt, dilation[0] * i, dilation[1] * j, stride, out, "NCHW")
                        for _, (i, j) in _windows.entries(window)])
    return cols_t.reshape(-1, x.shape[0] * out[0] * out[1]), out


def forward(x, w, *, stride, pads, dilation, groups, layout):
    """``Ỹ = X̃ F̃``, ``X̃`` built from ``x``; on CPUs a narrow one (fewer than
    :data:`NARROW_PATCH` columns: a 3×3 conv of one channel has 9) as ``X̃ᵀ``."""
    static = dict(stride=stride, pads=pads, dilation=dilation, groups=groups, layout=layout)
    _, c, fh, fw = w.shape
    if layout == "NHWC" and groups == 1 and fh * fw * c < NARROW_PATCH:
        return lax.platform_dependent(x, w, cpu=functools.partial(_narrow_forward, **static),
                                      default=functools.partial(_forward, **static))
    return _forward(x, w, **static)


def _narrow_forward(x, w, *, stride, pads, dilation, groups, layout):
    """``Ỹ = (X̃ᵀ)ᵀ F̃``: ``X̃ᵀ`` built, its first axis contracted."""
    o, c, fh, fw = w.shape
    cols_t, (ho, wo) = _transposed_patches(x, (fh, fw), stride, pads, dilation)
    y = jnp.einsum("km,ok->mo", cols_t, _kernel(w, layout, 1).reshape(o, fh * fw * c))
    return y.reshape(x.shape[0], ho, wo, o)


def _forward(x, w, *, stride, pads, dilation, groups, layout):
    """``Ỹ = X̃ F̃``, ``X̃`` as laid out."""
    o = w.shape[0]
    cols = _patches(x, w.shape[2:], stride, pads, dilation, layout)
    if layout == "NHWC" and groups == 1:
        # Ỹ = X̃ F̃ as one 2-D matmul, rows (n, h', w'), columns (fh, fw, i): the
        # patch matrix is used as laid out (an einsum let XLA transpose it instead of F̃).
        n, ho, wo, kk, c = cols.shape
        y = (cols.reshape(n * ho * wo, kk * c) @ _kernel(w, layout, 1).reshape(o, kk * c).T).reshape(n, ho, wo, o)
    else:
        xs, ys, ks = _SUBSCRIPTS[layout]
        xg, yg = _GROUP_AXIS[layout]
        y = jnp.einsum(f"{xs},{ks}->{ys}", _split(cols, xg, groups), _kernel(w, layout, groups))  # Ỹ = X̃ F̃
        y = y.reshape(y.shape[:yg] + (o,) + y.shape[yg + 2:])
    return y


def _whole(stride, pads, dilation, groups, layout, x, w, g):
    """``δF̃ = X̃ᵀ δỸ`` and ``δX = col2im(δỸ F̃ᵀ)``, one matmul each, ``X̃`` and
    ``δX̃`` materialized whole (``X̃`` rebuilt from ``x``)."""
    (fh, fw), _, in_hw, _ = _windows.geometry(x, w, g, layout)
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(in_hw, pads))
    cols = _patches(x, (fh, fw), stride, pads, dilation, layout)
    kernel = _kernel(w, layout, groups).astype(g.dtype)
    if layout == "NHWC" and groups == 1:
        n, ho, wo, kk, c = cols.shape
        o = w.shape[0]
        g2 = g.reshape(n * ho * wo, o)
        if kk * c < TRANSPOSED_PATCH <= o:
            # A narrow X̃ (one input channel: 9 columns) and many outputs: δF̃ = X̃ᵀ δỸ
            # with X̃ᵀ built as such. XLA:CPU's product over the rows of X̃ as laid
            # out was slow; the second im2col costs more than that saves with fewer
            # outputs or a wider X̃.
            dw = (_transposed_patches(x, (fh, fw), stride, pads, dilation)[0] @ g2).reshape(
                fh, fw, c, o).transpose(3, 2, 0, 1)
        else:
            dw = (g2.T @ cols.reshape(n * ho * wo, kk * c)).reshape(o, fh, fw, c).transpose(0, 3, 1, 2)
        # δX̃ once δF̃ is made (``after``, on the small F̃): X̃ and δX̃ not alive at once.
        dcols = (g2 @ after(dw, kernel.reshape(o, kk * c))).reshape(cols.shape)
    else:
        xs, ys, ks = _SUBSCRIPTS[layout]
        xg, yg = _GROUP_AXIS[layout]
        gs = _split(g, yg, groups)
        dk = jnp.einsum(f"{xs},{ys}->{ks}", _split(cols, xg, groups), gs)
        dw = (dk.reshape(w.shape) if layout == "NCHW"
              else dk.reshape(w.shape[0], fh, fw, w.shape[1]).transpose(0, 3, 1, 2))
        dcols = jnp.einsum(f"{ys},{ks}->{xs}", gs, after(dk, kernel)).reshape(cols.shape)
    dx = _windows.col2im(dcols, (fh, fw), stride, padded, layout, dilation)
    return _windows.unpad(dx, pads, in_hw, layout), dw


def _blockwise(stride, pads, dilation, groups, layout, x, w, g):
    """The same two products, one block of ``C`` columns of ``X̃`` (one window
    entry ``k``) at a time, so neither ``X̃`` nor ``δX̃`` exists whole:
    ``δF̃_k = X̃_kᵀ δỸ`` (``X̃_k`` is a strided slice of ``x``) and
    ``δX = Σ_k place_k(δỸ F̃_kᵀ)``."""
    (fh, fw), ch, in_hw, out = _windows.geometry(x, w, g, layout)
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(in_hw, pads))
    xs, ys, _ = _SUBSCRIPTS[layout]
    xk_s = xs.replace("k", "")  # one window entry: a block of C columns of X̃
    _, yg = _GROUP_AXIS[layout]
    gs = _split(g, yg, groups)
    xp = _windows.pad(x, pads, layout)
    wk = w.reshape((groups, w.shape[0] // groups) + w.shape[1:])  # (G, O/G, C/G, FH, FW)
    dw, dxp = [], 0
    for _, (i, j) in _windows.entries((fh, fw)):
        oi, oj = dilation[0] * i, dilation[1] * j
        x_k = _split(_windows.window_entry(xp, oi, oj, stride, out, layout), ch, groups)
        dw.append(jnp.einsum(f"{xk_s},{ys}->goc", x_k, gs))
        dx_k = jnp.einsum(f"{ys},goc->{xk_s}", gs, wk[..., i, j].astype(g.dtype))
        dx_k = dx_k.reshape(dx_k.shape[:ch] + (-1,) + dx_k.shape[ch + 2:])
        dxp = dxp + _windows.place_entry(dx_k, oi, oj, stride, padded, layout)
    dw = jnp.stack(dw, axis=-1).reshape(w.shape)
    return _windows.unpad(dxp, pads, in_hw, layout), dw


def backward(x, w, g, *, stride, pads, dilation, groups, layout):
    """``(δX, δF)``: on CPUs the whole matmuls; elsewhere the blocks (less
    memory traffic, no patch-sized buffers). Both are tested against the twin
    on every backend. ``X̃`` is rebuilt from ``x`` once ``δY`` exists
    (:func:`~jaxbp.ops._recipe.after`): otherwise XLA keeps the forward pass's
    ``X̃``, ``FH·FW`` times the input, from the forward to the backward pass."""
    static = (stride, pads, dilation, groups, layout)
    return lax.platform_dependent(after(g, x), w, g, cpu=functools.partial(_whole, *static),
                                  default=functools.partial(_blockwise, *static))


