"""fwd+bwd time and compiled temp memory of every op vs its autodiff twin,
and explicit-im2col conv vs lax.conv.

    python benchmarks/ops.py [--rounds 20] [--scale 1] [--dtype float32] [--out FILE]

Candidates are timed interleaved in one run (median of rounds); ratios are
custom/twin. Prints a Markdown table (and appends it to FILE with --out).
"""
from __future__ import annotations

import argparse
import datetime
import functools

import jax
import jax.numpy as jnp
from jax import lax

import jaxbp
from jaxbp._bench import interleaved, machine, temp_bytes


def problems(s, dtype):
    """name -> (op, args, argnums, kwargs); ``s`` scales the batch."""
    def n(seed, *shapes):
        keys = jax.random.split(jax.random.key(seed), len(shapes))
        return tuple(jax.random.normal(k, sh, dtype) for k, sh in zip(keys, shapes))
    fmap = (64 * s, 32, 32, 32)
    x, w, b = n(0, (64 * s, 16, 32, 32), (32, 16, 3, 3), (32,))
    xh = x.transpose(0, 2, 3, 1)
    return {
        "dense 512→512": (jaxbp.dense, n(1, (256 * s, 512), (512, 512), (512,)), (0, 1, 2), {}),
        "conv2d 3×3 NCHW explicit": (jaxbp.conv2d, (x, w, b, 1, 1), (0, 1, 2), {}),
        "conv2d 3×3 NHWC explicit": (jaxbp.conv2d, (xh, w, b, 1, 1), (0, 1, 2), {"layout": "NHWC"}),
        "conv2d 3×3 NCHW implicit": (jaxbp.conv2d, (x, w, b, 1, 1), (0, 1, 2), {"algorithm": "implicit"}),
        "conv2d 3×3 NHWC implicit": (jaxbp.conv2d, (xh, w, b, 1, 1), (0, 1, 2),
                                     {"algorithm": "implicit", "layout": "NHWC"}),
        "max_pool2d 2×2": (jaxbp.max_pool2d, n(2, fmap) + (2,), (0,), {}),
        "avg_pool2d 2×2": (jaxbp.avg_pool2d, n(3, fmap) + (2,), (0,), {}),
        "batch_norm NCHW": (jaxbp.batch_norm, n(4, fmap, (32,), (32,)), (0, 1, 2), {}),
        "relu": (jaxbp.relu, n(5, fmap), (0,), {}),
        "leaky_relu": (jaxbp.leaky_relu, n(6, fmap), (0,), {}),
        "sigmoid": (jaxbp.sigmoid, n(7, fmap), (0,), {}),
        "tanh": (jaxbp.tanh, n(8, fmap), (0,), {}),
        "softmax_cross_entropy": (jaxbp.softmax_cross_entropy,
                                  (n(9, (2048 * s, 1000))[0], jnp.arange(2048 * s) % 1000), (0,), {}),
        "euclidean_loss": (jaxbp.euclidean_loss, n(10, (4096 * s, 256), (4096 * s, 256)), (0, 1), {}),
        "mse": (jaxbp.mse, n(11, (4096 * s, 256), (4096 * s, 256)), (0, 1), {}),
    }


def fwd_bwd(op, args, argnums, kwargs):
    """jit(value and gradient) of a fixed random projection of the op's output."""
    def loss(*diff):
        full = list(args)
        for i, d in zip(argnums, diff):
            full[i] = d
        out = jax.tree.leaves(op(*full, **kwargs))
        return sum(jnp.sum(o.astype(jnp.float32) * jnp.cos(jnp.arange(o.size, dtype=jnp.float32)
                                                              .reshape(o.shape))) for o in out)
    return jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(argnums)))))


def lax_conv(x, w, b, stride, padding, layout="NCHW", **_):
    return lax.conv_general_dilated(x, w, (stride, stride), [(padding, padding)] * 2,
                                    dimension_numbers=(layout, "OIHW", layout)) + (
        b.reshape(1, -1, 1, 1) if layout == "NCHW" else b.reshape(1, 1, 1, -1))


def run(rounds, scale, dtype):
    rows = []
    for name, (op, args, argnums, kwargs) in problems(scale, dtype).items():
        diff = tuple(args[i] for i in argnums)
        fns = {"custom": fwd_bwd(op, args, argnums, kwargs),
               "twin": fwd_bwd(op.autodiff, args, argnums, kwargs)}
        if name.startswith("conv2d"):
            fns["lax.conv"] = fwd_bwd(lax_conv, args, argnums, kwargs)
        t = interleaved({k: functools.partial(f, *diff) for k, f in fns.items()}, rounds)
        mem = {k: temp_bytes(f, *diff) for k, f in fns.items()}
        rows.append((name, t, mem))
    return rows


def table(rows):
    lines = ["| op (fwd+bwd) | custom ms | twin ms | custom/twin | vs lax.conv autodiff "
             "| temp MiB custom | temp MiB twin | mem custom/twin |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, t, mem in rows:
        conv = f"{t['custom'] / t['lax.conv']:.2f}×" if "lax.conv" in t else ""
        mc, mt = mem["custom"], mem["twin"]
        ratio = f"{mc / mt:.2f}" if mc is not None and mt else "–"
        lines.append(f"| {name} | {t['custom'] * 1e3:.2f} | {t['twin'] * 1e3:.2f} | "
                     f"{t['custom'] / t['twin']:.2f}× | {conv} | "
                     f"{(mc or 0) / 2**20:.1f} | {(mt or 0) / 2**20:.1f} | {ratio} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--scale", type=int, default=1, help="multiplies every batch size")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--out", help="append the table to this Markdown file")
    a = p.parse_args()
    rows = run(a.rounds, a.scale, jnp.dtype(a.dtype))
    text = (f"### Ops, fwd+bwd, {a.dtype}, scale {a.scale}: {machine()}, "
            f"{datetime.date.today()}\n\n{table(rows)}\n")
    print(text)
    if a.out:
        with open(a.out, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
