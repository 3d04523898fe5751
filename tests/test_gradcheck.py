import jax
import jax.numpy as jnp
import pytest

import jaxbp
from jaxbp.tools import gradcheck
from helpers import normal


def two_layer(ops, params, x, y):
    h = ops.relu(ops.dense(x, params["w1"], params["b1"]))
    return ops.softmax_cross_entropy(ops.dense(h, params["w2"], params["b2"]), y).mean()


def setup():
    x, w1, b1, w2, b2 = normal(0, (8, 5), (6, 5), (6,), (3, 6), (3,))
    return {"w1": w1, "b1": b1, "w2": w2, "b2": b2}, x, jnp.arange(8) % 3


def test_report_is_pytree_shaped_and_passes():
    params, x, y = setup()
    r = jaxbp.compare_gradients(two_layer, params, x, y)
    assert set(r.rel_err) == set(params) and all(e <= 1e-12 for e in r.rel_err.values())
    assert len(r.finite_differences) == 3 and r.max_fd_err < 1e-6
    assert r.ok("float64") and "\nw1 " in r.table() and "['w1']" in r.table(dotted=False)


def test_a_leaf_with_zero_gradient_is_measured_against_the_whole_gradient():
    def loss(ops, params, x):  # the bias before batch norm has gradient exactly 0
        z = ops.dense(x, params["w"], params["b"])
        return (ops.batch_norm(z, jnp.ones(3), jnp.zeros(3))[0] ** 3).sum()
    x, w, b = normal(1, (6, 4), (3, 4), (3,))
    r = jaxbp.compare_gradients(loss, {"w": w, "b": b}, x)
    leaf = {l.path: l for l in r.leaves}["['b']"]
    assert leaf.zero and leaf.rel_err < 1e-12 and r.ok("float64")


def test_finite_differences_of_a_right_rule_pass_where_the_loss_barely_changes():
    """A large loss with small derivatives (an offset, a sum over many examples):
    the central difference's rounding, ~1e-16·|L|/ε, is then far above 1e-6 of
    ⟨∇L, v⟩, so the error is measured above that rounding (1e-3·|L|), as
    jaxbp.check does; a wrong rule is still far outside it (the next test)."""
    params, x, y = setup()
    offset = lambda ops, params, x, y: 1e6 + two_layer(ops, params, x, y)
    r = jaxbp.compare_gradients(offset, params, x, y)
    assert all(e < 1e-6 for _, _, e in r.finite_differences), r.table()
    assert r.ok("float64")


def test_a_wrong_backward_rule_is_detected(monkeypatch):
    @jax.custom_vjp
    def bad_relu(z):
        return jnp.where(z > 0, z, 0.0)

    bad_relu.defvjp(lambda z: (bad_relu(z), z), lambda z, g: (g,))  # forgot the mask: δz = δa
    monkeypatch.setattr(jaxbp.ops, "relu", bad_relu)
    params, x, y = setup()
    r = jaxbp.compare_gradients(two_layer, params, x, y)
    assert not r.ok("float64")
    assert r.rel_err["w1"] > 1e-3 and r.rel_err["b2"] < 1e-12  # the layer above the bug is fine
    assert r.max_fd_err > 1e-3


@pytest.mark.parametrize("name", list(gradcheck.op_problems(jnp.float64)))
def test_every_op_problem_passes(name):
    op, args, argnums, kwargs = gradcheck.op_problems(jnp.float64)[name]
    r = jaxbp.compare_gradients(gradcheck.projected(op, args, argnums, kwargs), tuple(args[i] for i in argnums))
    assert r.ok("float64"), r.table()


@pytest.mark.parametrize("nan_leaf", ["w1", "b2"], ids=["first", "last"])
def test_a_nan_gradient_never_passes(monkeypatch, nan_leaf):
    """Python's max skipped a NaN by order; directions=0 then called a NaN gradient ok."""
    params, x, y = setup()

    def loss(ops, params, x, y):
        poisoned = dict(params, **{nan_leaf: params[nan_leaf] * jnp.nan}) if ops is jaxbp.ops else params
        return two_layer(ops, poisoned, x, y)
    r = jaxbp.compare_gradients(loss, params, x, y, directions=0)
    assert jnp.isnan(r.max_rel_err) and not r.ok("float64")
