"""3×3 convolution by Winograd's minimal filtering F(2×2, 3×3): 16 dense layers.

docs/derivation.md §3, "Winograd's F(2×2, 3×3)". In one dimension, two outputs
of a 3-tap correlation from a tile of 4 inputs ``d`` cost 4 products, not 6:

    y = Aᵀ[(G g) ⊙ (Bᵀ d)]

In two dimensions the (zero-)padded input is cut into 4×4 tiles that overlap
by 2 (tile ``(t, s)`` starts at row ``2t``, column ``2s``) and each tile
gives a 2×2 block of the output. Summed over the input channels,

    V = Bᵀ d B   per tile and channel            (4, 4, N·T·S, I)
    U = G F Gᵀ   per output and input channel    (4, 4, I, O)
    M^{ξν} = V^{ξν} U^{ξν}   for each of the 16 entries (ξ, ν) of a tile
    Y = Aᵀ M A   per tile and output channel      (the 2×2 block)

so the convolution is 16 dense layers (§1) between three fixed linear maps,
with 16/36 of im2col's multiplications. The backward pass is §1's rules for
the 16 products and the transposed matrices for the maps:

    δM = A δY Aᵀ            δU^{ξν} = V^{ξν}ᵀ δM^{ξν}     δV^{ξν} = δM^{ξν} U^{ξν}ᵀ
    δF = Gᵀ δU G            δX = Σ_tiles B δV Bᵀ, added where tiles overlap, padding dropped

Only for 3×3 kernels, stride 1, no dilation, one group (``select.winograd_applies``);
computed in NHWC (NCHW is transposed in and out). Saves ``x`` and ``w``; ``V`` and ``U`` are
recomputed in the backward pass (as the explicit algorithm rebuilds ``X̃``).
Each map is a sum of strided slices (its adjoint: of shifted arrays,
interleaved), which XLA fuses into one loop per axis.
"""
from __future__ import annotations

import functools
import operator

import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxbp.ops import _windows
from jaxbp.ops._recipe import after

# F(2, 3) (Lavin & Gray 2016): rows of Bᵀ make V from a tile's 4 inputs, rows of
# G make U from 3 taps, rows of Aᵀ make the 2 outputs from M.
BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]])
G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]])
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]])
TILE, OUT = BT.shape[1], AT.shape[0]  # a tile's inputs, its outputs (and the step between tiles)


def _combine(matrix, parts):
    """``[Σ_k matrix[r, k] · parts[k] for each row r]``, zero terms skipped."""
    def term(c, p):
        return p if c == 1 else -p if c == -1 else float(c) * p  # a Python float keeps p's dtype
    return [functools.reduce(operator.add, [term(c, p) for c, p in zip(row, parts) if c]) for row in matrix]


def _transform(x, axis, tiles):
    """``Bᵀ`` along ``axis``: the ``tiles`` tiles of 4 (starting every 2nd
    entry) to their 4 transformed entries, stacked on a new leading axis."""
    entry = [lax.slice_in_dim(x, k, k + OUT * (tiles - 1) + 1, OUT, axis) for k in range(TILE)]
    return jnp.stack(_combine(BT, entry))


def _transform_adjoint(v, axis):
    """``B`` along ``axis`` of ``v[0]``, consuming the leading axis: each tile's
    4 entries back to its 4 inputs, added where tiles overlap. Entry ``k`` of
    tile ``t`` lands at ``2t + k``: the even and the odd positions are each a
    sum of shifted entries, then interleaved (an interleave, not strided
    padding, which XLA:CPU fused into the consumer's loop at ~5× its cost)."""
    parts = _combine(BT.T, list(v))
    tiles = parts[0].shape[axis]
    count = tiles + (TILE - 1) // OUT  # positions of each parity
    zero = jnp.zeros((), v.dtype)

    def shifted(p, q):  # p placed q positions later
        config = [(0, 0, 0)] * p.ndim
        config[axis] = (q, count - tiles - q, 0)
        return lax.pad(p, zero, config)

    return _interleave([functools.reduce(operator.add, [shifted(p, k // OUT) for k, p in enumerate(parts)
                                                        if k % OUT == r]) for r in range(OUT)], axis)


def _output(m, axis):
    """``Aᵀ`` along ``axis`` of ``m[0]``, consuming the leading axis: each
    tile's 4 entries to its 2 outputs, interleaved (``2·tiles`` long)."""
    return _interleave(_combine(AT, list(m)), axis)


def _interleave(rows, axis):
    """``out[OUT·t + r] = rows[r][t]`` along ``axis``."""
    shape = list(rows[0].shape)
    shape[axis] *= len(rows)
    return jnp.stack(rows, axis + 1).reshape(shape)


def _output_adjoint(g, axis):
    """``A`` along ``axis``: each tile's 2 output gradients to its 4 entries,
    stacked on a new leading axis."""
    out = [lax.slice_in_dim(g, j, g.shape[axis], OUT, axis) for j in range(OUT)]
    return jnp.stack(_combine(AT.T, out))


def _kernel(w):
    """``U = G F Gᵀ`` per channel pair: ``w (O, I, 3, 3) -> (4, 4, I, O)``, entries (ν, ξ).

    Sums of scaled taps, like the data's transform (as an einsum XLA:CPU ran
    it as two small products, ~6× slower in the train step)."""
    taps = w.transpose(3, 2, 1, 0)                                       # (3, 3, I, O): column, row
    rows = jnp.stack(_combine(G, [taps[:, i] for i in range(3)]), 1)      # G along the rows: (3, 4, I, O)
    return jnp.stack(_combine(G, [rows[j] for j in range(3)]))            # and the columns: (4, 4, I, O)


def _kernel_adjoint(du, dtype):
    """``δF = Gᵀ δU G``: ``(4, 4, I, O) -> (O, I, 3, 3)``."""
    cols = jnp.stack(_combine(G.T, list(du)))                             # (3, 4, I, O)
    taps = jnp.stack(_combine(G.T, [cols[:, a] for a in range(TILE)]), 1)  # (3, 3, I, O)
    return taps.transpose(3, 2, 1, 0).astype(dtype)


def _geometry(x, pads):
    """Tiles along H and W, and the pads that make the padded input exactly
    ``2·tiles + 2`` long (an odd output gets one more row of zeros, cropped)."""
    tiles, tiled = [], []
    for n, (lo, hi) in zip(x.shape[1:3], pads):
        out = n + lo + hi - 2
        t = -(-out // OUT)
        tiles.append(t)
        tiled.append((lo, hi + OUT * t - out))
    return tuple(tiles), tuple(tiled)


def _tiles(x, pads):
    """``V = Bᵀ d B`` for every tile and channel, as 16 matrices ``(4, 4, N·T·S, C)``,
    entries (ν, ξ)."""
    (th, tw), tiled = _geometry(x, pads)
    v = _transform(_transform(_windows.pad(x, tiled, "NHWC"), 1, th), 3, tw)  # W is axis 3 once ξ is in front
    return v.reshape(TILE, TILE, -1, x.shape[3])


def forward(x, w, *, stride, pads, dilation, groups, layout):
    """``Y = Aᵀ[U ⊙ V]A`` with the channels summed: the 16 products
    ``M^{ξν} = V^{ξν} U^{ξν}``."""
    return _from_nhwc(_forward(_to_nhwc(x, layout), w, pads), layout)


def backward(x, w, g, *, stride, pads, dilation, groups, layout):
    """``(δX, δF)`` from ``δY`` (the bias's gradient is conv2d's)."""
    dx, dw = _backward(_to_nhwc(x, layout), w, _to_nhwc(g, layout), pads)
    return _from_nhwc(dx, layout), dw


def _to_nhwc(a, layout):
    return a.transpose(0, 2, 3, 1) if layout == "NCHW" else a


def _from_nhwc(a, layout):
    return a.transpose(0, 3, 1, 2) if layout == "NCHW" else a


def _forward(x, w, pads):
    """NHWC ``x`` and ``y``."""
    (th, tw), _ = _geometry(x, pads)
    m = (_tiles(x, pads) @ _kernel(w)).reshape(TILE, TILE, x.shape[0], th, tw, w.shape[0])
    y = _output(_output(m, 3), 1)
    limit = list(y.shape)  # whole tiles; an odd output's extra row and column dropped
    for a, (lo, hi) in zip((1, 2), pads):
        limit[a] = x.shape[a] + lo + hi - 2
    return lax.slice(y, [0] * 4, limit)


def _backward(x, w, g, pads):
    """``δX`` and ``δF`` from ``δY``, all NHWC."""
    (th, tw), tiled = _geometry(x, pads)
    # δY padded to whole tiles: the cropped outputs had no gradient.
    g = jnp.pad(g, [(0, 0), (0, OUT * th - g.shape[1]), (0, OUT * tw - g.shape[2]), (0, 0)])
    dm = _output_adjoint(_output_adjoint(g, 1), 3).reshape(TILE, TILE, -1, g.shape[3])  # δM = A δY Aᵀ
    # One contracted axis (the tiles, merged): with T and S apart XLA transposed both operands.
    # Contracted on V's own tiles axis, which XLA:CPU's product reads as laid out (BENCHMARKS.md).
    # V rebuilt once δM exists, δV made once δU is (``after``; on the small U,
    # not δM, which XLA then copied): else XLA kept the forward's V, or V, δM and δV at once.
    du = jnp.einsum("xytc,xyto->xyco", _tiles(after(dm, x), pads), dm)     # δU = Vᵀ δM
    dv = dm @ after(du, jnp.swapaxes(_kernel(w).astype(g.dtype), 2, 3))     # δV = δM Uᵀ
    dv = dv.reshape(TILE, TILE, x.shape[0], th, tw, x.shape[3])
    dxp = _transform_adjoint(_transform_adjoint(dv, 3), 1)  # B δV Bᵀ, tiles added where they overlap
    return _windows.unpad(dxp, tiled, x.shape[1:3], "NHWC"), _kernel_adjoint(du, w.dtype)
