import pytest

from jaxbp.tools.timing import paired_ratio, timings


def test_timings_interleave_the_candidates_in_turn_after_warmup():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = timings(fns, rounds=3, warmup=1)
    # One warm-up round, then three timed rounds, each starting with the next candidate.
    assert "".join(calls) == "abc" + "abc" + "bca" + "cab"
    assert [len(t) for t in times.values()] == [3, 3, 3] and all(x >= 0 for t in times.values() for x in t)


def test_paired_ratio_is_the_median_of_per_round_ratios():
    # Both slow down together in round 3: the paired ratio does not move.
    assert paired_ratio([1.0, 1.0, 5.0, 1.0], [2.0, 2.0, 10.0, 2.0]) == (0.5, 0.5, 0.5)
    ratio, q1, q3 = paired_ratio([1.0, 2.0, 3.0, 4.0, 9.0], [1.0] * 5)
    assert ratio == 3.0 and q1 < ratio < q3
    with pytest.raises(ValueError):
        paired_ratio([1.0, 2.0], [1.0])


def test_saved_residuals_itemizes_what_a_step_keeps(capsys):
    """benchmarks/saved_residuals.py (BENCHMARKS.md's table): every saved array
    is counted once, and the rules keep relu's mask and batch norm's input where the
    twin keeps its intermediates."""
    from helpers import load_benchmark
    script = load_benchmark("saved_residuals")
    tables = {g: script.residuals("mlp", g, 8) for g in ("custom", "autodiff")}
    assert {"relu's mask (a bit per value)", "batch norm's input z (the conv or dense output)"} <= set(tables["custom"])
    assert tables["custom"]["relu's mask (a bit per value)"] == [2, 2 * 8 * 256 // 8]   # two hidden layers of 256
    assert script.saved_bytes(tables["custom"]) < script.saved_bytes(tables["autodiff"])
    script.main(["--model", "mlp", "--batch-size", "8"])
    out = capsys.readouterr().out
    assert "| **all saved arrays** |" in out and "compiled temp memory" in out
