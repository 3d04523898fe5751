"""Ops as a user writes them, for `jaxbp gradcheck --op user_rules:NAME` (tests/test_cli.py)."""
import jax
import jax.numpy as jnp

import jaxbp


def _forward(x, w):
    return x @ w.T, (x, w)


def _backward(res, g):
    x, w = res
    return g @ w, g.T @ x                      # δX = δZ W, δW = δZᵀ X


def _backward_doubled(res, g):
    x, w = res
    return g @ w, 2.0 * (g.T @ x)              # δW twice too large


_rule = jaxbp.Rule(_forward, _backward, name="my_dense")
_wrong = jaxbp.Rule(_forward, _backward_doubled, name="my_dense_wrong")


@jaxbp.op(example=lambda normal: normal((5, 3), (4, 3)))
def my_dense(x, w):
    jaxbp.validate.rank("w", w, 2, "out, in")
    return _rule(*jaxbp.validate.promote(x, w))


@jaxbp.op(example=lambda normal: normal((5, 3), (4, 3)))
def my_dense_wrong(x, w):
    return _wrong(x, w)


@jaxbp.op
def my_tanh(z):   # no example: --shape gives it
    return jaxbp.Rule(lambda z: (jnp.tanh(z), jnp.tanh(z)), lambda a, g: (g * (1 - a * a),), name="my_tanh")(z)


__all__ = ["my_dense", "my_dense_wrong", "my_tanh", "jax"]
