"""conv2d's implicit algorithm: the same three rules as XLA convolutions.

docs/derivation.md §3. ``X̃`` is never built: ``Ỹ = X̃ F̃`` is XLA's
convolution; ``δX = col2im(δỸ F̃ᵀ)`` is a correlation of the stride-dilated
``δY`` with the spatially flipped, in/out-swapped kernel; ``δF̃ = X̃ᵀ δỸ`` is a
correlation of ``X`` with ``δY`` (dilated by the stride) in which the batch
axis is the one contracted.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jaxbp.ops import _windows
from jaxbp.ops._recipe import after

# lax dimension numbers: forward, then the two backward convolutions.
_DIMS = {
    "NCHW": dict(fwd=("NCHW", "OIHW", "NCHW"), dx=("NCHW", "IOHW", "NCHW"),
                 dw=("CNHW", "IOHW", "CNHW")),
    "NHWC": dict(fwd=("NHWC", "OIHW", "NHWC"), dx=("NHWC", "IOHW", "NHWC"),
                 dw=("CHWN", "IHWO", "CNHW")),
}


def _conv(lhs, rhs, dims, **kwargs):
    """``lax.conv_general_dilated`` with dimension numbers ``dims``; on CPUs
    stated in the one order XLA:CPU runs through its fast convolution kernels
    wherever the convolution sits (``NHWC``, ``HWIO``, ``NHWC``), by transposing
    the operands and the result. At the top level of a program XLA:CPU picks
    such layouts itself, but inside a loop (``lax.scan``: the compiled epoch) it
    keeps the stated ones and falls back to a generic loop nest, measured several
    times slower per convolution (BENCHMARKS.md). Other backends get ``dims`` as is."""
    def stated(lhs, rhs):
        return lax.conv_general_dilated(lhs, rhs, dimension_numbers=dims, **kwargs)

    def canonical(lhs, rhs):
        (ls, rs, os_), canon = dims, ("NHWC", "HWIO", "NHWC")
        out = lax.conv_general_dilated(lhs.transpose([ls.index(a) for a in canon[0]]),
                                       rhs.transpose([rs.index(a) for a in canon[1]]),
                                       dimension_numbers=canon, **kwargs)
        return out.transpose([canon[2].index(a) for a in os_])

    return lax.platform_dependent(lhs, rhs, cpu=canonical, default=stated)


def forward(x, w, *, stride, pads, dilation, groups, layout):
    """``Ỹ = X̃ F̃`` as one XLA convolution."""
    return _conv(x, w, _DIMS[layout]["fwd"], window_strides=stride, padding=pads, rhs_dilation=dilation,
                 feature_group_count=groups)


def backward(x, w, g, *, stride, pads, dilation, groups, layout):
    """``(δX, δF)`` as two XLA convolutions. ``x`` is read once ``δY`` exists
    (:func:`~jaxbp.ops._recipe.after`): otherwise XLA:CPU lays ``x`` out for
    ``δF`` (transposed) in the forward pass and keeps that copy beside ``x``
    wherever ``x`` is kept as it is too (relu's output, another algorithm's
    forward)."""
    x = after(g, x)
    window, _, in_hw, out = _windows.geometry(x, w, g, layout)
    (eh, ew) = _windows.effective(window, dilation)
    # Rows/columns of the padded input that no window reaches (stride leftovers).
    rest = [n + lo + hi - k - s * (m - 1)
            for n, (lo, hi), k, s, m in zip(in_hw, pads, (eh, ew), stride, out)]
    # δX = col2im(δỸ F̃ᵀ): correlation of the stride-dilated δY with the flipped
    # kernel, padded by k − 1 less the forward's padding on each side (negative:
    # cropped), so that it yields the input's gradient itself, not the padded
    # input's to be cropped afterwards (which computed the padding's too).
    # Per group, F̃ᵀ maps that group's O/G output channels back to its C/G
    # inputs: the kernel as (O/G, G·C/G, FH, FW), read "IOHW".
    o, c = w.shape[:2]
    wt = w.reshape(groups, o // groups, c, *window).transpose(1, 0, 2, 3, 4).reshape(o // groups, groups * c, *window)
    dx = _conv(g, jnp.flip(wt, (2, 3)).astype(g.dtype), _DIMS[layout]["dx"], window_strides=(1, 1),
               padding=[(e - 1 - lo, e - 1 - hi + r) for e, (lo, hi), r in zip((eh, ew), pads, rest)],
               lhs_dilation=stride, rhs_dilation=dilation, feature_group_count=groups)
    # δF̃ = X̃ᵀ δỸ: correlate X with δY (dilated by the stride), contracting the
    # batch; the kernel's entries are d apart, so the correlation steps by d. With
    # groups, x's channels (here the batch axis) pair with their group's outputs.
    # The rows no window reached are cropped from the high side, so that it yields
    # exactly FH × FW entries (with them, a stride-2 1×1 conv computed 2×2).
    dw = _conv(x, g.astype(x.dtype), _DIMS[layout]["dw"], window_strides=dilation,
               padding=[(lo, hi - r) for (lo, hi), r in zip(pads, rest)],
               rhs_dilation=stride, batch_group_count=groups)
    return dx, dw


