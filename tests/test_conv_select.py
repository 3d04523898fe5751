"""conv2d's algorithm choice (jaxbp/ops/conv/select.py)."""
import os
import re

import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp
from jaxbp.ops.conv import select


# Each row a layer of a shipped model (or one beside them), with the algorithm
# measured fastest for it on the 2-core CPU, XLA's convolutions compiled as
# compiler_options has them (python benchmarks/conv_algorithms.py; BENCHMARKS.md).
@pytest.mark.parametrize("x_shape,w_shape,kwargs,backend,expected", [
    ((32, 32, 14, 14), (64, 32, 3, 3), {}, "cpu", "implicit"),       # the MNIST CNN's conv 2 at width 32
    ((32, 14, 14, 32), (64, 32, 3, 3), {"layout": "NHWC"}, "cpu", "implicit"),
    ((32, 12, 14, 14), (24, 12, 3, 3), {}, "cpu", "implicit"),       # ... at width 12 (MNIST's recipe)
    ((128, 32, 14, 14), (64, 32, 3, 3), {}, "cpu", "implicit"),      # ... at batch 128: many positions
    # conv 1, one input channel: the forward by im2col, the backward (δF alone) by XLA's convolution
    ((32, 1, 28, 28), (32, 1, 3, 3), {}, "cpu", ("explicit", "implicit")),
    ((32, 1, 28, 28), (12, 1, 3, 3), {}, "cpu", ("explicit", "implicit")),   # ... at width 12 (MNIST's recipe)
    ((32, 3, 32, 32), (16, 3, 3, 3), {}, "cpu", ("explicit", "implicit")),   # a ResNet's stem: three
    ((128, 3, 32, 32), (16, 3, 3, 3), {}, "cpu", ("explicit", "implicit")),  # ... at batch 128
    ((32, 16, 32, 32), (16, 16, 3, 3), {}, "cpu", "implicit"),       # ResNet-20's first stage
    ((32, 32, 16, 16), (32, 32, 3, 3), {}, "cpu", "implicit"),       # ... its second
    ((32, 64, 8, 8), (64, 64, 3, 3), {}, "cpu", "implicit"),         # ... its third
    ((128, 64, 8, 8), (64, 64, 3, 3), {}, "cpu", "implicit"),        # ... at batch 128: not Winograd's (1.75×)
    ((32, 64, 16, 16), (64, 64, 3, 3), {}, "cpu", "implicit"),       # ... nor with four times the positions (1.71×)
    ((32, 128, 16, 16), (128, 128, 3, 3), {}, "cpu", "implicit"),    # ResNet-18's second stage
    ((32, 256, 8, 8), (256, 256, 3, 3), {}, "cpu", "implicit"),      # ... its third (Winograd's 0.8–1.1×, its step no faster)
    ((32, 512, 4, 4), (512, 512, 3, 3), {}, "cpu", "explicit"),      # ... its last: few positions
    ((32, 32, 16, 16), (64, 32, 3, 3), {"stride": 2}, "cpu", "explicit"),  # strided
    ((32, 64, 32, 32), (128, 64, 3, 3), {"stride": 2}, "cpu", "implicit"),  # ... with a large patch matrix (ResNet-18)
    ((32, 16, 32, 32), (32, 16, 3, 3), {"stride": 2}, "cpu", "explicit"),   # ... a smaller one (ResNet-20)
    ((32, 32, 16, 16), (64, 32, 1, 1), {"stride": 2}, "cpu", "explicit"),  # a 1×1 projection
    # ... beside its block's first conv, which reads the same input: that conv's algorithm (one layout)
    ((32, 16, 32, 32), (32, 16, 1, 1), {"stride": 2, "beside": ((32, 16, 3, 3), 2)}, "cpu", "explicit"),
    ((128, 16, 32, 32), (32, 16, 1, 1), {"stride": 2, "beside": ((32, 16, 3, 3), 2)}, "cpu", "implicit"),
    ((128, 16, 32, 32), (32, 16, 1, 1), {"stride": 2}, "cpu", "explicit"),  # (alone: the im2col)
    ((128, 16, 32, 32), (32, 16, 1, 1), {"stride": 2, "beside": ((32, 16, 3, 3), 2)}, "gpu", "implicit"),
    ((32, 128, 8, 8), (128, 64, 3, 3), {"groups": 2}, "cpu", "implicit"),  # not one Winograd computes
    ((32, 32, 14, 14), (64, 32, 3, 3), {}, "gpu", "implicit"),
])
def test_auto_algorithm(x_shape, w_shape, kwargs, backend, expected):
    assert select.auto_algorithm(x_shape, w_shape, backend=backend, **kwargs) == expected


def test_auto_algorithm_names_a_malformed_beside():
    with pytest.raises(ValueError, match=r"beside must be \(w_shape, stride\) of the other conv layer, "
                       r"w_shape \(O, I, FH, FW\); got \(\(32, 16, 3\), 2\)"):
        select.auto_algorithm((8, 16, 32, 32), (32, 16, 1, 1), 2, beside=((32, 16, 3), 2))


def test_winograd_applies_only_to_what_it_computes():
    assert select.winograd_applies((3, 3), (1, 1), (1, 1), 1)
    for args in [((3, 3), (2, 1), (1, 1), 1), ((3, 3), (1, 1), (1, 2), 1), ((3, 3), (1, 1), (1, 1), 2),
                 ((5, 5), (1, 1), (1, 1), 1), ((1, 1), (1, 1), (1, 1), 1)]:
        assert not select.winograd_applies(*args), args


def test_every_choice_names_a_registered_rule_and_auto_is_accepted_by_conv2d():
    x, w = jnp.ones((2, 3, 6, 6)), jnp.ones((4, 3, 3, 3))
    pairs = [(f, b) for f in select.ALGORITHMS for b in select.ALGORITHMS]
    ys = {a: jaxbp.conv2d(x, w, None, 1, 1, algorithm=a) for a in select.CHOICES + tuple(pairs)}
    for a, y in ys.items():
        np.testing.assert_allclose(y, ys["implicit"], rtol=1e-12, err_msg=a)
    assert select.DEFAULT_ALGORITHM in select.ALGORITHMS and "auto" not in select.ALGORITHMS


def _library_operations(compiled, operation):
    """The fusions of a compiled CPU program that XLA handed to a kernel
    library (YNNPACK) and that compute ``operation`` (``"convolution"``,
    ``"reduce"``), by the fused computations' names."""
    text = compiled.as_text()
    called = re.findall(r'calls=%([\w.-]+)[^\n]*"kind":"__ynn_fusion"', text)
    bodies = {m.group(1): m.group(2) for m in re.finditer(r"^%([\w.-]+) [^\n]*\{\n(.*?)\n\}", text, re.M | re.S)}
    return [name for name in called if f" {operation}(" in bodies.get(name, "")]


def test_train_step_is_compiled_with_the_faster_kernels(monkeypatch):
    """jaxbp's train step passes compiler_options: on CPUs, XLA's convolutions
    run as Eigen's, not YNNPACK's, and its reductions (batch norm's sums) as
    YNNPACK's, not XLA's own loops (BENCHMARKS.md); the same step without the
    options has YNNPACK's convolutions (so the check can fail). Before the
    reductions were listed, the step had none of them in YNNPACK."""
    if not select.compiler_options("cpu"):
        pytest.skip("this XLA:CPU has no YNNPACK convolution option")
    from jaxbp.tools import bench
    x, y = bench.batch(16, "cnn")

    def compiled():
        step, carry = bench.jaxbp_step("cnn", "custom", "float32", x, width=16)
        return step.lower(carry, x, y).compile()
    shipped = compiled()
    assert not _library_operations(shipped, "convolution") and _library_operations(shipped, "reduce")
    # XLA_FLAGS naming the option: compiler_options leaves XLA's defaults (here, the process's flags).
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", "") + " --xla_cpu_experimental_ynn_fusion_type")
    assert _library_operations(compiled(), "convolution"), "XLA's default kernels have changed: remeasure"


def test_compiler_options_are_xla_defaults_off_cpus_and_where_xla_flags_choose(monkeypatch):
    assert select.compiler_options("gpu") == {} and select.compiler_options("tpu") == {}
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=individual_convolution")
    assert select.compiler_options("cpu") == {}
