"""2-D convolution (cross-correlation, as in every deep-learning library).

docs/derivation.md §3 (the source's "CNN" section). With ``X̃ = im2col(X)`` — rows ``(n, h', w')``,
columns ``(i, fh, fw)`` — and ``F̃ = reshape(F, O, I·FH·FW)ᵀ``:

    forward   Ỹ = X̃ F̃ + B̃
    backward  δb = Σ_rows δỸ,   δF̃ = X̃ᵀ δỸ,   δX = col2im(δỸ F̃ᵀ)

One module per way of evaluating these rules — :mod:`._explicit` (im2col),
:mod:`._implicit` (XLA convolutions), :mod:`._winograd` (F(2×2, 3×3)) — each
with ``forward(x, w, **static) -> Ỹ`` and ``backward(x, w, δY, **static) ->
(δX, δF)``; this module adds the bias and its gradient, validates the
arguments and registers each as a rule. :mod:`.select` owns the choice
between them.
"""
from __future__ import annotations

from jaxbp.ops import _checks, _windows
from jaxbp.ops._recipe import Check, Rule, op
from jaxbp.ops.conv import _explicit, _implicit, _winograd, select
from jaxbp.ops.conv.select import (  # noqa: F401
    ALGORITHMS, CHOICES, DEFAULT_ALGORITHM, auto_algorithm, compiler_options)


def _bias_shape(layout, o):
    return (1, o, 1, 1) if layout == "NCHW" else (1, 1, 1, o)


def _bias_grad(g, layout):
    """``δb = Σ_rows δỸ``: the sum over every axis of ``δY`` but the channels."""
    ch = _windows.LAYOUTS[layout][1]
    return g.sum(axis=tuple(a for a in range(4) if a != ch))


def _rule(forward, backward):
    """The forward pass of algorithm ``forward``, the backward of ``backward``
    (modules), plus the bias; saves ``x`` and ``w``. Each backward reads ``x``
    once ``δY`` exists (:func:`~jaxbp.ops._recipe.after`, in its module), so
    that XLA keeps ``x`` itself, not a forward-pass copy laid out for it."""
    def _forward(x, w, b, **static):
        y = forward.forward(x, w, **static)
        return (y if b is None else y + b.reshape(_bias_shape(static["layout"], w.shape[0]))), (x, w)

    def _backward(residuals, g, **static):
        x, w = residuals
        return (*backward.backward(x, w, g, **static), _bias_grad(g, static["layout"]))
    return Rule(_forward, _backward, name="conv2d")


_ALGORITHMS = {"explicit": _explicit, "implicit": _implicit, "winograd": _winograd}
assert tuple(_ALGORITHMS) == ALGORITHMS, "select.ALGORITHMS names the algorithms registered here"
# (forward's, backward's) -> rule, for every pair (select.passes).
_RULES = {(f, b): _rule(_ALGORITHMS[f], _ALGORITHMS[b]) for f in ALGORITHMS for b in ALGORITHMS}


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
        F(2×2, 3×3), 16 matrix products; docs/derivation.md §3), a pair
        ``(forward's, backward's)`` of these (the same rules and residuals:
        each pass by its own), or ``"auto"`` (from the shapes and the backend:
        :func:`jaxbp.ops.conv.select.auto_algorithm`).
      layout: ``"NCHW"`` or ``"NHWC"`` for ``x`` and the result.

    Returns:
      ``(N, O, H', W')`` (or ``(N, H', W', O)``),
      ``H' = (H + pads − d·(FH − 1) − 1) // sh + 1``.
    """
    (ah, aw), ch = _windows.check_layout(layout)
    if not (isinstance(algorithm, str) and algorithm == "auto"):
        select.passes(algorithm)
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
    if isinstance(algorithm, str) and algorithm == "auto":
        algorithm = select.auto_algorithm(x.shape, w.shape, stride, dilation, groups, layout)
    passes = select.passes(algorithm)
    in_hw = (x.shape[ah], x.shape[aw])
    window = _windows.effective(w.shape[2:], dilation)
    pads = _windows.resolve_padding(padding, in_hw, window, stride)
    _windows.out_hw(in_hw, window, stride, pads)
    if "winograd" in passes and not select.winograd_applies(w.shape[2:], stride, dilation, groups):
        raise ValueError(f"algorithm={algorithm!r}: Winograd's computes 3×3 convolutions with stride 1, "
                         f"dilation 1 and groups 1; got w of shape {tuple(w.shape)} "
                         f"(kernel {tuple(w.shape[2:])}), stride {stride}, dilation {dilation}, groups {groups}")
    return _RULES[passes](*_checks.promote(x, w, b), stride=stride, pads=pads, dilation=dilation,
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
    # one algorithm per pass: auto's for a layer of few input channels
    "conv2d NHWC explicit → implicit": Check("conv2d", lambda n: n(_XH, _W, (4,)) + (1, 1), (0, 1, 2),
                                             {"algorithm": ("explicit", "implicit"), "layout": "NHWC"}),
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
