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
from jaxbp.tools.check import fd_error

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

    def table(self, dotted=True):
        """One row per leaf, named ``conv1.w`` (``dotted=False``: its tree path);
        the columns as wide as the longest name and shape."""
        names = [l.name if dotted else l.path for l in self.leaves]
        w = max([len("parameter")] + [len(n) for n in names])
        ws = max([len("shape")] + [len(str(l.shape)) for l in self.leaves])
        rows = [f"{'parameter':<{w}} {'shape':<{ws}} {'rel err':>10} {'max abs err':>12}"]
        rows += [f"{n:<{w}} {str(l.shape):<{ws}} {l.rel_err:10.2e} {l.max_abs_err:12.2e}"
                 + ("  (gradient ≈ 0: error relative to the whole gradient)" if l.zero else "")
                 for n, l in zip(names, self.leaves)]
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
    ``(L(p + εv) − L(p − εv)) / 2ε ≈ ⟨∇L, v⟩``, at two steps, ``ε`` and
    ``ε/3``, keeping the quotient closer to the rule's: a ReLU network's loss
    has kinks, and a step that crosses one (as likely as the step is long)
    spoils that quotient alone, while a wrong rule is far from both. The error
    is relative, and above the quotient's rounding, ~1e-16·|L|/ε
    (:func:`jaxbp.tools.check.fd_error`, as :func:`jaxbp.check` measures it).
    """
    grads = jax.jit(lambda p, *a: (jax.grad(lambda p: loss_fn(custom, p, *a))(p),     # one program
                                   jax.grad(lambda p: loss_fn(reference, p, *a))(p)))  # for both
    g, g_ref = grads(params, *args)
    flat, treedef = jax.tree_util.tree_flatten_with_path(g)
    flat_ref = jax.tree.leaves(g_ref)
    scale = float(np.sqrt(sum(np.sum(np.asarray(b, np.float64) ** 2) for b in flat_ref)))
    leaves = [_leaf_error(p, a, b, scale) for (p, a), b in zip(flat, flat_ref)]
    tree = lambda field: treedef.unflatten([getattr(l, field) for l in leaves])

    loss = jax.jit(lambda p, *a: loss_fn(custom, p, *a))
    value = float(loss(params, *args))
    dtype = jax.tree.leaves(params)[0].dtype
    eps = eps if eps is not None else (1e-6 if dtype == jnp.float64 else 1e-2)
    fd = []
    rng = np.random.default_rng(seed)   # on the host: JAX's draws compile a program per shape
    p_leaves, p_def = jax.tree.flatten(params)
    p_host = [np.asarray(p) for p in p_leaves]
    for _ in range(directions):
        v = [rng.standard_normal(p.shape) for p in p_host]
        norm = math.sqrt(sum(float(np.sum(x * x)) for x in v))
        v = [(x / norm).astype(p.dtype) for x, p in zip(v, p_host)]
        shifted = lambda s: p_def.unflatten([p + np.asarray(s, p.dtype) * x for p, x in zip(p_host, v)])
        analytic = float(sum(np.vdot(np.asarray(a, np.float64), x) for a, x in zip(jax.tree.leaves(g), v)))
        numerical = min(((float(loss(shifted(h), *args)) - float(loss(shifted(-h), *args))) / (2 * h)
                         for h in (eps, eps / 3)), key=lambda n: abs(n - analytic))
        fd.append((numerical, analytic, fd_error(numerical, analytic, value)))
    return Report(leaves, tree("rel_err"), tree("max_abs_err"), fd)


def op_problems(dtype, checks=None):
    """Every op's small problems (declared next to each op: ``jaxbp.ops.CHECKS``;
    or ``checks`` of that form), drawn in ``dtype``: label -> (op name, args,
    argnums, kwargs)."""
    return {label: (c.op, c.args(_draw(i, dtype)), c.argnums, c.kwargs)
            for i, (label, c) in enumerate((custom_ops.CHECKS if checks is None else checks).items())}


def outputs(name, args, argnums, kwargs):
    """``outs(ops, diff_args)``: the op's outputs (a list of arrays) from ``ops``'
    version of it, ``diff_args`` in the places ``argnums`` name."""
    def outs(ops, diff):
        full = list(args)
        for i, d in zip(argnums, diff):
            full[i] = d
        return jax.tree.leaves(getattr(ops, name)(*full, **kwargs))
    return outs


def projection(o):
    """A fixed array of ``o``'s shape and dtype, ``cos(0), cos(1), …`` in order:
    the direction :func:`projected` (and ``benchmarks/ops.py``) project onto."""
    return jnp.cos(jnp.arange(o.size, dtype=o.dtype).reshape(o.shape))


def projected(name, args, argnums, kwargs):
    """``loss(ops, diff_args)``: a fixed random projection of the op's outputs."""
    outs = outputs(name, args, argnums, kwargs)
    return lambda ops, diff: sum(jnp.sum(o * projection(o)) for o in outs(ops, diff))


def audit_passes(rule_err, twin_err, dtype="float32"):
    """The rule may be a little further from the truth than the twin, not far (as :func:`jaxbp.check`)."""
    from jaxbp.tools.check import LOW_PRECISION_FACTOR
    return rule_err <= max(LOW_PRECISION_FACTOR * twin_err, 100 * float(jnp.finfo(dtype).eps))


def _closer(rule_err, twin_err):
    """Which is closer to the truth; within 10 % of each other, neither ("≈")."""
    if abs(rule_err - twin_err) <= 0.1 * max(rule_err, twin_err):
        return "≈"
    return "rule" if rule_err < twin_err else "twin"


class OpSpecError(ValueError):
    """``--op module:function`` names nothing that can be checked."""


def _user_module(spec, name):
    import importlib
    import os
    import sys
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())   # a module beside the user, as `python -m` finds it
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        raise OpSpecError(f"--op {spec!r}: no module {e.name!r} (run from its folder or put it on PYTHONPATH)")


def check_user_module(spec, dtype="float64"):
    """``jaxbp gradcheck --op module:``: every ``@jaxbp.op`` the module defines that
    declares its example inputs, one report each, then one line of their results."""
    if spec == ":":
        raise OpSpecError("--op ':': expected module: (e.g. my_rules:) or module:function")
    module = _user_module(spec, spec[:-1])
    ops = [name for name, f in vars(module).items() if not name.startswith("_") and hasattr(f, "autodiff")
           and getattr(f, "__module__", None) == module.__name__]
    checked = [name for name in ops if hasattr(getattr(module, name), "example")]
    if not checked:
        raise OpSpecError(f"--op {spec!r}: module {module.__name__!r} defines no @jaxbp.op with example inputs "
                          f"({'ops without: ' + ', '.join(ops) if ops else 'no op at all'}): declare them with "
                          "@jaxbp.op(example=lambda normal: normal((4, 3), ...))")
    results = {name: check_user_op(f"{spec}{name}", dtype=dtype) for name in checked}
    line = f"{module.__name__}: " + ", ".join(f"{n} {'ok' if ok else 'FAILED'}" for n, ok in results.items())
    skipped = [n for n in ops if n not in checked]
    if skipped:
        line += f"; not checked (no example inputs): {', '.join(skipped)}"
    print("\n" + line)
    return all(results.values())


def check_user_op(spec, shapes=None, dtype="float64"):
    """``jaxbp gradcheck --op module:function``: :func:`jaxbp.check` on a user's op
    with the inputs it declares (``@jaxbp.op(example=...)``) or drawn in ``shapes``."""
    from jaxbp.tools.check import check

    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise OpSpecError(f"--op {spec!r}: expected module:function (e.g. my_rules:my_dense)")
    try:
        fn = getattr(_user_module(spec, module), attr)
    except AttributeError:
        raise OpSpecError(f"--op {spec!r}: module {module!r} has no {attr!r}")
    normal = _draw(0, jnp.float64)
    if shapes:
        args = normal(*shapes)
    elif hasattr(fn, "example"):
        args = tuple(fn.example(normal))
    else:
        raise OpSpecError(f"--op {spec!r} declares no example inputs: decorate it with "
                         "@jaxbp.op(example=lambda normal: normal((4, 3), ...)) or give --shape 4,3 per argument")
    report = check(fn, *args, dtype="float32" if dtype == "float64" else dtype, name=spec)
    print(report)
    return report.ok


def audit_saved_run(run_dir, data_dir=None, dtype="float32"):
    """``jaxbp gradcheck --run-dir R``: print the audit of the run's newest
    checkpoint (:func:`jaxbp.train.audit.audit_run`); True when every parameter passes."""
    from jaxbp.train.audit import audit_run
    rows, run = audit_run(run_dir, data_dir, dtype=dtype)
    print(f"{run.checkpoint} (epoch {run.meta['epoch'] + 1}, step {int(run.state.step)}): {run.cfg.model} on "
          f"{run.cfg.data}, its first {run.cfg.batch_size} training examples, {dtype} against the float64 truth")
    return _print_audit([(r["parameter"], r["rule"], r["twin"]) for r in rows], dtype)


def _print_audit(rows, dtype):
    w = max([24] + [len(n) for n, _, _ in rows])
    print(f"{'parameter':<{w}} {'rule err':>10} {'twin err':>10}  closer")
    for n, rc, rt in rows:
        print(f"{n:<{w}} {rc:10.2e} {rt:10.2e}  {_closer(rc, rt):<6} {'ok' if audit_passes(rc, rt, dtype) else 'FAIL'}")
    passed = all(audit_passes(rc, rt, dtype) for _, rc, rt in rows)
    closer = sum(_closer(rc, rt) != "twin" for _, rc, rt in rows)
    print(f"\n{'PASS' if passed else 'FAIL'}: the rule is as close (within 10 %) or closer to the "
          f"truth for {closer} of {len(rows)} parameters")
    return passed


def _draw(seed, dtype):
    """``normal(*shapes)``: standard normal arrays in ``dtype``, drawn by NumPy
    (JAX's draws would compile a program per shape, ~0.5 s each)."""
    def normal(*shapes):
        rng = np.random.default_rng(seed)
        return tuple(jax.device_put(rng.standard_normal(sh).astype(dtype)) for sh in shapes)
    return normal


MODEL_BATCH = 8   # examples in the model check's batch (batch norm needs more than one)


def main(model="cnn", dtype="float64", ops=None):
    """Print the op table (every op, or those named in ``ops``) and the model's
    parameter table; return True when all pass. In float64 the rules are compared
    with their twins; in float32 (or bfloat16) both are compared with the float64
    truth, to say which is closer."""
    from jaxbp import layers
    from jaxbp.tools.check import check

    dt = jnp.dtype(dtype)
    low = dtype != "float64"
    ok = True
    problems = {k: p for k, p in op_problems(jnp.float64).items() if ops is None or p[0] in ops}
    w = max([24] + [len(k) for k in problems])
    if low:
        print(f"{dtype} gradients against the float64 truth: the hand-derived rule's error and the "
              f"autodiff twin's (a rule may be 10× further at most)\n")
        print(f"{'op':<{w}} {'rule err':>10} {'twin err':>10}  closer")
    else:
        twin_tol, fd_tol = TOLERANCES["float64"]
        print(f"custom vs autodiff gradients, float64 (tolerance: relative {twin_tol:.0e} vs twin, "
              f"{fd_tol:.0e} vs finite differences; jaxbp.check's first-order rows)\n")
        print(f"{'op':<{w}} {'rel err vs twin':>16} {'max abs err':>12} {'rel err vs FD':>14}  ")
    for label, (name, args, argnums, kwargs) in problems.items():
        # The first-order rows (and in float32 the precision ones): the full check is `jaxbp.check`'s.
        r = check(getattr(custom_ops, name), *args, argnums=argnums, dtype=dt if low else None, jacobian_limit=0,
                  transforms=(), second_order=False, special_points=False, name=label, **kwargs)
        ok &= r.ok
        biggest = lambda check_name: _max_or_nan(x.value for x in r.rows if x.check.startswith(check_name)
                                                 and x.value is not None)
        if low:
            rule_err = biggest(f"{dtype} vs float64")
            twin_err = max(float(x.detail.split()[1].rstrip(";")) for x in r.rows
                           if x.check.startswith(f"{dtype} vs float64"))
            print(f"{label:<{w}} {rule_err:10.2e} {twin_err:10.2e}  {_closer(rule_err, twin_err):<6} "
                  f"{'ok' if r.ok else 'FAIL'}")
        else:
            print(f"{label:<{w}} {biggest('twin'):16.2e} {max(a.max_abs_err for a in r.arguments):12.2e} "
                  f"{biggest('finite differences'):14.2e}  {'ok' if r.ok else 'FAIL'}")
        for d in r.diagnoses:
            print(f"{'':<{w}}   {d}")

    # A batch of the model's own input shape (its registry entry's): a network
    # made for 32×32 images would shrink 8×8 digits to nothing.
    entry = layers.model_entry(model)
    rng = np.random.default_rng(1)
    x = jax.device_put(rng.uniform(size=(MODEL_BATCH,) + tuple(entry.input_shape)))
    y = jax.device_put(rng.integers(0, 10, MODEL_BATCH).astype(np.int32))
    options = layers.model_options(model, deterministic=True)
    build = lambda g: layers.build_model(model, 10, gradients=g, **options)
    net = build("custom")
    _, params, state = net.init(jax.random.PRNGKey(0), x.shape)
    # Parameters by layer name (conv1.w, bn1.gamma, ...), not list position.
    named = jax.tree.map(lambda p: p.astype(jnp.float64), layers.named(net, params))

    def loss_fn(ops, named, x):
        params = layers.unnamed(net, named)
        logits, _ = build("custom" if ops is custom_ops else "autodiff").apply(params, state, x, train=True)
        return ops.softmax_cross_entropy(logits, y).mean()

    if low:   # the audit `jaxbp train --audit-every` records, on this batch
        from jaxbp.train.audit import audit
        rows = audit(net, params, state, x, y, dtype=dt)
        print(f"\nmodel {model}, every parameter, {dtype} against the float64 truth:")
        return _print_audit([(r["parameter"], r["rule"], r["twin"]) for r in rows], dt) and ok
    r = compare_gradients(lambda ops, p: loss_fn(ops, p, x), named)
    print(f"\nmodel {model}, every parameter:\n{r.table()}")
    passed = r.ok(dtype)
    print(f"\n{'PASS' if ok and passed else 'FAIL'}: largest relative error vs twin "
          f"{max(r.max_rel_err, 0):.2e}, vs finite differences {r.max_fd_err:.2e}")
    return ok and passed
