"""One train step and one evaluation step: model, optimizer, loss, update.

A train step is one XLA computation: forward, the hand-derived (or autodiff)
backward, and the optax update, with the state donated; a chunk of steps is one
too (``lax.scan``), and so is an evaluation. Randomness is a
function of ``(seed, step)``, so a resumed run repeats an uninterrupted one.
"""
from __future__ import annotations

import typing

import jax
import jax.numpy as jnp
import optax

from jaxbp import layers
from jaxbp.data import to_unit
from jaxbp.ops import compiler_options as conv_options
from jaxbp.train.parallel import batched, replicated
from jaxbp.train.pipeline import random_flip, random_shift


class TrainState(typing.NamedTuple):
    params: typing.Any
    state: typing.Any      # e.g. batch-norm running statistics
    opt_state: typing.Any
    step: jax.Array        # int32 scalar
    key: jax.Array         # raw uint32 PRNG key; the step's key is fold_in(key, step)


def build_model(cfg, num_classes):
    """``cfg.model`` from the registry (:data:`layers.MODELS`) with the config's options."""
    return layers.build_model(cfg.model, num_classes, gradients=cfg.gradients, **cfg.model_options())


def is_weight(leaf):
    """Weights are the matrices and kernels (rank ≥ 2), found by structure: not
    biases, batch-norm scales or shifts (rank 1)."""
    return jnp.ndim(leaf) >= 2


def build_optimizer(cfg, steps_per_epoch):
    total = cfg.epochs * steps_per_epoch
    warmup = min(int(cfg.warmup_epochs * steps_per_epoch), max(total - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warmup, max(total, warmup + 1), cfg.lr * 1e-2)
    # In float64 where JAX has it, then rounded to float32 as optax gives it: two
    # programs' float32 arithmetic of the step count may differ in the last bit
    # (XLA:CPU's two fusion emitters did), and a compiled chunk of steps must
    # equal the same steps one at a time.
    lr = lambda count: schedule(jnp.asarray(count, jnp.result_type(float))).astype(jnp.float32)
    decoupled, _ = cfg.weight_decay_terms()
    if cfg.optimizer == "sgd":
        return optax.sgd(lr)
    if cfg.optimizer == "momentum":
        return optax.sgd(lr, momentum=0.9, nesterov=True)
    if cfg.optimizer == "adam":
        return optax.adam(lr)
    return optax.adamw(lr, weight_decay=decoupled, mask=lambda p: jax.tree.map(is_weight, p))


def regularizer(params, weight_decay):
    """docs/derivation.md §6: ``R = (λ/2) Σ ‖W‖²`` over weight matrices/kernels; its
    gradient ``λW`` reaches the weights directly, never the logits."""
    return 0.5 * weight_decay * sum(jnp.sum(p * p) for p in jax.tree.leaves(params) if is_weight(p))


def init_state(model, cfg, input_shape, key=None):
    """Parameters and state in the policy's parameter dtype, and the training key,
    from ``key`` (default ``PRNGKey(cfg.seed)``)."""
    key = jax.random.PRNGKey(cfg.seed) if key is None else key
    init_key, train_key = jax.random.split(key)
    _, params, state = model.init(init_key, (1,) + tuple(input_shape))
    policy = cfg.policy()
    return policy.stored(params), policy.stored(state), train_key


class Steps(typing.NamedTuple):
    """The compiled programs of a run (:func:`make_steps`)."""
    train: typing.Callable   # (ts, x, y) -> (ts, metrics): one step
    chunk: typing.Callable   # (ts, x_all, y_all, order, length) -> (ts, metrics per step): length steps
    eval: typing.Callable    # (params, state, xs, ys, masks) -> (loss sum, correct count, predictions)
    unrolled: bool = False   # chunk's steps written out, not a loop: see unrolled_chunks


# XLA:CPU runs a convolution inside a loop through a generic loop nest unless it
# is stated in its one fast order (NHWC, HWIO, NHWC: conv/_implicit.py states the
# rules' so); JAX's transposes of the twin's convolutions are not, and a chunk of
# twin steps as a loop ran 10× (the CNN) to 30× (ResNet-20) slower per step than
# one step alone (BENCHMARKS.md). The twin's chunks on CPUs are therefore written
# out step by step, at most this many (compile time grows with each).
UNROLLED_MOST = 4


def unrolled_chunks(cfg, mesh=None):
    """Whether ``cfg``'s chunks are written out step by step instead of a loop:
    the autodiff twin's, on CPUs (see :data:`UNROLLED_MOST`)."""
    platform = (mesh.devices.flat[0].platform if mesh is not None else jax.default_backend())
    return cfg.gradients == "autodiff" and platform == "cpu"


def chunk_size(steps, most=64, unrolled=False):
    """Steps per compiled chunk: the largest divisor of an epoch's steps up to
    ``most`` (one program for the run), unless all are below 8: then ``most``
    (and a shorter last chunk, a second program). ``unrolled`` chunks: the
    largest divisor up to :data:`UNROLLED_MOST`, whatever it is (each program
    compiles every step it holds)."""
    if unrolled:
        return max(d for d in range(1, min(steps, UNROLLED_MOST) + 1) if steps % d == 0)
    best = max(d for d in range(1, min(steps, most) + 1) if steps % d == 0)
    return best if best >= 8 or steps <= most else most


def make_steps(model, optimizer, cfg, mesh=None):
    """The train step, a chunk of train steps as one program, and the evaluation.

    ``train(ts, x, y) -> (ts, metrics)``: one step on one batch (forward, the
    hand-derived or autodiff backward, the optax update), ``ts`` donated.

    ``chunk(ts, x_all, y_all, order, length) -> (ts, metrics)``: ``length``
    (static) steps as one ``lax.scan`` (the twin's on CPUs: written out,
    :func:`unrolled_chunks`). The training set stays on the
    device(s), and so does the epoch's ``order`` (``(steps_per_epoch, B)``
    indices, :func:`~jaxbp.train.pipeline.epoch_order`); the step numbered
    ``s`` trains on ``x_all[order[s % steps_per_epoch]]``, gathered and
    augmented there for the whole chunk before its loop. The
    metrics come back stacked, one entry per step, so the host waits once per
    chunk, not per step. The same steps made by calls of ``train`` on the same
    batches give the same result (tested).

    ``eval(params, state, xs, ys, masks) -> (loss sum, correct count,
    predicted classes)``: a whole evaluation set in inference mode, as one
    program (a scan over its ``M`` batches: ``xs`` ``(M, B, ...)``, rows with
    ``masks == 0`` are padding).

    With ``mesh``, every batch is sharded along ``"batch"`` and the state
    replicated; XLA inserts the all-reduces, so batch norm sees the global batch.
    """
    ops = layers.namespace(cfg.gradients)
    unrolled = unrolled_chunks(cfg, mesh)
    policy = cfg.policy()
    _, l2 = cfg.weight_decay_terms()
    shard = (lambda *a: a) if mesh is None else (lambda *a: jax.lax.with_sharding_constraint(a, batched(mesh)))
    # (steps, B, ...) arrays: the batch axis is the second.
    shard_steps = (lambda *a: a) if mesh is None else (
        lambda *a: jax.lax.with_sharding_constraint(a, batched(mesh, axis=1)))

    def logits_of(params, state, x, train, key=None):
        # uint8 pixels become floats here, batch by batch, on the device (data.to_unit).
        logits, new_state = model.apply(policy.computed(params), state, policy.computed(to_unit(x)),
                                        train=train, key=key)
        return logits.astype(policy.output), new_state

    def inputs(key, x):
        """The step's batch augmented (shifts, flips; still uint8 for 8-bit images)
        and the key left for the model (dropout), from the step's key."""
        shift_key, key = jax.random.split(key)
        shift, flip = cfg.augmentation()
        if shift:
            x = random_shift(shift_key, x, shift)
        if flip:
            flip_key, key = jax.random.split(key)
            x = random_flip(flip_key, x)
        return x, key

    def loss_fn(params, state, x, y, key):
        logits, new_state = logits_of(params, state, x, True, key)
        loss = ops.softmax_cross_entropy(logits, y).mean()
        if l2:
            loss = loss + regularizer(params, l2)
        return loss, new_state

    def update(ts, x, y, key):
        """One step on the augmented batch ``x``: gradients, the optax update, metrics."""
        (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(ts.params, ts.state, x, y, key)
        updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params)
        params = optax.apply_updates(ts.params, updates)
        if mesh is not None:
            params, state, opt_state = jax.lax.with_sharding_constraint((params, state, opt_state),
                                                                        replicated(mesh))
        finite = lambda tree: jnp.all(jnp.array([jnp.isfinite(v).all() for v in jax.tree.leaves(tree)
                                                 if jnp.issubdtype(v.dtype, jnp.inexact)] or [True]))
        # The whole new state, not only the loss: a running variance can overflow while the loss
        # is still finite, and a checkpoint of it would be no "last good state".
        metrics = {"loss": loss, "loss_finite": jnp.isfinite(loss), "grads_finite": finite(grads),
                   "state_finite": finite((params, state, opt_state))}
        return TrainState(params, state, opt_state, ts.step + 1, ts.key), metrics

    def train_step(ts, x, y):
        x, key = inputs(jax.random.fold_in(ts.key, ts.step), x)
        return update(ts, x, y, key)

    def train_steps(ts, x_all, y_all, order, length):
        # Every step's batch, augmentation and key drawn before the loop, for the
        # whole chunk at once (the values train_step draws, step by step): one
        # gather and one random draw per chunk instead of per step (BENCHMARKS.md).
        steps = ts.step + jnp.arange(length, dtype=ts.step.dtype)
        idx = order[steps % order.shape[0]]  # (length, B): the steps' batches of the epoch
        keys = jax.vmap(jax.random.fold_in, (None, 0))(ts.key, steps)
        xs, keys = jax.vmap(inputs)(keys, *shard_steps(x_all[idx]))

        def one(ts, batch):
            x, y, key = batch
            return update(ts, *shard(x, y), key)
        batches = (xs, y_all[idx], keys)
        if not unrolled:
            return jax.lax.scan(one, ts, batches)
        metrics = []
        for i in range(length):   # what the scan computes, without its loop
            ts, m = one(ts, jax.tree.map(lambda a: a[i], batches))
            metrics.append(m)
        return ts, jax.tree.map(lambda *m: jnp.stack(m), *metrics)

    def evaluate(params, state, xs, ys, masks):
        def batch(totals, xym):
            x, y, mask = shard(*xym)
            logits, _ = logits_of(params, state, x, False)
            loss = ops.softmax_cross_entropy(logits, y)
            predicted = jnp.argmax(logits, -1)
            return (totals[0] + jnp.sum(loss * mask), totals[1] + jnp.sum((predicted == y) * mask)), predicted
        zero = jnp.zeros((), policy.output)
        (loss, correct), predicted = jax.lax.scan(batch, (zero, zero), (xs, ys, masks))
        return loss, correct, predicted

    # XLA's kernels for the conv layers on this backend (ops.compiler_options).
    options = conv_options(None if mesh is None else mesh.devices.flat[0].platform)
    return Steps(jax.jit(train_step, donate_argnums=0, compiler_options=options),
                 jax.jit(train_steps, donate_argnums=0, static_argnames="length", compiler_options=options),
                 jax.jit(evaluate, compiler_options=options), unrolled)


def new_state(model, cfg, optimizer, input_shape):
    """The initial :class:`TrainState` (what ``jaxbp bench`` and ``fit`` start from).

    Built by one program compiled without backend optimization: it runs once,
    and op by op (or optimized) the random initializers alone compiled for
    seconds on a CPU, every run; this compiles in a fraction of that, and JAX's
    persistent cache keeps it (one program for every seed: the key is its argument). The values
    are the same random draws (within an ulp of op by op)."""
    return initial_state(model, cfg, optimizer, input_shape)[1]()


def initial_state(model, cfg, optimizer, input_shape):
    """:func:`new_state` in two halves: ``(shapes, make)``. ``shapes``, at once:
    the state's pytree of ``jax.ShapeDtypeStruct`` (traced, nothing compiled);
    ``make()``: the state itself, compiled and computed. A program over the state
    can compile from ``shapes`` while ``make`` runs (``fit`` compiles its first
    chunk so, beside the state's program, BENCHMARKS.md)."""
    def build(key):
        params, state, key = init_state(model, cfg, input_shape, key)
        return TrainState(params, state, optimizer.init(params), jnp.zeros((), jnp.int32), key)
    key = jax.random.PRNGKey(cfg.seed)
    traced = jax.jit(build).trace(key)
    return traced.out_info, lambda: traced.lower().compile(compiler_options={"xla_backend_optimization_level": 0})(key)
