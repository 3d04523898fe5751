"""fwd+bwd time and compiled temp memory of every op vs its autodiff twin,
and explicit-im2col conv vs lax.conv.

    python benchmarks/ops.py [--rounds 20] [--scale 1] [--dtype float32] [--out FILE]
        [--only LABEL ...]

Candidates are timed interleaved in one run (median of rounds); ratios are
custom/twin, the median of the per-round ratios with its quartiles. Prints a
Markdown table (and appends it to FILE with --out).
"""
from __future__ import annotations

import argparse
import datetime
import functools
import statistics

import jax
import jax.numpy as jnp
from jax import lax

import jaxbp
from jaxbp.ops import CHECKS, _windows
from jaxbp.ops._recipe import Check
from jaxbp.tools.timing import machine, paired_ratio, temp_bytes, timings
from jaxbp.tools.gradcheck import op_problems, outputs, projection


def sizes(s):
    """Benchmark problems, one per check label of ``jaxbp.ops.CHECKS`` (tested to
    cover every one), at ``s`` times the base batch."""
    fmap, x, w, xh = (64 * s, 32, 32, 32), (64 * s, 16, 32, 32), (32, 16, 3, 3), (64 * s, 32, 32, 16)
    rows, logits = (4096 * s, 256), (2048 * s, 1000)
    conv = {label: _conv_at(c, xh if c.kwargs.get("layout") == "NHWC" else x, w)
            for label, c in CHECKS.items() if c.op == "conv2d"}
    unary = {label: Check(c.op, lambda n: n(fmap), (0,), c.kwargs) for label, c in CHECKS.items()
             if c.op in ("relu", "leaky_relu", "sigmoid", "tanh", "gelu", "silu", "softmax", "log_softmax")}
    return {
        "dense": Check("dense", lambda n: n((256 * s, 512), (512, 512), (512,)), (0, 1, 2)),
        **conv, **unary,
        "max_pool2d": Check("max_pool2d", lambda n: n(fmap) + (2,), (0,)),
        "avg_pool2d": Check("avg_pool2d", lambda n: n(fmap) + (2,), (0,)),
        "batch_norm": Check("batch_norm", lambda n: n(fmap, fmap[1:2], fmap[1:2]), (0, 1, 2)),
        "batch_norm NCL": Check("batch_norm", lambda n: n(fmap[:3], fmap[1:2], fmap[1:2]), (0, 1, 2)),
        "batch_norm_eval": Check("batch_norm_eval", lambda n: n(fmap, *[fmap[1:2]] * 3) + (1 + n(fmap[1:2])[0] ** 2,),
                                 (0, 1, 2, 3, 4)),
        "layer_norm": Check("layer_norm", lambda n: n(rows, rows[1:], rows[1:]), (0, 1, 2)),
        "layer_norm axis 1": Check("layer_norm", lambda n: n(fmap, fmap[1:2], fmap[1:2]), (0, 1, 2), {"axis": 1}),
        "dropout": Check("dropout", lambda n: n(fmap) + (0.3, jax.random.key(0)), (0,)),
        "softmax_cross_entropy": Check("softmax_cross_entropy",
                                       lambda n: n(logits) + (jnp.arange(logits[0]) % logits[1],), (0,)),
        "euclidean_loss": Check("euclidean_loss", lambda n: n(rows, rows), (0, 1)),
        "mse": Check("mse", lambda n: n(rows, rows), (0, 1)),
    }


def _conv_at(check, x, w):
    """A conv2d check at the input shape ``x`` and kernel shape ``w`` (its
    input channels divided among the check's groups), with the check's own
    stride, padding, dilation, groups and keyword arguments."""
    settings = check.args(lambda *shapes: shapes)[3:]  # stride, padding[, dilation, groups]
    groups = settings[3] if len(settings) > 3 else 1
    w = (w[0], w[1] // groups) + w[2:]
    return Check("conv2d", lambda n: n(x, w, (w[0],)) + settings, (0, 1, 2), check.kwargs)


def _loss(o):
    """``Σ o ⊙ P + ½ (Σ o)² / |o|``, P a fixed projection: its cotangent ``P + Σ o / |o|``
    needs the whole forward pass, as a train step's does. With ``P`` alone (a
    constant) XLA rebuilt a rule's patch matrix before the forward pass had
    dropped its own (the explicit conv: 1.31× the twin's memory); with ``½ Σ o²``
    (cotangent ``o``) an elementwise op's two passes fused into one loop."""
    return jnp.sum(o * projection(o)) + 0.5 * jnp.sum(o) ** 2 / o.size


def fwd_bwd(name, args, argnums, kwargs, ops):
    """jit(value and gradient) of :func:`_loss` summed over the op's outputs."""
    outs = outputs(name, args, argnums, kwargs)
    loss = lambda *diff: sum(_loss(o) for o in outs(ops, diff))
    return jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(argnums)))),
                   compiler_options=jaxbp.ops.compiler_options())   # XLA's kernels, as training's


class _LaxConv:
    """An ops namespace whose conv2d is lax.conv (autodiff): the baseline."""

    @staticmethod
    def conv2d(x, w, b, stride, padding, dilation=1, groups=1, *, layout="NCHW", **_):
        stride, dilation = (stride, stride), (dilation, dilation)
        pads = _windows.resolve_padding(padding, x.shape[2:] if layout == "NCHW" else x.shape[1:3],
                                        _windows.effective(w.shape[2:], dilation), stride)
        y = lax.conv_general_dilated(x, w, stride, pads, rhs_dilation=dilation, feature_group_count=groups,
                                     dimension_numbers=(layout, "OIHW", layout))
        return y + (b.reshape(1, -1, 1, 1) if layout == "NCHW" else b.reshape(1, 1, 1, -1))


def run(rounds, scale, dtype, only=()):
    """One row per op problem; with ``only``, the problems whose label starts
    with one of those strings."""
    rows = []
    problems = op_problems(dtype, sizes(scale))
    unknown = [o for o in only if not any(label.startswith(o) for label in problems)]
    if unknown:
        raise SystemExit(f"--only {unknown[0]!r} names no op problem; they are: {', '.join(problems)}")
    for label, (name, args, argnums, kwargs) in problems.items():
        if only and not any(label.startswith(o) for o in only):
            continue
        diff = tuple(args[i] for i in argnums)
        fns = {"custom": fwd_bwd(name, args, argnums, kwargs, jaxbp.ops),
               "twin": fwd_bwd(name, args, argnums, kwargs, jaxbp.autodiff)}
        if name == "conv2d":
            fns["lax.conv"] = fwd_bwd(name, args, argnums, kwargs, _LaxConv)
        t = timings({k: functools.partial(f, *diff) for k, f in fns.items()}, rounds)
        mem = {k: temp_bytes(f, *diff) for k, f in fns.items()}
        rows.append((label, t, mem))
    return rows


def table(rows):
    lines = ["| op (fwd+bwd) | custom ms | twin ms | custom/twin (quartiles) | vs lax.conv autodiff "
             "| temp MiB custom | temp MiB twin | mem custom/twin |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, t, mem in rows:
        ratio, q1, q3 = paired_ratio(t["custom"], t["twin"])
        conv = f"{paired_ratio(t['custom'], t['lax.conv'])[0]:.2f}×" if "lax.conv" in t else ""
        mc, mt = mem["custom"], mem["twin"]
        mem_ratio = f"{mc / mt:.2f}" if mc is not None and mt else "–"
        lines.append(f"| {name} | {statistics.median(t['custom']) * 1e3:.2f} | "
                     f"{statistics.median(t['twin']) * 1e3:.2f} | {ratio:.2f}× ({q1:.2f}–{q3:.2f}) | {conv} | "
                     f"{(mc or 0) / 2**20:.1f} | {(mt or 0) / 2**20:.1f} | {mem_ratio} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--scale", type=int, default=1, help="multiplies every batch size")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--out", help="append the table to this Markdown file")
    p.add_argument("--only", nargs="+", default=(), metavar="LABEL",
                   help="the rows whose label starts with one of these (e.g. relu, 'conv2d NHWC')")
    a = p.parse_args()
    rows = run(a.rounds, a.scale, jnp.dtype(a.dtype), a.only)
    text = (f"### Ops, fwd+bwd, {a.dtype}, scale {a.scale}: {machine()}, "
            f"{datetime.date.today()}\n\n{table(rows)}\n")
    print(text)
    if a.out:
        with open(a.out, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
