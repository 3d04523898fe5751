"""The data pipeline: the batches of an epoch, augmentation, evaluation batches."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.train.parallel import fetch, shard_batch


def epoch_batches(n, batch_size, seed, epoch):
    """Indices of each batch of an epoch: a permutation fixed by (seed, epoch); the
    last partial batch is dropped so every step has one compiled shape."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return order[: n // batch_size * batch_size].reshape(-1, batch_size)


def random_shift(key, x, max_shift):
    """Translate each NCHW image by up to ``max_shift`` pixels (zero fill)."""
    n, c, h, w = x.shape
    m = max_shift
    xp = jnp.pad(x, ((0, 0), (0, 0), (m, m), (m, m)))
    offsets = jax.random.randint(key, (n, 2), 0, 2 * m + 1)
    return jax.vmap(lambda img, o: jax.lax.dynamic_slice(img, (0, o[0], o[1]), (c, h, w)))(xp, offsets)


def random_flip(key, x):
    """Mirror each NCHW image left-right with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(flip, x[..., ::-1], x)


def evaluate(eval_step, params, state, x, y, batch_size, mesh=None, predictions=False):
    """Mean loss and accuracy over (x, y), in fixed-size batches (the last one
    masked); with ``predictions``, also the predicted class of every example."""
    n = len(x)
    per = 1 if mesh is None else mesh.size
    batch_size = -(-min(batch_size, n) // per) * per
    total_loss, total_correct, predicted = 0.0, 0.0, []
    for start in range(0, n, batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        mask = np.ones(batch_size, np.float32)
        if len(xb) < batch_size:  # pad to one compiled shape
            pad = batch_size - len(xb)
            mask[-pad:] = 0
            xb = np.concatenate([xb, np.zeros((pad,) + xb.shape[1:], xb.dtype)])
            yb = np.concatenate([yb, np.zeros(pad, yb.dtype)])
        if mesh is not None:
            xb, yb, mask = shard_batch(mesh, xb, yb, mask)
        loss, correct, pred = eval_step(params, state, xb, yb, mask)
        total_loss += float(fetch(loss))
        total_correct += float(fetch(correct))
        if predictions:
            predicted.append(np.asarray(fetch(pred))[: len(x) - start])
    if predictions:
        return total_loss / n, total_correct / n, np.concatenate(predicted)
    return total_loss / n, total_correct / n
