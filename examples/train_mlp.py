"""A two-layer MLP on the digits, written out with the layer API.

    python examples/train_mlp.py [--steps 300]
"""
import argparse

import jax
import jax.numpy as jnp
import optax

import jaxbp
from jaxbp import data, layers

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=300)
a = p.parse_args()

ds = data.load_digits()
model = layers.mlp(ds.num_classes, hidden=(128,), gradients="custom")
_, params, state = model.init(jax.random.PRNGKey(0), (1,) + ds.x_train.shape[1:])
opt = optax.adam(1e-3)
opt_state = opt.init(params)


@jax.jit
def step(params, state, opt_state, x, y):
    def loss_fn(params):
        logits, new_state = model.apply(params, state, x, train=True)
        return jaxbp.softmax_cross_entropy(logits, y).mean(), new_state
    (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = opt.update(grads, opt_state)
    return optax.apply_updates(params, updates), state, opt_state, loss


for i in range(a.steps):
    idx = jax.random.choice(jax.random.PRNGKey(i), len(ds.x_train), (64,), replace=False)
    params, state, opt_state, loss = step(params, state, opt_state, ds.x_train[idx], ds.y_train[idx])
    if i % 100 == 0 or i == a.steps - 1:
        print(f"step {i:4d}  loss {float(loss):.4f}")

logits, _ = model.apply(params, state, ds.x_test, train=False)
print(f"MLP test accuracy {100 * float(jnp.mean(jnp.argmax(logits, -1) == ds.y_test)):.2f}%")
