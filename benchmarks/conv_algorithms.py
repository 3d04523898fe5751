"""Each conv layer of the models jaxbp ships, its forward pass and its backward
pass timed apart by every algorithm that computes it, side by side on this
backend: the costs ``algorithm="auto"`` chooses from, per pass.

    python benchmarks/conv_algorithms.py [--models cnn mnist resnet20 resnet18] [--rounds 10]
    python benchmarks/conv_algorithms.py --models resnet20:128     # the same layers at another batch

The layers' shapes come from tracing each model (``jax.eval_shape``) at its
benchmark batch: ``cnn`` (width 32, batch 128), ``mnist`` (MNIST's CPU recipe:
width 12, pooling first, batch 32), ``resnet20`` and ``resnet18`` (batch 32,
CIFAR-shaped), or at the batch ``model:batch`` gives. Each distinct layer is
timed once per algorithm, interleaved rounds, medians: the forward pass (the
output, jitted) and the backward pass (the gradients for a random cotangent,
jitted: the rules save ``x`` and ``w``, so XLA drops the forward pass from
that program). The network's first layer's backward is ``δF`` alone, as in a
train step, which needs no gradient for the data. The forward and the
backward of a conv can be any two algorithms (``conv2d(algorithm=(forward's,
backward's))``), so the fastest for a layer is the fastest forward with the
fastest backward. Memory: each algorithm's forward + backward in one program
(``jaxbp.tools.timing.forward_and_backward``), compiled temporary bytes from
XLA, and auto's choice's. Prints one Markdown row per layer: its shape, each
algorithm's forward and backward ms, the MiB, the fastest pair, what ``auto``
picks now and its time and memory over the fastest's and the implicit conv's.
"""
import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np

import jaxbp
from jaxbp import layers, ops
from jaxbp.ops.conv import select
from jaxbp.tools.timing import forward_and_backward, interleaved, machine, temp_bytes

# name -> (registry model, its options, benchmark batch): the shipped models
# and the MNIST recipe's cnn; benchmarks/auto_vs_fixed.py times the same networks.
MODELS = {"cnn": ("cnn", {}, 128),
          "mnist": ("cnn", dict(width=12, block="conv-pool-bn-relu"), 32),
          "resnet20": ("resnet20", {}, 32),
          "resnet18": ("resnet18", {}, 32)}


def network(name, algorithm):
    """(the network of ``name`` with every conv on ``algorithm``, its input shape, its batch)."""
    model, options, batch = MODELS[name]
    opts = layers.model_options(model, deterministic=True, algorithm=algorithm, **options)
    return (layers.build_model(model, 10, **opts),
            tuple(layers.MODELS[model].input_shape), batch)


def layer_shapes(name, besides=None):
    """The ``(x_shape, w_shape, stride, dilation, groups, layout)`` of each conv
    layer of model ``name``, recorded where the layers ask ``auto``: a dict
    (in the network's order) from each distinct one to how many layers have it.
    ``besides``: a dict to fill with auto's ``beside`` for the shapes whose layer
    passes one (a projection shortcut)."""
    seen, real = [], ops.auto_algorithm

    def record(x_shape, w_shape, stride=1, dilation=1, groups=1, layout="NCHW", backend=None, beside=None):
        seen.append((tuple(x_shape), tuple(w_shape), stride, dilation, groups, layout))
        if beside is not None and besides is not None:
            besides[seen[-1]] = beside
        return real(x_shape, w_shape, stride, dilation, groups, layout, backend, beside=beside)

    select.auto_algorithm = record   # what conv2d(algorithm="auto") asks
    try:
        net, shape, batch = network(name, "auto")
        _, params, state = net.init(jax.random.key(0), (batch,) + shape)
        seen.clear()   # init traced the layers too
        jax.eval_shape(lambda p, s, x: net.apply(p, s, x, train=True), params, state,
                       jnp.zeros((batch,) + shape, jnp.float32))
    finally:
        select.auto_algorithm = real
    return {shape: seen.count(shape) for shape in dict.fromkeys(seen)}


def candidates(x_shape, w_shape, stride, dilation, groups, layout, first=False):
    """``{algorithm: program}`` for each algorithm that computes the layer: a
    zero-argument callable of its forward and backward passes in one jitted
    program (:func:`jaxbp.tools.timing.forward_and_backward`, a random cotangent
    as data), with ``.mib``, its compiled temporary MiB, and ``.forward`` and
    ``.backward``, each pass alone. ``first``: the backward is ``δF`` alone,
    as a network's first layer's in a train step."""
    algs = ["explicit", "implicit"]
    if select.winograd_applies(w_shape[2:], jaxbp.validate.pair("stride", stride, 1),
                               jaxbp.validate.pair("dilation", dilation, 1), groups):
        algs.append("winograd")
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal(w_shape) * 0.1, jnp.float32)
    g = None
    fns = {}
    for alg in algs:
        conv = layer(stride, dilation, groups, layout, alg)
        if g is None:
            g = jnp.asarray(rng.standard_normal(jax.eval_shape(conv, x, w).shape), jnp.float32)
        fns[alg] = programs(conv, x, w, g, first)
    return fns


def layer(stride, dilation, groups, layout, algorithm):
    """``conv(x, w)``: the layer by ``algorithm``, padded ``"SAME"`` (a 1×1 conv: not at all)."""
    def conv(x, w):
        padding = "SAME" if w.shape[2] > 1 else 0
        return jaxbp.conv2d(x, w, None, stride, padding, dilation, groups, algorithm=algorithm, layout=layout)
    return conv


def programs(conv, x, w, g, first=False):
    """``conv(x, w)``'s forward and backward in one program, as :func:`candidates`
    returns it; jitted with training's compiler options. The backward alone is
    the gradients for ``g``: the rules save ``x`` and ``w``, so XLA drops the
    forward pass from that program."""
    jit = functools.partial(jax.jit, compiler_options=ops.compiler_options())   # as training's
    step = jit(forward_and_backward(conv))
    program = functools.partial(step, x, w, g)
    program.mib = temp_bytes(step, x, w, g) / 2**20
    program.forward = functools.partial(jit(conv), x, w)
    if first:
        program.backward = functools.partial(jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)), x, w, g)
    else:
        program.backward = functools.partial(jit(lambda x, w, g: jax.vjp(conv, x, w)[1](g)), x, w, g)
    return program


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), metavar="MODEL[:BATCH]",
                   help=f"of {', '.join(MODELS)} (default: all, each at its benchmark batch)")
    p.add_argument("--rounds", type=int, default=10)
    a = p.parse_args()
    algs = ("explicit", "implicit", "winograd")
    print(f"Conv layers, forward and backward (the first layer's: δF alone), float32, ms — {machine()}\n")
    print("| model | x (N, H, W, C) | w (O, I, FH, FW) | stride | forward explicit / implicit / winograd "
          "| backward explicit / implicit / winograd | MiB explicit / implicit / winograd | fastest | auto now "
          "| auto ÷ fastest | auto MiB ÷ implicit |")
    print("|---|---|---|---:|---|---|---|---|---|---:|---:|")
    for spec in a.models:
        model, _, batch = spec.partition(":")
        if model not in MODELS or not (batch.isdigit() or not batch):
            p.error(f"--models: expected MODEL[:BATCH] with MODEL one of {', '.join(MODELS)}, got {spec!r}")
        besides = {}
        for i, recorded in enumerate(layer_shapes(model, besides)):
            x_shape, w_shape, stride, dilation, groups, layout = recorded
            x_shape = (int(batch),) + x_shape[1:] if batch else x_shape
            fns = candidates(x_shape, w_shape, stride, dilation, groups, layout, first=i == 0)
            times = interleaved({(alg, k): getattr(fn, k) for alg, fn in fns.items() for k in PASSES},
                                rounds=a.rounds)
            best = tuple(min(fns, key=lambda alg, k=k: times[alg, k]) for k in PASSES)
            auto = select.passes(ops.auto_algorithm(x_shape, w_shape, stride, dilation, groups, layout,
                                                    beside=besides.get(recorded)))
            cost = {pair: sum(times[alg, k] for alg, k in zip(pair, PASSES)) for pair in (best, auto)}
            implicit = fns["implicit"]
            auto_mib = programs(layer(stride, dilation, groups, layout, auto), *implicit.args, first=i == 0).mib
            cells = [" / ".join(f"{1e3 * times[alg, k]:.2f}" if alg in fns else "—" for alg in algs) for k in PASSES]
            mib = " / ".join(f"{fns[alg].mib:.2f}" if alg in fns else "—" for alg in algs)
            print(f"| {model} | {x_shape} | {w_shape} | {stride} | {cells[0]} | {cells[1]} | {mib} | {name(best)} "
                  f"| {name(auto)} | {cost[auto] / cost[best]:.2f} | {auto_mib / implicit.mib:.2f} |", flush=True)


PASSES = ("forward", "backward")


def name(pair):
    """An algorithm as conv2d takes it: one name for both passes, else the pair."""
    return pair[0] if pair[0] == pair[1] else f"{pair[0]} → {pair[1]}"


if __name__ == "__main__":
    main()
