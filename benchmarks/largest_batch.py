"""The largest batch whose train step fits a memory budget: jaxbp custom rules,
their autodiff twins, Flax NNX — the same network and optimizer
(jaxbp/tools/bench.py, benchmarks/flax_models.py).

    python benchmarks/largest_batch.py --model resnet20 --budget-mib 1024

Memory is XLA's exact compiled figure (``memory_analysis()``: temporaries +
arguments + outputs − aliased), so this runs on any backend, CPU included.
Temporary memory is affine in the batch, so two compilations give the line;
the predicted batch (a multiple of 8) is then compiled to confirm it fits and
that 8 more do not.
"""
import argparse
import datetime

from jaxbp import layers
from jaxbp.tools import bench
from jaxbp.tools.timing import machine


def footprint(candidate, model, batch, layout, algorithm):
    x, y = bench.batch(batch, model)
    if candidate == "flax nnx":
        from flax_models import flax_step
        step, carry = flax_step(model, "float32", x, bench.options(model, layout=layout, algorithm=algorithm))
    else:
        step, carry = bench.jaxbp_step(model, candidate.split()[1], "float32", x, layout=layout, algorithm=algorithm)
    m = step.lower(carry, x, y).compile().memory_analysis()
    return m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes


def largest(candidate, model, budget, layout, algorithm):
    a, b = 32, 64
    fa, fb = (footprint(candidate, model, n, layout, algorithm) for n in (a, b))
    per, fixed = (fb - fa) / (b - a), fa - a * (fb - fa) / (b - a)
    n = max(8, int((budget - fixed) / per) // 8 * 8)
    while footprint(candidate, model, n, layout, algorithm) > budget and n > 8:
        n -= 8
    while footprint(candidate, model, n + 8, layout, algorithm) <= budget:
        n += 8
    return n, per


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20", choices=tuple(layers.MODELS))
    p.add_argument("--budget-mib", type=float, default=1024)
    p.add_argument("--layout", default=None, help="as jaxbp bench's (default: the model's)")
    p.add_argument("--algorithm", default=None, help="as jaxbp bench's (default: the model's)")
    a = p.parse_args()
    budget = a.budget_mib * 2**20
    print(f"### Largest {a.model} train-step batch within {a.budget_mib:g} MiB — {machine()}, "
          f"{datetime.date.today()}\n")
    print("| candidate | largest batch | MiB per example |\n|---|---:|---:|")
    for candidate in ("jaxbp custom", "jaxbp autodiff", "flax nnx"):
        try:
            n, per = largest(candidate, a.model, budget, a.layout, a.algorithm)
        except ImportError:
            print(f"| {candidate} | not measured: Flax is not installed | |")
            continue
        print(f"| {candidate} | {n} | {per / 2**20:.2f} |")


if __name__ == "__main__":
    main()
