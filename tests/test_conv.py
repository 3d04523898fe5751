import functools
import itertools
import math
import re

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jax import lax

import jaxbp
from jaxbp.ops import _checks, _windows
from jaxbp.ops.conv import _explicit, select
from helpers import (TWIN_TOL, Case, assert_close_trees, assert_twin, conv_stack_temp, gradient_test, normal,
                     sharded_test, vjp)


def conv_case(seed, x_shape, w_shape, stride=1, padding=0, bias=True, dilation=1, groups=1, **kw):
    x, w, b = normal(seed, x_shape, w_shape, (w_shape[0],))
    kw.setdefault("algorithm", "explicit")  # the implicit cases name it
    return Case(jaxbp.conv2d, (x, w, b if bias else None, stride, padding, dilation, groups),
                (0, 1, 2) if bias else (0, 1), kw)


# Non-square input (7×8) and kernel (3×2); strides 1–3 × paddings 0/1/2/SAME/VALID.
CASES = {f"s{s}-p{p}": conv_case(i, (2, 3, 7, 8), (4, 3, 3, 2), s, p)
         for i, (s, p) in enumerate(itertools.product((1, 2, 3), (0, 1, 2, "SAME", "VALID")))}
CASES.update({
    "batch1": conv_case(20, (1, 2, 5, 5), (3, 2, 3, 3), 1, 1),
    "no_bias": conv_case(21, (2, 2, 6, 5), (3, 2, 2, 2), 2, 0, bias=False),
    "stride_pair": conv_case(22, (2, 2, 9, 7), (2, 2, 3, 3), (2, 3), (1, 0)),
    "asym_padding": conv_case(23, (2, 2, 6, 6), (2, 2, 3, 3), 2, ((0, 2), (1, 0))),
    "kernel_fills_padded_input": conv_case(24, (2, 2, 4, 3), (3, 2, 6, 5), 1, 1),
    "one_by_one": conv_case(25, (2, 5, 4, 4), (3, 5, 1, 1), 1, 0),
})
# Dilation (a strided window) and groups (a block-diagonal F̃), both algorithms and layouts.
CASES.update({
    "explicit-NCHW-dilation(2, 1)-groups2": conv_case(26, (2, 4, 8, 7), (6, 2, 3, 2), 1, 1, dilation=(2, 1), groups=2),
    "explicit-NHWC-dilation2-depthwise": conv_case(27, (2, 8, 7, 3), (6, 1, 2, 3), 2, "SAME", dilation=2, groups=3,
                                                   layout="NHWC"),
    "implicit-NCHW-dilation2-groups2-s2": conv_case(28, (2, 4, 9, 8), (4, 2, 3, 3), 2, 1, dilation=2, groups=2,
                                                    algorithm="implicit"),
    "implicit-NHWC-dilation(1, 2)-depthwise": conv_case(29, (2, 7, 8, 3), (3, 1, 3, 2), 1, "SAME", dilation=(1, 2),
                                                        groups=3, algorithm="implicit", layout="NHWC"),
})
for alg, layout in (("explicit", "NHWC"), ("implicit", "NCHW"), ("implicit", "NHWC")):
    for i, (s, p) in enumerate(((1, "VALID"), (2, 1), (3, "SAME"), ((2, 1), ((1, 2), (0, 1))))):
        x_shape = (2, 7, 8, 3) if layout == "NHWC" else (2, 3, 7, 8)
        CASES[f"{alg}-{layout}-s{s}-p{p}"] = conv_case(30 + i, x_shape, (4, 3, 3, 2), s, p,
                                                      algorithm=alg, layout=layout)
# One input channel: the explicit forward builds X̃ᵀ (on CPUs), and with 32 outputs
# the backward too, for δF̃.
CASES.update({
    "explicit-NHWC-one_channel-12_outputs": conv_case(41, (2, 6, 5, 1), (12, 1, 3, 3), 1, 1, layout="NHWC"),
    "explicit-NHWC-one_channel": conv_case(33, (2, 6, 5, 1), (32, 1, 3, 3), 1, 1, layout="NHWC"),
    "explicit-NHWC-one_channel-s(2, 1)-dilation(1, 2)": conv_case(34, (2, 7, 8, 1), (32, 1, 3, 2), (2, 1), "SAME",
                                                                 dilation=(1, 2), layout="NHWC"),
})
# A pair (forward's, backward's): each pass by its own algorithm, the same rules.
CASES.update({
    "explicit+implicit-NHWC-one_channel-12_outputs": conv_case(42, (2, 6, 5, 1), (12, 1, 3, 3), 1, 1,
                                                               algorithm=("explicit", "implicit"), layout="NHWC"),
    "implicit+explicit-NCHW-s2-p1": conv_case(43, (2, 3, 7, 8), (4, 3, 3, 2), 2, 1, algorithm=("implicit", "explicit")),
    "winograd+implicit-NHWC-p1": conv_case(44, (2, 6, 7, 3), (4, 3, 3, 3), 1, 1, algorithm=("winograd", "implicit"),
                                           layout="NHWC"),
    "explicit+winograd-NCHW-pVALID": conv_case(45, (2, 3, 7, 8), (4, 3, 3, 3), 1, "VALID",
                                               algorithm=("explicit", "winograd")),
})
# Winograd's F(2×2, 3×3): 3×3 stride 1 only; odd outputs (a cropped half tile),
# asymmetric and zero padding, an output one row high, both layouts.
CASES.update({
    "winograd-NCHW-p1": conv_case(36, (2, 3, 7, 8), (4, 3, 3, 3), 1, 1, algorithm="winograd"),
    "winograd-NHWC-pSAME": conv_case(37, (2, 6, 6, 3), (4, 3, 3, 3), 1, "SAME", algorithm="winograd",
                                     layout="NHWC"),
    "winograd-NHWC-pVALID": conv_case(38, (2, 7, 8, 3), (4, 3, 3, 3), 1, "VALID", algorithm="winograd",
                                      layout="NHWC"),
    "winograd-NCHW-asym-no_bias": conv_case(39, (2, 3, 5, 6), (4, 3, 3, 3), 1, ((0, 2), (1, 0)), bias=False,
                                            algorithm="winograd"),
    "winograd-NHWC-one_row": conv_case(35, (2, 1, 6, 2), (3, 2, 3, 3), 1, ((1, 1), (0, 2)),
                                       algorithm="winograd", layout="NHWC"),
})
test_gradients = gradient_test(CASES, composition=[
    "s2-p1", "s3-pSAME", "batch1", "no_bias", "asym_padding", "kernel_fills_padded_input",
    "explicit-NHWC-s2-p1", "implicit-NCHW-s2-p1", "implicit-NHWC-s3-pSAME",
    "explicit-NCHW-dilation(2, 1)-groups2", "implicit-NHWC-dilation(1, 2)-depthwise",
    "winograd-NCHW-p1", "winograd-NHWC-pVALID", "explicit-NHWC-one_channel-12_outputs",
    "explicit+implicit-NHWC-one_channel-12_outputs", "implicit+explicit-NCHW-s2-p1"])
test_sharded = sharded_test({
    f"{alg}-{layout}": conv_case(40, (8, 2, 5, 5) if layout == "NCHW" else (8, 5, 5, 2),
                                 (3, 2, 3, 3), 1, 1, algorithm=alg, layout=layout)
    for alg in select.ALGORITHMS for layout in ("NCHW", "NHWC")})


def lax_conv(x, w, b, stride, padding, dilation=1, groups=1, layout="NCHW"):
    stride, dilation = _checks.pair("stride", stride, 1), _checks.pair("dilation", dilation, 1)
    hw = x.shape[2:] if layout == "NCHW" else x.shape[1:3]
    pads = _windows.resolve_padding(padding, hw, _windows.effective(w.shape[2:], dilation), stride)
    y = lax.conv_general_dilated(x, w, stride, pads, rhs_dilation=dilation, feature_group_count=groups,
                                 dimension_numbers=(layout, "OIHW", layout), precision=lax.Precision.HIGHEST)
    return y + (b.reshape(1, -1, 1, 1) if layout == "NCHW" else b.reshape(1, 1, 1, -1))


@pytest.mark.parametrize("name", [n for n in CASES if CASES[n].args[2] is not None])
def test_forward_equals_lax_conv(name):
    case = CASES[name]
    y = jax.jit(case.fn(case.op))(*case.diff)   # one program (op by op, each primitive compiles alone)
    np.testing.assert_allclose(y, lax_conv(*case.args, **{"layout": case.kwargs.get("layout", "NCHW")}),
                               rtol=1e-12, atol=1e-12)


# Strides 1–3, every padding form, both layouts, 1×1 and kernel-fills-input.
EXPLICIT = ["s1-p0", "s2-pSAME", "s3-p2", "s2-pVALID", "no_bias", "stride_pair", "asym_padding",
            "kernel_fills_padded_input", "one_by_one", "explicit-NHWC-s2-p1",
            "explicit-NHWC-s(2, 1)-p((1, 2), (0, 1))", "explicit-NHWC-s3-pSAME",
            "explicit-NCHW-dilation(2, 1)-groups2", "explicit-NHWC-dilation2-depthwise",
            "explicit-NHWC-one_channel", "explicit-NHWC-one_channel-s(2, 1)-dilation(1, 2)",
            "explicit-NHWC-one_channel-12_outputs"]


@pytest.mark.parametrize("evaluation", [_explicit._whole, _explicit._blockwise], ids=["whole", "blockwise"])
@pytest.mark.parametrize("name", EXPLICIT)
def test_both_evaluations_of_the_explicit_backward_equal_the_twin(name, evaluation):
    """The backward pass picks one evaluation per platform; check both on every one."""
    case = CASES[name]
    x, w, b, stride, padding, dilation, groups = case.args
    layout = case.kwargs.get("layout", "NCHW")
    (ah, aw), _ = _windows.LAYOUTS[layout]
    stride, dilation = _checks.pair("stride", stride, 1), _checks.pair("dilation", dilation, 1)
    pads = _windows.resolve_padding(padding, (x.shape[ah], x.shape[aw]),
                                    _windows.effective(w.shape[2:], dilation), stride)
    y, pullback = jax.vjp(lambda x, w: jaxbp.conv2d.autodiff(x, w, b, stride, pads, dilation, groups,
                                                             layout=layout), x, w)
    g, = normal(7, y.shape)
    got = jax.jit(functools.partial(evaluation, stride, pads, dilation, groups, layout))(x, w, g)
    assert_close_trees(got, pullback(g), TWIN_TOL)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("stride,padding,dilation,groups", [
    # (strides 2 and 3 with symmetric and SAME padding: the implicit cases of CASES, vs the twin and lax)
    (1, 0, 1, 1), (2, ((0, 1), (2, 0)), 1, 1), (1, "SAME", 2, 3), (2, 1, (2, 1), 1)])
def test_implicit_equals_explicit(stride, padding, dilation, groups, layout):
    shape = (2, 3, 9, 7) if layout == "NCHW" else (2, 9, 7, 3)
    kw = dict(layout=layout, dilation=dilation, groups=groups)
    explicit = conv_case(50, shape, (6, 3 // groups, 3, 2), stride, padding, **kw)
    implicit = conv_case(50, shape, (6, 3 // groups, 3, 2), stride, padding, algorithm="implicit", **kw)
    y_e, g_e = vjp(explicit, jaxbp.conv2d)
    y_i, g_i = vjp(implicit, jaxbp.conv2d)
    assert_close_trees(y_i, y_e, 1e-13)
    assert_close_trees(g_i, g_e, 1e-13)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("hw,padding", [((8, 6), 1), ((7, 9), "SAME"), ((6, 7), 0), ((3, 4), ((2, 0), (0, 1))),
                                        ((1, 1), 1), ((3, 3), 0)])
def test_winograd_equals_explicit(hw, padding, layout):
    """F(2×2, 3×3) is the same linear map as im2col: outputs and all three
    gradients agree in float64 to rounding (even and odd outputs, one tile)."""
    shape = (3, 4) + hw if layout == "NCHW" else (3,) + hw + (4,)
    explicit = conv_case(53, shape, (5, 4, 3, 3), 1, padding, layout=layout)
    winograd = conv_case(53, shape, (5, 4, 3, 3), 1, padding, algorithm="winograd", layout=layout)
    y_e, g_e = vjp(explicit, jaxbp.conv2d)
    y_w, g_w = vjp(winograd, jaxbp.conv2d)
    assert_close_trees(y_w, y_e, 1e-13)
    assert_close_trees(g_w, g_e, 1e-13)


@pytest.mark.parametrize("algorithm", ["winograd", ("explicit", "winograd")])
@pytest.mark.parametrize("kwargs", [dict(stride=2), dict(dilation=2), dict(groups=3), dict(kernel=(3, 2))],
                         ids=["stride", "dilation", "groups", "kernel"])
def test_winograd_refuses_what_it_does_not_compute(kwargs, algorithm):
    kwargs = dict(kwargs)   # the parameter's dict is shared by both algorithms' runs
    kernel = kwargs.pop("kernel", (3, 3))
    x, w = normal(54, (1, 3, 8, 8), (3, 3 // kwargs.get("groups", 1)) + kernel)
    with pytest.raises(ValueError, match=re.escape(f"algorithm={algorithm!r}: Winograd's computes 3×3 convolutions "
                                                   "with stride 1")):
        jaxbp.conv2d(x, w, None, padding=1, algorithm=algorithm, **kwargs)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_implicit_convolutions_are_stated_in_xla_cpus_fast_order_inside_a_scan(layout):
    """Inside a loop XLA:CPU runs a convolution through its fast kernels only in
    the order NHWC, HWIO -> NHWC (BENCHMARKS.md: 7-40x slower otherwise, which
    made the compiled epoch slower than step by step). All three convolutions of
    the implicit rules (forward, dX, dW), compiled for the CPU inside lax.scan."""
    x, w = normal(52, (2, 3, 6, 5) if layout == "NCHW" else (2, 6, 5, 3), (4, 3, 3, 3))

    def loss(w, x):
        return jnp.sum(jaxbp.conv2d(x, w, None, 2, 1, algorithm="implicit", layout=layout) ** 2)

    def epoch(w, xs):
        def step(w, x):
            dw, dx = jax.grad(loss, (0, 1))(w, x)
            return w - 0.1 * dw, dx
        return lax.scan(step, w, xs)

    text = jax.jit(epoch).trace(w, jnp.stack([x, x])).lower(lowering_platforms=("cpu",)).as_text()
    convolutions = [line for line in text.splitlines() if "stablehlo.convolution" in line]
    assert len(convolutions) == 3  # forward, dX, dW
    for line in convolutions:
        assert "dim_numbers = [b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f]" in line, line


def test_nhwc_is_nchw_transposed():
    x, w, b = normal(51, (2, 3, 6, 5), (4, 3, 3, 3), (4,))
    nchw = jaxbp.conv2d(x, w, b, 2, 1)
    nhwc = jaxbp.conv2d(x.transpose(0, 2, 3, 1), w, b, 2, 1, layout="NHWC")
    np.testing.assert_allclose(nhwc.transpose(0, 3, 1, 2), nchw, rtol=1e-13)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("algorithm", select.ALGORITHMS)
def test_gradients_keep_dtype_and_are_finite(dtype, algorithm):
    x, w, b = normal(52, (2, 3, 8, 8), (4, 3, 3, 3), (4,), dtype=dtype)
    grads = jax.jit(jax.grad(lambda x, w, b: jaxbp.conv2d(x, w, b, 1, 1, algorithm=algorithm)
                             .astype(jnp.float32).sum(), (0, 1, 2)))(x, w, b)
    for g in grads:
        assert g.dtype == dtype and bool(jnp.isfinite(g.astype(jnp.float32)).all())


@st.composite
def conv_configs(draw):
    algorithm = draw(st.sampled_from(select.ALGORITHMS))
    if algorithm == "winograd":  # the convolutions it computes: 3×3, stride 1, one group
        fh = fw = 3
        stride = dilation = (1, 1)
    else:
        fh, fw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = draw(st.one_of(st.sampled_from(["SAME", "VALID"]),
                             st.tuples(st.integers(0, 2), st.integers(0, 2))))
    h, w = draw(st.integers(dilation[0] * (fh - 1) + 1, 9)), draw(st.integers(dilation[1] * (fw - 1) + 1, 9))
    groups = 1 if algorithm == "winograd" else draw(st.integers(1, 2))
    return dict(n=draw(st.integers(1, 3)), c=groups * draw(st.integers(1, 2)), o=groups * draw(st.integers(1, 2)),
                groups=groups, dilation=dilation, h=h, w=w, fh=fh, fw=fw, stride=stride, padding=padding,
                layout=draw(st.sampled_from(["NCHW", "NHWC"])), algorithm=algorithm)


@pytest.mark.slow
@settings(max_examples=8, deadline=None)
@given(conv_configs())
def test_property_random_configurations(cfg):
    x_shape = ((cfg["n"], cfg["c"], cfg["h"], cfg["w"]) if cfg["layout"] == "NCHW"
               else (cfg["n"], cfg["h"], cfg["w"], cfg["c"]))
    case = conv_case(60, x_shape, (cfg["o"], cfg["c"] // cfg["groups"], cfg["fh"], cfg["fw"]), cfg["stride"],
                     cfg["padding"], dilation=cfg["dilation"], groups=cfg["groups"], layout=cfg["layout"],
                     algorithm=cfg["algorithm"])
    np.testing.assert_allclose(case.op(*case.args, **case.kwargs),
                               lax_conv(*case.args, layout=cfg["layout"]), rtol=1e-12, atol=1e-12)
    assert_twin(case)


def test_conv2d_takes_auto_and_computes_what_auto_algorithm_picks():
    """`conv2d(algorithm="auto")` was refused while the layers accepted it."""
    x, w, b = normal(60, (32, 128, 4, 4), (128, 128, 3, 3), (128,))   # 512 positions: not the default's choice
    picked = jaxbp.ops.auto_algorithm(x.shape, w.shape)
    assert picked == ("explicit" if jax.default_backend() == "cpu" else jaxbp.ops.DEFAULT_ALGORITHM)
    auto = jax.jit(lambda x, w: jaxbp.conv2d(x, w, b, 1, 1, algorithm="auto"))
    fixed = jax.jit(lambda x, w: jaxbp.conv2d(x, w, b, 1, 1, algorithm=picked))
    np.testing.assert_array_equal(auto(x, w), fixed(x, w))
    assert str(jax.make_jaxpr(auto)(x, w)) == str(jax.make_jaxpr(fixed)(x, w))


def _conv_outputs(jaxpr):
    """The output shapes of every ``conv_general_dilated`` in ``jaxpr``, its branches included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            yield tuple(eqn.outvars[0].aval.shape)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from _conv_outputs(sub)


@pytest.mark.parametrize("x_shape,w_shape,stride,padding", [
    ((2, 16, 16, 4), (8, 4, 1, 1), 2, 0),      # a ResNet projection: one row and column no window reads
    ((2, 16, 16, 4), (8, 4, 3, 3), 2, 1),
    ((2, 9, 8, 3), (6, 3, 3, 2), (2, 3), ((0, 1), (2, 0)))])
def test_implicit_backward_computes_no_entry_it_drops(x_shape, w_shape, stride, padding):
    """δX and δF come out of their convolutions at their own sizes: a convolution
    yielding more (the padding's gradient, kernel entries past FH × FW) computes
    what is then cropped away (a stride-2 1×1 conv's δF was computed as 2×2)."""
    case = conv_case(60, x_shape, w_shape, stride, padding, algorithm="implicit", layout="NHWC")
    x, w, b = case.args[:3]
    jaxpr = jax.make_jaxpr(jax.grad(lambda x, w: jaxbp.conv2d(x, w, b, stride, padding, algorithm="implicit",
                                                               layout="NHWC").sum(), argnums=(0, 1)))(x, w)
    sizes = {int(np.prod(s)) for s in _conv_outputs(jaxpr.jaxpr)}   # each platform's branch has them
    y_size = np.prod(jax.eval_shape(lambda: jaxbp.conv2d(x, w, b, stride, padding, layout="NHWC")).shape)
    assert sizes == {y_size, x.size, w.size}


_STACK_INPUT = (4, 16, 16, 16)


@functools.cache
def _stack_temp(algorithm, depth):
    return conv_stack_temp(depth, _STACK_INPUT, algorithm=algorithm)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's CSE and schedule, measured there")
@pytest.mark.parametrize("algorithm", ["explicit", "winograd"])
def test_a_rebuilt_intermediate_is_not_kept_from_the_forward_pass(algorithm):
    """The explicit backward rebuilds X̃ from x, Winograd's rebuilds V: each
    layer more keeps ≤ 1.2× what a conv → batch norm → relu layer must (the
    conv's input and batch norm's, 4 bytes per value each, relu's mask, a bit;
    measured 1.00× and 1.11×), not its patch matrix or tiles, which XLA kept
    from the forward pass while the rebuild depended on forward values alone
    (4.9× and 2.6×)."""
    floor = (4 + 4 + 1 / 8) * math.prod(_STACK_INPUT)
    assert (_stack_temp(algorithm, 4) - _stack_temp(algorithm, 2)) / 2 <= 1.2 * floor


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's schedule, measured there")
def test_a_backward_on_another_algorithm_keeps_the_input_once():
    """auto's pair on the MNIST recipe's first conv (the explicit forward, the
    implicit backward) reads x once δY exists: its train step keeps no more
    than the implicit conv's. Before, XLA laid x out for the implicit δF in the
    forward pass and kept that copy beside x (3.09 MiB against 2.99)."""
    from jaxbp.tools import bench
    x, y = bench.batch(32, "cnn")

    def temp(algorithm):
        step, carry = bench.jaxbp_step("cnn", "custom", "float32", x, width=12, block="conv-pool-bn-relu",
                                       algorithm=algorithm)
        return step.lower(carry, x, y).compile().memory_analysis().temp_size_in_bytes
    assert jaxbp.ops.auto_algorithm((32, 28, 28, 1), (12, 1, 3, 3), layout="NHWC") == ("explicit", "implicit")
    assert temp("auto") <= temp("implicit")
