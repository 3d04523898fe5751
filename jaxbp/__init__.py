"""jaxbp: backpropagation rules derived by hand, as composable JAX ops.

``jaxbp.<op>`` differentiates with the hand-derived rule (``jax.custom_vjp``);
``jaxbp.autodiff.<op>`` is the same forward differentiated by JAX.
Forward-mode differentiation (``jax.jvp``, ``jax.jacfwd``) is not available for
``custom_vjp`` functions: JAX raises ``TypeError`` ("can't apply forward-mode
autodiff (jvp) to a custom_vjp function"). Use the twins for forward mode.
"""
from jaxbp import autodiff, ops
from jaxbp.gradcheck import compare_gradients
from jaxbp.ops import *  # noqa: F401,F403
from jaxbp.ops import __all__ as _ops_all

__version__ = "0.1.0"
__all__ = list(_ops_all) + ["autodiff", "compare_gradients", "ops"]
