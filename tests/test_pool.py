import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jax import lax

import jaxbp
from jaxbp.ops import _windows
from helpers import Case, assert_twin, gradient_test, normal, sharded_test

POOLS = {"max": jaxbp.max_pool2d, "avg": jaxbp.avg_pool2d}


def pool_case(kind, seed, shape, window, stride=None, padding=0, layout="NCHW"):
    x = normal(seed, shape)[0]
    if kind == "max":  # distinct values ≥ 4/size apart: a finite-difference step never crosses a tie
        x = jnp.asarray(np.random.default_rng(seed).permutation(x.size).reshape(shape) * (4 / x.size) - 2)
    return Case(POOLS[kind], (x, window, stride, padding), (0,), {"layout": layout})


CASES = {}
for kind in POOLS:
    for i, (win, s, p) in enumerate(itertools.product(((2, 2), (3, 2)), (None, 1, 3), (0, 1))):
        CASES[f"{kind}-w{win}-s{s}-p{p}"] = pool_case(kind, i, (2, 3, 7, 8), win, s, p)
    CASES[f"{kind}-batch1-same"] = pool_case(kind, 20, (1, 2, 5, 5), 3, 2, "SAME")
    CASES[f"{kind}-nhwc"] = pool_case(kind, 21, (2, 6, 5, 3), (2, 3), (1, 2), 1, "NHWC")
    CASES[f"{kind}-window_fills_input"] = pool_case(kind, 22, (2, 2, 4, 3), (4, 3))
test_gradients = gradient_test(CASES, composition=[
    f"{k}-{c}" for k in POOLS for c in ("w(3, 2)-s1-p1", "batch1-same", "nhwc", "window_fills_input")])
test_sharded = sharded_test({k: pool_case(k, 23, (8, 2, 6, 6), 2) for k in POOLS})


def reduce_window(kind, x, window, stride, padding, layout="NCHW"):
    window = (window, window) if isinstance(window, int) else window
    stride = window if stride is None else ((stride, stride) if isinstance(stride, int) else stride)
    (ah, aw), _ = _windows.LAYOUTS[layout]
    pads = _windows.resolve_padding(padding, (x.shape[ah], x.shape[aw]), window, stride)
    dims, strides, full_pads = [1] * 4, [1] * 4, [(0, 0)] * 4
    dims[ah], dims[aw] = window
    strides[ah], strides[aw] = stride
    full_pads[ah], full_pads[aw] = pads
    if kind == "max":
        return lax.reduce_window(x, -jnp.inf, lax.max, dims, strides, full_pads)
    return lax.reduce_window(x, 0.0, lax.add, dims, strides, full_pads) / (window[0] * window[1])


@pytest.mark.parametrize("name", list(CASES))
def test_forward_equals_reduce_window(name):
    case = CASES[name]
    kind = name.split("-")[0]
    np.testing.assert_allclose(jax.jit(case.fn(case.op))(*case.diff),   # one program, not op by op
                               reduce_window(kind, *case.args, **case.kwargs), rtol=1e-14, atol=1e-15)


def test_max_tie_goes_to_first_entry_of_window():
    x = jnp.ones((1, 1, 2, 2))
    for op in (jaxbp.max_pool2d, jaxbp.max_pool2d.autodiff):
        g = jax.grad(lambda x: op(x, 2).sum())(x)
        assert g[0, 0].tolist() == [[1.0, 0.0], [0.0, 0.0]]


def test_overlapping_windows_add_their_gradients():
    x = jnp.arange(9.0).reshape(1, 1, 3, 3)
    g = jax.grad(lambda x: jaxbp.max_pool2d(x, 2, 1).sum())(x)
    assert g[0, 0].tolist() == [[0, 0, 0], [0, 1, 1], [0, 1, 1]]  # each window's max: 4,5,7,8
    g = jax.grad(lambda x: jaxbp.avg_pool2d(x, 2, 1).sum())(x)
    assert g[0, 0].tolist() == [[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("window,hw", [((2, 2), (7, 8)), ((3, 2), (9, 5)), ((1, 1), (3, 4))])
def test_tiling_windows_are_cut_and_put_back_without_sums(monkeypatch, layout, window, hw):
    """Windows that tile the input (stride = window: 2×2 pooling) take im2col's and
    col2im's reshape-and-transpose path; it equals the general entry-by-entry
    path, the rows and columns no window reaches (7 = 3·2 + 1) included."""
    (ah, aw), _ = _windows.LAYOUTS[layout]
    shape = [2, 3, 3, 3]
    shape[ah], shape[aw] = hw
    x = normal(0, tuple(shape))[0]
    out = _windows.out_hw(hw, window, window, ((0, 0), (0, 0)))
    paths = []
    for tiles in (True, False):
        monkeypatch.setattr(_windows, "_tiles", lambda *a, tiles=tiles: tiles)
        cols = _windows.im2col(x, window, window, out, layout)
        paths.append((cols, _windows.col2im(2 * cols + 1, window, window, hw, layout)))
    for fast, general in zip(*paths):
        assert fast.shape == general.shape
        np.testing.assert_array_equal(fast, general)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("kind", list(POOLS))
def test_gradient_keeps_dtype(kind, dtype):
    x = normal(3, (2, 2, 6, 6), dtype=dtype)[0]
    assert jax.grad(lambda x: POOLS[kind](x, 2).astype(jnp.float32).sum())(x).dtype == dtype


@pytest.mark.slow
@settings(max_examples=6, deadline=None)
@given(kind=st.sampled_from(list(POOLS)), kh=st.integers(1, 3), kw=st.integers(1, 3),
       sh=st.integers(1, 3), sw=st.integers(1, 3), ph=st.integers(0, 2), pw=st.integers(0, 2),
       h=st.integers(3, 8), w=st.integers(3, 8), layout=st.sampled_from(["NCHW", "NHWC"]))
def test_property_random_configurations(kind, kh, kw, sh, sw, ph, pw, h, w, layout):
    ph, pw = min(ph, kh // 2), min(pw, kw // 2)  # padding at most half the window
    shape = (2, 2, h, w) if layout == "NCHW" else (2, h, w, 2)
    case = pool_case(kind, 4, shape, (kh, kw), (sh, sw), (ph, pw), layout)
    np.testing.assert_allclose(case.op(*case.args, **case.kwargs),
                               reduce_window(kind, *case.args, **case.kwargs), rtol=1e-14, atol=1e-15)
    assert_twin(case)


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(list(POOLS)), k=st.tuples(st.integers(1, 4), st.integers(1, 4)),
       s=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       p=st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)),
       hw=st.tuples(st.integers(0, 4), st.integers(0, 4)), layout=st.sampled_from(["NCHW", "NHWC"]))
def test_any_configuration_is_a_clear_error_or_a_finite_result(kind, k, s, p, hw, layout):
    """Never a silent -inf (a window of padding alone) or NaN from finite input:
    the error the configuration calls for (checked in this order), else a result."""
    shape = (2, 2) + hw if layout == "NCHW" else (2,) + hw + (2,)
    x = normal(6, shape)[0]
    pads = ((p[0], p[1]), (p[2], p[3]))
    if 0 in hw:
        expected = "x has an empty spatial size"
    elif any(2 * side > kk for pp, kk in zip(pads, k) for side in pp):
        expected = "must be at most half the window"
    elif any(kk > n + lo + hi for kk, n, (lo, hi) in zip(k, hw, pads)):
        expected = "is larger than the padded input"
    else:
        expected = None
    call = lambda: POOLS[kind](x, k, s, pads, layout=layout)
    if expected is not None:
        with pytest.raises(ValueError, match=expected):
            call()
        return
    y = call()
    assert y.size > 0 and np.all(np.isfinite(y))


def test_empty_input_with_padding_is_an_error_not_minus_infinity():
    with pytest.raises(ValueError, match=r"x has an empty spatial size \(0, 0\)"):
        jaxbp.max_pool2d(jnp.ones((1, 1, 0, 0)), 2, stride=1, padding=1)


@pytest.mark.parametrize("kind", list(POOLS))
def test_nan_in_a_window_gives_nan_for_that_window(kind):
    x = normal(7, (1, 1, 4, 4))[0].at[0, 0, 0, 1].set(jnp.nan)
    for op in (POOLS[kind], POOLS[kind].autodiff):
        y = np.asarray(op(x, 2))
        assert np.isnan(y[0, 0, 0, 0]) and np.all(np.isfinite(y.ravel()[1:]))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_max_pool_keeps_its_index_in_one_byte(layout):
    """The saved arg-max is one byte per output in the compiled gradient: an
    index narrowed from ``argmax``'s int32 was kept as int32 by XLA:CPU, the
    narrowing moved into the backward pass (4× the residual)."""
    shape = (8, 4, 6, 6) if layout == "NCHW" else (8, 6, 6, 4)
    x = normal(8, shape)[0]
    grad = jax.jit(jax.grad(lambda x: (jaxbp.max_pool2d(jnp.tanh(x), 2, layout=layout) ** 2).sum()))
    text = grad.lower(x).compile().as_text()
    hlo = text[text.index("ENTRY"):]   # the program's buffers, not the fused computations' values
    outputs = 8 * 4 * 3 * 3
    sizes = {t: [int(np.prod([int(d) for d in dims.split(",")])) for dims in re.findall(t + r"\[([\d,]+)\]", hlo)]
             for t in ("s8", "s32", "s64")}
    assert outputs in sizes["s8"] and outputs not in sizes["s32"] + sizes["s64"], sizes
