"""``algorithm="auto"`` against every fixed conv algorithm, per model: jaxbp's
train step (custom rules, Adam, NHWC) built once per algorithm and timed
interleaved in one process; compiled temporary memory from XLA.

    python benchmarks/auto_vs_fixed.py [--models cnn:128 cnn:32 mnist:32 resnet20:32 resnet18:32] [--rounds 10]

``mnist`` is the CNN of MNIST's CPU recipe (width 12, pooling first). Winograd's
applies to 3×3 stride-1 layers only, so a fixed "winograd" model runs its other
layers as explicit. Prints one Markdown row per model: each algorithm's ms
and MiB, auto's time over the best fixed algorithm's, auto's memory over
implicit's.

    python benchmarks/auto_vs_fixed.py --every-rule [--models cnn:32 mnist:32]

tries every rule a per-layer-shape choice can be instead: each assignment of
an algorithm, or a pair (forward's, backward's), to each distinct conv layer
shape of the model (the same shape, the same choice, as ``auto_algorithm``
sees it), built and its memory read;
those within implicit's memory are timed beside the fixed algorithms. Prints
per model how many assignments there are, how many stay within implicit's
memory, and the fastest of those over the best fixed algorithm (the median of
the per-round ratios, quartiles in parentheses): above 1.05,
no rule from layer shapes meets both halves of ``auto``'s target there.
"""
import argparse
import contextlib
import itertools
import os
import statistics
import sys

import jax
import numpy as np

import jaxbp
from jaxbp import train
from jaxbp.ops.conv import select
from jaxbp.tools.timing import interleaved, machine, paired_ratio, timings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conv_algorithms import layer_shapes, network  # noqa: E402  (the same networks, one table)

ALGORITHMS = ("explicit", "implicit", "winograd", "auto")


def step(model, batch, algorithm):
    """(compiled step, its arguments) of jaxbp's train step for ``model`` with
    ``algorithm``: compiled here, so that the rule in force now is the one it uses."""
    import optax
    net, shape, _ = network(model, algorithm)
    cfg = train.Config(optimizer="adam", lr=1e-3, weight_decay=0.0, augment=0, flip="off")
    rng = np.random.default_rng(0)
    x = jax.numpy.asarray(rng.uniform(size=(batch,) + shape).astype(np.float32))
    y = jax.numpy.asarray(rng.integers(0, 10, batch).astype(np.int32))
    opt = optax.adam(1e-3)
    carry = [train.new_state(net, cfg, opt, x.shape[1:]), x, y]
    return train.make_steps(net, opt, cfg).train.lower(*carry).compile(), carry


@contextlib.contextmanager
def auto_rule(rule):
    """``rule(x_shape, w_shape, stride, dilation, groups, layout, backend, beside=)`` in
    place of auto's: what conv2d(algorithm="auto") asks while the models are built."""
    own = select.auto_algorithm
    select.auto_algorithm = rule
    try:
        yield
    finally:
        select.auto_algorithm = own


def assigned(choice):
    """``auto`` answering from ``choice``: layer shape -> algorithm (any batch:
    the model's initialization traces its layers at batch 1)."""
    by_shape = {(x[1:], *rest): alg for (x, *rest), alg in choice.items()}

    def rule_from(x_shape, w_shape, stride=1, dilation=1, groups=1, layout="NCHW", backend=None, beside=None):
        return by_shape[(tuple(x_shape[1:]), tuple(w_shape), stride, dilation, groups, layout)]
    return auto_rule(rule_from)


def every_rule(model, batch, rounds):
    """Every assignment of an algorithm to each distinct conv layer shape of
    ``model``: (how many, how many within implicit's memory, the fastest of
    those ÷ the best fixed algorithm, that assignment, its MiB, implicit's MiB)."""
    shapes = list(layer_shapes(model))
    computing = [[alg for alg in select.ALGORITHMS if alg != "winograd" or select.winograd_applies(
        w[2:], jaxbp.validate.pair("stride", s, 1), jaxbp.validate.pair("dilation", d, 1), g)]
        for _, w, s, d, g, _ in shapes]
    # each pass by any algorithm that computes the layer: a name, or a pair (forward's, backward's)
    options = [[f if f == b else (f, b) for f in algs for b in algs] for algs in computing]
    fixed = {alg: step(model, batch, alg) for alg in ("explicit", "implicit")}
    limit = fixed["implicit"][0].memory_analysis().temp_size_in_bytes
    within, count = {}, 0
    for algs in itertools.product(*options):
        count += 1
        with assigned(dict(zip(shapes, algs))):
            fn, carry = step(model, batch, "auto")
        if fn.memory_analysis().temp_size_in_bytes <= limit:
            within[algs] = (fn, carry)
    try:
        fixed["winograd"] = step(model, batch, "winograd")
    except ValueError:   # strided layers
        pass
    samples = timings({**{name: caller(fn, carry) for name, (fn, carry) in fixed.items()},
                       **{algs: caller(fn, carry) for algs, (fn, carry) in within.items()}}, rounds=rounds)
    median = {name: statistics.median(t) for name, t in samples.items()}
    best = min(fixed, key=median.get)
    fastest = min(within, key=median.get)
    return (count, len(within), paired_ratio(samples[fastest], samples[best]), fastest,
            within[fastest][0].memory_analysis().temp_size_in_bytes / 2**20, limit / 2**20)


def caller(fn, carry):
    """One step per call, the state carried (the step donates it)."""
    def call():
        carry[0], metrics = fn(*carry)
        return metrics["loss"]
    return call


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", help="model:batch ... (default: cnn:128 cnn:32 mnist:32 resnet20:32 "
                   "resnet18:32; with --every-rule cnn:128 cnn:32 mnist:32)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--every-rule", action="store_true",
                   help="every per-layer-shape assignment of algorithms, not auto's (small models)")
    a = p.parse_args()
    a.models = a.models or (["cnn:128", "cnn:32", "mnist:32"] + ([] if a.every_rule else ["resnet20:32", "resnet18:32"]))
    if a.every_rule:
        print(f"Every rule from layer shapes, float32, NHWC — {machine()}\n")
        print("| model, batch | assignments | within implicit's memory | fastest of those ÷ best fixed "
              "| its algorithms, layer by layer | its MiB / implicit's |")
        print("|---|---:|---:|---:|---|---|")
        for spec in a.models:
            model, batch = spec.split(":")
            count, n, (ratio, q1, q3), algs, mib, limit = every_rule(model, int(batch), a.rounds)
            print(f"| {model}, {batch} | {count} | {n} | {ratio:.2f} ({q1:.2f}–{q3:.2f}) | {', '.join(algs)} "
                  f"| {mib:.1f} / {limit:.1f} |", flush=True)
        return
    print(f"Train step by conv algorithm, float32, NHWC — {machine()}\n")
    print("| model, batch | explicit ms | implicit ms | winograd ms | auto ms | auto ÷ best fixed "
          "| temp MiB explicit / implicit / winograd / auto | auto memory ÷ implicit |")
    print("|---|---:|---:|---:|---:|---:|---|---:|")
    for spec in a.models:
        model, batch = spec.split(":")
        steps = {}
        for alg in ALGORITHMS:
            try:
                steps[alg] = step(model, int(batch), alg)
            except ValueError:   # Winograd's for every layer: the model has strided ones
                pass
        mib = {alg: fn.memory_analysis().temp_size_in_bytes / 2**20 for alg, (fn, _) in steps.items()}
        times = interleaved({alg: caller(fn, carry) for alg, (fn, carry) in steps.items()}, rounds=a.rounds)
        best = min(t for alg, t in times.items() if alg in ALGORITHMS[:3])
        ms = lambda alg: f"{1e3 * times[alg]:.1f}" if alg in times else "—"
        size = lambda alg: f"{mib[alg]:.1f}" if alg in mib else "—"
        print(f"| {model}, {batch} | " + " | ".join(map(ms, ALGORITHMS)) + f" | {times['auto'] / best:.2f} | "
              + " / ".join(map(size, ALGORITHMS)) + f" | {mib['auto'] / mib['implicit']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
