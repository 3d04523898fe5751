"""``jaxbp.check``: a function's hand-derived gradients against its autodiff twin,
finite differences and JAX's transformations, with a diagnosis when they differ.

    report = jaxbp.check(my_op, x, w)       # any function whose rules are jaxbp.Rule
    print(report)                          # a table: every check, every argument
    report.raise_if_failed()               # in a user's pytest

The twin is the same function run with every :class:`jaxbp.Rule` inside it
left to JAX's autodiff (``op.autodiff`` does the same for one op), so ``fn``
may be one op, a user's ``@jaxbp.op``, a layer or a whole loss. Everything is
computed in float64 (the check turns ``jax_enable_x64`` on for its own
duration); the float32 and bfloat16 rows cast the inputs.

The gradient compared is the pullback of one fixed random cotangent ``u`` of
the outputs, ``∂⟨u, fn(x)⟩/∂x`` per differentiable argument. What is checked:

- **twin**: relative error ``‖custom − twin‖/‖twin‖``, the largest absolute
  error and the worst element (index, both values) per argument;
- **finite differences**: central differences of ``⟨u, fn⟩`` in random
  directions, per argument; and for small problems the **full Jacobian**
  against the twin's and against finite differences, entry by entry;
- **second order**: the gradient of ``⟨gradient, w⟩`` (grad of grad through
  the rule) against the twin's;
- **transformations**: the gradient under ``jit``, ``vmap`` (a batch axis
  added), ``checkpoint`` and ``shard_map`` (default checks, every device)
  equals the plain one;
- **dtypes**: in float32 and bfloat16 each gradient has its argument's shape
  and dtype and is finite; in ``dtype`` (float32) the rule's error against the
  float64 truth is compared with the twin's;
- **special points**: the inputs rounded to halves (zeros and ties), where a
  subgradient convention shows.

A failure gets a diagnosis: a constant factor, a flipped sign, a transposed or
flipped gradient, a factor per index of one axis, an extra sum, a missing
term through a mean and variance or a normalization, a max's gradient sent to
every element, the twin's gradient at ``−x`` or at the output, the output's
derivative formula applied to the input, errors only where contributions
should add up (overlapping windows, repeated indices), only at 0 or ties,
only for some arguments or through some outputs, only in float32. The report
also lists what the rule and the twin keep for the backward pass.
"""
from __future__ import annotations

import dataclasses
import inspect
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxbp.ops._recipe import _twin

TWIN_RTOL = 1e-10     # float64, custom vs twin: both are exact formulas, rounding apart
FD_RTOL = 1e-6        # float64 central differences, ε = 1e-6: truncation ε² and rounding 1e-16/ε
SECOND_RTOL = 1e-9    # grad of grad: one more level of rounding than the first order
TRANSFORM_RTOL = 1e-12  # the same rule traced another way: only the order of sums may change
LOW_PRECISION_FACTOR = 10  # float32: the rule may be this much further from the truth than the twin
FD_EPS = 1e-6
TRANSFORMS = ("jit", "vmap", "checkpoint", "shard_map")


class CheckFailed(AssertionError):
    """Raised by :meth:`CheckReport.raise_if_failed`; its message is the report."""


@dataclasses.dataclass
class Row:
    """One measurement: ``check`` (what), ``argument`` (or ``None`` for all),
    ``value`` against ``tolerance`` (``ok`` when within), and ``detail``."""
    check: str
    argument: str | None
    value: float | None
    tolerance: float | None
    ok: bool
    detail: str = ""


@dataclasses.dataclass
class Argument:
    """Custom vs twin for one differentiable argument."""
    name: str
    shape: tuple
    dtype: str
    rel_err: float
    max_abs_err: float
    worst_index: tuple
    custom_value: float
    twin_value: float
    ok: bool


@dataclasses.dataclass(repr=False)
class CheckReport:
    """What :func:`check` measured. ``ok`` is True when every row passed."""
    name: str
    arguments: list
    rows: list
    diagnoses: list
    kept: dict = dataclasses.field(default_factory=dict)   # "rule"/"twin" -> [(shape, dtype)]

    @property
    def ok(self):
        return all(r.ok for r in self.rows)

    def failures(self):
        return [r for r in self.rows if not r.ok]

    def raise_if_failed(self):
        if not self.ok:
            raise CheckFailed("\n" + str(self))

    def to_dict(self):
        """A JSON-ready dict (NaN and infinities as strings)."""
        def clean(v):
            if isinstance(v, float) and not math.isfinite(v):
                return str(v)
            if isinstance(v, (list, tuple)):
                return [clean(x) for x in v]
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            return v
        return clean({"name": self.name, "ok": self.ok,
                      "arguments": [dataclasses.asdict(a) for a in self.arguments],
                      "checks": [dataclasses.asdict(r) for r in self.rows],
                      "diagnoses": list(self.diagnoses),
                      "kept": {k: [[list(s), d] for s, d in v] for k, v in self.kept.items()}})

    def __repr__(self):   # pytest and the REPL show the table
        return str(self)

    def __str__(self):
        lines = [f"jaxbp.check {self.name}: {'ok' if self.ok else 'FAILED'}  "
                 f"(custom rule vs autodiff twin, float64)"]
        w = max([8] + [len(a.name) for a in self.arguments])
        lines.append(f"  {'argument':<{w}}  {'shape':<16} {'rel err':>9} {'max abs':>9}  "
                     f"worst element: custom | twin")
        for a in self.arguments:
            lines.append(f"  {a.name:<{w}}  {str(a.shape):<16} {_num(a.rel_err):>9} {_num(a.max_abs_err):>9}  "
                         f"{a.worst_index}: {a.custom_value:.6g} | {a.twin_value:.6g}"
                         f"{'' if a.ok else '   FAIL'}")
        cw = max([5] + [len(r.check) for r in self.rows])
        aw = max([8] + [len(r.argument or "") for r in self.rows])
        lines.append(f"  {'check':<{cw}}  {'argument':<{aw}} {'measured':>9} {'tolerance':>9}  result")
        for r in self.rows:
            lines.append(f"  {r.check:<{cw}}  {(r.argument or '-'):<{aw}} {_num(r.value):>9} "
                         f"{_num(r.tolerance):>9}  {'ok' if r.ok else 'FAIL'}"
                         + (f"  {r.detail}" if r.detail else ""))
        if self.kept:
            lines.append("  kept for the backward pass (float64 inputs, before XLA): "
                         + "; ".join(f"{k} {_arrays(v)}" for k, v in self.kept.items()))
        if self.diagnoses:
            lines.append("  diagnosis:")
            lines += [f"    - {d}" for d in self.diagnoses]
        return "\n".join(lines)


def _num(v):
    return "-" if v is None else f"{v:.2e}"


def _arrays(kept):
    """``[(shape, dtype)]`` as ``2 arrays, 1.2 KiB (f64[8,16], f64[4,16])`` (shapes up to six)."""
    size = sum(math.prod(s) * np.dtype(d).itemsize for s, d in kept)
    unit = next((u, f) for u, f in (("MiB", 2 ** 20), ("KiB", 2 ** 10), ("B", 1)) if size >= f or f == 1)
    text = f"{len(kept)} array{'' if len(kept) == 1 else 's'}, {size / unit[1]:.3g} {unit[0]}"
    if 0 < len(kept) <= 6:
        text += " (" + ", ".join(f"{_short(d)}{list(s)}".replace(" ", "") for s, d in kept) + ")"
    return text


def _short(dtype):
    """float64 -> f64, uint8 -> u8, bool -> bool, as JAX prints avals."""
    name = np.dtype(dtype).name
    for long, short in (("bfloat", "bf"), ("float", "f"), ("uint", "u"), ("int", "i"), ("complex", "c")):
        if name.startswith(long):
            return short + name[len(long):]
    return name


def _kept(f, x):
    """What reverse mode keeps of ``f``'s forward pass for its backward: the
    leaves of ``jax.vjp``'s pullback (zero-size carriers aside), traced only."""
    pullback = jax.eval_shape(lambda *x: jax.vjp(f, *x)[1], *x)
    return [(tuple(a.shape), str(a.dtype)) for a in jax.tree.leaves(pullback) if math.prod(a.shape)]


def check(fn, *args, argnums=None, dtype="float32", seed=0, directions=3, jacobian_limit=400,
          second_order=True, transforms=TRANSFORMS, special_points=True,
          name=None, **kwargs):
    """Check the hand-derived gradients of ``fn(*args, **kwargs)`` against its autodiff twin.

    Args:
      fn: a function built on :class:`jaxbp.Rule` rules (a jaxbp op, a
        ``@jaxbp.op``, a layer's apply, a loss). Pass the plain function, not a
        ``jax.jit`` of it: a jitted function keeps its first trace, custom or twin.
      *args: its positional arguments. Floating arrays are differentiated (all,
        or those in ``argnums``) and taken in float64; others are held fixed.
        A pytree argument (a dict of parameters) has each floating leaf
        differentiated and reported on its own (``params['w']``).
      argnums: indices of the arguments to differentiate (default: every
        floating array, or pytree holding one).
      dtype: the low precision whose accuracy is audited (rule and twin both
        against the float64 truth); bfloat16 is checked for dtype, shape and
        finiteness too. ``None`` skips both.
      seed: of NumPy's generator, for the cotangent, the directions and the
        second-order weights.
      directions: random directions of the finite-difference check, per argument.
      jacobian_limit: the full Jacobian is compared when the differentiated
        arguments have at most this many elements (and the outputs at most 8×).
      second_order, transforms, special_points: which of those checks to run.
      name: for the report (default: ``fn``'s name).
      **kwargs: passed to ``fn`` unchanged.

    Returns:
      a :class:`CheckReport`.
    """
    unknown = set(transforms or ()) - set(TRANSFORMS)
    if unknown:
        raise ValueError(f"transforms: unknown {sorted(unknown)}; choose from {', '.join(TRANSFORMS)}")
    with jax.enable_x64(True):
        return _Check(fn, args, kwargs, argnums, None if dtype is None else jnp.dtype(dtype), seed, directions,
                      jacobian_limit,
                      name).run(second_order, tuple(transforms or ()), special_points)


def _twin_of(f):
    def twin(*a, **k):
        with _twin():
            return f(*a, **k)
    return twin


def _arg_names(fn, n):
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        names = [p.name for p in params]
    except (TypeError, ValueError):
        names = []
    return [names[i] if i < len(names) else f"arg{i}" for i in range(n)]


def _floating(a):
    return hasattr(a, "dtype") and hasattr(a, "shape") and jnp.issubdtype(a.dtype, jnp.floating)


def _host(a, dtype):
    """``a`` cast to ``dtype`` by NumPy and put on the device: an eager JAX cast,
    even ``jnp.asarray`` of a NumPy array, compiles a program per shape."""
    return jax.device_put(np.asarray(a).astype(dtype))


def fd_error(numerical, analytic, value, grad_norm=0.0):
    """Relative error of a central difference ``numerical`` against the rule's
    ``analytic`` ⟨∇L, v⟩ along a unit direction ``v``, measured above the
    differences' own rounding (~1e-16·|L|/ε, ``value`` = L): a direction along
    which a large loss barely changes is not a wrong rule. ``grad_norm``: for a
    direction within one of several arguments, the whole gradient's norm ‖∇L‖;
    an argument whose gradient is ~0 (a bias before batch norm) is measured at
    its scale."""
    floor = max(1e-2 * grad_norm, 1e-3 * abs(value), 1e-300)
    return abs(numerical - analytic) / max(abs(numerical), abs(analytic), floor)


def _rel(a, b, scale=None):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    num, den = np.linalg.norm(a - b), np.linalg.norm(b)
    if scale is not None and den <= 1e-12 * scale:
        den = scale   # a gradient that is 0 holds rounding noise: measure against the whole
    return float(num / den) if den > 0 else (0.0 if num == 0 else float(num))


class _Check:
    def __init__(self, fn, args, kwargs, argnums, dtype, seed, directions, jacobian_limit, name):
        self.fn, self.kwargs, self.low, self.seed = fn, kwargs, dtype, seed
        self.directions, self.jacobian_limit = directions, jacobian_limit
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        # An argument may be a pytree (a dict of parameters): its floating leaves are
        # differentiated, each compared on its own; self.args holds every leaf.
        paths, self.tree = jax.tree_util.tree_flatten_with_path(tuple(args))
        self.args = [_host(a, np.float64) if _floating(a) else a for _, a in paths]
        top = [path[0].idx for path, _ in paths]
        floating = {top[j] for j, a in enumerate(self.args) if _floating(a)}
        if argnums is None:
            argnums = tuple(sorted(floating))
        argnums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
        if not argnums:
            raise ValueError(f"check: no floating array argument to differentiate among {len(args)} argument(s)")
        for i in argnums:
            if not -len(args) <= i < len(args) or i % len(args) not in floating:
                raise ValueError(f"argnums: argument {i} is not a floating array (nor holds one)")
        wanted = {i % len(args) for i in argnums}
        self.argnums = tuple(j for j, a in enumerate(self.args) if top[j] in wanted and _floating(a))
        names = _arg_names(fn, len(args))
        self.names = [names[top[j]] + jax.tree_util.keystr(paths[j][0][1:]) for j in self.argnums]
        self.x = tuple(self.args[j] for j in self.argnums)
        self._jitted = {}
        self.rows, self.diagnoses, self.arguments = [], [], []
        out = jax.eval_shape(self.f(fn), *self.x)
        leaves = [(p, o) for p, o in jax.tree_util.tree_flatten_with_path(out)[0]
                  if jnp.issubdtype(o.dtype, jnp.floating)]
        self.out_leaves = [o for _, o in leaves]
        self.out_names = [f"output{jax.tree_util.keystr(p)} ({_short(o.dtype)}{list(o.shape)})".replace(" ]", "]")
                          for p, o in leaves]
        if not self.out_leaves:
            raise ValueError(f"check: {self.name} returns no floating array to differentiate")
        rng = self.rng(1)
        self.u = [jax.device_put(rng.standard_normal(o.shape)) for o in self.out_leaves]

    def rng(self, purpose):
        """NumPy's generator for one purpose (cotangent, directions, ...) of this seed:
        drawn on the host, where JAX's would compile a program per shape
        (~0.5 s each, most of a small check's time)."""
        return np.random.default_rng((self.seed, purpose))

    # The function of the differentiated arguments, and ⟨u, f⟩.
    def f(self, fn):
        def f(*x):
            full = list(self.args)
            for i, v in zip(self.argnums, x):
                full[i] = v
            return fn(*self.tree.unflatten(full), **self.kwargs)
        return f

    def loss(self, fn, wrap=None):
        """``⟨u, fn⟩`` of the differentiated arguments (``wrap``: e.g. ``jax.checkpoint``)."""
        f = self.f(fn) if wrap is None else wrap(self.f(fn))

        def loss(*x):
            leaves = [o for o in jax.tree.leaves(f(*x)) if jnp.issubdtype(o.dtype, jnp.floating)]
            return sum(jnp.sum(o.astype(jnp.float64) * u) for o, u in zip(leaves, self.u))
        return loss

    def grad(self, fn, wrap=None):
        return jax.grad(self.loss(fn, wrap), argnums=tuple(range(len(self.x))))

    def jitted(self, *fns):
        """The gradients of ``fns`` (the rule and its twin) as one jitted function,
        compiled once per input dtype and reused: one program, not one per
        function (XLA's fixed cost per program is most of a small op's)."""
        if fns not in self._jitted:
            grads = [self.grad(f) for f in fns]
            self._jitted[fns] = jax.jit(lambda *x: tuple(g(*x) for g in grads))
        return self._jitted[fns]

    def row(self, *a, **k):
        r = Row(*a, **k)
        self.rows.append(r)
        return r

    def run(self, second_order, transforms, special_points):
        custom, twin = self.custom, self.twin = self.fn, _twin_of(self.fn)
        if not self.rules_present(custom, twin):
            return self.report()
        gc, gt = ([np.asarray(g) for g in gs] for gs in self.jitted(custom, twin)(*self.x))
        self.gc, self.gt = gc, gt
        self.kept = {"rule": _kept(self.f(custom), self.x), "twin": _kept(self.f(twin), self.x)}
        scale = math.sqrt(sum(float(np.sum(g * g)) for g in gt))
        fanout = self.jacobian(custom, twin)
        for name, x, c, t in zip(self.names, self.x, gc, gt):
            self.compare(name, x, c, t, scale, fanout.get(name))
        if not all(a.ok for a in self.arguments):
            self.per_output(custom, twin)
        self.finite_differences(custom, twin)
        if second_order:
            self.second_order(custom, twin)
        for t in transforms:
            self.transform(t, custom, twin)
        if self.low is not None:
            self.precision(custom, twin)
        if special_points:
            self.special_points(custom, twin)
        bad = [a.name for a in self.arguments if not a.ok]
        good = [a.name for a in self.arguments if a.ok]
        if bad and good:
            self.diagnoses.append(f"only {', '.join(map(repr, bad))} {'is' if len(bad) == 1 else 'are'} wrong; "
                                  f"{', '.join(map(repr, good))} agree{'s' if len(good) == 1 else ''} with the twin")
        return self.report()

    def report(self):
        return CheckReport(self.name, self.arguments, self.rows, self.diagnoses, getattr(self, "kept", {}))

    def rules_present(self, custom, twin):
        """The custom trace calls a rule and the twin's calls none: else the comparison is empty."""
        def calls(f):
            return "custom_vjp" in str(jax.make_jaxpr(self.loss(f))(*self.x))
        if not calls(custom):
            self.row("custom rules present", None, None, None, False,
                     "fn calls no custom_vjp rule: its gradient is JAX's own, there is nothing to compare")
            self.diagnoses.append("no custom rule: build fn from jaxbp ops or jaxbp.Rule rules")
            return False
        if calls(twin):
            self.row("custom rules present", None, None, None, False,
                     "fn's twin still calls custom_vjp rules, so it would be compared with itself")
            self.diagnoses.append("the twin is not autodiff: fn is jax.jit-wrapped (its first trace is kept: "
                                  "pass the plain function) or uses jax.custom_vjp directly (use jaxbp.Rule)")
            return False
        return True

    # -- first order -------------------------------------------------------
    def compare(self, name, x, c, t, scale, fanout):
        diff = np.abs(c - t)
        finite_in = bool(np.isfinite(np.asarray(x)).all())
        finite = bool(np.isfinite(c).all())
        err = _rel(c, t, scale)
        if diff.size:
            diff = np.where(np.isnan(diff), np.inf, diff)   # a NaN is the worst element
            worst = int(np.argmax(diff))
            index = tuple(int(i) for i in np.unravel_index(worst, c.shape))
            cv, tv, mx = float(c.flat[worst]), float(t.flat[worst]), float(diff.flat[worst])
        else:
            index, cv, tv, mx = (), 0.0, 0.0, 0.0
        ok = finite and err <= TWIN_RTOL
        if not finite and finite_in:
            err = float("nan")
        self.arguments.append(Argument(name, tuple(c.shape), str(x.dtype), err, mx, index, cv, tv, ok))
        self.row("twin", name, err, TWIN_RTOL, ok,
                 "" if ok else f"worst at {index}: custom {cv:.6g}, twin {tv:.6g}")
        if not finite and finite_in:
            bad = tuple(int(i) for i in np.unravel_index(int(np.argmax(~np.isfinite(c))), c.shape))
            self.diagnoses.append(f"{name!r}: non-finite gradient ({c.flat[np.ravel_multi_index(bad, c.shape)]}) "
                                  f"at {bad} from finite inputs")
        elif not ok:
            out = self.output()
            out = out if out is not None and out.shape == c.shape else None
            self.diagnoses.append(f"{name!r}: " + (_diagnose(c, t, np.asarray(x), fanout, out)
                                                  or self.wrong_point(name, c, t, out) or _unexplained(c, t)))

    def per_output(self, custom, twin):
        """For a function of several outputs, whether the rule is wrong through some
        only (a backward that ignores or mishandles one output's cotangent): the
        gradients again with the cotangent of one output at a time."""
        if len(self.u) < 2:
            return
        full, wrong = self.u, []
        try:
            for j in range(len(full)):
                self.u = [u if i == j else jnp.zeros_like(u) for i, u in enumerate(full)]
                gc, gt = ([np.asarray(g) for g in gs]
                          for gs in jax.jit(lambda *x: (self.grad(custom)(*x), self.grad(twin)(*x)))(*self.x))
                scale = math.sqrt(sum(float(np.sum(g * g)) for g in gt))
                bad = [(n, x, c, t) for n, x, c, t in zip(self.names, self.x, gc, gt)
                       if not _rel(c, t, scale) <= TWIN_RTOL]
                if bad:
                    wrong.append((j, bad))
        finally:
            self.u = full
        if wrong and len(wrong) < len(full):   # more specific than the whole cotangent's: replaces it
            names = {repr(n) for _, bad in wrong for n, *_ in bad}
            self.diagnoses[:] = [d for d in self.diagnoses if d.split(": ", 1)[0] not in names]
            self.diagnoses += [f"{n!r}: through {self.out_names[j]} alone, "
                               + (_diagnose(c, t, np.asarray(x), None) or _unexplained(c, t))
                               for j, bad in wrong for n, x, c, t in bad]
            self.diagnoses.append(f"wrong only through {', '.join(self.out_names[j] for j, _ in wrong)}, right "
                                  "through the other outputs: the backward ignores or mishandles that output's "
                                  "cotangent")

    def output(self):
        """``fn``'s output at the inputs when it is one floating array, else ``None``
        (computed once, for the diagnoses of a failed comparison only)."""
        if not hasattr(self, "_output"):
            out = jax.jit(self.f(self.twin))(*self.x)
            leaves = [o for o in jax.tree.leaves(out) if jnp.issubdtype(o.dtype, jnp.floating)]
            self._output = np.asarray(leaves[0]) if len(leaves) == 1 else None
        return self._output

    def wrong_point(self, name, c, t, out):
        """Whether the rule's gradient ``c`` is the twin's at another point: at ``−x``
        (a sign inside the derivative's argument) or, for an elementwise op, at
        its output ``out`` (the derivative applied to the saved output); or, the
        twin's derivative being a polynomial φ of the output (σ' = a(1 − a),
        tanh' = 1 − a²), φ of the input. ``None`` if none of these."""
        k = self.names.index(name)
        x = self.x[k]
        points = [(-x, f"equals the twin's gradient at −{name}: a sign inside the derivative's argument "
                       "(e.g. σ(−z) where σ(z) belongs)")]
        if out is not None:
            points.append((jax.device_put(out.astype(x.dtype)),
                           f"equals the twin's gradient at the output f({name}) instead of at {name}: the "
                           "derivative applied to the saved output (f'(a) with a = f(z), e.g. 1 − tanh²(a) "
                           "where 1 − a² belongs)"))
        for point, words in points:
            args = list(self.x)
            args[k] = point
            there = np.asarray(self.jitted(self.custom, self.twin)(*args)[1][k])
            if np.isfinite(there).all() and _close(c, there):
                return words
        u = np.asarray(self.u[0])
        if out is None or len(self.u) != 1 or u.shape != c.shape or c.size < 4 or not (u != 0).all():
            return None
        derivative, rule = (t / u).ravel(), (c / u).ravel()
        phi = np.polyfit(out.ravel(), derivative, 2)
        if _close(np.polyval(phi, out.ravel()), derivative) and _close(np.polyval(phi, np.asarray(x).ravel()), rule):
            return (f"the derivative written in terms of the output, φ(a), evaluated at the input {name} instead "
                    "(e.g. z(1 − z) where σ' = a(1 − a) belongs)")
        return None

    def finite_differences(self, custom, twin):
        loss = jax.jit(self.loss(custom))
        rng = self.rng(2)
        total = math.sqrt(sum(float(np.sum(g * g)) for g in self.gt))
        value = float(loss(*self.x))
        for i, (name, x) in enumerate(zip(self.names, self.x)):
            errs, twin_errs = [], []
            x = np.asarray(x)
            for _ in range(self.directions):
                v = rng.standard_normal(x.shape)
                v = v / np.linalg.norm(v.ravel())
                shifted = lambda s: self.x[:i] + (x + s * FD_EPS * v,) + self.x[i + 1:]
                num = (float(loss(*shifted(1.0))) - float(loss(*shifted(-1.0)))) / (2 * FD_EPS)
                for g, out in ((self.gc[i], errs), (self.gt[i], twin_errs)):
                    out.append(fd_error(num, float(np.vdot(g, v)), value, total))
            e = max(errs, default=0.0) if not any(map(math.isnan, errs)) else float("nan")
            te = max(twin_errs, default=0.0)
            ok = e <= FD_RTOL
            note = ""
            if not ok and te > FD_RTOL:
                note = "the twin misses finite differences too: fn is not smooth at these inputs"
            self.row(f"finite differences ({self.directions} directions)", name, e, FD_RTOL, ok, note)

    def jacobian(self, custom, twin):
        """Full Jacobians for small problems: custom vs twin vs finite differences, entry by entry.
        Returns each argument's fan-out (outputs its elements reach) from the twin's Jacobian."""
        flat, unravel = ravel_pytree(self.x)
        n_in = flat.size
        n_out = sum(o.size for o in self.out_leaves)
        if n_in > self.jacobian_limit or n_out > 8 * self.jacobian_limit or n_in == 0 or n_out == 0:
            return {}

        def flat_f(fn):
            f = self.f(fn)

            def g(v):
                leaves = [o for o in jax.tree.leaves(f(*unravel(v))) if jnp.issubdtype(o.dtype, jnp.floating)]
                return jnp.concatenate([o.astype(jnp.float64).ravel() for o in leaves])
            return g

        f = flat_f(custom)

        @jax.jit   # the three Jacobians in one program (one compile, not three)
        def jacobians(v, basis):
            numerical = jax.vmap(lambda e: (f(v + FD_EPS * e) - f(v - FD_EPS * e)) / (2 * FD_EPS), out_axes=1)
            return jax.jacrev(f)(v), jax.jacfwd(flat_f(twin))(v), numerical(basis)

        try:
            jc, jt, jfd = (np.asarray(j) for j in jacobians(flat, np.eye(n_in)))
        except Exception as e:  # noqa: BLE001 (reported, not raised: the other checks still run)
            self.row("jacobian vs twin", None, None, None, False, f"{type(e).__name__}: {str(e).splitlines()[0]}")
            return {}
        peak = float(np.abs(jt).max()) or 1.0
        where = self._entry_namer(n_in)
        for label, ref, tol in (("twin", jt, TWIN_RTOL), ("finite differences", jfd, FD_RTOL)):
            d = np.abs(jc - ref)
            d = np.where(np.isnan(d), np.inf, d)
            k = int(np.argmax(d))
            o, i = np.unravel_index(k, d.shape)
            err = float(d.flat[k]) / peak
            self.row(f"jacobian ({n_out}×{n_in}) vs {label}", None, err, tol, err <= tol,
                     "" if err <= tol else f"worst ∂out[{o}]/∂{where(i)}: custom {jc[o, i]:.6g}, "
                                           f"twin {jt[o, i]:.6g}, numerical {jfd[o, i]:.6g}")
        nonzero = (np.abs(jt) > 1e-14 * peak).sum(axis=0)
        out, start = {}, 0
        for name, x in zip(self.names, self.x):
            out[name] = nonzero[start:start + x.size].reshape(x.shape)
            start += x.size
        return out

    def _entry_namer(self, n_in):
        bounds = np.cumsum([0] + [x.size for x in self.x])

        def where(i):
            a = int(np.searchsorted(bounds, i, side="right") - 1)
            idx = tuple(int(v) for v in np.unravel_index(i - bounds[a], self.x[a].shape))
            return f"{self.names[a]}{list(idx)}"
        return where

    # -- second order --------------------------------------------------------
    def second_order(self, custom, twin):
        rng = self.rng(3)
        w = [jax.device_put(rng.standard_normal(x.shape)) for x in self.x]

        def hvp(fn):
            g = self.grad(fn)
            return jax.grad(lambda *x: sum(jnp.vdot(a, b) for a, b in zip(g(*x), w)),
                            argnums=tuple(range(len(self.x))))(*self.x)
        try:   # the rule's and the twin's in one program
            hc, ht = ([np.asarray(h) for h in hs] for hs in jax.jit(lambda: (hvp(custom), hvp(twin)))())
        except Exception as e:  # noqa: BLE001
            self.row("second order vs twin", None, None, None, False,
                     f"grad of grad through the rule fails: {type(e).__name__}: {str(e).splitlines()[0]}")
            self.diagnoses.append("second order: the backward rule is not differentiable by JAX "
                                  "(write it with jax.numpy/lax operations)")
            return
        scale = math.sqrt(sum(float(np.sum(h * h)) for h in ht))
        if scale == 0:   # a Hessian that is exactly 0 (a linear map): compare at the gradient's scale
            scale = math.sqrt(sum(float(np.sum(g * g)) for g in self.gt)) or 1.0
        for name, c, t in zip(self.names, hc, ht):
            e = _rel(c, t, scale) if np.isfinite(c).all() else float("nan")
            ok = e <= SECOND_RTOL
            self.row("second order vs twin", name, e, SECOND_RTOL, ok)
            if not ok and all(a.ok for a in self.arguments):
                self.diagnoses.append(f"{name!r}: first order agrees, grad of grad does not: the backward "
                                      "rule's own derivative is wrong (a stop_gradient, or a residual "
                                      "that hides its dependence on the input)")

    # -- transformations ---------------------------------------------------
    def transform(self, kind, custom, twin):
        grad = self.grad(custom)
        try:
            if kind == "jit":   # every other gradient here is jitted: this one is not
                pairs = [(grad(*self.x), self.gc)]
            elif kind == "checkpoint":
                pairs = [(jax.jit(self.grad(custom, jax.checkpoint))(*self.x), self.gc)]
            elif kind in ("vmap", "shard_map"):
                n = 2 if kind == "vmap" else jax.device_count()
                copies = [tuple(np.asarray(x) * (1 - 0.1 * k) for x in self.x) for k in range(n)]
                stacked = tuple(np.stack(c) for c in zip(*copies))
                if kind == "vmap":
                    got = jax.jit(jax.vmap(grad))(*stacked)
                else:
                    from jax.sharding import Mesh, PartitionSpec as P
                    mesh = Mesh(np.array(jax.devices()), ("batch",))
                    local = lambda *x: tuple(g[None] for g in grad(*(v[0] for v in x)))
                    got = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=P("batch"),
                                                out_specs=P("batch")))(*stacked)
                want = [self.jitted(custom, twin)(*c)[0] for c in copies]
                pairs = [(tuple(np.asarray(g)[k] for g in got), want[k]) for k in range(n)]
        except Exception as e:  # noqa: BLE001 (reported as the row's failure, not raised)
            return self._transform_error(kind, e)
        n = jax.device_count()
        label = {"jit": "jit (vs eager)", "shard_map": f"shard_map ({n} device{'s' if n > 1 else ''})"}.get(kind, kind)
        for i, name in enumerate(self.names):
            scale = max(float(np.linalg.norm(np.asarray(w[i]))) for _, w in pairs) or 1.0
            e = max(float(np.linalg.norm(np.asarray(g[i], np.float64) - np.asarray(w[i], np.float64))) / scale
                    for g, w in pairs)
            ok = e <= TRANSFORM_RTOL
            self.row(f"under {label}", name, e, TRANSFORM_RTOL, ok,
                     "" if ok else "the rule gives another gradient under this transformation")

    def _transform_error(self, kind, e):
        msg = str(e).splitlines()[0] if str(e) else ""
        self.row(f"under {kind}", None, None, None, False, f"{type(e).__name__}: {msg}"[:200])
        self.diagnoses.append(f"under {kind}: the rule raises {type(e).__name__} (a shape it assumes, a "
                              "Python branch on a traced value, or a missing batch/mesh rule)")

    # -- dtypes ------------------------------------------------------------
    def precision(self, custom, twin):
        for dt in dict.fromkeys([self.low, jnp.dtype(jnp.bfloat16)]):
            cast = lambda a: _host(a, dt) if _floating(a) else a
            low = tuple(cast(x) for x in self.x)
            saved_args = self.args
            self.args = [cast(a) for a in saved_args]
            try:
                fns = (custom, twin) if dt == self.low else (custom,)   # the twin: for the audit only
                grads = jax.jit(lambda *x: tuple(self.grad(f)(*x) for f in fns))(*low)
                gc, gt = grads[0], (grads[1] if len(grads) > 1 else None)
            except Exception as e:  # noqa: BLE001
                self.row(f"{dt.name}", None, None, None, False, f"{type(e).__name__}: {str(e).splitlines()[0]}")
                continue
            finally:
                self.args = saved_args
            if dt == self.low:   # the truth: float64 at the same (rounded) inputs
                self.args = [_host(_host(a, dt), np.float64) if _floating(a) else a for a in saved_args]
                try:
                    truth = jax.jit(self.grad(twin))(*(_host(x, np.float64) for x in low))
                finally:
                    self.args = saved_args
            for i, (name, x) in enumerate(zip(self.names, low)):
                g = gc[i]
                same = g.shape == x.shape and g.dtype == x.dtype
                finite = bool(np.isfinite(np.asarray(g, np.float32)).all())
                self.row(f"{dt.name} dtype and shape", name, None, None, same and finite,
                         "" if same and finite else
                         f"gradient {g.dtype}{tuple(g.shape)}, argument {x.dtype}{tuple(x.shape)}"
                         + ("" if finite else ", not finite"))
                if dt != self.low:
                    continue
                ref = np.asarray(truth[i])
                scale = math.sqrt(sum(float(np.sum(np.asarray(t) ** 2)) for t in truth))
                ec, et = _rel(np.asarray(g, np.float64), ref, scale), _rel(np.asarray(gt[i], np.float64), ref, scale)
                floor = 100 * float(jnp.finfo(dt).eps)
                ok = finite and ec <= max(LOW_PRECISION_FACTOR * et, floor)
                closer = "≈" if abs(ec - et) <= 0.1 * max(ec, et) else "rule" if ec < et else "twin"
                self.row(f"{dt.name} vs float64 truth", name, ec, max(LOW_PRECISION_FACTOR * et, floor), ok,
                         f"twin {et:.2e}; closer: {closer}")
                if not ok and self.arguments and self.arguments[i].ok:
                    self.diagnoses.append(
                        f"{name!r}: wrong only in {dt.name}: the rule's {dt.name} gradient is {ec:.2e} from the "
                        f"float64 truth, the twin's {et:.2e} ({ec / max(et, 1e-300):.3g}× worse) while float64 "
                        "agrees: cancellation or an unstable formula (subtracting close numbers, "
                        "E[x²] − E[x]²) in the rule")

    # -- non-differentiable points -------------------------------------------
    def special_points(self, custom, twin):
        rounded = tuple(jax.device_put(np.round(np.asarray(x) * 2) / 2) for x in self.x)
        try:
            gc, gt = ([np.asarray(g) for g in gs] for gs in self.jitted(custom, twin)(*rounded))
        except Exception as e:  # noqa: BLE001
            self.row("at 0 and ties", None, None, None, False, f"{type(e).__name__}: {str(e).splitlines()[0]}")
            return
        if not all(np.isfinite(g).all() for g in gt):
            self.row("at 0 and ties", None, None, None, True,
                     "skipped: the twin's gradient is not finite at inputs rounded to halves")
            return
        scale = math.sqrt(sum(float(np.sum(g * g)) for g in gt)) or 1.0
        for name, x, c, t in zip(self.names, rounded, gc, gt):
            e = _rel(c, t, scale) if np.isfinite(c).all() else float("nan")
            ok = e <= TWIN_RTOL
            self.row("at 0 and ties (inputs rounded to halves)", name, e, TWIN_RTOL, ok)
        bad = [n for n, r in zip(self.names, self.rows[-len(self.names):]) if not r.ok]
        if bad and all(a.ok for a in self.arguments):
            zeros = any((np.asarray(x) == 0).any() for x in rounded)
            at = []
            for name, x, c, t in zip(self.names, rounded, gc, gt):
                wrong = np.abs(c - t) > 1e-8 * (np.abs(t).max() + 1e-300)
                if wrong.any() and (np.asarray(x)[wrong] == 0).all():
                    at.append(f"{name!r} exactly 0")
            where = (f"where {', '.join(at)}" if at else
                     "at zeros or tied values" if zeros else "at tied values")
            self.diagnoses.append(f"wrong only at non-differentiable points ({where}): the rule's subgradient "
                                  "convention differs from JAX's (relu'(0) = 0; a tie's gradient goes "
                                  "where JAX's forward sends it)")


def _close(a, b):
    """``a`` equals ``b`` to 1e-8 of ``b``'s largest entry: one candidate explanation fits."""
    return np.abs(a - b).max() <= 1e-8 * max(np.abs(b).max(), 1e-300)


def _diagnose(c, t, x, fanout, out=None):
    """What kind of mistake turns the twin's gradient ``t`` into the rule's ``c``
    (``None``: none of these). ``out``: the op's output, when of ``x``'s shape."""
    peak = float(np.abs(t).max())
    if peak == 0:
        return "the twin's gradient is 0 but the rule's is not"
    if not np.abs(c).any():
        return "the rule's gradient is 0 everywhere (a missing term or a dropped gradient)"
    mask = np.abs(t) > 1e-6 * peak
    r = c[mask] / t[mask]
    factor = float(np.median(r))
    if _close(c, factor * t):
        if abs(factor + 1) < 1e-8:
            return "sign flipped (the rule gives −1 × the twin's gradient)"
        if mask.sum() == 1:   # one value: any wrong one is a factor, which says nothing of the mistake
            return (f"one value, the rule's {float(c[mask][0]):.6g} where the twin's is {float(t[mask][0]):.6g}"
                    f" (×{factor:.6g}{_factor_hint(factor)})")
        return f"×{factor:.6g} everywhere{_factor_hint(factor)}"
    for axis in range(c.ndim):
        if c.shape[axis] < 2:
            continue
        tt, cc = np.moveaxis(t, axis, 0), np.moveaxis(c, axis, 0)
        factors = []
        for k in range(tt.shape[0]):
            m = np.abs(tt[k]) > 1e-6 * peak
            if not m.any():
                factors.append(None if not np.abs(cc[k]).any() else float("nan"))
                continue
            f = float(np.median(cc[k][m] / tt[k][m]))
            factors.append(f if _close(cc[k], f * tt[k]) else float("nan"))
        known = [f for f in factors if f is not None]
        if known and not any(map(math.isnan, known)) and max(known) - min(known) > 1e-8 * max(map(abs, known)):
            shown = ", ".join(f"{f:.4g}" for f in known[:4]) + (", ..." if len(known) > 4 else "")
            return (f"scaled by a different factor for each index along axis {axis} ({shown}): "
                    "a per-example (per-row) factor is wrong, e.g. a norm where a mean belongs")
    for cand, what in _rearrangements(t):
        if cand.shape == c.shape and _close(c, cand):
            return f"matches the twin's gradient {what}"
    for axis in range(c.ndim):
        if c.shape[axis] > 1 and _close(c, np.take(c, [0], axis=axis)) and not _close(t, np.take(t, [0], axis=axis)):
            if (np.count_nonzero(t, axis=axis) <= 1).all():
                return (f"the same value at every index along axis {axis}, where the twin's gradient goes to one "
                        "index: δ sent to every element instead of the one the forward selected (a max's "
                        "arg-max)")
            return (f"the same value at every index along axis {axis}, where the twin's differ: a sum over "
                    "an index that should stay free (an extra Σᵢ)")
    for axis in range(c.ndim):
        if _in_span(c - t, [None, x], axis):
            return (f"the error is, along axis {axis}, a constant plus a multiple of the input: the terms "
                    f"through a mean and a variance over axis {axis} (δμ, δσ²) are missing")
    for axis in range(c.ndim if out is not None else 0):
        if _in_span(c - t, [out], axis):
            return (f"the error is, along axis {axis}, a multiple of the output: a term through the "
                    f"normalization over axis {axis} is missing (softmax's −a Σⱼ δaⱼ aⱼ)")
    bad = np.abs(c - t) > 1e-8 * peak
    n, total = int(bad.sum()), bad.size
    if fanout is not None and fanout.shape == c.shape:
        reach = fanout[fanout > 0]
        if reach.size and bad.any():
            low = reach.min()
            if (fanout[bad] > low).all() and ((fanout == low) & ~bad).any():
                return (f"wrong only where an element feeds more outputs than the fewest ({low}): at {n} of "
                        f"{total} elements, every one of which reaches several windows or repeated indices; "
                        "contributions that should be added are not all added (e.g. a col2im that assigns "
                        "instead of adds, a scatter with set instead of add)")
    if (x[bad] == 0).all() and n < total:
        return f"wrong only where the argument is exactly 0 ({n} of {total} elements)"
    return None


def _unexplained(c, t):
    bad = np.abs(c - t) > 1e-8 * float(np.abs(t).max())
    return f"wrong at {int(bad.sum())} of {bad.size} elements ({100 * bad.sum() / bad.size:.3g}%)"


def _in_span(e, columns, axis):
    """Whether each slice of ``e`` along ``axis`` is a combination of the same
    slices of ``columns`` (arrays of ``e``'s shape; ``None``: a constant), by
    least squares per other index, with at least two more entries than columns."""
    if any(x is not None and x.shape != e.shape for x in columns) or e.shape[axis] < len(columns) + 2 \
            or not np.abs(e).any():
        return False
    flat = lambda a: np.moveaxis(a, axis, 0).reshape(e.shape[axis], -1)
    ee = flat(e)
    cols = [np.ones_like(ee) if x is None else flat(x) for x in columns]
    for k in range(ee.shape[1]):
        basis = np.stack([col[:, k] for col in cols], axis=1)
        coef, *_ = np.linalg.lstsq(basis, ee[:, k], rcond=None)
        if np.abs(basis @ coef - ee[:, k]).max() > 1e-8 * (np.abs(ee).max()):
            return False
    return True


def _factor_hint(f):
    for k in range(2, 1025):
        if abs(f - k) < 1e-8 * k or abs(f * k - 1) < 1e-8:
            return f" (a missing or extra factor of {k}: a sum where a mean belongs, a count, or a 2 from a square?)"
    return ""


def _rearrangements(t):
    """The twin's gradient transposed, reshaped through a transpose, or flipped."""
    shape = t.shape
    for perm in itertools.permutations(range(t.ndim)):
        if perm != tuple(range(t.ndim)) and t.ndim <= 5:
            yield np.transpose(t, perm), f"with its axes permuted {perm} (transposed)"
    for k in range(1, t.ndim):
        a, b = int(np.prod(shape[:k])), int(np.prod(shape[k:]))
        if a > 1 and b > 1:
            yield (t.reshape(a, b).T.reshape(shape),
                   f"read as a {a}×{b} matrix, transposed and reshaped back: a reshape that misses its transpose")
            yield (t.reshape(b, a).T.reshape(shape),
                   f"read as a {b}×{a} matrix, transposed and reshaped back: a reshape that misses its transpose")
    axes = [a for a in range(t.ndim) if shape[a] > 1]
    for r in range(1, len(axes) + 1):
        for sub in itertools.combinations(axes, r):
            yield np.flip(t, sub), (f"flipped along axes {sub}: a flipped kernel (convolution where the "
                                     "forward is a cross-correlation)")

