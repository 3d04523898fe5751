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

import jax
import jax.numpy as jnp
from jax import lax

from jaxbp.ops import _checks, _windows, _winograd
from jaxbp.ops._recipe import Check, Rule, op

# The default of conv2d, of the layers and of `jaxbp train`: the same rules as
# "explicit", measured faster on CPUs and GPUs (BENCHMARKS.md).
DEFAULT_ALGORITHM = "implicit"

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
    keeps the stated ones and falls back to a generic loop nest, measured 7–40×
    slower per convolution (BENCHMARKS.md). Other backends get ``dims`` as is."""
    def stated(lhs, rhs):
        return lax.conv_general_dilated(lhs, rhs, dimension_numbers=dims, **kwargs)

    def canonical(lhs, rhs):
        (ls, rs, os_), canon = dims, ("NHWC", "HWIO", "NHWC")
        out = lax.conv_general_dilated(lhs.transpose([ls.index(a) for a in canon[0]]),
                                       rhs.transpose([rs.index(a) for a in canon[1]]),
                                       dimension_numbers=canon, **kwargs)
        return out.transpose([canon[2].index(a) for a in os_])

    return lax.platform_dependent(lhs, rhs, cpu=canonical, default=stated)


def _bias_shape(layout, o):
    return (1, o, 1, 1) if layout == "NCHW" else (1, 1, 1, o)


def _patches(x, window, stride, pads, dilation, layout):
    """``X̃`` (NCHW: ``N,C,K,H',W'``; NHWC: ``N,H',W',K,C``)."""
    (ah, aw), _ = _windows.LAYOUTS[layout]
    out = _windows.out_hw((x.shape[ah], x.shape[aw]), _windows.effective(window, dilation), stride, pads)
    return _windows.im2col(_windows.pad(x, pads, layout), window, stride, out, layout, dilation)


def _explicit_forward(x, w, b, *, stride, pads, dilation, groups, layout):
    o = w.shape[0]
    cols = _patches(x, w.shape[2:], stride, pads, dilation, layout)
    if layout == "NHWC" and groups == 1:
        # Ỹ = X̃ F̃ as one 2-D matmul, rows (n, h', w'), columns (fh, fw, i): the
        # patch matrix is used as laid out (an einsum let XLA transpose it instead of F̃).
        n, ho, wo, kk, c = cols.shape
        y = _patch_product(cols.reshape(n * ho * wo, kk * c), _kernel(w, layout, 1).reshape(o, kk * c))
        y = y.reshape(n, ho, wo, o)
    else:
        xs, ys, ks = _SUBSCRIPTS[layout]
        xg, yg = _GROUP_AXIS[layout]
        y = jnp.einsum(f"{xs},{ks}->{ys}", _split(cols, xg, groups), _kernel(w, layout, groups))  # Ỹ = X̃ F̃
        y = y.reshape(y.shape[:yg] + (o,) + y.shape[yg + 2:])
    # Residuals: x and w; the explicit backward pass rebuilds X̃ from x.
    return (y if b is None else y + b.reshape(_bias_shape(layout, o))), (x, w)


def _patch_product(cols, kernel):
    """``Ỹ = X̃ F̃`` for a 2-D ``X̃`` ``(rows, K)`` and ``F̃ᵀ`` ``(O, K)``. On CPUs a
    narrow ``X̃`` (``K < 16``: a 3×3 conv of one channel has 9 columns) with at
    most 16 outputs gets zero columns up to 16, as does ``F̃``: the product is
    unchanged (the zeros add nothing), and XLA:CPU computes it faster
    (BENCHMARKS.md); with more outputs it was not faster."""
    def plain(cols, kernel):
        return cols @ kernel.T

    k, o = cols.shape[1], kernel.shape[0]
    if k >= 16 or o > 16:
        return plain(cols, kernel)

    def padded(cols, kernel):
        zeros = ((0, 0), (0, 16 - k))
        return plain(jnp.pad(cols, zeros), jnp.pad(kernel, zeros))
    return lax.platform_dependent(cols, kernel, cpu=padded, default=plain)


def _geometry(x, w, g, layout):
    """Kernel size, channel axis, input and output spatial sizes."""
    (ah, aw), ch = _windows.LAYOUTS[layout]
    return w.shape[2:], ch, (x.shape[ah], x.shape[aw]), (g.shape[ah], g.shape[aw])


def _whole(stride, pads, dilation, groups, layout, x, w, g):
    """``δF̃ = X̃ᵀ δỸ`` and ``δX = col2im(δỸ F̃ᵀ)``, one matmul each, ``X̃`` and
    ``δX̃`` materialized whole (``X̃`` rebuilt from ``x``)."""
    (fh, fw), _, in_hw, _ = _geometry(x, w, g, layout)
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(in_hw, pads))
    cols = _patches(x, (fh, fw), stride, pads, dilation, layout)
    kernel = _kernel(w, layout, groups).astype(g.dtype)
    if layout == "NHWC" and groups == 1:
        n, ho, wo, kk, c = cols.shape
        o = w.shape[0]
        g2 = g.reshape(n * ho * wo, o)
        if kk * c < 32 <= o:
            # A narrow X̃ (one input channel: 9 columns) and ≥ 32 outputs: δF̃ = X̃ᵀ δỸ
            # with X̃ᵀ built as such, rows (fh, fw, i), from the channels-first input.
            # XLA:CPU's product over the rows of X̃ as laid out was slow; the second
            # im2col costs more than that saves with fewer outputs or a wider X̃
            # (BENCHMARKS.md).
            xt = _windows.pad(x, pads, layout).transpose(3, 0, 1, 2)
            cols_t = jnp.stack([_windows.window_entry(xt, dilation[0] * i, dilation[1] * j, stride, (ho, wo),
                                                      "NCHW") for _, (i, j) in _windows.entries((fh, fw))])
            dw = (cols_t.reshape(kk * c, -1) @ g2).reshape(fh, fw, c, o).transpose(3, 2, 0, 1)
        else:
            dw = (g2.T @ cols.reshape(n * ho * wo, kk * c)).reshape(o, fh, fw, c).transpose(0, 3, 1, 2)
        dcols = (g2 @ kernel.reshape(o, kk * c)).reshape(cols.shape)
    else:
        xs, ys, ks = _SUBSCRIPTS[layout]
        xg, yg = _GROUP_AXIS[layout]
        gs = _split(g, yg, groups)
        dk = jnp.einsum(f"{xs},{ys}->{ks}", _split(cols, xg, groups), gs)
        dw = (dk.reshape(w.shape) if layout == "NCHW"
              else dk.reshape(w.shape[0], fh, fw, w.shape[1]).transpose(0, 3, 1, 2))
        dcols = jnp.einsum(f"{ys},{ks}->{xs}", gs, kernel).reshape(cols.shape)
    dx = _windows.col2im(dcols, (fh, fw), stride, padded, layout, dilation)
    return _windows.unpad(dx, pads, in_hw, layout), dw


def _blockwise(stride, pads, dilation, groups, layout, x, w, g):
    """The same two products, one block of ``C`` columns of ``X̃`` (one window
    entry ``k``) at a time, so neither ``X̃`` nor ``δX̃`` exists whole:
    ``δF̃_k = X̃_kᵀ δỸ`` (``X̃_k`` is a strided slice of ``x``) and
    ``δX = Σ_k place_k(δỸ F̃_kᵀ)``."""
    (fh, fw), ch, in_hw, out = _geometry(x, w, g, layout)
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


def _explicit_backward(res, g, *, stride, pads, dilation, groups, layout):
    x, w = res
    # Which evaluation is faster depends on the backend (BENCHMARKS.md): on CPUs
    # the whole matmuls (XLA shares the rebuilt X̃ with the forward pass's); on
    # GPUs the blocks (less memory traffic, no patch-sized buffers). Both are
    # tested against the twin on every backend (tests/test_conv.py).
    static = (stride, pads, dilation, groups, layout)
    dx, dw = lax.platform_dependent(x, w, g, cpu=functools.partial(_whole, *static),
                                    default=functools.partial(_blockwise, *static))
    return dx, dw, _bias_grad(g, layout)


def _bias_grad(g, layout):
    """``δb = Σ_rows δỸ``: the sum over every axis of ``δY`` but the channels."""
    ch = _windows.LAYOUTS[layout][1]
    return g.sum(axis=tuple(a for a in range(4) if a != ch))


def _implicit_forward(x, w, b, *, stride, pads, dilation, groups, layout):
    y = _conv(x, w, _DIMS[layout]["fwd"], window_strides=stride, padding=pads, rhs_dilation=dilation,
              feature_group_count=groups)
    return (y if b is None else y + b.reshape(_bias_shape(layout, w.shape[0]))), (x, w)


def _implicit_backward(res, g, *, stride, pads, dilation, groups, layout):
    x, w = res
    window, _, in_hw, out = _geometry(x, w, g, layout)
    (eh, ew) = _windows.effective(window, dilation)
    # Rows/columns of the padded input that no window reaches (stride leftovers).
    rest = [n + lo + hi - k - s * (m - 1)
            for n, (lo, hi), k, s, m in zip(in_hw, pads, (eh, ew), stride, out)]
    # δX = col2im(δỸ F̃ᵀ): full correlation of the stride-dilated δY with the
    # flipped kernel, giving the padded input's gradient; then drop the padding.
    # Per group, F̃ᵀ maps that group's O/G output channels back to its C/G
    # inputs: the kernel as (O/G, G·C/G, FH, FW), read "IOHW".
    o, c = w.shape[:2]
    wt = w.reshape(groups, o // groups, c, *window).transpose(1, 0, 2, 3, 4).reshape(o // groups, groups * c, *window)
    dxp = _conv(g, jnp.flip(wt, (2, 3)).astype(g.dtype), _DIMS[layout]["dx"], window_strides=(1, 1),
                padding=[(eh - 1, eh - 1 + rest[0]), (ew - 1, ew - 1 + rest[1])],
                lhs_dilation=stride, rhs_dilation=dilation, feature_group_count=groups)
    dx = _windows.unpad(dxp, pads, in_hw, layout)
    # δF̃ = X̃ᵀ δỸ: correlate X with δY (dilated by the stride), contracting the
    # batch; the kernel's entries are d apart, so the correlation steps by d. With
    # groups, x's channels (here the batch axis) pair with their group's outputs.
    dw = _conv(x, g.astype(x.dtype), _DIMS[layout]["dw"], window_strides=dilation, padding=list(pads),
               rhs_dilation=stride, batch_group_count=groups)[:, :, :window[0], :window[1]]
    return dx, dw, _bias_grad(g, layout)


def _winograd_forward(x, w, b, *, stride, pads, dilation, groups, layout):
    # The module computes in NHWC; NCHW is transposed in and out.
    return _from_nhwc(_winograd.forward(_to_nhwc(x, layout), w, b, pads=pads), layout), (x, w)


def _winograd_backward(res, g, *, stride, pads, dilation, groups, layout):
    x, w = res
    dx, dw = _winograd.backward(_to_nhwc(x, layout), w, _to_nhwc(g, layout), pads=pads)
    return _from_nhwc(dx, layout), dw, _bias_grad(g, layout)


def _to_nhwc(a, layout):
    return a.transpose(0, 2, 3, 1) if layout == "NCHW" else a


def _from_nhwc(a, layout):
    return a.transpose(0, 3, 1, 2) if layout == "NCHW" else a


_ALGORITHMS = {"explicit": Rule(_explicit_forward, _explicit_backward),
               "implicit": Rule(_implicit_forward, _implicit_backward),
               "winograd": Rule(_winograd_forward, _winograd_backward)}
ALGORITHMS = tuple(_ALGORITHMS)
CHOICES = ALGORITHMS + ("auto",)   # what conv2d(algorithm=...), the layers and --algorithm accept


# auto's rule on CPUs, from each layer's measured forward + backward time by
# every algorithm (benchmarks/conv_algorithms.py; the table in BENCHMARKS.md).
FEW_CHANNELS = 4          # up to this many input channels the patch matrix is small: one matmul wins
MANY_ROWS = 16384         # from this many positions (N·H·W) XLA's own convolution wins
MUCH_WORK = 1 << 20       # ... or from this many positions × input channels
WINOGRAD_ROWS = 2048      # Winograd's transforms pay for themselves from this many positions
WINOGRAD_CHANNELS = 32    # ... and this many input channels (fewer: within noise of explicit, in a model slower)


def auto_algorithm(x_shape, w_shape, stride=1, dilation=1, groups=1, layout="NCHW", backend=None):
    """The algorithm a layer with ``algorithm="auto"`` uses, from its shapes.

    On other backends than CPUs, :data:`DEFAULT_ALGORITHM`. On CPUs, from the
    layer's input positions ``N·H·W`` and channels ``C`` (thresholds above):
    the explicit im2col for strided and 1×1 convolutions and for few input
    channels; XLA's convolution (implicit) for large ones; Winograd's for the
    3×3 stride-1 ones between; the explicit im2col for the smallest.
    ``backend``: default JAX's default backend, where the model will run."""
    if (backend or jax.default_backend()) != "cpu":
        return DEFAULT_ALGORITHM
    (ah, aw), ch = _windows.check_layout(layout)
    stride, dilation = _checks.pair("stride", stride, 1), _checks.pair("dilation", dilation, 1)
    rows, channels = x_shape[0] * x_shape[ah] * x_shape[aw], x_shape[ch]
    if stride != (1, 1) or tuple(w_shape[2:]) == (1, 1) or channels <= FEW_CHANNELS:
        return "explicit"
    if rows >= MANY_ROWS or rows * channels >= MUCH_WORK:
        return "implicit"
    if (_winograd.applies(w_shape[2:], stride, dilation, groups) and rows >= WINOGRAD_ROWS
            and channels >= WINOGRAD_CHANNELS):
        return "winograd"
    return "explicit"


@op
def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, *, algorithm=DEFAULT_ALGORITHM,
           layout="NCHW"):
    """2-D convolution (cross-correlation): ``Y = X ⊗ F + b``, i.e. ``Ỹ = X̃ F̃ + B̃``.

    Backward (docs/derivation.md §3): ``δb = Σ_rows δỸ``,
    ``δF̃ = X̃ᵀ δỸ``, ``δX = col2im(δỸ F̃ᵀ)``. Saves ``x`` and ``w``.
    ``algorithm="explicit"`` builds the patch matrix ``X̃`` (im2col) in the
    forward pass and rebuilds it in the backward pass; ``"implicit"`` (the
    default) evaluates the same three products as XLA convolutions without
    materializing ``X̃``. In im2col terms dilation is a strided window (entry
    ``(i, j)`` of a window reads ``(d·i, d·j)`` from its corner) and ``groups``
    makes ``F̃`` block-diagonal: the same rules, per block (§3, "Dilation and groups").

    Args:
      x: ``(N, C, H, W)`` input (``(N, H, W, C)`` when ``layout="NHWC"``).
      w: ``(O, C / groups, FH, FW)`` kernel, in both layouts.
      b: ``(O,)`` bias, or ``None``.
      stride: int or ``(sh, sw)``, each ≥ 1.
      padding: int, ``(ph, pw)``, ``((top, bottom), (left, right))``, ``"SAME"``
        (output ``ceil(H / sh)``) or ``"VALID"``; zeros are padded.
      dilation: int or ``(dh, dw)``, each ≥ 1: the spacing of the kernel's
        entries (PyTorch's ``dilation``, lax's ``rhs_dilation``).
      groups: ``C`` and ``O`` split into this many groups, group ``g`` of the
        outputs computed from group ``g`` of the inputs only; ``groups = C`` is
        a depthwise convolution.
      algorithm: ``"implicit"`` (default: the rules as XLA convolutions, ``X̃``
        never materialized), ``"explicit"`` (im2col: build ``X̃``),
        ``"winograd"`` (3×3, stride 1, no dilation, one group: Winograd's
        F(2×2, 3×3), 16 matrix products; docs/derivation.md §3) or ``"auto"``
        (one of them from the shapes and the backend: :func:`auto_algorithm`).
      layout: ``"NCHW"`` or ``"NHWC"`` for ``x`` and the result.

    Returns:
      ``(N, O, H', W')`` (or ``(N, H', W', O)``),
      ``H' = (H + pads − d·(FH − 1) − 1) // sh + 1``.
    """
    (ah, aw), ch = _windows.check_layout(layout)
    if algorithm not in CHOICES:
        raise ValueError(f"algorithm must be one of {', '.join(map(repr, CHOICES))}, got {algorithm!r}")
    for name, a in (("x", x), ("w", w)) + ((("b", b),) if b is not None else ()):
        _checks.floating(name, a)
    _checks.rank("x", x, 4, " ".join(layout))
    _checks.rank("w", w, 4, "O I FH FW")
    groups = _checks.count("groups", groups)
    if x.shape[ch] % groups or w.shape[0] % groups:
        raise ValueError(f"groups={groups} must divide the input channels of x (shape {tuple(x.shape)}, "
                         f"{layout}) and the output channels of w (shape {tuple(w.shape)})")
    if w.shape[1] * groups != x.shape[ch]:
        per = f" / groups = {x.shape[ch] // groups}" if groups > 1 else ""
        raise ValueError(f"w must have {x.shape[ch]}{per} input channels (axis 1) to match x of "
                         f"shape {tuple(x.shape)} ({layout}), got w of shape {tuple(w.shape)}")
    if b is not None:
        _checks.shape("b", b, (w.shape[0],), "one entry per output channel of w")
    stride = _checks.pair("stride", stride, 1)
    dilation = _checks.pair("dilation", dilation, 1)
    if algorithm == "auto":
        algorithm = auto_algorithm(x.shape, w.shape, stride, dilation, groups, layout)
    in_hw = (x.shape[ah], x.shape[aw])
    window = _windows.effective(w.shape[2:], dilation)
    pads = _windows.resolve_padding(padding, in_hw, window, stride)
    _windows.out_hw(in_hw, window, stride, pads)
    if algorithm == "winograd" and not _winograd.applies(w.shape[2:], stride, dilation, groups):
        raise ValueError(f"algorithm='winograd' computes 3×3 convolutions with stride 1, dilation 1 and "
                         f"groups 1; got w of shape {tuple(w.shape)} (kernel {tuple(w.shape[2:])}), "
                         f"stride {stride}, dilation {dilation}, groups {groups}")
    return _ALGORITHMS[algorithm](*_checks.promote(x, w, b), stride=stride, pads=pads, dilation=dilation,
                                  groups=groups, layout=layout)


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
    # dilation 2, two groups of 2 input channels (w: 4 outputs, 2 inputs per group).
    "conv2d dilated grouped explicit": Check("conv2d", lambda n: n(_XH[:3] + (4,), _W[:1] + (2,) + _W[2:], (4,))
                                             + (1, 1, 2, 2), (0, 1, 2), {"algorithm": "explicit", "layout": "NHWC"}),
    "conv2d dilated grouped implicit": Check("conv2d", lambda n: n(_X[:1] + (4,) + _X[2:], _W[:1] + (2,) + _W[2:], (4,))
                                             + (1, 1, 2, 2), (0, 1, 2), {"algorithm": "implicit"}),
    "conv2d NCHW winograd": Check("conv2d", lambda n: n(_X, _W[:3] + (3,), (4,)) + (1, 1), (0, 1, 2),
                                  {"algorithm": "winograd"}),
    "conv2d NHWC winograd": Check("conv2d", lambda n: n(_XH, _W[:3] + (3,), (4,)) + (1, "VALID"), (0, 1, 2),
                                  {"algorithm": "winograd", "layout": "NHWC"}),
}
