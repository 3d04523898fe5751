import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp
from helpers import Case, gradient_test, normal

KEY = jax.random.key(3)
CASES = {"rate_0.3": Case(jaxbp.dropout, normal(0, (4, 5)) + (0.3, KEY), (0,)),
         "rate_0": Case(jaxbp.dropout, normal(1, (3, 2, 2)) + (0.0, KEY), (0,)),
         "raw_key": Case(jaxbp.dropout, normal(2, (6,)) + (0.5, jax.random.PRNGKey(1)), (0,))}
test_gradients = gradient_test(CASES)


def test_mask_scaling_and_the_same_mask_in_the_backward_pass():
    x = jnp.ones((2000,))
    y = jaxbp.dropout(x, 0.25, KEY)
    assert set(np.unique(np.asarray(y)).tolist()) == {0.0, 4 / 3}
    assert abs(float((y == 0).mean()) - 0.25) < 0.05
    g = jax.grad(lambda x: jaxbp.dropout(x, 0.25, KEY).sum())(x)
    np.testing.assert_array_equal(g, y)  # δx = m/(1 − p): the forward's own mask


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_keeps_dtype(dtype):
    x = normal(4, (3, 4), dtype=dtype)[0]
    assert jaxbp.dropout(x, 0.5, KEY).dtype == dtype
    assert jax.grad(lambda x: jaxbp.dropout(x, 0.5, KEY).astype(jnp.float32).sum())(x).dtype == dtype


def test_the_mask_does_not_depend_on_the_x64_flag():
    x = jnp.ones((1000,), jnp.float32)
    with jax.enable_x64(True):
        wide = np.asarray(jaxbp.dropout(x, 0.4, KEY))
    with jax.enable_x64(False):
        narrow = np.asarray(jaxbp.dropout(x, 0.4, KEY))
    np.testing.assert_array_equal(wide, narrow)
