"""One forward function, two ways to differentiate it.

Every op's forward is a plain JAX function. ``jax.custom_vjp`` registers the
hand-derived backward rule on it; its *autodiff twin* is the very same function
left to JAX's autodiff. Comparing the two therefore compares only the backward
rules.

A public op is written once, as ``front(impl, *args)``: it validates and
normalizes the arguments, then calls ``impl``. :func:`with_twin` turns it into
the custom op (``impl`` = the ``custom_vjp`` function) and attaches the twin as
``op.autodiff`` (``impl`` = the plain forward). ``jaxbp.autodiff`` re-exports
the twins under the same names.
"""
from __future__ import annotations

import functools
import inspect

import jax
from jax import lax


def with_twin(custom, forward):
    """Decorator: ``front(impl, ...)`` -> public op, with ``op.autodiff``."""

    def decorate(front):
        sig = inspect.signature(front)
        sig = sig.replace(parameters=list(sig.parameters.values())[1:])

        def bind(impl):
            @functools.wraps(front)
            def op(*args, **kwargs):
                return front(impl, *args, **kwargs)

            op.__signature__ = sig
            del op.__wrapped__
            return op

        op = bind(custom)
        op.autodiff = bind(forward)
        op.autodiff.__doc__ = (f"Autodiff twin of :func:`jaxbp.{front.__name__}`: the same "
                               "forward, differentiated by JAX.\n\n" + (front.__doc__ or ""))
        return op

    return decorate


def varying(x):
    """The mesh axes along which ``x`` varies inside ``shard_map`` (empty outside)."""
    aval = jax.typeof(x)
    mat = getattr(aval, "manual_axis_type", None)  # JAX >= 0.10; earlier: ``aval.vma``
    return frozenset(mat.varying if mat is not None else getattr(aval, "vma", ()))


def cotangent(g, primal):
    """``g`` as the cotangent of ``primal``: its dtype, and its mesh-axis type.

    Inside ``shard_map`` a backward rule sees per-device values. A primal that is
    invariant over a mesh axis (a replicated weight) while its cotangent varies
    over it (``δW = δZᵀX`` from this device's rows) gets the sum over that axis,
    as autodiff's transpose of the implicit ``pvary`` does; a primal that varies
    where its cotangent does not gets the cotangent marked varying."""
    if primal is None:
        return None
    g = g.astype(primal.dtype)
    have, want = varying(g), varying(primal)
    if have - want:
        g = lax.psum(g, tuple(sorted(have - want)))
    if want - have:
        g = lax.pcast(g, tuple(sorted(want - have)), to="varying")
    return g


def like(grads, primals):
    """:func:`cotangent` for each pair (bf16 in, bf16 cotangent out)."""
    return tuple(cotangent(g, p) for g, p in zip(grads, primals))


def carrier(x, shape=False):
    """A zero-size array with ``x``'s dtype and mesh-axis type (and, with
    ``shape=True``, its shape after a leading 0): what a backward pass needs of
    an input it does not keep. Residuals must be arrays; Python dtypes and shapes
    are not valid ones. A slice of ``x`` (not ``jnp.zeros``) keeps the mesh-axis
    type that :func:`cotangent` reads."""
    return lax.slice_in_dim(x[None] if shape else x.reshape(-1), 0, 0)


def saved(*residuals):
    """The residuals, materialized as declared (``optimization_barrier``).

    Without the barrier XLA may fuse a cheap residual back into the backward
    pass and keep its larger inputs alive instead — measured in the CNN train
    step on CPU: relu's boolean mask recomputed from the float conv output, the
    int8 pool index widened to int32, ``γ`` broadcast to the activation's shape
    and kept — which undoes the point of saving less (74 -> 56 MiB with it).
    One barrier per residual: a shared one would give every residual the union
    of their mesh-axis types inside ``shard_map``."""
    return tuple(lax.optimization_barrier(r) for r in residuals)
