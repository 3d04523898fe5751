"""Custom vs autodiff gradients of a whole CNN, per parameter, in float64.

    python examples/compare_gradients.py
"""
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402

import jaxbp  # noqa: E402
from jaxbp import data, layers  # noqa: E402

ds = data.load_digits()
x, y = jnp.asarray(ds.x_train[:32], jnp.float64), jnp.asarray(ds.y_train[:32])
net = layers.cnn(10)
_, params, state = net.init(jax.random.PRNGKey(0), x.shape)
# By layer name (conv1.w, bn1.gamma, ...), as jaxbp gradcheck reports them.
params = jax.tree.map(lambda p: p.astype(jnp.float64), layers.named(net, params))


def loss_fn(ops, params, x, y):
    # The same architecture, built on either op namespace.
    model = layers.cnn(10, gradients="custom" if ops is jaxbp.ops else "autodiff")
    logits, _ = model.apply(layers.unnamed(model, params), state, x, train=True)
    return ops.softmax_cross_entropy(logits, y).mean()


report = jaxbp.compare_gradients(loss_fn, params, x, y)
print(report.table())
print(f"largest relative error custom vs autodiff: {report.max_rel_err:.2e}; "
      f"finite differences: {report.max_fd_err:.2e}; within float64 tolerance: {report.ok('float64')}")
