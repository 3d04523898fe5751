"""The data pipeline: the batches of an epoch, augmentation, evaluation batches."""
from __future__ import annotations

import typing

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.train.parallel import fetch, shard_batch


# fold_in data of the data-order stream: a step's key is fold_in(key, step), and
# steps are int32, so they never reach it.
ORDER_STREAM = np.uint32(2**32 - 1)


def epoch_order(key, step, n, batch_size):
    """The batches of the epoch that ``step`` is in, as indices ``(n // batch_size,
    batch_size)`` int32: a permutation of ``0..n-1`` drawn on the device from the
    run's key and the epoch (``step // steps_per_epoch``); the last partial batch
    is dropped so every step has one compiled shape. Traceable (``key`` and
    ``step`` may be arrays), so a resumed run draws the same order."""
    steps = n // batch_size
    k = jax.random.fold_in(jax.random.fold_in(key, ORDER_STREAM), step // steps)
    return jax.random.permutation(k, n)[: steps * batch_size].reshape(steps, batch_size).astype(jnp.int32)


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


class EvalSet(typing.NamedTuple):
    """An evaluation set on the device(s), in ``M`` batches of ``B`` (the last
    one padded and masked), ready for ``Steps.eval``."""
    xs: jax.Array     # (M, B, ...)
    ys: jax.Array     # (M, B)
    masks: jax.Array  # (M, B): 1 for real rows, 0 for padding
    n: int            # real rows


def eval_set(x, y, batch_size, mesh=None):
    """Put ``(x, y)`` on the device(s) once, as :class:`EvalSet` batches of at most
    ``batch_size`` (a multiple of the mesh's size), each sharded over the mesh."""
    n = len(x)
    per = 1 if mesh is None else mesh.size
    batch_size = -(-min(batch_size, n) // per) * per
    m = -(-n // batch_size)
    pad = m * batch_size - n
    mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
    y = np.concatenate([y, np.zeros(pad, y.dtype)])
    arrays = [a.reshape((m, batch_size) + a.shape[1:]) for a in (x, y, mask)]
    if mesh is not None:
        arrays = shard_batch(mesh, *arrays, axis=1)
    return EvalSet(*arrays, n)


def evaluate(eval_fn, params, state, data, predictions=False):
    """Mean loss and accuracy over an :class:`EvalSet`, one compiled call
    (``Steps.eval``); with ``predictions``, also the predicted class of every example."""
    loss, correct, predicted = eval_fn(params, state, data.xs, data.ys, data.masks)
    result = float(fetch(loss)) / data.n, float(fetch(correct)) / data.n
    if predictions:
        return result + (np.asarray(fetch(predicted)).reshape(-1)[:data.n],)
    return result
