"""What holds for every op at once: the namespaces, the differentiation modes
(reverse, forward-over-reverse, not forward through an op), one conv default."""
import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp
from jaxbp import layers, train
from helpers import TWIN_TOL_2ND, Case, assert_close_trees, assert_first_order, load_benchmark, normal, scalar_loss

x4, w4, b4 = normal(0, (2, 2, 5, 5), (3, 2, 3, 3), (3,))
x2, w2, b2 = normal(1, (4, 3), (2, 3), (2,))
CASES = {
    "dense": Case(jaxbp.dense, (x2, w2, b2), (0, 1, 2)),
    "conv2d_explicit": Case(jaxbp.conv2d, (x4, w4, b4, 1, 1), (0, 1, 2), {"algorithm": "explicit"}),
    "conv2d_implicit": Case(jaxbp.conv2d, (x4, w4, b4, 2, 1), (0, 1, 2), {"algorithm": "implicit"}),
    "conv2d_winograd": Case(jaxbp.conv2d, (x4, w4, b4, 1, 1), (0, 1, 2), {"algorithm": "winograd"}),
    "max_pool2d": Case(jaxbp.max_pool2d, (x4, 2, 1), (0,)),
    "avg_pool2d": Case(jaxbp.avg_pool2d, (x4, 2), (0,)),
    "batch_norm": Case(jaxbp.batch_norm, (x2, b2[:1].repeat(3), w2[0]), (0, 1, 2)),
    "relu": Case(jaxbp.relu, (x2,), (0,)),
    "relu_keep_output": Case(jaxbp.relu, (x2,), (0,), {"keep": "output"}),
    "leaky_relu": Case(jaxbp.leaky_relu, (x2,), (0,)),
    "sigmoid": Case(jaxbp.sigmoid, (x2,), (0,)),
    "tanh": Case(jaxbp.tanh, (x2,), (0,)),
    "softmax_cross_entropy": Case(jaxbp.softmax_cross_entropy, (x2, jnp.abs(x2[::-1])), (0, 1)),
    "euclidean_loss": Case(jaxbp.euclidean_loss, (x2, x2[::-1]), (0, 1)),
    "mse": Case(jaxbp.mse, (x2, x2[::-1]), (0, 1)),
    "gelu": Case(jaxbp.gelu, (x2,), (0,)),
    "silu": Case(jaxbp.silu, (x2,), (0,)),
    "softmax": Case(jaxbp.softmax, (x2,), (0,)),
    "log_softmax": Case(jaxbp.log_softmax, (x2,), (0,), {"axis": 0}),
    "layer_norm": Case(jaxbp.layer_norm, (x2, w2[0], w2[1]), (0, 1, 2)),
    "batch_norm_eval": Case(jaxbp.batch_norm_eval, (x2, w2[0], w2[1], b2[:1].repeat(3), 1 + w2[1] ** 2),
                            (0, 1, 2, 3, 4)),
    "dropout": Case(jaxbp.dropout, (x2, 0.5, jax.random.key(0)), (0,)),
}


def test_every_op_has_a_case_here():
    assert {c.op.__name__ for c in CASES.values()} == set(jaxbp.ops.__all__)


@pytest.mark.parametrize("name", list(CASES))
def test_hessian_forward_over_reverse_equals_the_twin(name):
    """jax.hessian (jacfwd of jacrev) differentiates the backward rule, which is
    ordinary JAX code: it works and agrees with the twin's."""
    case = CASES[name]
    argnums = tuple(range(len(case.diff)))
    hess = lambda impl: jax.jit(jax.hessian(scalar_loss(case, impl), argnums=argnums))(*case.diff)
    assert_close_trees(hess(case.op), hess(case.op.autodiff), TWIN_TOL_2ND)


@pytest.mark.parametrize("name", list(CASES))
def test_forward_mode_through_an_op_is_the_documented_error(name):
    case = CASES[name]
    f = case.fn(case.op)
    with pytest.raises(TypeError, match="can't apply forward-mode autodiff"):
        jax.jvp(f, case.diff, case.diff)
    # The twin supports it, and its directional derivative is the custom rule's
    # gradient projected on the tangent (the vjp's transpose).
    total = lambda out: sum(jnp.sum(leaf) for leaf in jax.tree.leaves(out))
    tangent = tuple(jnp.cos(jnp.arange(d.size, dtype=d.dtype)).reshape(d.shape) for d in case.diff)
    argnums = tuple(range(len(case.diff)))

    @jax.jit   # one compiled program: op by op, Winograd's many small ops took seconds
    def both(diff, tangent):
        _, jvp_out = jax.jvp(case.fn(case.op.autodiff), diff, tangent)
        grads = jax.grad(lambda *d: total(case.fn(case.op)(*d)), argnums=argnums)(*diff)
        return total(jvp_out), sum(jnp.vdot(g, t) for g, t in zip(grads, tangent))
    np.testing.assert_allclose(*both(case.diff, tangent), rtol=1e-10, atol=1e-12)


def test_one_conv_default_everywhere():
    default = jaxbp.ops.DEFAULT_ALGORITHM
    defaults = [inspect.signature(f).parameters["algorithm"].default
                for f in (jaxbp.conv2d, jaxbp.autodiff.conv2d, layers.Conv2D, layers.cnn)]
    assert defaults == [default] * 4
    assert all(layers.MODELS[m].options["algorithm"] == default for m in ("cnn", "resnet20", "resnet18"))
    assert train.Config().model_options()["algorithm"] == default


# --- the one list of ops (jaxbp.ops.FAMILIES) and everything derived from it ---

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_every_op_has_a_gradcheck_problem():
    from jaxbp.tools import gradcheck
    assert {c.op for c in jaxbp.ops.CHECKS.values()} == set(jaxbp.ops.__all__)
    assert {p[0] for p in gradcheck.op_problems(jnp.float64).values()} == set(jaxbp.ops.__all__)


@pytest.mark.slow
def test_the_op_benchmark_covers_every_check_with_a_valid_call():
    # Each benchmark problem is its check at another size: the same layout,
    # stride, padding, dilation and groups (traced, not run; so is the
    # benchmark's lax.conv baseline).
    from jaxbp.tools import gradcheck
    bench = load_benchmark("ops")
    sizes = bench.sizes(1)
    assert set(sizes) == set(jaxbp.ops.CHECKS)

    def settings(args, check):  # what follows the differentiated arrays, arrays left out
        return [a for a in args[len(check.argnums):] if not hasattr(a, "shape")]
    for label, (name, args, _, kwargs) in gradcheck.op_problems(jnp.float32, sizes).items():
        out = jax.eval_shape(functools.partial(getattr(jaxbp, name), *args, **kwargs))
        if name == "conv2d":  # and lax.conv, its baseline there, computes the same shape
            assert jax.eval_shape(functools.partial(bench._LaxConv.conv2d, *args, **kwargs)) == out, label
        check = jaxbp.ops.CHECKS[label]
        small = check.args(lambda *shapes: tuple(jnp.zeros(s) for s in shapes))
        assert (kwargs, settings(args, check)) == (check.kwargs, settings(small, check)), label


def test_the_readme_table_and_the_autodiff_namespace_list_every_op():
    readme = (ROOT / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `")]
    for name in jaxbp.ops.__all__:
        assert any(f"`{name}" in row or f", `{name}" in row for row in rows), name
        assert getattr(jaxbp.autodiff, name) is getattr(jaxbp, name).autodiff


def test_every_op_has_a_bad_input_case():
    import inspect
    from bad_inputs import OP_CASES
    sources = [inspect.getsource(call) for call, _, _ in OP_CASES.values()]
    for name in jaxbp.ops.__all__:
        assert any(f"jaxbp.{name}(" in s for s in sources), name


def test_the_first_order_check_catches_a_wrong_rule_by_finite_differences_alone():
    """The tests' finite-difference check (helpers.assert_first_order) on a rule
    whose "twin" agrees with it: d(x²)/dx = 2x written as 3x."""
    rule = jaxbp.Rule(lambda x: (x * x, x), lambda x, g: (3 * g * x,))

    def wrong(x):
        return rule(x)
    wrong.autodiff = wrong   # the twin check passes: only the finite differences can tell
    with pytest.raises(AssertionError, match="VJP vs central differences"):
        assert_first_order(Case(wrong, normal(1, (5,)), (0,), {}))


# Low precision: the rule and the twin round differently, so their gradients
# differ by a few units in the last place of the dtype, relative to the
# gradient's norm (measured worst: float32 1.7e-7, winograd; bfloat16 1.4e-2, explicit conv).
LOW = {"float32": 1e-5, "bfloat16": 5e-2}


@pytest.mark.parametrize("dtype", list(LOW))
@pytest.mark.parametrize("name", list(CASES))
def test_low_precision_gradient_values_agree_with_the_twin(name, dtype):
    """Not only the dtype: the values, as a float32/bfloat16 training run uses them."""
    case = CASES[name]
    cast = lambda a: a.astype(dtype) if hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating) else a
    low = Case(case.op, tuple(map(cast, case.args)), case.argnums, case.kwargs)
    argnums = tuple(range(len(low.diff)))
    grads = {impl: jax.jit(jax.grad(scalar_loss(low, op), argnums=argnums))(*low.diff)
             for impl, op in (("custom", case.op), ("twin", case.op.autodiff))}
    for g, t in zip(grads["custom"], grads["twin"], strict=True):
        assert g.dtype == t.dtype == jnp.dtype(dtype)
        g, t = np.asarray(g, np.float64), np.asarray(t, np.float64)
        assert np.linalg.norm(g - t) <= LOW[dtype] * max(np.linalg.norm(t), 1e-30), (np.linalg.norm(g - t),
                                                                                    np.linalg.norm(t))


@pytest.mark.parametrize("gradients", ["custom", "autodiff"])
def test_each_op_names_its_operations_in_the_compiled_program(gradients):
    """Every op runs under a name scope of its name, so a profile (benchmarks/
    profile_step.py) attributes each compiled operation to the op, forward and
    backward — the rule's and the twin's alike."""
    import re
    ops = jaxbp.ops if gradients == "custom" else jaxbp.autodiff
    x, w = normal(3, (2, 6, 6, 3), (4, 3, 3, 3))

    def loss(x, w):
        y = ops.conv2d(x, w, None, 1, 1, layout="NHWC", algorithm="implicit")
        return ops.relu(ops.batch_norm(y, jnp.ones(4), jnp.zeros(4), axis=3)[0]).sum()
    text = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w).compile().as_text()
    names = set(re.findall(r'op_name="[^"]*?((?:transpose\()?jvp\(\w+\))', text))
    assert {f"{p}jvp({op})" for op in ("conv2d", "batch_norm", "relu") for p in ("", "transpose(")} <= names, names


@pytest.mark.parametrize("shape", [(), (0,), (1,), (7,), (8,), (9,), (3, 5, 2), (2, 16, 4, 3)])
def test_a_saved_mask_is_one_bit_per_entry_and_round_trips(shape):
    from jaxbp.ops._recipe import pack_mask, unpack_mask
    mask = jax.random.bernoulli(jax.random.key(len(shape) + sum(shape)), 0.5, shape)
    packed = pack_mask(mask)
    assert packed.dtype == jnp.uint8 and packed.shape == (-(-mask.size // 8),)
    np.testing.assert_array_equal(unpack_mask(packed, shape), mask)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_bitwise_where_is_the_select_bit_for_bit_and_differentiates_as_it(dtype):
    """bitwise_where(mask, on, off) takes each entry's bits from on or off: the
    values of jnp.where, −0, ±inf and NaN included, broadcast as jnp.where
    broadcasts, at every dtype a rule's gradient has; its derivatives in on and
    off, to second order and forward over reverse, are the select's."""
    from jaxbp.ops._recipe import bitwise_where
    special = jnp.array([-0.0, 0.0, np.inf, -np.inf, np.nan, 1.5, -2.25, 3e-8, 7.0], dtype)
    shape = (3, 5, 9)
    mask = jax.random.bernoulli(jax.random.key(3), 0.5, shape)
    bits = lambda a: np.asarray(a, np.float64).view(np.uint64)
    for on, off in ((jnp.broadcast_to(special, shape), jnp.broadcast_to(special[::-1], shape)),
                    (special, jnp.zeros((), dtype)), (special[::-1], special)):
        got = bitwise_where(mask, on, off)
        assert got.dtype == special.dtype and got.shape == shape
        np.testing.assert_array_equal(bits(got), bits(jnp.where(mask, on, off)))
    if dtype != "float64":
        return
    f = lambda a, b: (bitwise_where(mask, a, b) ** 3).sum()
    twin = lambda a, b: (jnp.where(mask, a, b) ** 3).sum()
    a, b = jax.random.normal(jax.random.key(4), (2,) + shape, jnp.float64)
    for derive in (jax.grad, lambda fn, argnums: jax.grad(lambda *v: jax.grad(fn, argnums)(*v).sum(), argnums),
                   jax.hessian):
        for argnums in (0, 1):
            np.testing.assert_array_equal(derive(f, argnums)(a, b), derive(twin, argnums)(a, b))


def test_after_returns_its_values_exactly_and_only_orders_them():
    """``after(g, *values)``: the values bit for bit (−0, inf, NaN too), a
    derivative of one in each value and none in the anchor, to second order;
    under vmap an unbatched value stays unbatched, a batched one keeps its entries."""
    from jaxbp.ops._recipe import after
    v = jnp.array([-0.0, 0.0, 1.5, -np.inf, np.inf, np.nan, 1e-300], jnp.float64)
    anchors = (jnp.array([np.nan, 2.0]), jnp.array([-1.0], jnp.float32), jnp.zeros((0, 3)),
               jnp.array([True]), jnp.array([7], jnp.int32))
    for got in jax.jit(lambda anchors: [after(a, v) for a in anchors])(anchors):   # one compilation
        np.testing.assert_array_equal(np.asarray(got).view(np.uint64), np.asarray(v).view(np.uint64))
    a, b = after(jnp.ones(2), jnp.ones(3, jnp.bfloat16), jnp.arange(4.0))
    assert a.dtype == jnp.bfloat16 and b.tolist() == [0.0, 1.0, 2.0, 3.0]
    x, g = jnp.arange(1.0, 4.0), jnp.array([2.0, -3.0])
    f = lambda g, x: (after(g, x) ** 3).sum() + g.sum()
    dg, dx = jax.grad(f, (0, 1))(g, x)
    np.testing.assert_array_equal(dx, 3 * x ** 2)
    np.testing.assert_array_equal(dg, jnp.ones(2))
    np.testing.assert_array_equal(jax.hessian(f, 1)(g, x), jnp.diag(6 * x))
    # in_axes (0, None), out_axes None: vmap raises if the result were batched.
    np.testing.assert_array_equal(jax.vmap(after, (0, None), None)(jnp.ones((5, 2)), x), x)
    xs = jnp.arange(6.0).reshape(3, 2)
    np.testing.assert_array_equal(jax.vmap(after)(jnp.full((3, 4), -2.0), xs), xs)
