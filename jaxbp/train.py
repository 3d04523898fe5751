"""Training: jitted train/eval steps, the epoch loop, metrics, plots, checkpoints.

Python API::

    cfg = jaxbp.train.Config(model="cnn", epochs=10)
    result = jaxbp.train.fit(cfg)          # also what `jaxbp train` runs

A train step is one XLA computation: forward, the hand-derived (or autodiff)
backward, and the optax update, with the parameters and optimizer state
donated. Randomness is a function of ``(seed, step)`` and the data order of
``(seed, epoch)``, so a resumed run repeats an uninterrupted one exactly.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
import typing
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbp import checkpoint, data as data_lib, layers, ops, rundir

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
DTYPES = ("float32", "bfloat16", "float64")


@dataclasses.dataclass
class Config:
    model: str = "cnn"
    data: str = "digits"
    data_dir: str | None = None
    epochs: int = 60
    batch_size: int = 32
    lr: float = 3e-3
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    seed: int = 0
    gradients: str = "custom"
    dtype: str = "float32"            # compute dtype; parameters stay float32 (float64 if asked)
    algorithm: str = ops.DEFAULT_ALGORITHM  # conv2d algorithm
    layout: str = "NHWC"              # inside the CNN; the input is NCHW either way
    run_dir: str | None = None
    resume: bool = False
    overwrite: bool = False           # replace what run_dir holds (a new run only)
    eval_batch_size: int = 512
    augment: int = 1                  # random shifts of up to this many pixels (0: none)
    devices: int | None = None        # data-parallel over this many devices (None: all)
    dropout: float = 0.25             # before the last dense layer

    def validate(self):
        """Raise ValueError naming the first bad field."""
        def bad(field, value, expected):
            raise ValueError(f"{field} must be {expected}, got {value!r}")
        for field in ("epochs", "batch_size", "eval_batch_size"):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                bad(field, v, "a positive integer")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            bad("lr", self.lr, "a positive finite number")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            bad("weight_decay", self.weight_decay, "a number >= 0")
        if isinstance(self.augment, bool) or not isinstance(self.augment, int) or self.augment < 0:
            bad("augment", self.augment, "an integer >= 0")
        if not 0 <= self.dropout < 1:
            bad("dropout", self.dropout, "in [0, 1)")
        if not self.warmup_epochs >= 0:
            bad("warmup_epochs", self.warmup_epochs, "a number >= 0")
        for field, choices in (("model", tuple(layers.MODELS)), ("data", data_lib.DATASETS),
                               ("optimizer", OPTIMIZERS), ("gradients", tuple(layers.GRADIENTS)),
                               ("dtype", DTYPES), ("algorithm", ("explicit", "implicit")),
                               ("layout", ("NCHW", "NHWC"))):
            if getattr(self, field) not in choices:
                bad(field, getattr(self, field), "one of " + ", ".join(choices))
        if self.devices is not None:
            if isinstance(self.devices, bool) or not isinstance(self.devices, int) or self.devices <= 0:
                bad("devices", self.devices, "a positive integer")
            if self.devices > jax.device_count():
                bad("devices", self.devices, f"at most the {jax.device_count()} available device(s)")
        if self.batch_size % self.num_devices():
            bad("batch_size", self.batch_size, f"a multiple of the {self.num_devices()} devices")
        if self.dtype == "float64" and not jax.config.jax_enable_x64:
            raise ValueError("dtype float64 needs jax_enable_x64 (set JAX_ENABLE_X64=1)")
        return self


    def num_devices(self):
        return jax.device_count() if self.devices is None else self.devices


class TrainState(typing.NamedTuple):
    params: typing.Any
    state: typing.Any      # e.g. batch-norm running statistics
    opt_state: typing.Any
    step: jax.Array        # int32 scalar
    key: jax.Array         # raw uint32 PRNG key; the step's key is fold_in(key, step)


def build_model(cfg, num_classes):
    if cfg.model == "cnn":
        return layers.cnn(num_classes, gradients=cfg.gradients, layout=cfg.layout,
                          algorithm=cfg.algorithm, dropout=cfg.dropout)
    return layers.mlp(num_classes, gradients=cfg.gradients, dropout=cfg.dropout)


def build_optimizer(cfg, steps_per_epoch):
    total = cfg.epochs * steps_per_epoch
    warmup = min(int(cfg.warmup_epochs * steps_per_epoch), max(total - 1, 0))
    lr = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warmup, max(total, warmup + 1), cfg.lr * 1e-2)
    if cfg.optimizer == "sgd":
        return optax.sgd(lr)
    if cfg.optimizer == "momentum":
        return optax.sgd(lr, momentum=0.9, nesterov=True)
    if cfg.optimizer == "adam":
        return optax.adam(lr)
    # adamw: decoupled weight decay, on weights only (not biases or batch-norm scales).
    return optax.adamw(lr, weight_decay=cfg.weight_decay, mask=_weights_mask)


def _weights_mask(params):
    return jax.tree_util.tree_map_with_path(lambda p, _: jax.tree_util.keystr(p).endswith("['w']"), params)


def regularizer(params, weight_decay):
    """docs/derivation.md §6: ``R = (λ/2) Σ ‖W‖²`` over weight matrices/kernels; its
    gradient ``λW`` reaches the weights directly, never the logits."""
    leaves = jax.tree.leaves(jax.tree.map(lambda m, p: p if m else None, _weights_mask(params), params))
    return 0.5 * weight_decay * sum(jnp.sum(p * p) for p in leaves)


def init_state(model, cfg, input_shape):
    key = jax.random.PRNGKey(cfg.seed)
    init_key, train_key = jax.random.split(key)
    _, params, state = model.init(init_key, (1,) + tuple(input_shape))
    if cfg.dtype == "float64":
        params, state = jax.tree.map(lambda a: a.astype(jnp.float64), (params, state))
    return params, state, train_key


def make_mesh(cfg):
    """A 1-D mesh ``("batch",)`` over the first ``cfg.devices`` devices (all processes')."""
    return jax.sharding.Mesh(np.array(jax.devices()[:cfg.num_devices()]), ("batch",))


def replicate(tree, mesh):
    """Place a pytree of host or device arrays, identical on every process, replicated."""
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.tree.map(lambda a: jax.make_array_from_callback(np.shape(a), sharding,
                                                               lambda i, a=np.asarray(fetch(a)): a[i]), tree)


def shard_batch(mesh, *arrays):
    """Global arrays split along axis 0 over the mesh. Every process passes the same
    global batch and contributes only its own rows (its shard of the data)."""
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
    p, count = jax.process_index(), jax.process_count()
    out = []
    for a in arrays:
        rows = len(a) // count
        out.append(jax.make_array_from_process_local_data(sharding, a[p * rows:(p + 1) * rows], a.shape))
    return out


def fetch(x):
    """A device value as numpy, also when it is spread over several processes
    (replicated values are read from this process's copy)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


def make_steps(model, optimizer, cfg, mesh=None):
    """``train_step(ts, x, y) -> (ts, metrics)`` and ``eval_step(params, state, x, y, mask)``.

    With ``mesh``, the batch arrives sharded along ``"batch"`` and the state stays
    replicated; XLA inserts the all-reduces, so batch norm sees the global batch.
    """
    ops = layers.namespace(cfg.gradients)
    compute = jnp.dtype(cfg.dtype)
    l2 = cfg.weight_decay if cfg.optimizer != "adamw" else 0.0

    def loss_fn(params, state, x, y, key):
        shift_key, key = jax.random.split(key)
        if cfg.augment:
            x = random_shift(shift_key, x, cfg.augment)
        logits, new_state = model.apply(params, state, x.astype(compute), train=True, key=key)
        loss = ops.softmax_cross_entropy(logits, y).mean()
        if l2:
            loss = loss + regularizer(params, l2)
        return loss, new_state

    @partial(jax.jit, donate_argnums=0)
    def train_step(ts, x, y):
        key = jax.random.fold_in(ts.key, ts.step)
        (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(ts.params, ts.state, x, y, key)
        updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params)
        params = optax.apply_updates(ts.params, updates)
        if mesh is not None:
            rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
            params, state, opt_state = jax.lax.with_sharding_constraint((params, state, opt_state), rep)
        metrics = {"loss": loss, "loss_finite": jnp.isfinite(loss),
                   "grads_finite": jnp.all(jnp.array([jnp.isfinite(g).all() for g in jax.tree.leaves(grads)]))}
        return TrainState(params, state, opt_state, ts.step + 1, ts.key), metrics

    @jax.jit
    def eval_step(params, state, x, y, mask):
        logits, _ = model.apply(params, state, x.astype(compute), train=False)
        loss = ops.softmax_cross_entropy(logits, y)
        correct = (jnp.argmax(logits, -1) == y)
        return jnp.sum(loss * mask), jnp.sum(correct * mask)

    return train_step, eval_step


def random_shift(key, x, max_shift):
    """Translate each NCHW image by up to ``max_shift`` pixels (zero fill)."""
    n, c, h, w = x.shape
    m = max_shift
    xp = jnp.pad(x, ((0, 0), (0, 0), (m, m), (m, m)))
    offsets = jax.random.randint(key, (n, 2), 0, 2 * m + 1)
    return jax.vmap(lambda img, o: jax.lax.dynamic_slice(img, (0, o[0], o[1]), (c, h, w)))(xp, offsets)


def evaluate(eval_step, params, state, x, y, batch_size, mesh=None):
    """Mean loss and accuracy over (x, y), in fixed-size batches (the last one masked)."""
    n = len(x)
    per = 1 if mesh is None else mesh.size
    batch_size = -(-min(batch_size, n) // per) * per
    total_loss, total_correct = 0.0, 0.0
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
        loss, correct = eval_step(params, state, xb, yb, mask)
        total_loss += float(fetch(loss))
        total_correct += float(fetch(correct))
    return total_loss / n, total_correct / n


def epoch_batches(n, batch_size, seed, epoch):
    """Indices of each batch of an epoch: a permutation fixed by (seed, epoch); the
    last partial batch is dropped so every step has one compiled shape."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return order[: n // batch_size * batch_size].reshape(-1, batch_size)


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or gradient."""


class TrainingInterrupted(Exception):
    """Training was interrupted (Ctrl-C); says what was saved."""

    def __init__(self, run_dir, saved):
        self.run_dir, self.saved = run_dir, saved
        what = (f"the checkpoint after epoch {saved['epoch']} ({saved['path']})" if saved
                else "no checkpoint yet")
        super().__init__(f"interrupted; saved: {what}")


def _log(quiet, *args):
    if not quiet:
        print(*args, flush=True)


def _prepare_run_dir(cfg, chief):
    """The run-directory rules (jaxbp.rundir), checked before data loading and
    compilation so that a mistake costs nothing."""
    if not cfg.run_dir:
        if cfg.resume:
            raise ValueError("resume needs a run directory (--run-dir)")
        return
    if cfg.resume:
        saved = rundir.read_config(cfg.run_dir)
        for field, given, old in rundir.conflicts(saved, dataclasses.asdict(cfg))[:1]:
            raise rundir.RunDirError(rundir.conflict_message(cfg.run_dir, field, given, old))
        if chief:
            rundir.check_writable(cfg.run_dir)
    elif chief:
        rundir.prepare_new(cfg.run_dir, cfg.overwrite)


def fit(cfg, dataset=None, quiet=False, max_epochs=None):
    """Train ``cfg.model`` on ``cfg.data`` and return a summary dict.

    ``max_epochs`` stops this call after that many epochs (the schedule still
    spans ``cfg.epochs``), so a run can be done in pieces with ``resume``.

    With ``cfg.run_dir``: writes ``config.json``, ``metrics.jsonl`` (one object
    per epoch), ``curves.png`` and ``checkpoints/`` (after every epoch). The
    directory must be new or empty (``cfg.overwrite`` replaces what is there).
    With ``cfg.resume``: continues the run in ``cfg.run_dir`` from its newest
    usable checkpoint; ``cfg`` must equal its ``config.json`` except in
    :data:`jaxbp.rundir.MAY_CHANGE`.
    Raises :class:`NonFiniteError` at the first non-finite step (the last
    checkpoint stays the last good one) and :class:`TrainingInterrupted` on
    Ctrl-C. ``quiet`` silences the per-epoch lines, not the final one.
    """
    cfg.validate()
    chief = jax.process_index() == 0  # the one process that writes files
    _prepare_run_dir(cfg, chief)
    ds = dataset if dataset is not None else data_lib.load(cfg.data, cfg.data_dir, cfg.seed)
    n = len(ds.x_train)
    if cfg.batch_size > n:
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the training set ({n} examples)")
    steps_per_epoch = n // cfg.batch_size
    model = build_model(cfg, ds.num_classes)
    optimizer = build_optimizer(cfg, steps_per_epoch)
    params, state, key = init_state(model, cfg, ds.x_train.shape[1:])
    ts = TrainState(params, state, optimizer.init(params), jnp.zeros((), jnp.int32), key)
    mesh = make_mesh(cfg)
    train_step, eval_step = make_steps(model, optimizer, cfg, mesh)

    ckpt_dir = os.path.join(cfg.run_dir, "checkpoints") if cfg.run_dir else None
    history, start_epoch, saved = [], 0, None
    if cfg.resume:
        ts, meta, path = checkpoint.restore_latest(ckpt_dir, jax.tree.map(fetch, ts))
        start_epoch = meta["epoch"] + 1
        saved = {"epoch": start_epoch, "path": path}
        history = rundir.read_metrics(cfg.run_dir)[:start_epoch]
        _log(quiet, f"resumed from {path} (epoch {start_epoch}, step {int(fetch(ts.step))})")
    ts = replicate(ts, mesh)
    if cfg.run_dir and chief:
        rundir.write_json(os.path.join(cfg.run_dir, "config.json"), dataclasses.asdict(cfg))
        rundir.write_metrics(cfg.run_dir, history)

    from tqdm.auto import tqdm
    t_start = time.perf_counter()
    end_epoch = cfg.epochs if max_epochs is None else min(cfg.epochs, start_epoch + max_epochs)
    # The bar is for a person at a terminal; a log gets the per-epoch lines only.
    bar_off = quiet or not sys.stderr.isatty()
    step_losses = []
    try:
        for epoch in range(start_epoch, end_epoch):
            t0 = time.perf_counter()
            batches = epoch_batches(n, cfg.batch_size, cfg.seed, epoch)
            bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=bar_off,
                       file=sys.stderr, dynamic_ncols=True)
            losses, finite = [], []
            for i, idx in enumerate(bar):
                ts, m = train_step(ts, *shard_batch(mesh, ds.x_train[idx], ds.y_train[idx]))
                losses.append(m["loss"])
                finite.append((m["loss_finite"], m["grads_finite"]))
                if i % 10 == 9 or i == len(batches) - 1:  # one host sync per 10 steps
                    _check_finite(finite, epoch * steps_per_epoch, saved)
                    bar.set_postfix(loss=f"{np.mean([fetch(l) for l in losses[-10:]]):.4f}")
            step_losses += [float(fetch(l)) for l in losses]
            train_loss = float(np.mean(step_losses[-len(losses):]))
            test_loss, test_acc = evaluate(eval_step, ts.params, ts.state, ds.x_test, ds.y_test,
                                           cfg.eval_batch_size, mesh)
            record = {"epoch": epoch + 1, "step": int(fetch(ts.step)), "train_loss": train_loss,
                      "test_loss": test_loss, "test_accuracy": test_acc,
                      "seconds": time.perf_counter() - t0}
            history.append(record)
            _log(quiet, f"epoch {epoch + 1:3d}/{cfg.epochs}  train_loss {train_loss:.4f}  "
                        f"test_loss {test_loss:.4f}  test_acc {100 * test_acc:6.2f}%  {record['seconds']:.1f}s")
            if cfg.run_dir and chief:
                path = checkpoint.save(ckpt_dir, int(fetch(ts.step)), jax.tree.map(fetch, ts),
                                       {"epoch": epoch})
                saved = {"epoch": epoch + 1, "path": path}
                rundir.write_metrics(cfg.run_dir, history)
    except KeyboardInterrupt:
        raise TrainingInterrupted(cfg.run_dir, saved) from None
    finally:
        if cfg.run_dir and chief and history[start_epoch:]:
            from jaxbp._plot import plot_curves
            plot_curves(history, os.path.join(cfg.run_dir, "curves.png"),
                        title=f"{cfg.model} on {cfg.data}, {cfg.gradients} gradients")
    final = history[-1] if history else {}
    if chief:
        print(f"final test accuracy {100 * final.get('test_accuracy', float('nan')):.2f}% "
              f"({time.perf_counter() - t_start:.1f}s)", flush=True)
    return {"history": history, "state": ts, "test_accuracy": final.get("test_accuracy"),
            "model": model, "step_losses": step_losses}


def _check_finite(finite, first_step, saved=None):
    """Raise at the first step (1-based, counted over the run) whose loss or
    gradients are not finite, naming which and what was saved before it."""
    flags = np.array([[fetch(a), fetch(b)] for a, b in finite], bool)  # (steps, 2): loss, gradients finite
    bad = np.flatnonzero(~flags.all(axis=1))
    if bad.size:
        step = first_step + int(bad[0]) + 1
        what = "loss" if not flags[bad[0], 0] else "gradients"
        kept = (f"the checkpoint after epoch {saved['epoch']} ({saved['path']}) is the last good state"
                if saved else "no checkpoint was written before it")
        raise NonFiniteError(f"non-finite {what} at step {step}; {kept}; try a smaller --lr, "
                             "or --debug-nans to locate it")
