"""Winograd's convolution with tiles larger than jaxbp ships, for the
benchmarks that ask whether the floor is the tile size: F(4×4, 3×3) and
F(6×6, 3×3), each jaxbp's own Winograd module (``jaxbp/ops/conv/_winograd.py``,
F(2×2, 3×3)) loaded a second time with the larger tiles' matrices.

Not shipped: in float32 their error is an order of magnitude above F(2×2)'s
(1–6e-6 of the largest output against 1–8e-7), and their workspaces sit on
the train step's peak (BENCHMARKS.md, "The numbers behind the code's choices").
The matrices come from the interpolation points by Toom–Cook (Lavin & Gray
2016), so no table of constants is copied by hand.
"""
import fractions
import functools
import importlib.util
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.ops import conv as conv_ops
from jaxbp.ops.conv import _implicit, _winograd
from jaxbp.tools.timing import forward_and_backward

# F(m×m, 3×3)'s interpolation points: 0, ±1, ±2, ±1/2 (Lavin & Gray 2016) and ∞.
POINTS = {4: (0, 1, -1, 2, -2), 6: (0, 1, -1, 2, -2, 0.5, -0.5)}
PADS = ((1, 1), (1, 1))
STATIC = dict(stride=(1, 1), pads=PADS, dilation=(1, 1), groups=1, layout="NHWC")


def toom_cook(m, points, r=3):
    """``(Bᵀ, G, Aᵀ)`` of Winograd's F(m, r) from ``m + r − 2`` finite points and ∞:
    ``Aᵀ`` and ``G`` evaluate at the points (Lavin & Gray 2016), and ``Bᵀ`` is
    what makes ``Aᵀ[(G g) ⊙ (Bᵀ d)]`` the correlation of every ``d`` with every
    ``g`` (a linear system, solved exactly)."""
    n, p = m + r - 1, [fractions.Fraction(x) for x in points]
    at = np.array([[float(q ** i) for q in p] + [float(i == m - 1)] for i in range(m)])
    f = [math.prod(p[j] - q for q in p if q != p[j]) for j in range(n - 1)]
    g = np.array([[float(p[j] ** k / f[j]) for k in range(r)] for j in range(n - 1)]
                 + [[float(k == r - 1) for k in range(r)]])
    # y_i = Σ_k g_k d_{i+k}:  Σ_j Aᵀ[i, j] G[j, k] Bᵀ[j, l] = [l = i + k]
    eqs = np.array([np.outer(at[i] * g[:, k], np.eye(n)[l]).ravel()
                    for i in range(m) for k in range(r) for l in range(n)])
    rhs = np.array([float(l == i + k) for i in range(m) for k in range(r) for l in range(n)])
    bt = np.linalg.lstsq(eqs, rhs, rcond=None)[0]
    assert np.abs(eqs @ bt - rhs).max() < 1e-9, "no F(m, r) for these points"
    return bt.reshape(n, n), g, at


def tiles(m):
    """jaxbp's Winograd module computing F(m×m, 3×3): a second copy with its matrices swapped."""
    spec = importlib.util.spec_from_file_location(f"winograd_f{m}", _winograd.__file__)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.BT, mod.G, mod.AT = toom_cook(m, POINTS[m])
    mod.TILE, mod.OUT = m + 2, m
    return mod


def conv(m):
    """``conv(x, w)``: NHWC ``x``, OIHW ``w``, padding ``SAME``, by F(m×m, 3×3):
    the module registered as ``conv2d`` registers its algorithms, so its own
    backward pass differentiates it."""
    algorithm = tiles(m)
    rule = conv_ops._rule(algorithm, algorithm)
    return lambda x, w: rule(x, w, None, **STATIC)


def larger_tile_candidates(x_shape, w_shape):
    """Forward + δX + δF of one stride-1 3×3 NHWC layer by F(4×4, 3×3) and F(6×6, 3×3),
    as ``conv_algorithms.candidates``' programs (the output and both gradients
    for a random cotangent), each checked against jaxbp's implicit conv first."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal(w_shape) * 0.1, jnp.float32)
    y = _implicit.forward(x, w, **STATIC)
    g = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    exact = (y, *_implicit.backward(x, w, g, **STATIC))
    fns = {}
    for m in POINTS:
        step = jax.jit(forward_and_backward(conv(m)), compiler_options=conv_ops.compiler_options())  # as training's
        for name, got, want in zip(("y", "δX", "δF"), step(x, w, g), exact):
            err = float(jnp.abs(got - want).max() / jnp.abs(want).max())
            assert err < 1e-4, f"F({m}×{m}, 3×3)'s {name} is wrong: relative error {err:.1e}"
        fns[f"F({m}×{m})"] = functools.partial(step, x, w, g)
    return fns
