"""The op recipe: one forward, two ways to differentiate it.

An op family module writes, for each rule::

    def _forward(x, w, b, *, static...):   # -> (output, residuals)
        ...
    def _backward(residuals, g, *, static...):   # -> one gradient per array argument
        ...
    _rule = Rule(_forward, _backward)

and a public front that validates its arguments and calls ``_rule(arrays...,
static=...)``, decorated with :func:`op`. ``Rule`` owns the ``custom_vjp``
plumbing: the static keyword arguments become one hashable non-differentiable
argument, every array argument (each leaf of a pytree argument) gets a
zero-size *carrier* (its dtype and mesh-axis type), and :func:`cotangent` casts
each gradient to its argument's dtype and mesh-axis type — so a backward rule
returns plain math and ``None`` for an argument that is ``None`` or integer
needs no special case.

:func:`op` attaches the *autodiff twin* as ``op.autodiff``: the same front,
whose rules then return ``forward(...)[0]`` for JAX to differentiate. The twin
is therefore the very same forward code; comparing the two compares only the
backward rules. ``jaxbp.autodiff`` re-exports the twins under the same names.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import math
import typing

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_TWIN = contextvars.ContextVar("jaxbp_autodiff_twin", default=False)


class Rule:
    """A hand-derived backward rule, registered with ``jax.custom_vjp``.

    ``forward(*arrays, **static) -> (out, residuals)`` computes the output and
    what the backward pass keeps; ``backward(residuals, g, **static) ->
    gradients`` returns one gradient per array argument, each of its
    argument's shape (``None`` for an argument that needs none: an integer or
    ``None`` argument). A gradient is cast to its argument's dtype. Call the
    rule with the arrays positionally and the static (hashable) options by
    keyword: ``rule(x, w, b, eps=1e-5)``. An argument may be a pytree (a dict
    of parameters): its gradient is then the same pytree.

    ``name`` (default: the forward's name without ``_`` and ``_forward``)
    and the forward's parameter names label the messages when a backward
    returns the wrong number of gradients or a wrong shape.
    ``symbolic_zeros``: ``g`` holds ``SymbolicZero`` for unused outputs (an
    eager ``shard_map``, which cannot pass them, gets dense zeros instead)."""

    def __init__(self, forward, backward, symbolic_zeros=False, name=None):
        self.forward, self.backward = forward, backward
        self.name = name or _rule_name(forward)
        self.arg_names = _positional_names(forward)
        # A rule called directly reads like its forward: name and arguments.
        self.__name__ = self.name
        self.__signature__ = inspect.Signature([inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD)
                                                for n in self.arg_names])

        def primal(static, *arrays):
            return self._forward(arrays, dict(static))[0]

        def make(symbolic):
            def fwd(static, *arrays):
                if symbolic:  # arrays arrive as (value, perturbed) records
                    arrays = jax.tree.map(lambda a: a.value, arrays)
                out, residuals = self._forward(arrays, dict(static))
                self._check_residuals(residuals)
                return out, (residuals, jax.tree.map(carrier, arrays))

            def bwd(static, saved_, g):
                residuals, protos = saved_
                grads = backward(residuals, g, **dict(static))
                return self._cotangents(grads, protos)

            custom = jax.custom_vjp(primal, nondiff_argnums=(0,))
            custom.defvjp(fwd, bwd, symbolic_zeros=symbolic)
            return custom

        self.custom = make(symbolic_zeros)
        self._dense_zeros = make(False) if symbolic_zeros else self.custom

    def __call__(self, *arrays, **static):
        for key, value in static.items():   # they become custom_vjp's hashable, untraced argument
            if isinstance(value, jax.Array):
                raise TypeError(f"rule {self.name!r}: keyword argument {key!r} is an array "
                                f"({value.dtype}{list(value.shape)}); pass arrays positionally (each gets a "
                                "gradient, None if it needs none) and options by keyword")
            try:
                hash(value)
            except TypeError:
                raise TypeError(f"rule {self.name!r}: keyword argument {key!r} must be hashable (an option: "
                                f"a number, a string, a tuple), got {type(value).__name__}") from None
        if _TWIN.get():
            return self._forward(arrays, static)[0]
        custom = self._dense_zeros if any(map(_eager_shard_map, jax.tree.leaves(arrays))) else self.custom
        return custom(tuple(sorted(static.items())), *arrays)

    def _forward(self, arrays, static):
        result = self.forward(*arrays, **static)
        if not (isinstance(result, tuple) and len(result) == 2):
            got = (f"a tuple of {len(result)}" if isinstance(result, tuple) else
                   f"an array of shape {tuple(result.shape)}" if hasattr(result, "shape") else type(result).__name__)
            raise TypeError(f"rule {self.name!r}: forward must return a pair (output, residuals), got {got}")
        return result

    def _check_residuals(self, residuals):
        """Residuals are arrays (or numbers); anything else is named here, not by
        custom_vjp as an 'argument' the user never passed."""
        for path, leaf in jax.tree_util.tree_flatten_with_path(residuals)[0]:
            if not isinstance(leaf, (jax.Array, np.ndarray, np.generic, int, float, complex)):
                raise TypeError(f"rule {self.name!r}: forward's residuals hold a {type(leaf).__name__} at "
                                f"{jax.tree_util.keystr(path) or 'the top'}; residuals must be arrays or "
                                "numbers (a static value is a keyword option: the backward gets it too)")

    def _argument(self, i):
        return repr(self.arg_names[i]) if i < len(self.arg_names) else f"number {i + 1}"

    def _cotangents(self, grads, protos):
        """Check the backward's gradients against the arguments, then cast them."""
        if not isinstance(grads, (tuple, list)):
            grads = (grads,) if len(protos) == 1 else grads
            if not isinstance(grads, (tuple, list)):
                raise TypeError(f"rule {self.name!r}: backward must return a tuple of {len(protos)} "
                                f"gradients (one per array argument), got {type(grads).__name__}")
        if len(grads) != len(protos):
            names = ", ".join(self.arg_names[:len(protos)]) or f"{len(protos)} arrays"
            raise ValueError(f"rule {self.name!r}: backward returned {len(grads)} gradient"
                             f"{'s' if len(grads) != 1 else ''} for {len(protos)} array argument"
                             f"{'s' if len(protos) != 1 else ''} ({names}); return one per argument, "
                             "None for an argument that needs none")
        return tuple(self._cotangent(i, d, p) for i, (d, p) in enumerate(zip(grads, protos)))

    def _cotangent(self, i, d, proto):
        """One argument's gradient ``d`` (a pytree like the argument) checked and cast."""
        if d is None or proto is None:
            return None
        paths, tree = jax.tree_util.tree_flatten_with_path(proto)
        try:
            leaves = tree.flatten_up_to(d)
        except (ValueError, TypeError):
            raise ValueError(f"rule {self.name!r}: backward's gradient for argument {self._argument(i)} has "
                             f"structure {jax.tree.structure(d)}, expected {tree} (the argument's)") from None
        out = []
        for (path, p), g in zip(paths, leaves):
            where = self._argument(i) + (f" at {jax.tree_util.keystr(path)}" if path else "")
            if g is not None:
                if not hasattr(g, "shape") or not hasattr(g, "dtype"):
                    raise TypeError(f"rule {self.name!r}: backward's gradient for argument {where} "
                                    f"must be an array, got {type(g).__name__}")
                if tuple(g.shape) != tuple(p.shape[1:]):
                    raise ValueError(f"rule {self.name!r}: backward's gradient for argument {where} "
                                     f"has shape {tuple(g.shape)}, expected {tuple(p.shape[1:])} "
                                     "(the argument's shape)")
                if jnp.issubdtype(p.dtype, jnp.inexact) and not jnp.issubdtype(g.dtype, jnp.inexact):
                    raise TypeError(f"rule {self.name!r}: backward's gradient for argument {where} "
                                    f"has dtype {g.dtype}, expected a floating dtype (the argument is {p.dtype})")
            out.append(cotangent(g, p))
        return tree.unflatten(out)


def _eager_shard_map(x):
    """Whether ``x`` is traced by a ``shard_map`` outside ``jit`` (under its JVP or batching)."""
    while isinstance(x, jax.core.Tracer):
        if type(x).__name__ == "ShardMapTracer":
            return True
        x = getattr(x, "primal", getattr(x, "val", None))
    return False


def _rule_name(forward):
    name = getattr(forward, "__name__", "rule").strip("_")
    name = name[:-len("forward")].rstrip("_") if name.endswith("forward") else name
    if not name:  # `_forward` in an op family module: the module names the op
        name = (getattr(forward, "__module__", None) or "rule").rsplit(".", 1)[-1].strip("_") or "rule"
    return name


def _positional_names(forward):
    try:
        params = inspect.signature(forward).parameters.values()
    except (TypeError, ValueError):
        return ()
    return tuple(p.name for p in params
                 if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD))


def op(front=None, *, example=None):
    """Decorator: the public op is ``front`` (its rules differentiated by hand);
    ``front.autodiff`` runs the same front with every rule left to JAX.

    ``@op(example=lambda normal: normal((4, 3), (2, 3)))`` also declares
    example inputs (``normal(*shapes)`` draws a tuple of arrays), kept as
    ``front.example`` for ``jaxbp gradcheck --op module:name``."""
    if front is None:
        return functools.partial(op, example=example)
    front = _scoped(front)

    @functools.wraps(front)
    def twin(*args, **kwargs):
        with _twin():
            return front(*args, **kwargs)

    twin.__doc__ = (f"Autodiff twin of :func:`jaxbp.{front.__name__}`: the same forward, "
                    "differentiated by JAX.\n\n" + (front.__doc__ or ""))
    front.autodiff = twin
    if example is not None:
        front.example = example
    return front


def _scoped(front):
    """``front`` under a JAX name scope of its own name: the compiled program's
    operations (its forward's, and the backward's of both the rule and the
    twin) carry ``.../conv2d/...`` in their metadata, which profiles read."""
    @functools.wraps(front)
    def scoped(*args, **kwargs):
        with jax.named_scope(front.__name__):
            return front(*args, **kwargs)
    return scoped


@contextlib.contextmanager
def _twin():
    token = _TWIN.set(True)
    try:
        yield
    finally:
        _TWIN.reset(token)


def varying(x):
    """The mesh axes along which ``x`` varies inside ``shard_map`` (empty outside)."""
    aval = jax.typeof(x)
    mat = getattr(aval, "manual_axis_type", None)  # JAX >= 0.10; earlier: ``aval.vma``
    return frozenset(mat.varying if mat is not None else getattr(aval, "vma", ()))


def cotangent(g, primal):
    """``g`` as the cotangent of ``primal``: its dtype, and its mesh-axis type.

    ``None`` for a primal that is ``None`` or an integer array (labels). Inside
    ``shard_map`` a backward rule sees per-device values: a primal invariant
    over a mesh axis (a replicated weight) whose cotangent varies over it
    (``δW = δZᵀX`` from this device's rows) gets the sum over that axis, as
    autodiff's transpose of the implicit ``pvary`` does; a primal that varies
    where its cotangent does not gets the cotangent marked varying."""
    if primal is None or g is None or not jnp.issubdtype(primal.dtype, jnp.inexact):
        return None
    g = g.astype(primal.dtype)
    have, want = varying(g), varying(primal)
    if have - want:
        g = lax.psum(g, tuple(sorted(have - want)))
    if want - have:
        g = lax.pcast(g, tuple(sorted(want - have)), to="varying")
    return g


def carrier(x):
    """A zero-size array with ``x``'s dtype and mesh-axis type, and its shape
    after a leading 0: what a backward pass needs of an input it does not keep
    (residuals must be arrays). A slice of ``x``, not ``jnp.zeros``, so that the
    mesh-axis type :func:`cotangent` reads is kept. ``None`` stays ``None``; a
    Python number (``rule(x, 1.5)``) is an array of its JAX dtype."""
    return None if x is None else lax.slice_in_dim(jnp.asarray(x)[None], 0, 0)


def saved(*residuals):
    """The residuals, materialized as declared (``optimization_barrier``).

    Without the barrier XLA may fuse a cheap residual back into the backward
    pass and keep its larger inputs alive instead — measured in the CNN train
    step on CPU: relu's boolean mask recomputed from the float conv output, the
    int8 pool index widened to int32, ``γ`` broadcast to the activation's shape
    and kept — which undoes the point of saving less (BENCHMARKS.md). The
    barrier holds through XLA's first simplifications only: XLA:CPU may still
    recompute an elementwise residual in the backward from what it was computed
    from (a ``bool`` mask: save :func:`pack_mask`'s bits, made by a reduction).
    One barrier per residual: a shared one would give every residual the union
    of their mesh-axis types inside ``shard_map``. In the twin the residuals are
    unused, and XLA removes the barriers with them."""
    return tuple(lax.optimization_barrier(r) for r in residuals)


def after(anchor, *values):
    """``values`` unchanged, computed only once ``anchor`` is: how a backward
    rule rebuilds an intermediate from a residual (im2col's ``X̃``, Winograd's
    ``V``) *in* the backward pass, ``anchor`` being the incoming ``g``.

    A rebuild that depends on forward values alone is not one once compiled:
    XLA:CPU merges it with the forward pass's identical computation (CSE runs
    again once the optimization barriers are gone) or schedules it in the
    forward pass, and keeps the large intermediate until the backward — the
    memory the rebuild was written to save (ResNet-20's step with explicit
    convolutions: 217 MiB kept so, 62 MiB with the rebuilds tied to ``δY``;
    BENCHMARKS.md). Each value is multiplied by a one XLA cannot fold, made
    from the bits of ``anchor``'s first entry, shifted out. Exact (``x · 1 = x``
    for every float, ``−0``, ``inf`` and ``NaN`` included); differentiable in
    the values, to any order, and constant in ``anchor``; under ``vmap`` a value
    is batched only if it was (``jacrev`` maps the cotangents alone: an
    unbatched ``x`` tied to them stays one array, not one per cotangent). One
    value: returned as is; several: a tuple."""
    out = tuple(_after(anchor, v) for v in values)
    return out[0] if len(out) == 1 else out


def _one(anchor, dtype):
    """A ``1`` of ``dtype`` that XLA computes from ``anchor``'s first entry."""
    if anchor.size == 0:
        return jnp.ones((), dtype)
    first = jnp.ravel(anchor)[0]
    first = first.astype(jnp.uint8) if first.dtype == jnp.bool_ else first
    width = first.dtype.itemsize
    bits = lax.bitcast_convert_type(first, jnp.dtype(f"uint{8 * width}"))
    half = bits.dtype.type(4 * width)
    return (1 + lax.shift_right_logical(lax.shift_right_logical(bits, half), half)).astype(dtype)


@jax.custom_jvp
@jax.custom_batching.custom_vmap
def _after(anchor, value):
    return value * _one(anchor, value.dtype)


@_after.def_vmap
def _after_vmap(axis_size, in_batched, anchor, value):
    anchor_batched, value_batched = in_batched
    if anchor_batched and value_batched:  # one 1 per batch entry
        one = jax.vmap(_one, (0, None))(anchor, value.dtype)
        return value * one.reshape((axis_size,) + (1,) * (value.ndim - 1)), True
    # An unbatched value stays unbatched: any entry of a batched anchor orders it.
    return value * _one(anchor, value.dtype), value_batched


@_after.defjvp
def _after_jvp(primals, tangents):
    anchor, value = primals
    return _after(anchor, value), tangents[1]


def pack_mask(mask):
    """A boolean ``mask`` as a flat ``uint8`` array of one bit per entry: how a
    rule saves a mask. A byte per entry as ``bool`` would be 8×; and XLA:CPU
    does not keep a saved ``bool`` mask but recomputes it in the backward pass
    from the arrays it came from, keeping those alive instead (a residual
    block's input beside its transposed copy: BENCHMARKS.md), which it does not
    do through the packing's reduction. :func:`unpack_mask` restores it."""
    # Entry i of the k-th eighth of the flat mask is bit k of byte i. A sum
    # (of distinct bits: their OR), not an elementwise OR of the eighths, which
    # XLA:CPU would recompute in the backward as it did the bool; over the
    # major axis, which vectorizes (over eight neighbours it was ~3× slower).
    eighths = jnp.pad(mask.reshape(-1), (0, -mask.size % 8)).reshape(8, -1).astype(jnp.uint8)
    return (eighths << jnp.arange(8, dtype=jnp.uint8)[:, None]).sum(axis=0, dtype=jnp.uint8)


def unpack_mask(packed, shape):
    """The boolean mask of ``shape`` that :func:`pack_mask` packed."""
    bits = (packed[None, :] >> jnp.arange(8, dtype=jnp.uint8)[:, None]) & 1
    return bits.reshape(-1)[:math.prod(shape)].reshape(shape).astype(jnp.bool_)


@jax.custom_jvp
def bitwise_where(mask, on, off):
    """``jnp.where(mask, on, off)`` for floating ``on`` and ``off`` of one dtype
    (broadcast together with the boolean ``mask``), computed on their bits: each
    entry's taken from ``on`` or ``off`` by an AND with all ones or all zeros,
    so the values are the select's, −0, ∞ and NaN included. How a rule applies
    a mask it saved with :func:`pack_mask`: XLA:CPU runs a select on the
    unpacked mask 4–6× slower where the arrays' last axis is narrow (16 or 32
    channels), this at an elementwise pass's speed (``benchmarks/masks.py``,
    BENCHMARKS.md). Differentiable in ``on`` and ``off`` as the select, to
    any order."""
    shape = jnp.broadcast_shapes(mask.shape, on.shape, off.shape)
    uint = jnp.dtype(f"uint{8 * on.dtype.itemsize}")
    keep = jnp.broadcast_to(0 - mask.astype(uint), shape)     # all ones where the mask is set
    bits = lambda a: lax.bitcast_convert_type(jnp.broadcast_to(a, shape), uint)
    return lax.bitcast_convert_type((bits(on) & keep) | (bits(off) & ~keep), on.dtype)


@bitwise_where.defjvp
def _bitwise_where_jvp(primals, tangents):
    mask, on, off = primals
    return bitwise_where(mask, on, off), jnp.where(mask, tangents[1], tangents[2])


class Check(typing.NamedTuple):
    """A small problem an op module declares next to its op, for ``jaxbp
    gradcheck`` (and, at other sizes, ``benchmarks/ops.py``):
    ``getattr(jaxbp, op)(*args(normal), **kwargs)`` differentiated w.r.t. the
    arguments ``argnums``; ``normal(*shapes)`` draws arrays in the check's dtype."""
    op: str
    args: typing.Callable
    argnums: tuple
    kwargs: dict = {}
