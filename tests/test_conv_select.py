"""conv2d's algorithm choice (jaxbp/ops/conv/select.py)."""
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp
from jaxbp.ops.conv import select


# Each row a layer of a shipped model, with the algorithm measured fastest for
# it on the 2-core CPU (python benchmarks/conv_algorithms.py;
# BENCHMARKS.md).
@pytest.mark.parametrize("x_shape,w_shape,kwargs,backend,expected", [
    ((32, 32, 14, 14), (64, 32, 3, 3), {}, "cpu", "winograd"),       # the MNIST CNN's conv 2 at width 32
    ((32, 14, 14, 32), (64, 32, 3, 3), {"layout": "NHWC"}, "cpu", "winograd"),
    ((32, 12, 14, 14), (24, 12, 3, 3), {}, "cpu", "explicit"),       # ... at width 12 (MNIST's recipe)
    ((128, 32, 14, 14), (64, 32, 3, 3), {}, "cpu", "implicit"),      # ... at batch 128: many positions
    ((32, 1, 28, 28), (32, 1, 3, 3), {}, "cpu", "explicit"),         # conv 1: one input channel
    ((32, 3, 32, 32), (16, 3, 3, 3), {}, "cpu", "explicit"),         # a ResNet's stem: three
    ((32, 16, 32, 32), (16, 16, 3, 3), {}, "cpu", "implicit"),       # ResNet-20's first stage
    ((32, 32, 16, 16), (32, 32, 3, 3), {}, "cpu", "winograd"),       # ... its second
    ((32, 64, 8, 8), (64, 64, 3, 3), {}, "cpu", "winograd"),         # ... its third
    ((32, 128, 16, 16), (128, 128, 3, 3), {}, "cpu", "implicit"),    # ResNet-18's second stage: much work
    ((32, 512, 4, 4), (512, 512, 3, 3), {}, "cpu", "explicit"),      # ... its last: few positions
    ((32, 32, 16, 16), (64, 32, 3, 3), {"stride": 2}, "cpu", "explicit"),  # strided
    ((32, 64, 32, 32), (128, 64, 3, 3), {"stride": 2}, "cpu", "implicit"),  # ... with a large patch matrix (ResNet-18)
    ((32, 16, 32, 32), (32, 16, 3, 3), {"stride": 2}, "cpu", "explicit"),   # ... a smaller one (ResNet-20)
    ((32, 32, 16, 16), (64, 32, 1, 1), {"stride": 2}, "cpu", "explicit"),  # a 1×1 projection
    ((32, 32, 14, 14), (64, 16, 3, 3), {"groups": 2}, "cpu", "explicit"),  # not one Winograd computes
    ((32, 32, 14, 14), (64, 32, 3, 3), {}, "gpu", "implicit"),
])
def test_auto_algorithm(x_shape, w_shape, kwargs, backend, expected):
    assert select.auto_algorithm(x_shape, w_shape, backend=backend, **kwargs) == expected


def test_winograd_applies_only_to_what_it_computes():
    assert select.winograd_applies((3, 3), (1, 1), (1, 1), 1)
    for args in [((3, 3), (2, 1), (1, 1), 1), ((3, 3), (1, 1), (1, 2), 1), ((3, 3), (1, 1), (1, 1), 2),
                 ((5, 5), (1, 1), (1, 1), 1), ((1, 1), (1, 1), (1, 1), 1)]:
        assert not select.winograd_applies(*args), args


def test_every_choice_names_a_registered_rule_and_auto_is_accepted_by_conv2d():
    x, w = jnp.ones((2, 3, 6, 6)), jnp.ones((4, 3, 3, 3))
    ys = {a: jaxbp.conv2d(x, w, None, 1, 1, algorithm=a) for a in select.CHOICES}
    for a, y in ys.items():
        np.testing.assert_allclose(y, ys["implicit"], rtol=1e-12, err_msg=a)
    assert select.DEFAULT_ALGORITHM in select.ALGORITHMS and "auto" not in select.ALGORITHMS
