"""Which conv2d algorithm computes a layer, and the thresholds behind the choice.

This module owns every decision between conv2d's ways of evaluating the same
three rules (docs/derivation.md §3): the algorithms' names, the default,
``"auto"``'s rule, the thresholds inside the explicit algorithm, and which
kernels compute XLA's own convolutions (:func:`compiler_options`). Each
threshold is a named constant with one line of why; the measurements behind
them are in BENCHMARKS.md ("The numbers behind the code's choices"), reproduced by
``python benchmarks/conv_algorithms.py`` and ``python benchmarks/auto_vs_fixed.py``.
"""
from __future__ import annotations

import functools
import os

import jax
import numpy as np

from jaxbp.ops import _checks, _windows

ALGORITHMS = ("explicit", "implicit", "winograd")
CHOICES = ALGORITHMS + ("auto",)   # the names conv2d(algorithm=...), the layers and --algorithm accept

# conv2d's default, the layers' and `jaxbp train`'s: the same rules as
# "explicit", measured faster on CPUs and GPUs.
DEFAULT_ALGORITHM = "implicit"

# "auto" on CPUs, from each layer's measured forward and backward times by every
# algorithm (XLA's convolutions as compiler_options has them), and its
# workspace (per layer shape, not per network). Never Winograd's: with its
# forward pass in the program it took 1.7× the implicit conv's time on two of the
# shapes auto had given it, 0.8–1.1× on the third, whose step gained nothing, and
# its tiles raised the steps' peaks.
FEW_CHANNELS = 4          # up to this many input channels the patch matrix is small: one matmul wins the
                          # forward pass, XLA's convolution the backward (a first layer's: δF alone)
LARGE_PATCH = 1 << 22     # a strided conv's patch matrix from this many entries: XLA's convolution wins (1.6–2.1×)
FEW_ROWS = 2048           # below this many positions the explicit im2col: as fast, and the step smaller (ResNet-18)

# Inside the explicit algorithm on CPUs:
NARROW_PATCH = 16         # below this many patch columns the forward builds X̃ᵀ (1 channel: 0.87–0.92× the
                          # time of X̃ padded to 16 columns; 3 channels, 27 columns: 1.4–1.6× X̃ as laid out)
TRANSPOSED_PATCH = 32     # below this many patch columns, with at least as many outputs, δF̃ reads X̃ᵀ built as such


def passes(algorithm):
    """``(forward's, backward's)`` algorithm for conv2d's ``algorithm`` (not
    ``"auto"``): a name of :data:`ALGORITHMS` for both passes, or a pair of
    them. The three products read the same residuals (``x``, ``w``) whichever
    algorithm evaluates them, so any forward pairs with any backward."""
    if isinstance(algorithm, str) and algorithm in ALGORITHMS:
        return algorithm, algorithm
    if (isinstance(algorithm, (tuple, list)) and len(algorithm) == 2
            and all(isinstance(a, str) and a in ALGORITHMS for a in algorithm)):
        return tuple(algorithm)
    raise ValueError(f"algorithm must be one of {', '.join(map(repr, CHOICES))}, or a pair (forward's, "
                     f"backward's) of {', '.join(map(repr, ALGORITHMS))}; got {algorithm!r}")


def winograd_applies(window, stride, dilation, groups):
    """Whether Winograd's F(2×2, 3×3) computes this convolution: 3×3, stride 1,
    no dilation, one group."""
    return tuple(window) == (3, 3) and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1) and groups == 1


def auto_algorithm(x_shape, w_shape, stride=1, dilation=1, groups=1, layout="NCHW", backend=None, *,
                   beside=None):
    """The algorithm a layer with ``algorithm="auto"`` uses, from its shapes: a
    name, or ``(forward's, backward's)`` where the two passes differ (what
    :func:`jaxbp.conv2d` takes as ``algorithm``).

    On other backends than CPUs, :data:`DEFAULT_ALGORITHM`. On CPUs, from the
    layer's input positions ``N·H·W`` and channels ``C`` (the constants above):
    the explicit im2col for 1×1 convolutions, for strided ones unless their
    patch matrix is large, and for few positions; for few input channels the
    explicit forward and XLA's convolutions for the backward,
    ``("explicit", "implicit")``; XLA's convolution (implicit) for the rest.
    Winograd's (``"winograd"``) is there to be chosen by name.

    ``beside``: ``(w_shape, stride)`` of another conv layer reading the same
    input (a residual block's main path, beside its projection shortcut):
    this layer then takes the algorithm auto gives that one. The two
    algorithms keep a shared input in different layouts (the explicit im2col
    as it is, XLA's convolution transposed for ``δF``), and a step with both
    keeps both; one algorithm keeps one.
    ``backend``: default JAX's default backend, where the model will run."""
    if beside is not None:
        if not (isinstance(beside, tuple) and len(beside) == 2 and isinstance(beside[0], (tuple, list))
                and len(beside[0]) == 4):
            raise ValueError(f"beside must be (w_shape, stride) of the other conv layer, w_shape (O, I, FH, FW); "
                             f"got {beside!r}")
        w_shape, stride = beside
    if (backend or jax.default_backend()) != "cpu":
        return DEFAULT_ALGORITHM
    (ah, aw), ch = _windows.check_layout(layout)
    stride, dilation = _checks.pair("stride", stride, 1), _checks.pair("dilation", dilation, 1)
    rows, channels = x_shape[0] * x_shape[ah] * x_shape[aw], x_shape[ch]
    if tuple(w_shape[2:]) == (1, 1):
        return "explicit"
    if channels <= FEW_CHANNELS:
        return ("explicit", "implicit")
    if stride != (1, 1):
        out = x_shape[0] * -(-x_shape[ah] // stride[0]) * -(-x_shape[aw] // stride[1])
        return "implicit" if out * channels * w_shape[2] * w_shape[3] >= LARGE_PATCH else "explicit"
    return "explicit" if rows < FEW_ROWS else "implicit"


# XLA:CPU (jaxlib 0.10) hands its matmuls, convolutions and reductions to
# YNNPACK by default; its Eigen convolutions ran every conv layer jaxbp ships
# faster, the implicit conv by up to 3×. The list is XLA's default but the
# convolutions: with YNNPACK's reductions (batch norm's sums) the conv nets'
# train steps take 0.83–0.91× the time they take with XLA's own (BENCHMARKS.md).
_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


@functools.cache
def _cpu_options_accepted():
    """Whether this XLA:CPU knows :data:`_CPU_OPTIONS` (an experimental option:
    another jaxlib may not), tried once on a one-operation program."""
    try:
        jax.jit(lambda a: a + 1).lower(np.float32(0)).compile(_CPU_OPTIONS)
    except Exception:   # noqa: BLE001  (an unknown option is an XLA runtime error, by name per version)
        return False
    return True


def compiler_options(backend=None):
    """XLA compiler options for programs of jaxbp's ops on ``backend``
    (default: JAX's default backend), for ``jax.jit(..., compiler_options=...)``.

    On CPUs: XLA's convolutions computed by Eigen, not YNNPACK (measured
    faster at every conv layer of the models jaxbp ships), matmuls and
    reductions by YNNPACK as by default; jaxbp's train and evaluation steps
    are compiled with them. Elsewhere, and where this XLA
    does not know the option or ``XLA_FLAGS`` already chooses these kernels
    (``xla_cpu_experimental_ynn_fusion_type``), ``{}``: XLA's defaults."""
    if ((backend or jax.default_backend()) != "cpu" or "ynn_fusion_type" in os.environ.get("XLA_FLAGS", "")
            or not _cpu_options_accepted()):
        return {}
    return dict(_CPU_OPTIONS)
