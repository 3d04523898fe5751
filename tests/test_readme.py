"""The Python code blocks of the README and of docs/ run as written, so the
documents cannot drift from the code; the README stays short."""
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README] + sorted((ROOT / "docs").glob("*.md"))
BLOCKS = [(page.relative_to(ROOT), block) for page in PAGES
          for block in re.findall(r"```python\n(.*?)```", page.read_text(), re.S)]


def test_the_documents_have_their_code_blocks():
    assert sum(page == README.relative_to(ROOT) for page, _ in BLOCKS) >= 2
    assert any("shard_map" in b for _, b in BLOCKS)


def test_the_readme_is_short_and_links_pages_that_exist():
    text = README.read_text()
    assert len(text.splitlines()) <= 180
    for link in re.findall(r"\]\(((?:docs/)?[\w./-]+\.md)\)", text):
        assert (ROOT / link).exists(), link


def run(index):
    """Run block ``index`` as a user would: JAX's default rank promotion, not
    the tests' "raise"; a model or data set it registers is gone afterwards."""
    from jaxbp import data, layers
    page, block = BLOCKS[index]
    namespace = {}
    models, datasets = dict(layers.MODELS), dict(data.REGISTRY)
    try:
        with jax.numpy_rank_promotion("allow"):
            exec(compile(block, f"{page} block {index}", "exec"), namespace)
    finally:
        for registry, saved in ((layers.MODELS, models), (data.REGISTRY, datasets)):
            registry.clear()
            registry.update(saved)
    return namespace


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_block_runs(index):
    """Each block runs; the shard_map recipe's gradients also equal the
    single-device gradient (checked here: running the block twice costs ~10 s)."""
    ns = run(index)
    if "shard_map" in BLOCKS[index][1]:
        shard_map_recipe_equals_the_single_device_gradient(ns)


def shard_map_recipe_equals_the_single_device_gradient(ns):
    import jaxbp

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
    code = "\n".join(b for _, b in BLOCKS)
    assert "jaxbp.Rule" in code and "jaxbp.check" in code
    assert not re.search(r"jaxbp(\.\w+)*\._\w+|from jaxbp[\w.]* import _", code), \
        re.findall(r"jaxbp(?:\.\w+)*\._\w+|from jaxbp[\w.]* import _\w+", code)
