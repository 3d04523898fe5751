import re

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


def test_a_step_compiled_beside_its_state_is_the_jitted_step():
    """bench.jaxbp_step with the batch's labels compiles the step from the
    state's shapes while the state is computed (resnet_process.py's whole
    processes, as fit compiles its first chunk): the jitted step's program,
    the same results bit for bit."""
    import jax
    import numpy as np

    from jaxbp.tools import bench
    x, y = bench.batch(4, "mlp")
    jitted, carry = bench.jaxbp_step("mlp", "custom", "float32", x)
    compiled, carry2 = bench.jaxbp_step("mlp", "custom", "float32", x, y)
    assert isinstance(compiled, jax.stages.Compiled)
    assert (compiled.memory_analysis().temp_size_in_bytes
            == jitted.lower(carry, x, y).compile().memory_analysis().temp_size_in_bytes)
    for a, b in zip(jax.tree.leaves(jitted(carry, x, y)), jax.tree.leaves(compiled(carry2, x, y))):
        np.testing.assert_array_equal(a, b)


def test_saved_residuals_itemizes_what_a_step_keeps(capsys):
    """benchmarks/saved_residuals.py (BENCHMARKS.md's table): every saved array
    is counted once — relu's output, which relu and the next dense layer both
    keep, too — and the rules keep it and batch norm's input where the twin
    keeps its intermediates."""
    from helpers import load_benchmark
    script = load_benchmark("saved_residuals")
    tables = {g: script.residuals("mlp", g, 8) for g in ("custom", "autodiff")}
    relu = "relu's output: the next conv or dense layer's input x, kept by both"
    assert {relu, "batch norm's input z (the conv or dense output)"} <= set(tables["custom"])
    assert "relu's mask (a bit per value)" not in tables["custom"]
    # two hidden layers of 256, float32; relu's saved output not counted again as another kind
    assert tables["custom"][relu] == tables["custom"]["batch norm's input z (the conv or dense output)"] \
        == [2, 2 * 8 * 256 * 4]
    assert script.saved_bytes(tables["custom"]) < script.saved_bytes(tables["autodiff"])
    script.main(["--model", "mlp", "--batch-size", "8"])
    out = capsys.readouterr().out
    assert "| **all saved arrays** |" in out and "compiled temp memory" in out


def test_the_models_keep_a_relus_output_where_a_conv_or_dense_layer_follows():
    """layers._keep: a relu keeps its mask only before a pooling layer (or dropout)."""
    from helpers import load_benchmark
    script = load_benchmark("saved_residuals")
    masks = lambda model: script.residuals(model, "custom", 2).get("relu's mask (a bit per value)", [0, 0])[0]
    assert masks("resnet20") == 1   # the last block's, before the global average pooling
    assert masks("cnn") == 2        # each block's, before its max pool; not the dense layer's


def test_peak_buffers_names_who_made_what_is_alive_at_the_peak(capsys):
    """benchmarks/peak_buffers.py: the schedule's peak is XLA's temp memory on the
    MLP step (1,071,489 bytes: 0.999; ResNet-20 batch 32 1.006, the CNN at
    batch 128 0.93), and the buffers alive there are named by their op."""
    from helpers import load_benchmark
    script = load_benchmark("peak_buffers")
    assert script.nbytes("(f32[2,3]{1,0}, u8[5]{0}, pred[])") == 24 + 5 + 1
    assert script.scope("jit(train_step)/transpose(jvp(conv2d))/cond/branch_0_fun/transpose") == "transpose(jvp(conv2d))"
    script.main(["--model", "mlp", "--batch-size", "8", "--top", "20"])
    out = capsys.readouterr().out
    total, temp = map(float, re.search(r"schedule ([\d.]+) MiB .* temp memory ([\d.]+) MiB", out).groups())
    assert abs(total / temp - 1) < 0.05
    assert "| made by | buffers | MiB | shapes |" in out and "| transpose(jvp(dense)) |" in out


@pytest.mark.parametrize("m", [4, 6])
def test_winograd_tiles_builds_exact_larger_tiles(m):
    """benchmarks/winograd_tiles.py (the conv floor's larger tiles): the Toom–Cook
    matrices make jaxbp's Winograd module compute the convolution and both its
    gradients, in float64 to rounding, also where the tiles overhang the image
    (13 × 13: neither size's multiple)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from helpers import load_benchmark
    script = load_benchmark("winograd_tiles")
    exact = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), script.PADS,
                                                     dimension_numbers=("NHWC", "OIHW", "NHWC"))
    both = [jax.jit(lambda x, w, g, f=f: (f(x, w), *jax.vjp(f, x, w)[1](g))) for f in (script.conv(m), exact)]
    rng = np.random.default_rng(m)
    x, w, g = rng.standard_normal((2, 13, 13, 5)), rng.standard_normal((4, 5, 3, 3)), rng.standard_normal((2, 13, 13, 4))
    got, want = (run(x, w, g) for run in both)
    for a, b in zip(got, want):
        assert jnp.abs(a - b).max() <= 1e-12 * jnp.abs(b).max()
    y32 = both[0](*(a.astype(np.float32) for a in (x, w, g)))[0]
    assert jnp.abs(y32 - want[0]).max() <= 1e-5 * jnp.abs(want[0]).max()


def test_every_rule_assigns_each_layer_shape_its_algorithm():
    """benchmarks/auto_vs_fixed.py --every-rule: an assignment of algorithms to
    the model's conv layer shapes is what its layers compute with, at any batch
    (only the implicit conv states XLA convolutions: none with both layers
    explicit, twice as many with both implicit as with one), and auto's own
    rule is back afterwards."""
    import jax
    import jax.numpy as jnp
    from helpers import load_benchmark
    from jaxbp.ops.conv import select
    script = load_benchmark("auto_vs_fixed")
    shapes = list(script.layer_shapes("mnist"))
    assert len(shapes) == 2
    rule = select.auto_algorithm

    def convolutions(choice):
        with script.assigned(dict(zip(shapes, choice))):
            net, shape, _ = script.network("mnist", "auto")
            _, params, state = net.init(jax.random.key(0), (3,) + shape)
            jaxpr = jax.make_jaxpr(lambda p, x: net.apply(p, state, x, train=True)[0])(params, jnp.zeros((3,) + shape))
        return str(jaxpr).count("conv_general_dilated")
    one = convolutions(("explicit", "implicit"))
    assert convolutions(("explicit", "explicit")) == 0 and one > 0
    assert convolutions(("implicit", "implicit")) == 2 * one == 2 * convolutions(("implicit", "explicit"))
    assert select.auto_algorithm is rule


def test_ops_times_the_rows_it_is_asked_for_and_names_the_others():
    """benchmarks/ops.py --only (a noisy row of BENCHMARKS.md's ops table
    re-measured in one command): the rows whose label starts with a given
    string, in the table's order; a string that starts no row is an error
    listing the rows."""
    import jax.numpy as jnp
    from helpers import load_benchmark
    script = load_benchmark("ops")
    rows = script.run(1, 1, jnp.float32, only=("mse", "euclidean"))
    assert [label for label, _, _ in rows] == ["euclidean_loss", "mse"]
    assert all(set(t) == {"custom", "twin"} and len(t["custom"]) == 1 for _, t, _ in rows)
    with pytest.raises(SystemExit, match="'relux' names no op problem; they are: dense, conv2d"):
        script.run(1, 1, jnp.float32, only=("relux",))


def test_a_layers_timed_program_runs_its_forward_pass_with_a_cotangent_as_data():
    """benchmarks/conv_algorithms.py (auto's per-layer costs, the conv floor's
    fastest algorithm) timed ``jax.grad`` of the output's sum: a rule's
    backward pass needs no forward output, so XLA dropped the forward pass as
    dead code, and folded the constant cotangent into the backward's products
    (the explicit stem's at batch 128 took 2.4× its time with a cotangent as
    data). Each program now holds the forward's product and both gradients',
    its cotangent an argument."""
    import jax
    from helpers import load_benchmark
    fns = load_benchmark("conv_algorithms").candidates((2, 8, 8, 8), (4, 8, 3, 3), (1, 1), (1, 1), 1, "NHWC")
    assert set(fns) == {"explicit", "implicit", "winograd"}
    for alg, fn in fns.items():
        program = fn.func.lower(*fn.args).compile().as_text()
        products = len(re.findall(r" (?:convolution|dot)\(", program))
        assert products == 3, (alg, products)   # Ỹ = X̃F̃, δX̃ = δỸF̃ᵀ, δF̃ = X̃ᵀδỸ (each, for Winograd, one batched dot)
        assert len(fn.args) == 3 and fn.args[2].shape == jax.eval_shape(fn.func, *fn.args)[0].shape


def test_a_layers_passes_are_timed_apart_and_a_first_layers_backward_is_df_alone():
    """auto chooses each pass's algorithm, so conv_algorithms.py times them
    apart: the forward alone is one product, the backward two (XLA drops the
    forward pass: the rules save x and w), a network's first layer's one (δF:
    a train step needs no gradient for the data)."""
    from helpers import load_benchmark
    bench = load_benchmark("conv_algorithms")
    for first, backward in ((False, 2), (True, 1)):
        fns = bench.candidates((2, 8, 8, 8), (4, 8, 3, 3), (1, 1), (1, 1), 1, "NHWC", first=first)
        for alg, fn in fns.items():
            for name, want in (("forward", 1), ("backward", backward)):
                part = getattr(fn, name)
                program = part.func.lower(*part.args).compile().as_text()
                assert len(re.findall(r" (?:convolution|dot)\(", program)) == want, (alg, name, first)


def test_versions_gives_a_model_only_the_options_it_reads():
    """benchmarks/versions.py compares any model's chunk: the same-work CNN's
    options go only to a model that reads them (the MLP was given the CNN's
    conv algorithm, which it rejects), and what the command line says wins."""
    from helpers import load_benchmark
    from jaxbp import layers
    script = load_benchmark("versions")
    for model in ("cnn", "mlp", "resnet20", "resnet18"):
        fields = script.config_fields({"model": model})
        given = set(fields) & set(script.CNN_OPTIONS)
        assert given == set(script.CNN_OPTIONS) & set(layers.model_entry(model).options), model
        layers.model_options(model, **{k: fields[k] for k in given})   # raises for an option the model does not read
    assert "algorithm" not in script.config_fields({"model": "mlp"})
    assert script.config_fields({"model": "resnet20", "algorithm": "implicit"})["algorithm"] == "implicit"


@pytest.mark.slow   # two versions' chunk programs compiled in one process: ~12 s
def test_versions_times_two_checkouts_side_by_side_and_removes_its_worktree():
    """benchmarks/versions.py: a directory and a git revision, each one's own
    jaxbp imported in turn and its chunk compiled, one row each; the temporary
    worktree of the revision is gone afterwards."""
    import pathlib
    import subprocess
    import sys

    from helpers import command_env
    root = pathlib.Path(__file__).resolve().parents[1]
    worktrees = lambda: subprocess.run(["git", "-C", str(root), "worktree", "list"], capture_output=True,
                                       text=True).stdout
    before = worktrees()
    r = subprocess.run([sys.executable, str(root / "benchmarks" / "versions.py"), str(root), "HEAD", "--rounds", "2",
                        "--steps", "2", "--input", "1,8,8", "data=digits", "width=4"],
                       capture_output=True, text=True, env=command_env(), cwd=root)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line for line in r.stdout.splitlines() if line.startswith(f"| {root} |") or line.startswith("| HEAD |")]
    assert len(rows) == 2 and rows[0].split("|")[3].strip().startswith("1.000"), r.stdout
    assert worktrees() == before
