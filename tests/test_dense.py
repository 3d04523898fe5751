import jax.numpy as jnp
import numpy as np

import jaxbp
from helpers import Case, gradient_test, normal, sharded_test

CASES = {
    "basic": Case(jaxbp.dense, normal(0, (5, 4), (3, 4), (3,)), (0, 1, 2)),
    "batch1": Case(jaxbp.dense, normal(1, (1, 6), (2, 6), (2,)), (0, 1, 2)),
    "no_bias": Case(jaxbp.dense, normal(2, (4, 3), (5, 3)) + (None,), (0, 1)),
}
test_gradients = gradient_test(CASES)
test_sharded = sharded_test({"batch8": Case(jaxbp.dense, normal(3, (8, 4), (3, 4), (3,)), (0, 1, 2))})


def test_forward_is_x_wT_plus_b():
    x, w, b = normal(4, (5, 4), (3, 4), (3,))
    np.testing.assert_allclose(jaxbp.dense(x, w, b), np.asarray(x) @ np.asarray(w).T + np.asarray(b),
                               rtol=1e-14)


def test_finite_in_bfloat16():
    x, w, b = normal(5, (16, 32), (8, 32), (8,), dtype=jnp.bfloat16)
    y = jaxbp.dense(x, w, b)
    assert y.dtype == jnp.bfloat16 and bool(jnp.isfinite(y).all())
