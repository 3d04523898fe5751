"""2-D convolution (cross-correlation, as in every deep-learning library).

docs/derivation.md §3 (the source's "CNN" section). With ``X̃ = im2col(X)`` — rows ``(n, h', w')``,
columns ``(i, fh, fw)`` — and ``F̃ = reshape(F, O, I·FH·FW)ᵀ``:

    forward   Ỹ = X̃ F̃ + B̃                   ((N·H'·W') × O, then to N×O×H'×W')
    backward  δb = Σ_rows δỸ
              δF̃ = X̃ᵀ δỸ                     (§3, corrected: not δX̃ᵀ δỸ)
              δX = col2im(δỸ F̃ᵀ)             (col2im *adds* overlapping patches)

The products are written as ``einsum`` over named axes (NHWC: 2-D matmuls on
the patch matrix as laid out). The explicit path materializes ``X̃`` (``FH·FW``
times the input) in the forward pass and saves ``x``, not ``X̃``. Its backward
pass evaluates the two products either whole (``X̃`` rebuilt, ``δX̃``
materialized: on CPUs, where XLA shares the rebuilt ``X̃`` with the forward's)
or one window entry at a time (``X̃_k``, a block of ``C`` columns: elsewhere),
chosen when XLA compiles for the platform; BENCHMARKS.md has the measurements.

``algorithm="implicit"`` executes the *same* three rules as XLA convolutions,
never building ``X̃``: ``δX̃ F̃``-then-col2im is a correlation of the
stride-dilated ``δY`` with the spatially flipped, in/out-swapped kernel, and
``X̃ᵀ δỸ`` is a correlation of ``X`` with ``δY`` (dilated by the stride) in
which the batch axis is the one contracted.
"""
from __future__ import annotations

import functools

import jax.numpy as jnp
from jax import lax

from jaxbp.ops import _checks, _windows
from jaxbp.ops._recipe import Check, Rule, op

# The default of conv2d, of the layers and of `jaxbp train`: the same rules as
# "explicit", measured faster on CPUs and GPUs (BENCHMARKS.md).
DEFAULT_ALGORITHM = "implicit"

# einsum subscripts of the patch tensor, the output and the kernel F̃, per layout.
# The kernel's (i, k) order follows the patch's, so that no contraction output
# needs a transpose of patch size: NCHW (O, I, FH·FW), NHWC (O, FH·FW, I).
_SUBSCRIPTS = {"NCHW": ("nckhw", "nohw", "ock"), "NHWC": ("nhwkc", "nhwo", "okc")}


def _kernel(w, layout):
    o, c, fh, fw = w.shape
    return w.reshape(o, c, fh * fw) if layout == "NCHW" else w.transpose(0, 2, 3, 1).reshape(o, fh * fw, c)



# lax dimension numbers: forward, then the two backward convolutions.
_DIMS = {
    "NCHW": dict(fwd=("NCHW", "OIHW", "NCHW"), dx=("NCHW", "IOHW", "NCHW"),
                 dw=("CNHW", "IOHW", "CNHW")),
    "NHWC": dict(fwd=("NHWC", "OIHW", "NHWC"), dx=("NHWC", "IOHW", "NHWC"),
                 dw=("CHWN", "IHWO", "CNHW")),
}


def _bias_shape(layout, o):
    return (1, o, 1, 1) if layout == "NCHW" else (1, 1, 1, o)


def _patches(x, window, stride, pads, layout):
    """``X̃`` (NCHW: ``N,C,K,H',W'``; NHWC: ``N,H',W',K,C``)."""
    (ah, aw), _ = _windows.LAYOUTS[layout]
    out = _windows.out_hw((x.shape[ah], x.shape[aw]), window, stride, pads)
    return _windows.im2col(_windows.pad(x, pads, layout), window, stride, out, layout)


def _explicit_forward(x, w, b, *, stride, pads, layout):
    o = w.shape[0]
    cols = _patches(x, w.shape[2:], stride, pads, layout)
    if layout == "NHWC":
        # Ỹ = X̃ F̃ as one 2-D matmul, rows (n, h', w'), columns (fh, fw, i): the
        # patch matrix is used as laid out (an einsum let XLA transpose it instead of F̃).
        n, ho, wo, kk, c = cols.shape
        y = (cols.reshape(n * ho * wo, kk * c) @ _kernel(w, layout).reshape(o, kk * c).T).reshape(n, ho, wo, o)
    else:
        xs, ys, ks = _SUBSCRIPTS[layout]
        y = jnp.einsum(f"{xs},{ks}->{ys}", cols, _kernel(w, layout))  # Ỹ = X̃ F̃
    # Residuals: x and w; the explicit backward pass rebuilds X̃ from x.
    return (y if b is None else y + b.reshape(_bias_shape(layout, o))), (x, w)


def _geometry(x, w, g, layout):
    """Kernel size, channel axis, input and output spatial sizes."""
    (ah, aw), ch = _windows.LAYOUTS[layout]
    return w.shape[2:], ch, (x.shape[ah], x.shape[aw]), (g.shape[ah], g.shape[aw])


def _whole(stride, pads, layout, x, w, g):
    """``δF̃ = X̃ᵀ δỸ`` and ``δX = col2im(δỸ F̃ᵀ)``, one matmul each, ``X̃`` and
    ``δX̃`` materialized whole (``X̃`` rebuilt from ``x``)."""
    (fh, fw), _, in_hw, _ = _geometry(x, w, g, layout)
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(in_hw, pads))
    cols = _patches(x, (fh, fw), stride, pads, layout)
    kernel = _kernel(w, layout).astype(g.dtype)
    if layout == "NHWC":
        n, ho, wo, kk, c = cols.shape
        o = w.shape[0]
        g2 = g.reshape(n * ho * wo, o)
        dw = (g2.T @ cols.reshape(n * ho * wo, kk * c)).reshape(o, fh, fw, c).transpose(0, 3, 1, 2)
        dcols = (g2 @ kernel.reshape(o, kk * c)).reshape(cols.shape)
    else:
        xs, ys, ks = _SUBSCRIPTS[layout]
        dw = jnp.einsum(f"{xs},{ys}->{ks}", cols, g).reshape(w.shape)
        dcols = jnp.einsum(f"{ys},{ks}->{xs}", g, kernel)
    dx = _windows.unpad(_windows.col2im(dcols, (fh, fw), stride, padded, layout), pads, in_hw, layout)
    return dx, dw


def _blockwise(stride, pads, layout, x, w, g):
    """The same two products, one block of ``C`` columns of ``X̃`` (one window
    entry ``k``) at a time, so neither ``X̃`` nor ``δX̃`` exists whole:
    ``δF̃_k = X̃_kᵀ δỸ`` (``X̃_k`` is a strided slice of ``x``) and
    ``δX = Σ_k place_k(δỸ F̃_kᵀ)``."""
    (fh, fw), _, in_hw, out = _geometry(x, w, g, layout)
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(in_hw, pads))
    xs, ys, _ = _SUBSCRIPTS[layout]
    xk_s = xs.replace("k", "")  # one window entry: a block of C columns of X̃
    xp = _windows.pad(x, pads, layout)
    dw, dxp = [], 0
    for _, (i, j) in _windows.entries((fh, fw)):
        x_k = _windows.window_entry(xp, i, j, stride, out, layout)
        dw.append(jnp.einsum(f"{xk_s},{ys}->oc", x_k, g))
        dx_k = jnp.einsum(f"{ys},oc->{xk_s}", g, w[:, :, i, j].astype(g.dtype))
        dxp = dxp + _windows.place_entry(dx_k, i, j, stride, padded, layout)
    dw = jnp.stack(dw, axis=-1).reshape(w.shape)
    return _windows.unpad(dxp, pads, in_hw, layout), dw


def _explicit_backward(res, g, *, stride, pads, layout):
    x, w = res
    # Which evaluation is faster depends on the backend (BENCHMARKS.md): on CPUs
    # the whole matmuls (XLA shares the rebuilt X̃ with the forward pass's); on
    # GPUs the blocks (less memory traffic, no patch-sized buffers). Both are
    # tested against the twin on every backend (tests/test_conv.py).
    dx, dw = lax.platform_dependent(x, w, g, cpu=functools.partial(_whole, stride, pads, layout),
                                    default=functools.partial(_blockwise, stride, pads, layout))
    return dx, dw, _bias_grad(g, layout)


def _bias_grad(g, layout):
    """``δb = Σ_rows δỸ``: the sum over every axis of ``δY`` but the channels."""
    ch = _windows.LAYOUTS[layout][1]
    return g.sum(axis=tuple(a for a in range(4) if a != ch))


def _implicit_forward(x, w, b, *, stride, pads, layout):
    y = lax.conv_general_dilated(x, w, stride, pads, dimension_numbers=_DIMS[layout]["fwd"])
    return (y if b is None else y + b.reshape(_bias_shape(layout, w.shape[0]))), (x, w)


def _implicit_backward(res, g, *, stride, pads, layout):
    x, w = res
    (fh, fw), _, in_hw, out = _geometry(x, w, g, layout)
    # Rows/columns of the padded input that no window reaches (stride leftovers).
    rest = [n + lo + hi - k - s * (m - 1)
            for n, (lo, hi), k, s, m in zip(in_hw, pads, (fh, fw), stride, out)]
    # δX = col2im(δỸ F̃ᵀ): full correlation of the stride-dilated δY with the
    # flipped kernel, giving the padded input's gradient; then drop the padding.
    dxp = lax.conv_general_dilated(
        g, jnp.flip(w, (2, 3)).astype(g.dtype), (1, 1),
        [(fh - 1, fh - 1 + rest[0]), (fw - 1, fw - 1 + rest[1])],
        lhs_dilation=stride, dimension_numbers=_DIMS[layout]["dx"])
    dx = _windows.unpad(dxp, pads, in_hw, layout)
    # δF̃ = X̃ᵀ δỸ: correlate X with δY (dilated by the stride), contracting the batch.
    dw = lax.conv_general_dilated(
        x, g.astype(x.dtype), (1, 1), list(pads), rhs_dilation=stride,
        dimension_numbers=_DIMS[layout]["dw"])[:, :, :fh, :fw]
    return dx, dw, _bias_grad(g, layout)


_ALGORITHMS = {"explicit": Rule(_explicit_forward, _explicit_backward),
               "implicit": Rule(_implicit_forward, _implicit_backward)}


@op
def conv2d(x, w, b=None, stride=1, padding=0, *, algorithm=DEFAULT_ALGORITHM, layout="NCHW"):
    """2-D convolution (cross-correlation): ``Y = X ⊗ F + b``, i.e. ``Ỹ = X̃ F̃ + B̃``.

    Backward (docs/derivation.md §3): ``δb = Σ_rows δỸ``,
    ``δF̃ = X̃ᵀ δỸ``, ``δX = col2im(δỸ F̃ᵀ)``. Saves ``x`` and ``w``.
    ``algorithm="explicit"`` builds the patch matrix ``X̃`` (im2col) in the
    forward pass and rebuilds it in the backward pass; ``"implicit"`` (the
    default) evaluates the same three products as XLA convolutions without
    materializing ``X̃``.

    Args:
      x: ``(N, I, H, W)`` input (``(N, H, W, I)`` when ``layout="NHWC"``).
      w: ``(O, I, FH, FW)`` kernel, in both layouts.
      b: ``(O,)`` bias, or ``None``.
      stride: int or ``(sh, sw)``, each ≥ 1.
      padding: int, ``(ph, pw)``, ``((top, bottom), (left, right))``, ``"SAME"``
        (output ``ceil(H / sh)``) or ``"VALID"``; zeros are padded.
      algorithm: ``"implicit"`` (default: the rules as XLA convolutions, ``X̃``
        never materialized) or ``"explicit"`` (im2col: build ``X̃``).
      layout: ``"NCHW"`` or ``"NHWC"`` for ``x`` and the result.

    Returns:
      ``(N, O, H', W')`` (or ``(N, H', W', O)``), ``H' = (H + pads − FH) // sh + 1``.
    """
    (ah, aw), ch = _windows.check_layout(layout)
    if algorithm not in _ALGORITHMS:
        raise ValueError(f"algorithm must be 'explicit' or 'implicit', got {algorithm!r}")
    for name, a in (("x", x), ("w", w)) + ((("b", b),) if b is not None else ()):
        _checks.floating(name, a)
    _checks.rank("x", x, 4, " ".join(layout))
    _checks.rank("w", w, 4, "O I FH FW")
    if w.shape[1] != x.shape[ch]:
        raise ValueError(f"w must have {x.shape[ch]} input channels (axis 1) to match x of "
                         f"shape {tuple(x.shape)} ({layout}), got w of shape {tuple(w.shape)}")
    if b is not None:
        _checks.shape("b", b, (w.shape[0],), "one entry per output channel of w")
    stride = _checks.pair("stride", stride, 1)
    in_hw, window = (x.shape[ah], x.shape[aw]), tuple(w.shape[2:])
    pads = _windows.resolve_padding(padding, in_hw, window, stride)
    _windows.out_hw(in_hw, window, stride, pads)
    return _ALGORITHMS[algorithm](*_checks.promote(x, w, b), stride=stride, pads=pads, layout=layout)


__all__ = ["conv2d"]
_X, _W, _XH = (2, 3, 7, 6), (4, 3, 3, 2), (2, 7, 6, 3)
CHECKS = {
    "conv2d NCHW explicit": Check("conv2d", lambda n: n(_X, _W, (4,)) + (1, 1), (0, 1, 2),
                                  {"algorithm": "explicit"}),
    "conv2d NHWC explicit": Check("conv2d", lambda n: n(_XH, _W, (4,)) + (1, 1), (0, 1, 2),
                                  {"algorithm": "explicit", "layout": "NHWC"}),
    "conv2d NCHW implicit": Check("conv2d", lambda n: n(_X, _W, (4,)) + (1, 1), (0, 1, 2),
                                  {"algorithm": "implicit"}),
    "conv2d NHWC implicit": Check("conv2d", lambda n: n(_XH, _W, (4,)) + (1, 1), (0, 1, 2),
                                  {"algorithm": "implicit", "layout": "NHWC"}),
    "conv2d stride 2 SAME": Check("conv2d", lambda n: n(_X, _W, (4,)) + (2, "SAME"), (0, 1, 2),
                                  {"algorithm": "explicit"}),
}
