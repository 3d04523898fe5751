"""How a rule applies a saved mask or index: ``jnp.where`` against
``bitwise_where`` (what relu's rule uses), at the activation shapes of the
models jaxbp ships, NHWC.

    python benchmarks/masks.py [--rounds 30]

Two uses, each jitted alone and timed interleaved (median of rounds; the ratio
is the median of the per-round ratios, quartiles in parentheses):
relu's backward (its bit-packed mask unpacked and applied to δa: relu,
leaky_relu and dropout use ``bitwise_where``) and ``max_pool2d``'s forward +
backward (2 × 2 windows), its rule with the backward's select (δY sent to the
window entry the ``int8`` arg-max index names) written either way, in one
program as a train step compiles them (the rule keeps ``jnp.where``). Both
give the same values bit for bit; the question is only what XLA:CPU makes of
each: a select whose mask is computed from bytes, or an AND of the values'
bits with all ones or all zeros.
"""
import argparse

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp import ops
from jaxbp.ops import _pool, _windows
from jaxbp.ops._recipe import Rule, bitwise_where, pack_mask, unpack_mask
from jaxbp.tools.timing import machine, paired_ratio, timings

# (N, H, W, C): ResNet-20's three stages at batch 32, the default CNN's two at 128
SHAPES = ((32, 32, 32, 16), (32, 16, 16, 32), (32, 8, 8, 64), (128, 28, 28, 32), (128, 14, 14, 64))


def _max_pool_rule(where):
    """max_pool2d's rule with its backward's select written by ``where``."""
    def backward(res, g, *, window, stride, pads, layout, in_hw):
        (idx,) = res
        k_axis = _windows.WINDOW_AXIS[layout]
        k = _pool._window_index(window[0] * window[1], k_axis, g.ndim + 1)
        dcols = where(k == idx, jnp.expand_dims(g, k_axis), jnp.zeros((), g.dtype))
        return (_pool._scatter_back(dcols, in_hw, window, stride, pads, layout),)
    return Rule(_pool._max_pool_forward, backward)


def candidates(shape):
    """use -> {"jnp.where": f, "bitwise_where": f}, zero-argument calls."""
    rng = np.random.default_rng(0)
    g = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    z = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    jit = lambda f: jax.jit(f, compiler_options=ops.compiler_options())
    packed = jit(lambda z: pack_mask(z > 0))(z)
    pool = dict(window=(2, 2), stride=(2, 2), pads=((0, 0), (0, 0)), layout="NHWC", in_hw=shape[1:3])
    uses = {
        "relu backward": (lambda where: jit(lambda p, g: where(unpack_mask(p, g.shape), g, jnp.zeros_like(g))),
                          (packed, g)),
        "max_pool2d forward + backward": (
            lambda where: jit(lambda x: jax.vjp(lambda x: _max_pool_rule(where)(x, **pool), x)[1](x[:, ::2, ::2])),
            (z,)),
    }
    out = {}
    for use, (make, args) in uses.items():
        fns = {name: make(where) for name, where in (("jnp.where", jnp.where), ("bitwise_where", bitwise_where))}
        a, b = (fns[name](*args) for name in fns)
        assert (np.asarray(a).view(np.uint32) == np.asarray(b).view(np.uint32)).all(), use
        out[use] = {name: (lambda f=f, args=args: f(*args)) for name, f in fns.items()}
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=30)
    a = p.parse_args()
    print(f"Applying a saved mask or index, float32 — {machine()}\n")
    print("| use | x (N, H, W, C) | jnp.where ms | bitwise_where ms | bitwise ÷ jnp.where |\n|---|---|---:|---:|---:|")
    for shape in SHAPES:
        for use, fns in candidates(shape).items():
            t = timings(fns, rounds=a.rounds)
            r = paired_ratio(t["bitwise_where"], t["jnp.where"])
            med = {k: 1e3 * float(np.median(v)) for k, v in t.items()}
            print(f"| {use} | {shape} | {med['jnp.where']:.3f} | {med['bitwise_where']:.3f} | "
                  f"{r[0]:.2f} ({r[1]:.2f}–{r[2]:.2f}) |", flush=True)


if __name__ == "__main__":
    main()
