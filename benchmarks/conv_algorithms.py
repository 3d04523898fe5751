"""Each conv layer of the models jaxbp ships, forward + backward, by every
algorithm that computes it, timed side by side on this backend: the costs
``algorithm="auto"`` chooses from.

    python benchmarks/conv_algorithms.py [--models cnn mnist resnet20 resnet18] [--rounds 10]
    python benchmarks/conv_algorithms.py --models resnet20:128     # the same layers at another batch

The layers' shapes come from tracing each model (``jax.eval_shape``) at its
benchmark batch: ``cnn`` (width 32, batch 128), ``mnist`` (MNIST's CPU recipe:
width 12, pooling first, batch 32), ``resnet20`` and ``resnet18`` (batch 32,
CIFAR-shaped), or at the batch ``model:batch`` gives. Each distinct layer is
timed once (interleaved rounds, median; the output and its gradients with
respect to the input and the kernel for a random cotangent, jitted:
``jaxbp.tools.timing.forward_and_backward``) and its compiled temporary memory
is read from XLA. Prints one Markdown row per layer: its shape, each
algorithm's ms and MiB, the fastest, what ``auto`` picks now and its time and
memory over the fastest's and the implicit conv's.
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


def candidates(x_shape, w_shape, stride, dilation, groups, layout):
    algs = ["explicit", "implicit"]
    if select.winograd_applies(w_shape[2:], jaxbp.validate.pair("stride", stride, 1),
                         jaxbp.validate.pair("dilation", dilation, 1), groups):
        algs.append("winograd")
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal(w_shape) * 0.1, jnp.float32)
    padding = "SAME" if w_shape[2] > 1 else 0
    fns, g = {}, None
    for alg in algs:
        conv = functools.partial(lambda x, w, alg: jaxbp.conv2d(x, w, None, stride, padding, dilation, groups,
                                                               algorithm=alg, layout=layout), alg=alg)
        if g is None:
            g = jnp.asarray(rng.standard_normal(jax.eval_shape(conv, x, w).shape), jnp.float32)
        step = jax.jit(forward_and_backward(conv), compiler_options=ops.compiler_options())  # as training's
        fns[alg] = functools.partial(step, x, w, g)
        fns[alg].mib = temp_bytes(step, x, w, g) / 2**20
    return fns


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), metavar="MODEL[:BATCH]",
                   help=f"of {', '.join(MODELS)} (default: all, each at its benchmark batch)")
    p.add_argument("--rounds", type=int, default=10)
    a = p.parse_args()
    print(f"Conv layers, fwd+bwd (dx, dw), float32, ms — {machine()}\n")
    print("| model | x (N, H, W, C) | w (O, I, FH, FW) | stride | explicit | implicit | winograd "
          "| MiB explicit / implicit / winograd | fastest | auto now | auto ÷ fastest | auto MiB ÷ implicit |")
    print("|---|---|---|---:|---:|---:|---:|---|---|---|---:|---:|")
    for spec in a.models:
        model, _, batch = spec.partition(":")
        if model not in MODELS or not (batch.isdigit() or not batch):
            p.error(f"--models: expected MODEL[:BATCH] with MODEL one of {', '.join(MODELS)}, got {spec!r}")
        besides = {}
        for recorded in layer_shapes(model, besides):
            x_shape, w_shape, stride, dilation, groups, layout = recorded
            x_shape = (int(batch),) + x_shape[1:] if batch else x_shape
            fns = candidates(x_shape, w_shape, stride, dilation, groups, layout)
            times = interleaved(fns, rounds=a.rounds)
            best = min(times, key=times.get)
            auto = ops.auto_algorithm(x_shape, w_shape, stride, dilation, groups, layout,
                                      beside=besides.get(recorded))
            algs = ("explicit", "implicit", "winograd")
            cells = [f"{1e3 * times[k]:.2f}" if k in times else "" for k in algs]
            mib = " / ".join(f"{fns[k].mib:.2f}" if k in fns else "—" for k in algs)
            print(f"| {model} | {x_shape} | {w_shape} | {stride} | " + " | ".join(cells) + f" | {mib}"
                  f" | {best} | {auto} | {times[auto] / times[best]:.2f} | {fns[auto].mib / fns['implicit'].mib:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
