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
argument, every array argument gets a zero-size *carrier* (its dtype and
mesh-axis type), and :func:`cotangent` casts each gradient to its argument's
dtype and mesh-axis type — so a backward rule returns plain math and ``None``
for an argument that is ``None`` or integer needs no special case.

:func:`op` attaches the *autodiff twin* as ``op.autodiff``: the same front,
whose rules then return ``forward(...)[0]`` for JAX to differentiate. The twin
is therefore the very same forward code; comparing the two compares only the
backward rules. ``jaxbp.autodiff`` re-exports the twins under the same names.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import typing

import jax
import jax.numpy as jnp
from jax import lax

_TWIN = contextvars.ContextVar("jaxbp_autodiff_twin", default=False)


class Rule:
    """``forward(*arrays, **static) -> (out, residuals)`` with the hand-derived
    ``backward(residuals, g, **static) -> gradients`` (one per array, ``None``
    allowed). ``symbolic_zeros``: ``g`` holds ``SymbolicZero`` for unused outputs."""

    def __init__(self, forward, backward, symbolic_zeros=False):
        self.forward = forward

        def primal(static, *arrays):
            return forward(*arrays, **dict(static))[0]

        def fwd(static, *arrays):
            if symbolic_zeros:  # arrays arrive as (value, perturbed) records
                arrays = tuple(a.value for a in arrays)
            out, residuals = forward(*arrays, **dict(static))
            return out, (residuals, tuple(carrier(a) for a in arrays))

        def bwd(static, saved_, g):
            residuals, protos = saved_
            grads = backward(residuals, g, **dict(static))
            return tuple(cotangent(d, p) for d, p in zip(grads, protos, strict=True))

        self.custom = jax.custom_vjp(primal, nondiff_argnums=(0,))
        self.custom.defvjp(fwd, bwd, symbolic_zeros=symbolic_zeros)

    def __call__(self, *arrays, **static):
        if _TWIN.get():
            return self.forward(*arrays, **static)[0]
        return self.custom(tuple(sorted(static.items())), *arrays)


def op(front):
    """Decorator: the public op is ``front`` (its rules differentiated by hand);
    ``front.autodiff`` runs the same front with every rule left to JAX."""

    @functools.wraps(front)
    def twin(*args, **kwargs):
        with _twin():
            return front(*args, **kwargs)

    twin.__doc__ = (f"Autodiff twin of :func:`jaxbp.{front.__name__}`: the same forward, "
                    "differentiated by JAX.\n\n" + (front.__doc__ or ""))
    front.autodiff = twin
    return front


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
    mesh-axis type :func:`cotangent` reads is kept. ``None`` stays ``None``."""
    return None if x is None else lax.slice_in_dim(x[None], 0, 0)


def saved(*residuals):
    """The residuals, materialized as declared (``optimization_barrier``).

    Without the barrier XLA may fuse a cheap residual back into the backward
    pass and keep its larger inputs alive instead — measured in the CNN train
    step on CPU: relu's boolean mask recomputed from the float conv output, the
    int8 pool index widened to int32, ``γ`` broadcast to the activation's shape
    and kept — which undoes the point of saving less (74 -> 56 MiB with it).
    One barrier per residual: a shared one would give every residual the union
    of their mesh-axis types inside ``shard_map``. In the twin the residuals are
    unused, and XLA removes the barriers with them."""
    return tuple(lax.optimization_barrier(r) for r in residuals)


class Check(typing.NamedTuple):
    """A small problem an op module declares next to its op, for ``jaxbp
    gradcheck`` (and, at other sizes, ``benchmarks/ops.py``):
    ``getattr(jaxbp, op)(*args(normal), **kwargs)`` differentiated w.r.t. the
    arguments ``argnums``; ``normal(*shapes)`` draws arrays in the check's dtype."""
    op: str
    args: typing.Callable
    argnums: tuple
    kwargs: dict = {}
