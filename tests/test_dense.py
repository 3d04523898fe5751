import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp
from helpers import Case, gradient_test, normal, sharded_test

CASES = {
    "basic": Case(jaxbp.dense, normal(0, (5, 4), (3, 4), (3,)), (0, 1, 2)),
    "batch1": Case(jaxbp.dense, normal(1, (1, 6), (2, 6), (2,)), (0, 1, 2)),
    "no_bias": Case(jaxbp.dense, normal(2, (4, 3), (5, 3)) + (None,), (0, 1)),
    "tokens": Case(jaxbp.dense, normal(5, (2, 3, 4), (5, 4), (5,)), (0, 1, 2)),   # (N, L, in)
    "one_vector": Case(jaxbp.dense, normal(6, (4,), (3, 4), (3,)), (0, 1, 2)),   # (in,)
}
test_gradients = gradient_test(CASES)
test_sharded = sharded_test({"batch8": Case(jaxbp.dense, normal(3, (8, 4), (3, 4), (3,)), (0, 1, 2))})


def test_forward_is_x_wT_plus_b():
    x, w, b = normal(4, (5, 4), (3, 4), (3,))
    np.testing.assert_allclose(jaxbp.dense(x, w, b), np.asarray(x) @ np.asarray(w).T + np.asarray(b),
                               rtol=1e-14)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
def test_gradients_keep_dtype_and_are_finite(dtype):
    x, w, b = normal(5, (16, 32), (8, 32), (8,), dtype=dtype)
    y = jaxbp.dense(x, w, b)
    assert y.dtype == dtype and bool(jnp.isfinite(y.astype(jnp.float32)).all())
    grads = jax.grad(lambda *a: jaxbp.dense(*a).astype(jnp.float32).sum(), (0, 1, 2))(x, w, b)
    for g in grads:
        assert g.dtype == dtype and bool(jnp.isfinite(g.astype(jnp.float32)).all())
