"""Argument validation for an op's front: clear errors before XLA sees the data.

Each helper names the argument, what it received and what it expected, and
raises ``TypeError`` (wrong kind of thing) or ``ValueError`` (wrong shape or
value). They read only static shapes and dtypes, so they also run under
``jit``/``vmap``/``grad`` tracing. jaxbp's own ops use the same ones::

    @jaxbp.op
    def my_dense(x, w):
        jaxbp.validate.floating("x", x)
        jaxbp.validate.rank("w", w, 2, "out, in")
        return _rule(*jaxbp.validate.promote(x, w))
"""
from jaxbp.ops._checks import axis, count, floating, nonempty_axis, number, pair, promote, rank, shape

__all__ = ["axis", "count", "floating", "nonempty_axis", "number", "pair", "promote", "rank", "shape"]
