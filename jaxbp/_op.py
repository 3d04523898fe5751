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

import jax.numpy as jnp
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


def like(grads, primals):
    """Cast each cotangent to its primal's dtype (bf16 in, bf16 cotangent out)."""
    return tuple(None if p is None else g.astype(p.dtype) for g, p in zip(grads, primals))


def carrier(x, shape=False):
    """A zero-size array with ``x``'s dtype (and, with ``shape=True``, its shape
    after a leading 0): what a backward pass needs of an input it does not keep.
    Residuals must be arrays; Python dtypes and shapes are not valid ones."""
    return jnp.zeros((0,) + (tuple(x.shape) if shape else ()), x.dtype)


def saved(*residuals):
    """The residuals, materialized as declared (``optimization_barrier``).

    Without the barrier XLA may fuse a cheap residual back into the backward
    pass and keep its larger inputs alive instead — measured in the CNN train
    step on CPU: relu's boolean mask recomputed from the float conv output, the
    int8 pool index widened to int32, ``γ`` broadcast to the activation's shape
    and kept — which undoes the point of saving less (74 -> 56 MiB with it)."""
    return lax.optimization_barrier(residuals)
