"""Bad input: jaxbp's own TypeError/ValueError, naming the argument, what was
received and what was expected, raised before XLA runs. One row per case."""
import pathlib

import pytest

import jaxbp
from bad_inputs import FAULTS, OP_CASES as CASES


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name):
    call, error, message = CASES[name]
    with pytest.raises(error, match=message) as info:
        call()
    # Raised by jaxbp's own validation (a module of the installed package), not
    # from inside XLA or jax.
    package = pathlib.Path(jaxbp.__file__).resolve().parent
    assert package in pathlib.Path(info.traceback[-1].path).resolve().parents


@pytest.mark.parametrize("name", ["conv_channel_mismatch", "dense_in_mismatch", "xent_targets_shape"])
def test_twin_validates_too(name):
    call, error, message = CASES[name]
    with pytest.MonkeyPatch.context() as mp:
        for op in jaxbp.ops.__all__:
            mp.setattr(jaxbp, op, getattr(jaxbp.autodiff, op))
        with pytest.raises(error, match=message):
            call()


@pytest.mark.parametrize("name", list(FAULTS))
def test_each_documented_fault_example_fits_its_pattern(name):
    import re
    _, pattern, example = FAULTS[name]
    assert re.fullmatch(pattern, example)
