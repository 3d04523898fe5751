"""Input validation shared by every op: clear errors before XLA sees the data.

Each check names the argument, what it received and what it expected, and
raises ``TypeError`` (wrong kind of thing) or ``ValueError`` (wrong shape or
value). They read only static shapes and dtypes, so they also run under
``jit``/``vmap``/``grad`` tracing.
"""
from __future__ import annotations

import numbers

import jax.numpy as jnp
import numpy as np


def floating(name, x):
    """Require a floating-point array (any of float16/bfloat16/float32/float64)."""
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        raise TypeError(f"{name} must be an array, got {type(x).__name__}")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype, got {dtype} "
                        f"(cast it, e.g. {name}.astype(jnp.float32))")


def rank(name, x, ranks, layout):
    """Require ``x.ndim`` in ``ranks``; ``layout`` describes the expected axes."""
    ranks = (ranks,) if isinstance(ranks, int) else tuple(ranks)
    if x.ndim not in ranks:
        raise ValueError(f"{name} must have rank {' or '.join(map(str, ranks))} "
                         f"({layout}), got shape {tuple(x.shape)}")


def shape(name, x, expected, meaning=""):
    """Require ``x.shape == expected``."""
    if tuple(x.shape) != tuple(expected):
        extra = f" ({meaning})" if meaning else ""
        raise ValueError(f"{name} must have shape {tuple(expected)}{extra}, "
                         f"got {tuple(x.shape)}")


def pair(name, v, minimum):
    """Normalize an int or a pair of ints to a tuple, each ``>= minimum``."""
    vals = (v, v) if isinstance(v, numbers.Integral) else v
    if (not isinstance(vals, (tuple, list)) or len(vals) != 2
            or not all(isinstance(i, (numbers.Integral, np.integer)) and not isinstance(i, bool)
                       for i in vals)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}")
    if any(i < minimum for i in vals):
        raise ValueError(f"{name} must be >= {minimum}, got {v!r}")
    return int(vals[0]), int(vals[1])


def count(name, v):
    """Require a Python int ``>= 1`` (a number of groups, of devices...)."""
    if isinstance(v, bool) or not isinstance(v, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an int, got {v!r}")
    if v < 1:
        raise ValueError(f"{name} must be >= 1, got {v}")
    return int(v)


def number(name, v):
    """Require a Python (static) real number, e.g. a slope or an epsilon."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a Python number, got {type(v).__name__}")
    return float(v)


def promote(*arrays):
    """jaxbp's one dtype rule: an op's floating array arguments are promoted
    together by JAX's type promotion (``jnp.result_type``), and the op computes
    and returns in that dtype (losses and batch-norm statistics in at least
    float32). Each gradient has its own argument's dtype. ``None`` stays ``None``."""
    dtype = jnp.result_type(*(a for a in arrays if a is not None))
    return tuple(None if a is None else a.astype(dtype) for a in arrays)


def axis(name, value, x):
    """Require an int in ``[-x.ndim, x.ndim)``; return it as a non-negative axis."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if not -x.ndim <= value < x.ndim:
        raise ValueError(f"{name} must be in [-{x.ndim}, {x.ndim}) for x of shape {tuple(x.shape)}, got {value}")
    return int(value) % x.ndim


def nonempty_axis(name, x, axis, what="entry"):
    """Require at least one entry along ``axis`` (a reduction over it needs one); return ``axis``."""
    if x.shape[axis] == 0:
        raise ValueError(f"{name} must have at least one {what} along axis {axis}, got shape {tuple(x.shape)}")
    return axis
