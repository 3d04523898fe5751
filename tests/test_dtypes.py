"""jaxbp's one dtype rule, per op and per conv algorithm: the floating arguments
are promoted together as JAX promotes them (``jnp.result_type``), the op returns
that dtype (losses and batch-norm statistics in at least float32), and every
gradient has its own argument's dtype."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp
from jaxbp.ops import ALGORITHMS

bf16, f32, f64 = jnp.bfloat16, jnp.float32, jnp.float64


def ones(shape, dtype):
    """Positive values near 1 (NumPy's generator: JAX's compiles per shape and dtype)."""
    return jnp.asarray(np.abs(np.random.default_rng(len(shape)).standard_normal(shape)) + 0.5, dtype)


# name -> (op, argument shapes, kwargs, result in at least float32?)
OPS = {
    "dense": (jaxbp.dense, [(4, 3), (2, 3), (2,)], {}, False),
    "batch_norm": (jaxbp.batch_norm, [(4, 3), (3,), (3,)], {}, False),
    "layer_norm": (jaxbp.layer_norm, [(4, 3), (3,), (3,)], {}, False),
    "batch_norm_eval": (jaxbp.batch_norm_eval, [(4, 3), (3,), (3,), (3,), (3,)], {}, False),
    "softmax_cross_entropy": (jaxbp.softmax_cross_entropy, [(4, 3), (4, 3)], {}, True),
    "euclidean_loss": (jaxbp.euclidean_loss, [(4, 3), (4, 3)], {}, True),
    "mse": (jaxbp.mse, [(4, 3), (4, 3)], {}, True),
}
for alg in ALGORITHMS:
    for layout, x in (("NCHW", (2, 3, 5, 5)), ("NHWC", (2, 5, 5, 3))):
        OPS[f"conv2d-{alg}-{layout}"] = (jaxbp.conv2d, [x, (4, 3, 3, 3), (4,)],
                                         {"padding": 1, "algorithm": alg, "layout": layout}, False)

PAIRS = [(bf16, f32), (f32, f64)]  # the narrower dtype first, then second


@pytest.mark.parametrize("twin", [False, True], ids=["custom", "twin"])
@pytest.mark.parametrize("first,rest", PAIRS, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("name", list(OPS))
def test_promotion_and_gradient_dtypes(name, first, rest, twin):
    op, shapes, kwargs, at_least_f32 = OPS[name]
    op = op.autodiff if twin else op
    args = [ones(shapes[0], first)] + [ones(s, rest) for s in shapes[1:]]
    expected = jnp.result_type(*args)
    if at_least_f32:
        expected = jnp.promote_types(expected, f32)
    out = jax.jit(lambda *a: op(*a, **kwargs))(*args)
    y = out[0] if isinstance(out, tuple) else out
    assert y.dtype == expected
    if isinstance(out, tuple):  # batch norm's statistics
        assert out[1].dtype == out[2].dtype == jnp.promote_types(expected, f32)
    grads = jax.jit(jax.grad(lambda *a: (op(*a, **kwargs)[0] if isinstance(out, tuple) else op(*a, **kwargs))
                     .astype(f32).sum(), argnums=tuple(range(len(args)))))(*args)
    assert [g.dtype for g in grads] == [a.dtype for a in args]
