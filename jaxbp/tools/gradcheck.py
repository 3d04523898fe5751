"""Compare the hand-derived gradients with JAX's: per leaf, and against finite differences.

    report = jaxbp.compare_gradients(loss_fn, params, *args)
    print(report.table())

``loss_fn(ops, params, *args) -> scalar`` builds its computation from ``ops``;
it is run once with :mod:`jaxbp.ops` (custom rules) and once with
:mod:`jaxbp.autodiff` (twins), from the same parameters.
"""
from __future__ import annotations

import math
import typing

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp import autodiff, ops as custom_ops

# Tolerances per dtype: (custom vs twin relative error, finite-difference relative error).
TOLERANCES = {"float64": (1e-10, 1e-6), "float32": (1e-4, 5e-2)}


class LeafError(typing.NamedTuple):
    path: str
    shape: tuple
    rel_err: float       # ‖custom − twin‖ / ‖twin‖ (see `zero`)
    max_abs_err: float   # max |custom − twin|
    zero: bool           # the twin's gradient is 0 to working precision; rel_err is then
                         # relative to the norm of the whole gradient instead
    name: str = ""       # the path dotted: conv1.w


class Report(typing.NamedTuple):
    leaves: list             # LeafError per parameter leaf, in tree order
    rel_err: typing.Any      # same pytree structure as params
    max_abs_err: typing.Any  # same pytree structure as params
    finite_differences: list  # (numerical, custom analytic, relative error) per direction

    @property
    def max_rel_err(self):
        """The largest leaf error; NaN when any is NaN (Python's max would skip it by order)."""
        return _max_or_nan(l.rel_err for l in self.leaves)

    @property
    def max_fd_err(self):
        return _max_or_nan(e for _, _, e in self.finite_differences)

    def ok(self, dtype="float64"):
        """Within ``dtype``'s tolerances, and every gradient finite."""
        twin_tol, fd_tol = TOLERANCES[dtype]
        finite = all(math.isfinite(l.max_abs_err) for l in self.leaves)
        return finite and self.max_rel_err <= twin_tol and self.max_fd_err <= fd_tol

    def table(self, dotted=False):
        """One row per leaf (named by its tree path, or ``conv1.w`` with ``dotted``)."""
        rows = [f"{'parameter':<32} {'shape':<18} {'rel err':>10} {'max abs err':>12}"]
        rows += [f"{l.name if dotted else l.path:<32} {str(l.shape):<18} {l.rel_err:10.2e} {l.max_abs_err:12.2e}"
                 + ("  (gradient ≈ 0: error relative to the whole gradient)" if l.zero else "")
                 for l in self.leaves]
        rows += [f"finite differences, direction {i}: numerical {n:.10g}, custom {a:.10g}, rel err {e:.2e}"
                 for i, (n, a, e) in enumerate(self.finite_differences)]
        return "\n".join(rows)


def _max_or_nan(values):
    values = list(values)
    return float("nan") if any(math.isnan(v) for v in values) else max(values, default=0.0)


def dotted(path):
    """A pytree path as ``conv1.w`` (dict keys, list indices and attributes joined by dots)."""
    def part(k):
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                return str(getattr(k, attr))
        return str(k)
    return ".".join(part(k) for k in path)


def _leaf_error(path, a, b, scale):
    """Relative error of one leaf. A leaf whose true gradient is zero (e.g. a bias
    right before batch norm) holds only rounding noise, so its error is measured
    against ``scale``, the norm of the whole gradient."""
    path, name = jax.tree_util.keystr(path), dotted(path)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    num, den = np.linalg.norm(a - b), np.linalg.norm(b)
    zero = den <= 1e3 * np.finfo(np.asarray(a).dtype if a.dtype.kind == "f" else np.float64).eps * scale
    den = scale if zero else den
    return LeafError(path, tuple(a.shape), float(num / den) if den > 0 else float(num),
                     float(np.max(np.abs(a - b))) if a.size else 0.0, bool(zero), name)


def compare_gradients(loss_fn, params, *args, directions=3, eps=None, seed=0,
                      custom=custom_ops, reference=autodiff):
    """Gradients of ``loss_fn`` w.r.t. ``params`` with ``custom`` vs ``reference`` ops.

    Also checks the custom gradient against central finite differences along
    ``directions`` random unit directions ``v``:
    ``(L(p + εv) − L(p − εv)) / 2ε ≈ ⟨∇L, v⟩``.
    """
    grad = jax.jit(jax.grad(lambda p, *a: loss_fn(custom, p, *a)))
    grad_ref = jax.jit(jax.grad(lambda p, *a: loss_fn(reference, p, *a)))
    g, g_ref = grad(params, *args), grad_ref(params, *args)
    flat, treedef = jax.tree_util.tree_flatten_with_path(g)
    flat_ref = jax.tree.leaves(g_ref)
    scale = float(np.sqrt(sum(np.sum(np.asarray(b, np.float64) ** 2) for b in flat_ref)))
    leaves = [_leaf_error(p, a, b, scale) for (p, a), b in zip(flat, flat_ref)]
    tree = lambda field: treedef.unflatten([getattr(l, field) for l in leaves])

    loss = jax.jit(lambda p, *a: loss_fn(custom, p, *a))
    dtype = jax.tree.leaves(params)[0].dtype
    eps = eps if eps is not None else (1e-6 if dtype == jnp.float64 else 1e-2)
    fd = []
    keys = jax.random.split(jax.random.key(seed), directions)
    p_leaves, p_def = jax.tree.flatten(params)
    for k in keys:
        v = [jax.random.normal(kk, l.shape, l.dtype) for kk, l in zip(jax.random.split(k, len(p_leaves)), p_leaves)]
        norm = jnp.sqrt(sum(jnp.sum(x * x) for x in v))
        v = [x / norm for x in v]
        shifted = lambda s: p_def.unflatten([p + s * eps * x for p, x in zip(p_leaves, v)])
        numerical = float((loss(shifted(1.0), *args) - loss(shifted(-1.0), *args)) / (2 * eps))
        analytic = float(sum(jnp.vdot(a, x) for a, x in zip(jax.tree.leaves(g), v)))
        fd.append((numerical, analytic, abs(numerical - analytic) / max(abs(analytic), abs(numerical), 1e-30)))
    return Report(leaves, tree("rel_err"), tree("max_abs_err"), fd)


def op_problems(dtype, checks=None):
    """Every op's small problems (declared next to each op: ``jaxbp.ops.CHECKS``;
    or ``checks`` of that form), drawn in ``dtype``: label -> (op name, args,
    argnums, kwargs)."""
    def draw(seed):
        def normal(*shapes):
            keys = jax.random.split(jax.random.key(seed), len(shapes))
            return tuple(jax.random.normal(k, sh, dtype) for k, sh in zip(keys, shapes))
        return normal

    return {label: (c.op, c.args(draw(i)), c.argnums, c.kwargs)
            for i, (label, c) in enumerate((custom_ops.CHECKS if checks is None else checks).items())}


def projected(name, args, argnums, kwargs):
    """``loss(ops, diff_args)``: a fixed random projection of the op's outputs."""
    def loss(ops, diff):
        full = list(args)
        for i, d in zip(argnums, diff):
            full[i] = d
        outs = jax.tree.leaves(getattr(ops, name)(*full, **kwargs))
        return sum(jnp.sum(o * jnp.cos(jnp.arange(o.size, dtype=o.dtype).reshape(o.shape))) for o in outs)
    return loss


def main(model="cnn", dtype="float64", ops=None):
    """Print the op table (every op, or those named in ``ops``) and the model's
    parameter table; return True when all pass."""
    from jaxbp import data, layers

    dt = jnp.dtype(dtype)
    twin_tol, fd_tol = TOLERANCES[dtype]
    ok = True
    print(f"custom vs autodiff gradients, {dtype} (tolerance: relative {twin_tol:g} vs twin, "
          f"{fd_tol:g} vs finite differences)\n")
    print(f"{'op':<24} {'rel err vs twin':>16} {'max abs err':>12} {'rel err vs FD':>14}  ")
    problems = {k: p for k, p in op_problems(dt).items() if ops is None or p[0] in ops}
    for label, (name, args, argnums, kwargs) in problems.items():
        r = compare_gradients(projected(name, args, argnums, kwargs), tuple(args[i] for i in argnums))
        passed = r.ok(dtype)
        ok &= passed
        print(f"{label:<24} {r.max_rel_err:16.2e} {max(l.max_abs_err for l in r.leaves):12.2e} "
              f"{r.max_fd_err:14.2e}  {'ok' if passed else 'FAIL'}")

    ds = data.load_digits()
    x, y = jnp.asarray(ds.x_train[:32], dt), jnp.asarray(ds.y_train[:32])
    build = lambda g: layers.MODELS[model](10, gradients=g)
    net = build("custom")
    _, params, state = net.init(jax.random.PRNGKey(0), x.shape)
    # Parameters by layer name (conv1.w, bn1.gamma, ...), not list position.
    names = layers.param_names(net)
    named = {n: jax.tree.map(lambda p: p.astype(dt), p) for n, p in zip(names, params) if p}

    def loss_fn(ops, named):
        params = [named.get(n, {}) for n in names]
        logits, _ = build("custom" if ops is custom_ops else "autodiff").apply(params, state, x, train=True)
        return ops.softmax_cross_entropy(logits, y).mean()

    r = compare_gradients(loss_fn, named)
    print(f"\nmodel {model}, every parameter:\n{r.table(dotted=True)}")
    passed = r.ok(dtype)
    print(f"\n{'PASS' if ok and passed else 'FAIL'}: largest relative error vs twin "
          f"{max(r.max_rel_err, 0):.2e}, vs finite differences {r.max_fd_err:.2e}")
    return ok and passed
