import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp
from helpers import (TWIN_TOL, TWIN_TOL_2ND, Case, assert_close_trees, conv_stack_temp, gradient_test, normal,
                     sharded_test)


def bn_case(seed, shape, axis=1, eps=1e-5, scale=1.0, offset=0.0):
    c = shape[axis]
    x, gamma, beta = normal(seed, shape, (c,), (c,))
    return Case(jaxbp.batch_norm, (scale * x + offset, gamma, beta, eps), (0, 1, 2), {"axis": axis})


CASES = {
    "dense": bn_case(0, (6, 4)),
    "nchw": bn_case(1, (3, 2, 4, 5)),
    "nhwc": bn_case(2, (2, 3, 4, 3), axis=3),
    "batch2": bn_case(3, (2, 3)),
    "shifted": bn_case(4, (5, 3), scale=0.1, offset=3.0),
}
test_gradients = gradient_test(CASES)
test_sharded = sharded_test({"nchw8": bn_case(5, (8, 2, 3, 3)), "dense8": bn_case(6, (8, 5))})


@pytest.mark.parametrize("outputs", [(0,), (1,), (2,), (0, 2)], ids=["y", "mean", "var", "y+var"])
@pytest.mark.parametrize("name", ["dense", "nchw", "nhwc"])
def test_gradients_of_some_outputs_only(name, outputs):
    """Unused outputs reach the backward pass as symbolic zeros and their terms are
    skipped (training uses y alone); first and second order still match the twin."""
    case = CASES[name]
    shapes = [o.shape for o in jax.eval_shape(case.fn(case.op), *case.diff)]
    weights = normal(8, *shapes)

    def loss(op):
        return lambda *d: sum(jnp.vdot(case.fn(op)(*d)[i], weights[i]) for i in outputs)

    def grad_dot_v(op):
        v = normal(9, *[d.shape for d in case.diff])
        grad = jax.grad(loss(op), argnums=(0, 1, 2))
        return jax.grad(lambda *d: sum(jnp.vdot(a, b) for a, b in zip(grad(*d), v)), argnums=(0, 1, 2))

    argnums = (0, 1, 2)
    assert_close_trees(jax.jit(jax.grad(loss(case.op), argnums))(*case.diff),
                       jax.jit(jax.grad(loss(case.op.autodiff), argnums))(*case.diff), TWIN_TOL)
    assert_close_trees(jax.jit(grad_dot_v(case.op))(*case.diff),
                       jax.jit(grad_dot_v(case.op.autodiff))(*case.diff), TWIN_TOL_2ND)


def formula(x, gamma, beta, eps, axis):
    x = np.asarray(x, np.float64)
    red = tuple(a for a in range(x.ndim) if a != axis)
    shape = [-1 if a == axis else 1 for a in range(x.ndim)]
    mean, var = x.mean(axis=red), x.var(axis=red)
    y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    return y * np.asarray(gamma, np.float64).reshape(shape) + np.asarray(beta, np.float64).reshape(shape), mean, var


@pytest.mark.parametrize("name", list(CASES))
def test_forward_equals_formula(name):
    case = CASES[name]
    for got, want in zip(case.op(*case.args, **case.kwargs), formula(*case.args, case.kwargs["axis"])):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_large_mean_small_spread_in_float32():
    rng = np.random.default_rng(0)
    x = (1e4 + 1e-2 * rng.standard_normal((256, 3))).astype(np.float32)
    gamma, beta = np.ones(3, np.float32), np.zeros(3, np.float32)
    y, mean, var = jaxbp.batch_norm(jnp.asarray(x), jnp.asarray(gamma), jnp.asarray(beta))
    y_ref, mean_ref, var_ref = formula(x, gamma, beta, 1e-5, 1)  # float64 on the same inputs
    assert y.dtype == jnp.float32
    # float32 arithmetic on float32 inputs against float64 on the same inputs:
    # measured 6.7e-7 (y), 4.3e-7 (var), 4.2e-8 (mean); a one-pass variance
    # (E[x²] − E[x]², cancelling 1e8 against 1e8) would be off by far more than 1.
    np.testing.assert_allclose(y, y_ref, atol=1e-5)
    np.testing.assert_allclose(var, var_ref, rtol=1e-5)
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-6)


def test_large_mean_small_spread_gradients_in_float32():
    """The backward rebuilds x̂ from x: as exactly as the forward formed it, so
    a large mean does not cancel (measured 2.6e-7 on δx; x − μ with μ rounded
    to float32 gave 3e-3, Σ δy ⊙ x − μ Σ δy far more)."""
    rng = np.random.default_rng(0)
    x = (1e4 + 1e-2 * rng.standard_normal((256, 3))).astype(np.float32)
    w, gamma, beta = rng.standard_normal((256, 3)), rng.standard_normal(3) + 1, rng.standard_normal(3)

    def grads(dtype):
        f = lambda x, g, b: (jaxbp.batch_norm(x, g, b)[0] * w.astype(dtype)).sum()
        return jax.jit(jax.grad(f, (0, 1, 2)))(*(jnp.asarray(a, dtype) for a in (x, gamma, beta)))

    for got, want in zip(grads(np.float32), grads(np.float64)):   # float64 on the same inputs
        assert got.dtype == jnp.float32
        err = np.abs(np.asarray(got, np.float64) - np.asarray(want)).max() / np.abs(np.asarray(want)).max()
        assert err < 2e-6


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's fusion and schedule, measured there")
def test_train_step_keeps_the_input_not_also_x_hat():
    """A conv → batch norm → relu stack's compiled gradient holds, per layer,
    the conv input and batch norm's input (x̂ is rebuilt from it): ≤ 0.6× the
    twin's temporary memory (measured 0.54; 0.71 when the rule saved x̂, which
    XLA:CPU kept beside the conv output it also read)."""
    shape = (8, 16, 16, 16)
    assert conv_stack_temp(4, shape, "custom") <= 0.6 * conv_stack_temp(4, shape, "autodiff")


def test_constant_feature_is_finite():
    x = jnp.concatenate([jnp.full((8, 1), 3.0, jnp.float32), jnp.arange(8.0, dtype=jnp.float32)[:, None]], 1)
    f = lambda x, g, b: (jaxbp.batch_norm(x, g, b)[0] ** 2).sum()
    y = jaxbp.batch_norm(x, jnp.ones(2, jnp.float32), jnp.zeros(2, jnp.float32))[0]
    grads = jax.grad(f, (0, 1, 2))(x, jnp.ones(2, jnp.float32), jnp.zeros(2, jnp.float32))
    assert bool(jnp.isfinite(y).all()) and all(bool(jnp.isfinite(g).all()) for g in grads)
    assert y[:, 0].tolist() == [0.0] * 8


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
def test_low_precision_keeps_dtypes_and_is_finite(dtype):
    x, gamma, beta = normal(7, (16, 4, 5, 5), (4,), (4,), dtype=dtype)
    y, mean, var = jaxbp.batch_norm(x, gamma, beta)
    assert y.dtype == dtype and mean.dtype == jnp.float32 and var.dtype == jnp.float32
    grads = jax.grad(lambda *a: jaxbp.batch_norm(*a)[0].astype(jnp.float32).sum(), (0, 1, 2))(x, gamma, beta)
    for g, p in zip(grads, (x, gamma, beta)):
        assert g.dtype == p.dtype and bool(jnp.isfinite(g.astype(jnp.float32)).all())


def ln_case(seed, shape, axis=-1):
    d = shape[axis]
    x, gamma, beta = normal(seed, shape, (d,), (d,))
    return Case(jaxbp.layer_norm, (3 * x + 1, gamma, beta), (0, 1, 2), {"axis": axis})


LN_CASES = {"rows": ln_case(20, (5, 6)), "tokens": ln_case(21, (2, 3, 4)), "axis1": ln_case(22, (3, 4, 2), axis=1)}
test_layer_norm_gradients = gradient_test(LN_CASES)


def test_layer_norm_equals_formula():
    x, gamma, beta = LN_CASES["tokens"].args
    x_ = np.asarray(x)
    ref = (x_ - x_.mean(-1, keepdims=True)) / np.sqrt(x_.var(-1, keepdims=True) + 1e-5) * np.asarray(gamma) \
        + np.asarray(beta)
    np.testing.assert_allclose(jaxbp.layer_norm(x, gamma, beta), ref, rtol=1e-12, atol=1e-12)


BN_RANKS = {"ncl": bn_case(30, (3, 2, 5)), "ncdhw": bn_case(31, (2, 2, 3, 2, 2)), "nlc": bn_case(32, (3, 4, 2), axis=-1)}
test_batch_norm_any_rank = gradient_test(BN_RANKS, composition=["ncl"])


def eval_case(seed, shape, axis=1):
    c = shape[axis]
    x, gamma, beta, mean, v = normal(seed, shape, (c,), (c,), (c,), (c,))
    return Case(jaxbp.batch_norm_eval, (x, gamma, beta, mean, 1 + v * v), (0, 1, 2, 3, 4), {"axis": axis})


EVAL_CASES = {"nchw": eval_case(40, (2, 3, 4, 4)), "nd": eval_case(41, (5, 3)), "nhwc": eval_case(42, (2, 3, 3, 4), 3)}
test_batch_norm_eval_gradients = gradient_test(EVAL_CASES)


def test_batch_norm_eval_equals_formula_and_the_layer_uses_it():
    from jaxbp import layers
    x, gamma, beta, mean, var = EVAL_CASES["nchw"].args
    f = lambda v: np.asarray(v).reshape(1, -1, 1, 1)
    ref = (np.asarray(x) - f(mean)) / np.sqrt(f(var) + 1e-5) * f(gamma) + f(beta)
    np.testing.assert_allclose(jaxbp.batch_norm_eval(x, gamma, beta, mean, var), ref, rtol=1e-12, atol=1e-12)
    y, _ = layers.BatchNorm().apply({"gamma": gamma, "beta": beta}, {"mean": mean, "var": var}, x, train=False)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


def test_layer_norm_float32_of_huge_values_is_not_zero():
    """(x − μ)² overflows float32 for x ~ 1e20: the statistics are taken at a power-of-two scale."""
    x = jnp.array([[1e20, 2e20, 3e20]], jnp.float32)
    y = jaxbp.layer_norm(x, jnp.ones(3, jnp.float32), jnp.zeros(3, jnp.float32))
    np.testing.assert_allclose(y, [[-1.2247449, 0.0, 1.2247449]], rtol=1e-6)
    g = jax.grad(lambda x: (jaxbp.layer_norm(x, jnp.ones(3, jnp.float32), jnp.zeros(3, jnp.float32))
                            * jnp.array([[1.0, 2.0, 4.0]], jnp.float32)).sum())(x)
    g64 = jax.grad(lambda x: (jaxbp.layer_norm(x, jnp.ones(3), jnp.zeros(3)) * jnp.array([[1.0, 2.0, 4.0]])).sum())(
        x.astype(jnp.float64))
    np.testing.assert_allclose(g, g64, rtol=1e-5)
    assert np.abs(np.asarray(g)).max() > 0


def test_layer_norm_float32_near_a_large_mean_is_as_careful_as_batch_norm():
    """Shifted two-pass statistics: 1e3 + 0.01·N(0, 1) in float32 within a few rounding units."""
    x = 1e3 + 0.01 * normal(11, (4, 256))[0]
    ones, zeros = jnp.ones(256), jnp.zeros(256)
    exact = np.asarray(jaxbp.layer_norm(x, ones, zeros))
    got = np.asarray(jaxbp.layer_norm(x.astype(jnp.float32), ones.astype(jnp.float32), zeros.astype(jnp.float32)))
    # float32 rounding of x itself (1e3 · 6e-8 / 0.01) bounds the error at ~6e-3 relative to
    # x̂ of the float64 x; measure against x rounded to float32 instead.
    exact32 = np.asarray(jaxbp.layer_norm(x.astype(jnp.float32).astype(jnp.float64), ones, zeros))
    assert np.abs(got - exact32).max() < 1e-5, np.abs(got - exact32).max()
    assert exact.shape == got.shape


def test_batch_norm_under_shard_map_without_jit():
    """An eager shard_map cannot take custom_vjp's symbolic zeros: batch_norm falls back to dense ones."""
    from jax.sharding import Mesh, PartitionSpec as P
    mesh = Mesh(np.array(jax.devices()[:2]), ("d",))
    x, gamma, beta = normal(12, (4, 3), (3,), (3,))

    def forward(x, gamma, beta):
        return jaxbp.batch_norm(x, gamma, beta, axis_name="d")[0]

    def grad(x, gamma, beta):  # this device's rows' gradient of the global batch's loss
        return jax.grad(lambda x: (forward(x, gamma, beta) ** 2).sum())(x)

    specs = dict(mesh=mesh, in_specs=(P("d"), P(), P()), out_specs=P("d"))
    y = jax.shard_map(forward, **specs)(x, gamma, beta)
    g = jax.shard_map(grad, **specs)(x, gamma, beta)
    np.testing.assert_allclose(y, jaxbp.batch_norm(x, gamma, beta)[0], rtol=1e-12, atol=1e-12)
    want = jax.grad(lambda x: (jaxbp.batch_norm(x, gamma, beta)[0] ** 2).sum())(x)
    np.testing.assert_allclose(g, want, rtol=1e-10, atol=1e-12)
