import os
import subprocess
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _needs(module):
    """Run where ``module`` is installed (the examples of other libraries); skip elsewhere."""
    import importlib.util
    return pytest.mark.skipif(importlib.util.find_spec(module) is None, reason=f"{module} is not installed")


@pytest.mark.slow
@pytest.mark.parametrize("script,args,expect", [
    ("train_cnn.py", ["--epochs", "1"], "test accuracy"),
    ("train_mlp.py", ["--steps", "20"], "MLP test accuracy"),
    ("compare_gradients.py", [], "within float64 tolerance: True"),
    pytest.param("flax_nnx.py", [], "agree: True", marks=_needs("flax")),
    pytest.param("equinox.py", [], "agree: True", marks=_needs("equinox")),
])
def test_example_runs(script, args, expect, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    r = subprocess.run([sys.executable, os.path.join(EXAMPLES, script), *args], capture_output=True,
                       text=True, cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert expect in r.stdout
