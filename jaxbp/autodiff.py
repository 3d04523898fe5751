"""Autodiff twins: every op of :mod:`jaxbp.ops`, same forward, differentiated by JAX.

``jaxbp.autodiff.conv2d`` runs exactly the forward code of ``jaxbp.conv2d``
(the twin is attached to each op as ``op.autodiff``, never rewritten), so a
difference between their gradients is a difference between the hand-derived
rule and JAX's autodiff, nothing else.
"""
from jaxbp import ops as _ops

__all__ = list(_ops.__all__)
globals().update({name: getattr(_ops, name).autodiff for name in __all__})
