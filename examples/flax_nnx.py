"""jaxbp's ops inside a Flax NNX module: the hand-derived backward rules in a
model written the Flax way, trained with nnx.Optimizer, and checked against the
same module on the autodiff twins.

    pip install flax
    python examples/flax_nnx.py
"""
import jax

jax.config.update("jax_enable_x64", True)  # for the float64 gradient check below

import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

import jaxbp  # noqa: E402
from jaxbp import data  # noqa: E402


class ConvNet(nnx.Module):
    """conv 3×3 → batch norm → relu → 2×2 max pool → dense, every op from ``ops``
    (``jaxbp.ops``: hand-derived rules; ``jaxbp.autodiff``: their twins)."""

    def __init__(self, ops, rngs, channels=8, classes=10):
        self.ops = ops
        init = jax.nn.initializers.he_normal()
        self.w = nnx.Param(init(rngs.params(), (channels, 1, 3, 3)))     # (O, I, FH, FW)
        self.gamma = nnx.Param(jnp.ones(channels))
        self.beta = nnx.Param(jnp.zeros(channels))
        self.dense_w = nnx.Param(init(rngs.params(), (classes, channels * 4 * 4)))
        self.dense_b = nnx.Param(jnp.zeros(classes))

    def __call__(self, x):                                      # x: (N, 1, 8, 8)
        ops = self.ops
        h = ops.conv2d(x, self.w[...], None, 1, "SAME")
        h, _, _ = ops.batch_norm(h, self.gamma[...], self.beta[...])
        h = ops.max_pool2d(ops.relu(h), 2)
        return ops.dense(h.reshape(len(h), -1), self.dense_w[...], self.dense_b[...])


def loss_fn(model, x, y):
    return model.ops.softmax_cross_entropy(model(x), y).mean()


ds = data.load_digits()
x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
model = ConvNet(jaxbp.ops, nnx.Rngs(0))
optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

# Flax's fast path: split once, a pure jitted step, merge inside.
graphdef, state = nnx.split((model, optimizer))


@jax.jit
def train_step(state, x, y):
    model, optimizer = nnx.merge(graphdef, state)
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), loss


for step in range(200):
    idx = jax.random.randint(jax.random.key(step), (64,), 0, len(x))
    state, loss = train_step(state, x[idx], y[idx])
model, _ = nnx.merge(graphdef, state)
accuracy = float((jnp.argmax(model(jnp.asarray(ds.x_test)), -1) == jnp.asarray(ds.y_test)).mean())
print(f"Flax NNX module on jaxbp ops: loss {float(loss):.4f}, test accuracy {100 * accuracy:.1f}%")

# The same module on the autodiff twins: same parameters, float64 gradients.
twin = ConvNet(jaxbp.autodiff, nnx.Rngs(0))
nnx.update(twin, nnx.state(model))
as64 = lambda m: jax.tree.map(lambda a: a.astype(jnp.float64), nnx.state(m, nnx.Param))
x64, y64 = x[:64].astype(jnp.float64), y[:64]
g_custom = jax.grad(lambda p: loss_fn(nnx.merge(nnx.graphdef(model), p), x64, y64))(as64(model))
g_twin = jax.grad(lambda p: loss_fn(nnx.merge(nnx.graphdef(twin), p), x64, y64))(as64(twin))
rel = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
          for a, b in zip(jax.tree.leaves(g_custom), jax.tree.leaves(g_twin)))
print(f"custom vs autodiff gradients (float64): largest relative error {rel:.1e}; agree: {rel < 1e-10}")
