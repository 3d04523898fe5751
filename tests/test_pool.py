import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jax import lax

import jaxbp
from jaxbp import _windows
from helpers import Case, assert_twin, gradient_test, normal, sharded_test

POOLS = {"max": jaxbp.max_pool2d, "avg": jaxbp.avg_pool2d}


def pool_case(kind, seed, shape, window, stride=None, padding=0, layout="NCHW"):
    return Case(POOLS[kind], (normal(seed, shape)[0], window, stride, padding), (0,), {"layout": layout})


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
    np.testing.assert_allclose(case.op(*case.args, **case.kwargs),
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


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("kind", list(POOLS))
def test_gradient_keeps_dtype(kind, dtype):
    x = normal(3, (2, 2, 6, 6), dtype=dtype)[0]
    assert jax.grad(lambda x: POOLS[kind](x, 2).astype(jnp.float32).sum())(x).dtype == dtype


@settings(max_examples=20, deadline=None)
@given(kind=st.sampled_from(list(POOLS)), kh=st.integers(1, 3), kw=st.integers(1, 3),
       sh=st.integers(1, 3), sw=st.integers(1, 3), ph=st.integers(0, 2), pw=st.integers(0, 2),
       h=st.integers(3, 8), w=st.integers(3, 8), layout=st.sampled_from(["NCHW", "NHWC"]))
def test_property_random_configurations(kind, kh, kw, sh, sw, ph, pw, h, w, layout):
    ph, pw = min(ph, kh - 1), min(pw, kw - 1)  # max pooling needs padding < window
    shape = (2, 2, h, w) if layout == "NCHW" else (2, h, w, 2)
    case = pool_case(kind, 4, shape, (kh, kw), (sh, sw), (ph, pw), layout)
    np.testing.assert_allclose(case.op(*case.args, **case.kwargs),
                               reduce_window(kind, *case.args, **case.kwargs), rtol=1e-14, atol=1e-15)
    assert_twin(case)
