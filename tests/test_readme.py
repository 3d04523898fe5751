"""The README's Python code blocks run as written, so the README cannot drift
from the code."""
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_has_its_code_blocks():
    assert len(BLOCKS) >= 2 and any("shard_map" in b for b in BLOCKS)


def run(block, name):
    """Run a block as a user would: JAX's default rank promotion, not the tests' "raise"."""
    namespace = {}
    with jax.numpy_rank_promotion("allow"):
        exec(compile(block, name, "exec"), namespace)
    return namespace


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_block_runs(index):
    run(BLOCKS[index], f"README.md block {index}")


def test_shard_map_recipe_equals_the_single_device_gradient():
    import jaxbp
    (block,) = [b for b in BLOCKS if "shard_map" in b]
    ns = run(block, "README.md shard_map block")

    def single(w, gamma):
        z = jaxbp.dense(ns["x"], w, ns["b"])
        y, _, _ = jaxbp.batch_norm(z, gamma, ns["beta"])
        return jaxbp.relu(y).sum()

    expected = jax.grad(single, argnums=(0, 1))(ns["w"], ns["gamma"])
    for got, want in zip(ns["grads"], expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert jnp.abs(ns["grads"][0]).sum() > 0


def test_the_readme_uses_public_names_only():
    """A user's rule needs no private module: the README's code imports none."""
    code = "\n".join(BLOCKS)
    assert "jaxbp.Rule" in code and "jaxbp.check" in code
    assert not re.search(r"jaxbp(\.\w+)*\._\w+|from jaxbp[\w.]* import _", code), \
        re.findall(r"jaxbp(?:\.\w+)*\._\w+|from jaxbp[\w.]* import _\w+", code)
