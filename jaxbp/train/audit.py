"""Gradient audits: the hand-derived rules against the truth, on real batches.

    rows = audit(model, params, state, x, y)        # one row per parameter leaf
    # {"parameter": "conv1.w", "rule": 3.1e-07, "twin": 2.9e-07}

Each row holds two errors of the ``dtype`` (float32) gradient of the batch's
mean cross-entropy, both relative to the float64 truth (the autodiff twin's
gradient in float64 at the same, rounded, parameters and batch): ``rule``, the
model's own backward rules; ``twin``, the same forward differentiated by JAX.
``jaxbp train --audit-every N`` writes them to ``gradients.jsonl`` and draws
``gradients.png``; ``jaxbp gradcheck --run-dir R`` audits a saved checkpoint.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp import layers
from jaxbp._files import atomic_write
from jaxbp.data import to_unit
from jaxbp.ops._recipe import _twin

FILE, PICTURE = "gradients.jsonl", "gradients.png"


def parameter_names(model, params):
    """``conv1.w``, ``bn1.gamma``, ...: one per leaf of ``params``, in leaf order."""
    names = []
    for layer, p in zip(layers.param_names(model), params):
        flat = jax.tree_util.tree_flatten_with_path(p)[0]
        names += [layer + "".join(f".{getattr(k, 'key', getattr(k, 'idx', k))}" for k in path)
                  for path, _ in flat]
    return names


def audit(model, params, state, x, y, dtype="float32", key=None):
    """Per parameter leaf: the rules' and the twins' ``dtype`` gradient errors
    against the float64 truth, on the batch ``x`` (pixels as stored, uint8 or
    float) with labels ``y``. ``key``: for dropout (one mask for all three)."""
    low = jnp.dtype(dtype)
    key = jax.random.PRNGKey(0) if key is None else key
    cast = lambda t, d: jax.tree.map(lambda a: jnp.asarray(a).astype(d), t)
    with jax.enable_x64(True):
        rule_grad, twin_grad = _programs(model)
        p_low, x_low = cast(params, low), to_unit(jnp.asarray(x)).astype(low)
        args = (state, jnp.asarray(y), key)
        truth = twin_grad(cast(p_low, jnp.float64), x_low.astype(jnp.float64), *args)
        rule, auto = rule_grad(p_low, x_low, *args), twin_grad(p_low, x_low, *args)
        leaves = [np.asarray(t, np.float64) for t in jax.tree.leaves(truth)]
        scale = float(np.sqrt(sum(np.sum(t * t) for t in leaves))) or 1.0
        rows = []
        for name, t, r, a in zip(parameter_names(model, params), leaves, jax.tree.leaves(rule),
                                 jax.tree.leaves(auto)):
            den = np.linalg.norm(t)
            den = den if den > 1e-12 * scale else scale   # a zero gradient holds rounding only
            err = lambda g: float(np.linalg.norm(np.asarray(g, np.float64) - t) / den)
            rows.append({"parameter": name, "rule": err(r), "twin": err(a)})
    return rows


_PROGRAMS = {}


def _programs(model):
    """The jitted gradients of the batch loss, by the rules and by the twins: one
    pair per model, compiled once per dtype and reused by every audit of a run."""
    if id(model) not in _PROGRAMS:
        def loss(params, x, state, y, key):
            logits, _ = model.apply(params, state, x, train=True, key=key)
            return model_loss(logits, y)

        def twin(*args):
            with _twin():
                return loss(*args)
        _PROGRAMS.clear()   # one model at a time: a run's
        _PROGRAMS[id(model)] = (model, jax.jit(jax.grad(loss)), jax.jit(jax.grad(twin)))
    return _PROGRAMS[id(model)][1:]


def audit_run(run_dir, data_dir=None, batch_size=None, dtype="float32"):
    """Audit the newest usable checkpoint of a run on its first training batch
    (``batch_size``: the run's, unless given). Returns ``(rows, saved_run)``."""
    from jaxbp.train.evaluation import load_run
    run = load_run(run_dir, data_dir)
    n = batch_size or run.cfg.batch_size
    x, y = run.data.x_train[:n], run.data.y_train[:n]
    return audit(run.model, run.state.params, run.state.state, x, y, dtype), run


def model_loss(logits, y):
    """The batch's mean cross-entropy, as training's (without the weight penalty)."""
    from jaxbp import ops
    return ops.softmax_cross_entropy(logits, y).mean()


def append(run_dir, record):
    """Add one audit (``{"step", "epoch", "dtype", "parameters": rows}``) to gradients.jsonl, atomically."""
    records = read(run_dir) + [record]
    write(run_dir, records)
    return records


def write(run_dir, records):
    atomic_write(os.path.join(run_dir, FILE), lambda f: f.writelines(json.dumps(r) + "\n" for r in records))


def read(run_dir, until_step=None):
    """The audits of a run (up to ``until_step``: a resumed run drops those past its checkpoint)."""
    path = os.path.join(run_dir, FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if until_step is None or r["step"] <= until_step]


def figure(records, title=""):
    """Parameters × audited steps: the rule's error against the float64 truth
    (log10), and the rule's error over the twin's (log2: 0 = as accurate)."""
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    names = [r["parameter"] for r in records[0]["parameters"]]
    steps = [r["step"] for r in records]
    rule = np.array([[p["rule"] for p in r["parameters"]] for r in records]).T
    twin = np.array([[p["twin"] for p in r["parameters"]] for r in records]).T
    tiny = 1e-30
    log_err = np.log10(np.maximum(rule, tiny))
    ratio = np.log2(np.maximum(rule, tiny) / np.maximum(twin, tiny))
    fig = Figure(figsize=(12, 1.6 + 0.28 * len(names)))
    ax_err, ax_ratio = fig.subplots(1, 2, sharey=True)
    extent = dict(aspect="auto", interpolation="nearest")
    im = ax_err.imshow(log_err, cmap="viridis", **extent)
    fig.colorbar(im, ax=ax_err, label="log10(relative error)")
    bound = max(1.0, float(np.abs(ratio).max()))
    im = ax_ratio.imshow(ratio, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -bound, bound), **extent)
    fig.colorbar(im, ax=ax_ratio, label="log2(rule error / twin error)")
    ticks = np.unique(np.linspace(0, len(steps) - 1, min(len(steps), 8)).round().astype(int))
    for ax, what in ((ax_err, f"rule's {records[0]['dtype']} error vs float64"),
                     (ax_ratio, "rule vs autodiff twin (red: rule worse, blue: better)")):
        ax.set_xticks(ticks, [str(steps[i]) for i in ticks])
        ax.set(xlabel="training step", title=what)
    ax_err.set_yticks(range(len(names)), names)
    ax_err.set_ylabel("parameter")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
