"""jaxbp's ops inside an Equinox module: the hand-derived backward rules in a
model written the Equinox way (a pytree of arrays, eqx.filter_jit), trained
with optax, and checked against the same module on the autodiff twins.

    pip install equinox
    python examples/equinox.py
"""
import os
import sys

# This file is named like the package it shows: keep `import equinox` from
# finding the file itself (Python puts the script's directory first on the path).
sys.path = [p for p in sys.path if os.path.abspath(p or os.curdir) != os.path.dirname(os.path.abspath(__file__))]

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)  # for the float64 gradient check below

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import jaxbp  # noqa: E402
from jaxbp import data  # noqa: E402


class ConvNet(eqx.Module):
    """conv 3×3 → batch norm → relu → 2×2 max pool → dense, every op from ``ops``
    (``jaxbp.ops``: hand-derived rules; ``jaxbp.autodiff``: their twins)."""
    w: jax.Array          # (O, I, FH, FW)
    gamma: jax.Array
    beta: jax.Array
    dense_w: jax.Array
    dense_b: jax.Array
    ops: object           # a namespace: a non-array leaf, static under eqx.filter_jit

    def __init__(self, key, ops=jaxbp.ops, channels=8, classes=10):
        k1, k2 = jax.random.split(key)
        init = jax.nn.initializers.he_normal()
        self.w = init(k1, (channels, 1, 3, 3))
        self.gamma, self.beta = jnp.ones(channels), jnp.zeros(channels)
        self.dense_w, self.dense_b = init(k2, (classes, channels * 4 * 4)), jnp.zeros(classes)
        self.ops = ops

    def __call__(self, x):                                      # x: (N, 1, 8, 8)
        ops = self.ops
        h = ops.conv2d(x, self.w, None, 1, "SAME")
        h, _, _ = ops.batch_norm(h, self.gamma, self.beta)
        h = ops.max_pool2d(ops.relu(h), 2)
        return ops.dense(h.reshape(len(h), -1), self.dense_w, self.dense_b)


def loss_fn(model, x, y):
    return model.ops.softmax_cross_entropy(model(x), y).mean()


ds = data.load_digits()
x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
model = ConvNet(jax.random.key(0))
optimizer = optax.adam(1e-2)
opt_state = optimizer.init(eqx.filter(model, eqx.is_array))


@eqx.filter_jit
def train_step(model, opt_state, x, y):
    loss, grads = eqx.filter_value_and_grad(loss_fn)(model, x, y)
    updates, opt_state = optimizer.update(grads, opt_state, model)
    return eqx.apply_updates(model, updates), opt_state, loss


for step in range(200):
    idx = jax.random.randint(jax.random.key(step), (64,), 0, len(x))
    model, opt_state, loss = train_step(model, opt_state, x[idx], y[idx])
accuracy = float((jnp.argmax(model(jnp.asarray(ds.x_test)), -1) == jnp.asarray(ds.y_test)).mean())
print(f"Equinox module on jaxbp ops: loss {float(loss):.4f}, test accuracy {100 * accuracy:.1f}%")

# The same module on the autodiff twins: same parameters, float64 gradients.
model64 = jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_array(a) else a, model)
twin64 = eqx.tree_at(lambda m: m.ops, model64, jaxbp.autodiff)
x64, y64 = x[:64].astype(jnp.float64), y[:64]
g_custom, g_twin = (eqx.filter_grad(loss_fn)(m, x64, y64) for m in (model64, twin64))
rel = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
          for a, b in zip(jax.tree.leaves(g_custom), jax.tree.leaves(g_twin)))
print(f"custom vs autodiff gradients (float64): largest relative error {rel:.1e}; agree: {rel < 1e-10}")
