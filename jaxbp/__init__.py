"""jaxbp: backpropagation rules derived by hand, as composable JAX ops.

``jaxbp.<op>`` differentiates with the hand-derived rule (``jax.custom_vjp``);
``jaxbp.autodiff.<op>`` is the same forward differentiated by JAX.
The backward rules are stated in the repository's ``docs/derivation.md``.

Reverse mode (``grad``, ``vjp``, ``jacrev``) and forward-over-reverse
(``jax.hessian``, Hessian-vector products) work: a backward rule is ordinary
JAX code. Forward mode *through* an op (``jax.jvp``, ``jax.jacfwd`` of the op
itself) is not defined for ``custom_vjp`` functions: JAX raises ``TypeError``
("can't apply forward-mode autodiff (jvp) to a custom_vjp function"). The
twins support every mode.

A rule of your own: :class:`jaxbp.Rule` (forward, backward), :func:`jaxbp.op`
(the public front and its twin), :func:`jaxbp.saved` and :func:`jaxbp.after`
(what the backward pass keeps, what it rebuilds), :mod:`jaxbp.validate`
(argument errors) and :func:`jaxbp.check` (the rule against its twin, with a
diagnosis).
"""
from jaxbp import autodiff, ops, validate
from jaxbp.ops import *  # noqa: F401,F403
from jaxbp.ops import __all__ as _ops_all
from jaxbp.ops._recipe import Rule, after, op, saved
from jaxbp.tools.check import CheckFailed, CheckReport, check
from jaxbp.tools.gradcheck import compare_gradients

__version__ = "0.1.0"
_SUBPACKAGES = ("data", "layers", "precision", "train", "tools")


def __getattr__(name):
    """``jaxbp.train``, ``jaxbp.data``, … on first use (``import jaxbp`` stays
    light: training pulls in optax and the data readers)."""
    if name in _SUBPACKAGES:
        import importlib
        return importlib.import_module(f"jaxbp.{name}")
    raise AttributeError(f"module 'jaxbp' has no attribute {name!r}")


# The extension API (docs/extending.md): Rule, op, saved, after, validate, check.
__all__ = list(_ops_all) + ["autodiff", "ops", "validate", "Rule", "op", "saved", "after", "check", "CheckReport",
                            "CheckFailed", "compare_gradients"]
