"""What a model's train step keeps from its forward pass for its backward pass,
with the hand-derived rules and with their autodiff twins, grouped by where in
jaxbp's code each saved array is made, beside XLA's compiled temp memory.

    python benchmarks/saved_residuals.py --model resnet20 --batch-size 32

The residuals are JAX's (``saved_residuals``: what reverse mode keeps before
XLA optimizes), so the table says per kind of layer what is saved and why; the
compiled figure (``memory_analysis()``) is what the step really allocates,
backward-pass buffers, gradients and the optimizer's temporaries included.
"""
import argparse
import collections
import re

import jax
import jax.numpy as jnp
from jax._src import ad_checkpoint

from jaxbp import autodiff, layers, ops
from jaxbp.tools import bench
from jaxbp.tools.timing import machine, temp_bytes

PARAMETERS = "parameters (w, read by δX; the step's inputs, alive anyway: not in the total)"

# The kinds of saved arrays, from where jaxbp's code makes them (a residual made
# by `saved` is told apart by dtype and rank: the rules save nothing else there).
KINDS = [(r"_activation\.py.*_relu_forward", "relu's output: the next conv or dense layer's input x, kept by both"),
         (r"layers\.py.*Transpose", "the input image (NHWC): the stem conv's input x"),
         (r"_pool\.py", "pooling's input or its window index"),
         (r"from the argument", PARAMETERS),
         (r"carrier|from a constant", "zero-size carriers and constants"),
         (r"_norm\.py", "batch norm (the twin's intermediates)"),
         (r"_conv|conv/", "conv (the twin's intermediates)"),
         (r"_dense\.py", "dense (the twin's intermediates)"),
         (r"_loss\.py", "the loss")]


def kind(aval, source):
    if "saved" in source:   # a rule's declared residual
        if aval.dtype == jnp.uint8:
            return "relu's mask (a bit per value)"
        if aval.size > max(aval.shape, default=1):   # more than one axis of length > 1
            return "batch norm's input z (the conv or dense output)"
        return "batch norm's 1/s, γ, shift, μ − shift (per channel)"
    for pattern, name in KINDS:
        if re.search(pattern, source):
            return name
    return "other: " + source.split(" from ")[0][:60]


def saved_residuals(f, *args):
    """JAX's ``saved_residuals(f, *args)``, each array once: a residual a rule
    declares with ``saved`` (an optimization barrier) whose input another op
    keeps too is one buffer in XLA (relu's output, the next conv's input ``x``),
    listed once, as that op's."""
    jaxpr, shapes = jax.make_jaxpr(lambda *a: jax.vjp(f, *a), return_shape=True)(*args)
    jaxpr = jaxpr.jaxpr
    kept = jaxpr.outvars[len(jaxpr.outvars) - len(jax.tree.leaves(shapes[1])):]
    through = {o: i for e in jaxpr.eqns if e.primitive.name == "optimization_barrier"
               for i, o in zip(e.invars, e.outvars)}
    kept = [v for v in kept if not isinstance(v, ad_checkpoint.core.Literal)]   # (the loss's has none)
    once = list(dict.fromkeys(through[v] if v in through and through[v] in kept else v for v in kept))
    return ad_checkpoint._saved_residuals(jaxpr.replace(outvars=once), [f"p{i}" for i in range(len(jaxpr.invars))])


def residuals(model, gradients, batch):
    net = layers.build_model(model, 10, gradients=gradients, **bench.options(model))
    x, y = bench.batch(batch, model)
    _, params, state = net.init(jax.random.key(0), x.shape)
    namespace = ops if gradients == "custom" else autodiff
    loss = lambda p: namespace.softmax_cross_entropy(net.apply(p, state, x, train=True)[0], y).mean()
    table = collections.defaultdict(lambda: [0, 0])
    for aval, source in saved_residuals(loss, params):
        row = table[kind(aval, source)]
        row[0] += 1
        row[1] += aval.size * aval.dtype.itemsize
    return table


def saved_bytes(table):
    """The bytes a table's arrays hold beyond the step's inputs."""
    return sum(b for name, (_, b) in table.items() if name != PARAMETERS)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20", choices=tuple(layers.MODELS))
    p.add_argument("--batch-size", type=int, default=32)
    a = p.parse_args(argv)
    tables = {g: residuals(a.model, g, a.batch_size) for g in ("custom", "autodiff")}
    x, y = bench.batch(a.batch_size, a.model)
    steps = {g: bench.jaxbp_step(a.model, g, "float32", x) for g in tables}
    temp = {g: temp_bytes(step, carry, x, y) for g, (step, carry) in steps.items()}
    print(f"### Saved for the backward pass: {a.model}, batch {a.batch_size}, float32 — {machine()}\n")
    print("| saved array | rules: count | rules MiB | twin: count | twin MiB |\n|---|---:|---:|---:|---:|")
    names = sorted(set(tables["custom"]) | set(tables["autodiff"]),
                   key=lambda k: -max(tables["custom"].get(k, [0, 0])[1], tables["autodiff"].get(k, [0, 0])[1]))
    for name in names:
        (cn, cb), (tn, tb) = tables["custom"].get(name, [0, 0]), tables["autodiff"].get(name, [0, 0])
        print(f"| {name} | {cn} | {cb / 2**20:.1f} | {tn} | {tb / 2**20:.1f} |")
    total = {g: saved_bytes(t) / 2**20 for g, t in tables.items()}
    print(f"| **all saved arrays** | | **{total['custom']:.1f}** | | **{total['autodiff']:.1f}** |")
    print(f"| compiled temp memory of the whole train step | | {temp['custom'] / 2**20:.1f} | | "
          f"{temp['autodiff'] / 2**20:.1f} |")


if __name__ == "__main__":
    main()
