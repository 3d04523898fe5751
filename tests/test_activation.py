import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp
from helpers import Case, conv_stack_temp, gradient_test, normal

OPS = {"relu": jaxbp.relu, "sigmoid": jaxbp.sigmoid, "tanh": jaxbp.tanh,
       "leaky_relu": jaxbp.leaky_relu, "gelu": jaxbp.gelu, "silu": jaxbp.silu, "softmax": jaxbp.softmax,
       "log_softmax": jaxbp.log_softmax}
CASES = {name: Case(op, normal(i, (4, 5)), (0,)) for i, (name, op) in enumerate(OPS.items())}
CASES["relu_keep_output"] = Case(jaxbp.relu, normal(14, (3, 2, 4)), (0,), {"keep": "output"})
CASES["leaky_relu_slope_0.2"] = Case(jaxbp.leaky_relu, normal(9, (3, 2, 4)), (0,), {"negative_slope": 0.2})
CASES["gelu_tanh"] = Case(jaxbp.gelu, normal(10, (3, 2, 4)), (0,), {"approximate": True})
CASES["softmax_axis0"] = Case(jaxbp.softmax, normal(11, (3, 2, 4)), (0,), {"axis": 0})
CASES["log_softmax_axis1"] = Case(jaxbp.log_softmax, normal(12, (3, 2, 4)), (0,), {"axis": 1})
test_gradients = gradient_test(CASES)

REFERENCE = {"relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh,
             "leaky_relu": jax.nn.leaky_relu, "gelu": lambda z: jax.nn.gelu(z, approximate=False),
             "silu": jax.nn.silu, "softmax": jax.nn.softmax, "log_softmax": jax.nn.log_softmax}


@pytest.mark.parametrize("name", list(OPS))
def test_forward_and_gradient_equal_jax_nn_including_zero(name):
    z = jnp.array([-2.0, -0.5, 0.0, 0.5, 3.0])
    # Equal up to float64 rounding. The order in which a backend sums log_softmax's
    # exponentials is its own (XLA:GPU's differs between the two programs): one
    # rounding of that sum (~1.1) moves an output near 0 by ~2e-16 absolute.
    np.testing.assert_allclose(OPS[name](z), REFERENCE[name](z), rtol=1e-15, atol=1e-15)
    # Weighted, not a plain sum: softmax's outputs sum to 1, whose gradient is 0.
    weights = jnp.array([1.0, -2.0, 3.0, 0.5, 1.5])
    grad = jax.grad(lambda z: (OPS[name](z) * weights).sum())(z)
    # Equal up to float64 rounding: 1 − a·a vs JAX's own expression for tanh'.
    np.testing.assert_allclose(grad, jax.grad(lambda z: (REFERENCE[name](z) * weights).sum())(z), rtol=1e-13)


@pytest.mark.parametrize("keep", ["mask", "output"])
def test_relu_derivative_at_zero_is_zero(keep):
    for op in (jaxbp.relu, jaxbp.autodiff.relu):
        assert jax.grad(lambda z: op(z, keep=keep).sum())(jnp.zeros(3)).tolist() == [0.0, 0.0, 0.0]


def test_relu_keeping_its_output_has_the_masks_gradient_at_nan_and_infinities():
    """[a > 0] = [z > 0] entry for entry: a is NaN where z is (NaN > 0 is false), ±∞ where z is."""
    z = jnp.array([-1.0, jnp.nan, 0.0, -0.0, 2.0, -jnp.inf, jnp.inf, 1e-300, -1e-300])
    weights = jnp.arange(1.0, 10.0)
    grad = lambda keep: jax.grad(lambda z: (jaxbp.relu(z, keep=keep) * weights).sum())(z)
    np.testing.assert_array_equal(grad("output"), grad("mask"))
    np.testing.assert_array_equal(grad("output"), [0, 0, 0, 0, 5, 0, 7, 8, 0])


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("name", list(OPS))
def test_gradient_keeps_dtype(name, dtype):
    z = normal(0, (3, 4), dtype=dtype)[0]
    assert jax.grad(lambda z: OPS[name](z).astype(jnp.float32).sum())(z).dtype == dtype


def test_forward_mode_is_the_documented_error():
    with pytest.raises(TypeError, match="can't apply forward-mode autodiff"):
        jax.jvp(jaxbp.relu, (jnp.ones(3),), (jnp.ones(3),))
    # The twin supports it: relu's directional derivative is the tangent where z > 0, else 0.
    z, t = jnp.array([-1.0, 0.0, 2.0]), jnp.array([5.0, 7.0, 3.0])
    y, dy = jax.jvp(jaxbp.autodiff.relu, (z,), (t,))
    np.testing.assert_array_equal(y, [0.0, 0.0, 2.0])
    np.testing.assert_array_equal(dy, [0.0, 0.0, 3.0])


@pytest.mark.parametrize("impl", ["custom", "twin"])
@pytest.mark.parametrize("name", list(OPS))
def test_nan_propagates_and_its_gradient_follows_jax_nn(name, impl):
    """relu(nan) is nan in jax.nn and torch: an activation that turned it into 0
    would hide a diverging run from the non-finite guard."""
    op = OPS[name] if impl == "custom" else OPS[name].autodiff
    z = jnp.array([-1.0, jnp.nan, 0.0, 2.0, -jnp.inf, jnp.inf])
    np.testing.assert_array_equal(op(z), REFERENCE[name](z))
    assert np.isnan(op(z)[1])
    grad = jax.grad(lambda z: op(z)[:4].sum())(z)
    # (rtol: 1 − a·a vs JAX's own expression for tanh'; NaN must sit where JAX's does)
    np.testing.assert_allclose(grad, jax.grad(lambda z: REFERENCE[name](z)[:4].sum())(z), rtol=1e-13)


def test_gelu_tanh_form_equals_jax_nn():
    z = normal(13, (3, 4))[0]
    np.testing.assert_allclose(jaxbp.gelu(z, approximate=True), jax.nn.gelu(z, approximate=True), rtol=1e-14)
    np.testing.assert_allclose(jax.grad(lambda z: jaxbp.gelu(z, approximate=True).sum())(z),
                               jax.grad(lambda z: jax.nn.gelu(z, approximate=True).sum())(z), rtol=1e-13)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's fusion and schedule, measured there")
def test_residual_network_step_keeps_relus_mask_not_the_block_input(monkeypatch):
    """relu saves its mask as bits: a saved bool mask XLA:CPU recomputed in the
    backward pass from the residual block's input, which it then kept beside
    the transposed copy the conv's δF reads. Compiled gradient of a small
    ResNet whose relus all keep their masks (the models give most of them
    ``keep="output"``): ≤ 0.53× the twin's temporary memory (measured 0.47;
    0.60 with a bool mask)."""
    from jaxbp import autodiff, layers, ops
    monkeypatch.setattr(layers, "_keep", lambda activation, next_keeps_input: {"keep": "mask"})

    def temp(gradients):
        net = layers.resnet(10, (16,), 3, gradients=gradients)
        x = jax.random.normal(jax.random.key(0), (8, 3, 16, 16), jnp.float32)
        _, params, state = net.init(jax.random.key(1), x.shape)
        loss_of = (ops if gradients == "custom" else autodiff).softmax_cross_entropy
        grad = jax.jit(jax.grad(lambda p: loss_of(net.apply(p, state, x, train=True)[0], jnp.arange(8)).sum()))
        return grad.lower(params).compile().memory_analysis().temp_size_in_bytes

    assert temp("custom") <= 0.53 * temp("autodiff")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's schedule, measured there")
@pytest.mark.parametrize("algorithm", ["implicit", "explicit"])
def test_relu_keeping_its_output_keeps_nothing_beside_the_next_convs_input(algorithm):
    """conv → batch norm → relu(keep="output") → conv ...: relu's output is the
    next conv's input, one array for both. Each layer more keeps what it must:
    8 bytes per value (the conv's input, batch norm's) and its parameters'
    size (their gradients): measured 1.00× that. Before the conv's δF read its
    input once δY existed, XLA transposed it for δF in the forward pass and
    kept that copy beside relu's output: 1.47×."""
    shape, channels = (4, 16, 16, 16), 16
    per_layer = (conv_stack_temp(6, shape, algorithm=algorithm, keep="output")
                 - conv_stack_temp(4, shape, algorithm=algorithm, keep="output")) / 2
    floor = 8 * math.prod(shape) + 4 * (channels * channels * 9 + 2 * channels)
    assert per_layer <= 1.01 * floor
