"""The ops with the hand-derived backward rules (``jax.custom_vjp``).

Same names as :mod:`jaxbp.autodiff`, whose functions are these ops' autodiff
twins, so a model can be built on either namespace. The rules are stated in
``docs/derivation.md``; the recipe every op follows is in ``_recipe.py``.

:data:`FAMILIES` is the one list of ops: each family module's ``__all__``
names its ops and its ``CHECKS`` the small problems ``jaxbp gradcheck`` runs.
A new op touches its family module (and this list, for a new family).
"""
from jaxbp.ops import _activation, _dense, _dropout, _layer_norm, _loss, _norm, _pool, conv
from jaxbp.ops.conv.select import (  # noqa: F401  (the layers' and training's)
    ALGORITHMS, CHOICES, DEFAULT_ALGORITHM, auto_algorithm, compiler_options)

FAMILIES = (_dense, conv, _pool, _norm, _layer_norm, _activation, _dropout, _loss)

__all__ = [name for family in FAMILIES for name in family.__all__]
globals().update({name: getattr(family, name) for family in FAMILIES for name in family.__all__})
CHECKS = {label: check for family in FAMILIES for label, check in family.CHECKS.items()}
