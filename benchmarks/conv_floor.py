"""Where XLA:CPU's floor is for a ResNet step: every conv layer's three products
(forward, δX, δF) timed alone, as jaxbp's implicit conv runs them (XLA's
convolutions) and as PyTorch runs them (oneDNN), with each one's FLOP rate as
a fraction of the machine's peak; then the sums over the network beside
PyTorch's whole train step.

    python benchmarks/conv_floor.py --model resnet20 --batch-size 32 [--rounds 10]

If the convolutions at their fastest, with the batch norms and relus after
them, summed over the layers, take longer than a share of PyTorch's whole
step, no choice of rules on XLA:CPU brings the step under that share: the
floor is the kernels'. Each product is jitted
(XLA) or called (PyTorch, channels-last, ``torch.ops.aten.convolution_backward``
for δX and δF alone) and timed interleaved with its PyTorch counterpart
(median of rounds). The stem's δX (the data's gradient, which no step
computes) is left out of both sums. Each layer's forward + δX + δF by
each of jaxbp's conv algorithms (``benchmarks/conv_algorithms.py``'s
programs) gives the fastest, and the sum of those is the best a per-layer
choice can do. So that the floor is not an artefact of jaxbp's Winograd
tiles (F(2×2, 3×3)), every stride-1 3×3 layer is also timed with larger
ones, F(4×4, 3×3) and F(6×6, 3×3) (``benchmarks/winograd_tiles.py``; not
shipped). So that the floor is not an artefact of how XLA builds patch
matrices either, each layer's three im2col products are also timed as XLA's
matmuls with the patch matrix given (none built, no col2im): a bound for any
formulation of the layer through XLA's matmul, Winograd's aside. After each
conv, its batch norm (and relu, after every 3×3 conv) is timed forward +
backward beside PyTorch's: the floor is the fastest
convolutions plus these, the network's work without pooling, the loss and
the optimizer. So that the floor is not an artefact of jaxbp's batch norm
either, each one is also given its traffic bound: the time XLA takes to
move the conv output eight times (the fewest transfers batch norm + relu can
make: x read for the statistics and again for y, δy and x read for the two
sums and again for δx), timed as four in-place elementwise passes over it;
the floor with those in place of the rules is a bound for any batch norm
made of XLA:CPU's elementwise passes. PyTorch's whole step is timed before and after the layers,
and the slower of the two is the one compared. A product timed alone costs more
than in a step (PyTorch's own, summed, exceed its whole step), so the sums are
also compared like for like: jaxbp's fastest convolutions alone, nothing else
in the step, against PyTorch's convolutions, batch norms and relus, all timed
alone; above 0.8× there, no rule brings the step to 0.8× PyTorch's. "Peak" is the best float32
matmul rate either framework reaches on this machine (2048 × 2048, best of
10); the machine's nominal rate is not known inside a virtual machine.
"""
import argparse
import functools
import os
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np
import torch

from jaxbp import ops
from jaxbp.ops.conv import _implicit
from jaxbp.tools.timing import best_seconds, forward_and_backward, interleaved, machine, matmul_flops

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conv_algorithms import candidates, layer_shapes  # noqa: E402
from pytorch_resnet import step_seconds  # noqa: E402
from winograd_tiles import larger_tile_candidates  # noqa: E402


def xla_products(x_shape, w_shape, stride):
    """Zero-argument callables for the forward, δX and δF of one NHWC layer, as jaxbp's implicit conv."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal(w_shape), jnp.float32)
    pad = w_shape[2] // 2   # as the ResNets' (and PyTorch's below)
    static = dict(stride=stride, pads=((pad, pad), (pad, pad)), dilation=(1, 1), groups=1, layout="NHWC")
    jit = functools.partial(jax.jit, compiler_options=ops.compiler_options())   # XLA's kernels, as training's
    y = jit(functools.partial(_implicit.forward, **static))
    g = jnp.ones_like(y(x, w))
    dx = jit(lambda x, w, g: _implicit.backward(x, w, g, **static)[0])
    dw = jit(lambda x, w, g: _implicit.backward(x, w, g, **static)[1])
    return {"forward": lambda: y(x, w), "δX": lambda: dx(x, w, g), "δF": lambda: dw(x, w, g)}


def patch_products(x_shape, w_shape, stride, first):
    """One program of im2col's three products with the patch matrix given, as
    XLA's matmuls: ``X̃F̃``, ``X̃ᵀδỸ`` and (but for a network's first layer)
    ``δỸF̃ᵀ``, with no patch matrix built and no col2im. Any formulation of the
    layer through XLA's matmul does at least these (the Winograd ones aside)."""
    n, h, wd, c = x_shape
    rows = n * -(-h // stride[0]) * -(-wd // stride[1])
    k = c * w_shape[2] * w_shape[3]
    rng = np.random.default_rng(0)
    cols, f, g = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((rows, k), (k, w_shape[0]),
                                                                              (rows, w_shape[0])))

    def products(cols, f, g):
        y, df = cols @ f, jax.lax.dot_general(cols, g, (((0,), (0,)), ((), ())))
        return (y, df) if first else (y, df, g @ f.T)
    fn = jax.jit(products, compiler_options=ops.compiler_options())
    return lambda: fn(cols, f, g)


def torch_products(x_shape, w_shape, stride):
    """The same three for PyTorch (NCHW tensors in channels-last memory)."""
    n, h, wd, c = x_shape
    x = torch.randn(n, c, h, wd).to(memory_format=torch.channels_last)
    w = torch.randn(*w_shape).to(memory_format=torch.channels_last)
    pad = w_shape[2] // 2
    y = torch.nn.functional.conv2d(x, w, None, stride, pad)
    g = torch.ones_like(y)

    def backward(mask):
        return torch.ops.aten.convolution_backward(g, x, w, None, stride, (pad, pad), (1, 1), False, (0, 0), 1, mask)
    return {"forward": lambda: torch.nn.functional.conv2d(x, w, None, stride, pad),
            "δX": lambda: backward([True, False, False]), "δF": lambda: backward([False, True, False])}


def norm_products(y_shape, relu):
    """Batch norm (training mode), then relu where the network has one, forward +
    backward of the conv's output: jaxbp's rules and PyTorch's modules, as the steps run them."""
    rng = np.random.default_rng(0)
    y = jnp.asarray(rng.standard_normal(y_shape), jnp.float32)
    gamma, beta = jnp.ones(y_shape[-1]), jnp.zeros(y_shape[-1])

    def layer(y, gamma, beta):
        z = ops.batch_norm(y, gamma, beta, axis=3)[0]
        return ops.relu(z, keep="output") if relu else z   # as the models' (the next conv keeps it)
    step = jax.jit(forward_and_backward(layer), compiler_options=ops.compiler_options())
    n, h, w, c = y_shape
    ty = torch.randn(n, c, h, w).to(memory_format=torch.channels_last).requires_grad_()
    bn = torch.nn.BatchNorm2d(c)
    tg = torch.ones_like(ty)

    def torch_step():
        z = bn(ty)
        (torch.relu(z) if relu else z).backward(tg)
    # The traffic bound: batch norm + relu must read x for its statistics and again
    # to write y (the forward), read δy and x for its two sums and again to write δx
    # (the backward): eight transfers of the array, relu's bits aside. Four XLA
    # elementwise passes over the array itself, each in place (a read and a write),
    # are eight: the fastest way found to make them (one pass over four copies of
    # it leaves the cache at batch 128; four passes into new arrays allocate).
    negate = jax.jit(jnp.negative, donate_argnums=0, compiler_options=ops.compiler_options())
    state = [y + 0]

    def bound():
        for _ in range(4):
            state[0] = negate(state[0])
        return state[0]
    g = jnp.asarray(rng.standard_normal(y_shape), jnp.float32)
    return {"xla": functools.partial(step, y, gamma, beta, g), "torch": torch_step,
            "bound": bound}


def peaks(rounds=10, n=2048):
    """The float32 n×n matmul FLOP/s of XLA and of PyTorch here, best of ``rounds``."""
    t = torch.ones(n, n)
    return {"xla": matmul_flops(n, rounds), "torch": 2 * n ** 3 / best_seconds(lambda: t @ t, rounds)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20", choices=("resnet20", "resnet18"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=10)
    a = p.parse_args()
    torch.set_num_threads(os.cpu_count())
    rates = peaks()
    top = max(rates.values())
    print(f"Conv products of {a.model}, batch {a.batch_size}, float32, NHWC — {machine()}, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print(f"peak: {top / 1e9:.1f} GFLOP/s (2048² matmul: XLA {rates['xla'] / 1e9:.1f}, "
          f"PyTorch {rates['torch'] / 1e9:.1f})\n")
    print("| x (N, H, W, C) | w (O, I, FH, FW) | stride | layers | GFLOP each | product | XLA ms | XLA of peak "
          "| PyTorch ms | PyTorch of peak |\n|---|---|---:|---:|---:|---|---:|---:|---:|---:|")
    first_step = 1e3 * statistics.median(step_seconds(a.model, a.batch_size, steps=10, warmup=3))
    shapes = {((a.batch_size,) + x[1:], *rest): count
              for (x, *rest), count in layer_shapes(a.model).items()}
    sums = {"xla": 0.0, "torch": 0.0, "best": 0.0, "tiles": 0.0, "patches": 0.0, "norm xla": 0.0,
            "norm torch": 0.0, "norm bound": 0.0}
    for i, ((x_shape, w_shape, stride, _, _, _), count) in enumerate(shapes.items()):
        stride = tuple(stride) if isinstance(stride, tuple) else (stride, stride)
        n, h, wd, c = x_shape
        ho, wo = -(-h // stride[0]), -(-wd // stride[1])
        flops = 2 * n * ho * wo * w_shape[0] * c * w_shape[2] * w_shape[3]
        xla, pt = xla_products(x_shape, w_shape, stride), torch_products(x_shape, w_shape, stride)
        for product in ("forward", "δX", "δF"):
            if product == "δX" and i == 0:
                continue   # the stem's: the data's gradient
            times = interleaved({"xla": xla[product], "torch": pt[product]}, rounds=a.rounds)
            for k in times:
                sums[k] += count * times[k]
            print(f"| {x_shape} | {w_shape} | {stride[0]} | {count} | {flops / 1e9:.3f} | {product} | "
                  f"{1e3 * times['xla']:.2f} | {100 * flops / times['xla'] / top:.0f} % | "
                  f"{1e3 * times['torch']:.2f} | {100 * flops / times['torch'] / top:.0f} % |", flush=True)
        # jaxbp's fastest algorithm for the layer, forward + both gradients in one program
        fns = candidates(x_shape, w_shape, stride, (1, 1), 1, "NHWC")
        if "winograd" in fns:   # stride 1, 3×3: also the larger tiles
            fns.update(larger_tile_candidates(x_shape, w_shape))
        algs = interleaved(fns, rounds=a.rounds)
        shipped = {k: v for k, v in algs.items() if not k.startswith("F(")}
        best, fastest = min(shipped, key=shipped.get), min(algs, key=algs.get)
        sums["best"] += count * algs[best]
        sums["tiles"] += count * algs[fastest]
        each = ", ".join(f"{k} {1e3 * v:.2f}" for k, v in algs.items())
        print(f"| | | | | | each algorithm, jaxbp's fastest shipped: {best} ({each}) | {1e3 * algs[best]:.2f} | | | |",
              flush=True)
        # im2col's products alone, their patch matrix given: what a matmul formulation costs at least
        patches = interleaved({"xla": patch_products(x_shape, w_shape, stride, first=i == 0)}, rounds=a.rounds)["xla"]
        sums["patches"] += count * patches
        print(f"| | | | | | im2col's products alone, the patch matrix given (XLA's matmuls) | {1e3 * patches:.2f} | "
              f"{100 * (2 if i == 0 else 3) * flops / patches / top:.0f} % | | |", flush=True)
        # the batch norm after every conv, and the relu after every 3×3 one (not the shortcuts')
        relu = w_shape[2] > 1
        norm = interleaved(norm_products((n, ho, wo, w_shape[0]), relu), rounds=a.rounds)
        for k in norm:
            sums[f"norm {k}"] += count * norm[k]
        print(f"| | | | | | batch norm{' + relu' if relu else ''}, forward + backward | "
              f"{1e3 * norm['xla']:.2f} (traffic bound {1e3 * norm['bound']:.2f}) | | {1e3 * norm['torch']:.2f} | |",
              flush=True)
    steps = (first_step, 1e3 * statistics.median(step_seconds(a.model, a.batch_size, steps=10, warmup=3)))
    step = max(steps)   # the slower of the two: the floor is not claimed on a fast moment of PyTorch's
    print(f"\nevery conv product of the network: XLA {1e3 * sums['xla']:.1f} ms, PyTorch {1e3 * sums['torch']:.1f} ms;"
          f" PyTorch's whole train step {steps[0]:.1f} ms before the layers, {steps[1]:.1f} after;"
          f" against the slower, XLA's convolutions alone are "
          f"{1e3 * sums['xla'] / step:.2f}× PyTorch's step ({1e3 * sums['torch'] / step:.2f}× for its own); "
          f"jaxbp's fastest algorithm per layer (explicit, implicit or Winograd; the stem's δX included) "
          f"{1e3 * sums['best']:.1f} ms, {1e3 * sums['best'] / step:.2f}× PyTorch's step; "
          f"with Winograd's larger tiles where faster {1e3 * sums['tiles']:.1f} ms, "
          f"{1e3 * sums['tiles'] / step:.2f}× PyTorch's step "
          f"({sums['tiles'] / sums['torch']:.2f}× PyTorch's convolutions, timed beside them); im2col's "
          f"products alone, every patch matrix given (a bound for any formulation through XLA's matmul but "
          f"Winograd's), {1e3 * sums['patches']:.1f} ms, {sums['patches'] / sums['torch']:.2f}× PyTorch's "
          f"convolutions.\n\n"
          f"Batch norm and relu, forward + backward, over the network: jaxbp {1e3 * sums['norm xla']:.1f} ms, "
          f"PyTorch {1e3 * sums['norm torch']:.1f} ms. The floor, jaxbp's fastest convolutions (larger tiles "
          f"included) and its batch norm and relu: {1e3 * (sums['tiles'] + sums['norm xla']):.1f} ms, "
          f"{1e3 * (sums['tiles'] + sums['norm xla']) / step:.2f}× PyTorch's whole step, "
          f"{(sums['tiles'] + sums['norm xla']) / (sums['torch'] + sums['norm torch']):.2f}× PyTorch's same "
          f"products timed beside them (which are {1e3 * (sums['torch'] + sums['norm torch']) / step:.2f}× "
          f"its whole step). With batch norm and relu at their traffic bound ({1e3 * sums['norm bound']:.1f} ms: "
          f"eight transfers of each conv output at XLA's elementwise rate), the fastest convolutions and they "
          f"are {1e3 * (sums['tiles'] + sums['norm bound']) / step:.2f}× PyTorch's whole step.\n\n"
          f"Like for like (each side's products timed alone, so that what a lone program costs over its "
          f"place in a step counts on both): the fastest convolutions alone, batch norm and relu free, are "
          f"{sums['tiles'] / (sums['torch'] + sums['norm torch']):.2f}× PyTorch's convolutions, batch norms "
          f"and relus; with batch norm and relu at their traffic bound "
          f"{(sums['tiles'] + sums['norm bound']) / (sums['torch'] + sums['norm torch']):.2f}×")


if __name__ == "__main__":
    main()
