"""Everything issue-level that needs an accelerator, in one process, one table file.

    python benchmarks/gpu.py --out OUT.md [--quick]

1. Ceilings: float32 matmul at the default precision (TF32 on NVIDIA GPUs) and
   device-to-device copy bandwidth (bytes read + written).
2. ResNet-20 and ResNet-18 train steps at batch 256 vs the twin and Flax NNX
   (time, memory), and each one's largest batch in 8 GiB (`largest_batch.py`).
3. Train steps (`jaxbp bench`): CNN batch 1024 float32 (explicit NHWC, explicit
   NCHW, implicit NHWC) and bfloat16; MLP 4096 wide, batch 4096, without batch
   norm (dense + relu: the matmul-bound case) and with it, vs the matmul ceiling.
4. Batch norm fwd+bwd bandwidth vs the copy ceiling.
5. Convolution fwd+bwd: explicit im2col (NCHW, NHWC), implicit, Winograd, vs lax.conv
   autodiff, float32 and bfloat16, with the patch-matrix traffic bound.
6. Every op vs its twin (benchmarks/ops.py at scale 4).
"""
from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ops as ops_bench  # noqa: E402
try:
    from flax_models import BASELINES  # noqa: E402
except ImportError:   # no Flax: jaxbp's rows only
    BASELINES = {}

import jaxbp  # noqa: E402
from jaxbp.tools import bench  # noqa: E402
from jaxbp.tools.timing import forward_and_backward, interleaved, machine  # noqa: E402


def mlp_flops(batch_size, width, in_features=784, num_classes=bench.NUM_CLASSES):
    """Matmul FLOPs of one MLP train step (two hidden layers): every layer's
    forward and weight gradient, and the input gradient of all but the first."""
    per_pass = (in_features * width, width * width, width * num_classes)
    return 2 * batch_size * (2 * per_pass[0] + 3 * per_pass[1] + 3 * per_pass[2])


def log(out, text):
    print(text, flush=True)
    with open(out, "a") as f:
        f.write(text + "\n")


def ceilings(rounds, quick):
    n = 1024 if quick else 8192
    a, b = (jax.random.normal(k, (n, n), jnp.float32) for k in jax.random.split(jax.random.key(0)))
    mm = jax.jit(lambda a, b: a @ b)
    x = jax.random.normal(jax.random.key(1), (1 << (22 if quick else 28),), jnp.float32)  # 1 GiB
    copy = jax.jit(lambda x: x * 2.0)
    t = interleaved({"mm": lambda: mm(a, b), "copy": lambda: copy(x)}, rounds)
    return 2 * n ** 3 / t["mm"], 2 * x.nbytes / t["copy"]


def batch_norm_bandwidth(rounds, copy_bw, quick):
    x = jax.random.normal(jax.random.key(2), (16 if quick else 256, 64, 56, 56), jnp.float32)
    g, b = jnp.ones(64), jnp.zeros(64)
    ct = jax.random.normal(jax.random.key(3), x.shape, jnp.float32)
    f = jax.jit(forward_and_backward(lambda *a: jaxbp.batch_norm(*a)[0]))
    tw = jax.jit(forward_and_backward(lambda *a: jaxbp.autodiff.batch_norm(*a)[0]))
    t = interleaved({"custom": lambda: f(x, g, b, ct), "twin": lambda: tw(x, g, b, ct)}, rounds)
    # Fewest bytes: read x, write y (forward); read δy and x (or x̂), write δx (backward).
    moved = 5 * x.nbytes
    return {k: (moved / v, moved / v / copy_bw, v) for k, v in t.items()}


def conv_variants(rounds, dtype, quick):
    rows = []
    shapes = ((256, 64, 56, 64), (256, 128, 28, 128), (256, 256, 14, 256))
    for (n, c, h, o) in (((8, 16, 14, 16),) if quick else shapes):
        x = jax.random.normal(jax.random.key(4), (n, c, h, h), dtype)
        w = jax.random.normal(jax.random.key(5), (o, c, 3, 3), dtype) * 0.05
        xh = x.transpose(0, 2, 3, 1)

        def make(fn, xx, layout):
            ct = jax.random.normal(jax.random.key(6), (n, o, h, h) if layout == "NCHW" else (n, h, h, o), dtype)
            step = jax.jit(forward_and_backward(fn))
            return lambda xx, w: step(xx, w, ct)

        def lax_conv(layout):
            return lambda xx, w: lax.conv_general_dilated(xx, w, (1, 1), "SAME",
                                                          dimension_numbers=(layout, "OIHW", layout))

        cands = {
            "explicit NCHW": (make(lambda a, b: jaxbp.conv2d(a, b, None, 1, 1, algorithm="explicit"), x, "NCHW"), x),
            "explicit NHWC": (make(lambda a, b: jaxbp.conv2d(a, b, None, 1, 1, layout="NHWC", algorithm="explicit"), xh, "NHWC"), xh),
            "implicit NHWC": (make(lambda a, b: jaxbp.conv2d(a, b, None, 1, 1, layout="NHWC",
                                                              algorithm="implicit"), xh, "NHWC"), xh),
            "winograd NHWC": (make(lambda a, b: jaxbp.conv2d(a, b, None, 1, 1, layout="NHWC",
                                                              algorithm="winograd"), xh, "NHWC"), xh),
            "lax.conv NCHW": (make(lax_conv("NCHW"), x, "NCHW"), x),
            "lax.conv NHWC": (make(lax_conv("NHWC"), xh, "NHWC"), xh),
        }
        t = interleaved({k: (lambda f=f, a=a: f(a, w)) for k, (f, a) in cands.items()}, rounds)
        best = min(t["lax.conv NCHW"], t["lax.conv NHWC"])
        # im2col traffic, fwd+bwd: write X̃ and read it (forward), again in the backward
        # for δF̃, plus write and read δX̃: 6 passes over a 9×-input-sized matrix.
        patch_bytes = 9 * x.nbytes
        rows.append(((n, c, h, o), {k: (v, v / best) for k, v in t.items()}, 6 * patch_bytes))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", metavar="OUT.md", required=True, help="the table file (appended to)")
    p.add_argument("--quick", action="store_true", help="small problems and few rounds (a smoke run)")
    a = p.parse_args()
    out, quick = a.out, a.quick
    rounds = 5 if quick else 20
    log(out, f"## GPU results — {machine()}, {datetime.date.today()}\n")
    t0 = time.time()
    with jax.default_matmul_precision("default"):
        mm_rate, copy_bw = ceilings(rounds, quick)
    log(out, f"Ceilings: float32 matmul (default precision = TF32) {mm_rate / 1e12:.1f} TFLOP/s; "
             f"device-to-device copy {copy_bw / 1e12:.2f} TB/s (read + write).\n")

    # The ResNet figures first, so that gpu_check.sh's time box always holds them:
    # the train steps at batch 256 vs the twin and Flax NNX (time, memory), then
    # each model's largest batch in 8 GiB.
    for model in ("resnet20", "resnet18"):
        r = bench.run(model, 64 if quick else 256, "float32", rounds, BASELINES, layout="NHWC", algorithm="implicit")
        log(out, bench.table(r, model, 64 if quick else 256, "float32", ", NHWC, implicit") + "\n")
    for model in ("resnet20", "resnet18"):
        largest = subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                               "largest_batch.py"), "--model", model,
                                  "--budget-mib", "1024" if quick else "8192"], capture_output=True, text=True)
        log(out, largest.stdout + largest.stderr[-2000:])

    big, wide = (64, 256) if quick else (1024, 4096)
    for model, bs, dtype, options in (
            ("cnn", big, "float32", dict(layout="NHWC", algorithm="explicit")),
            ("cnn", big, "float32", dict(layout="NCHW", algorithm="explicit")),
            ("cnn", big, "float32", dict(layout="NHWC", algorithm="implicit")),
            ("cnn", big, "bfloat16", dict(layout="NHWC", algorithm="explicit")),
            ("cnn", big, "bfloat16", dict(layout="NHWC", algorithm="implicit")),
            ("mlp", wide, "float32", dict(width=wide))):
        r = bench.run(model, bs, dtype, rounds, BASELINES, **options)
        log(out, bench.table(r, model, bs, dtype, "".join(f", {k} {v}" for k, v in options.items())))
        if model == "mlp":
            flops = mlp_flops(bs, wide)
            log(out, "\nMLP step: " + "; ".join(
                f"{c['candidate']} {flops / (c['step_ms'] / 1e3) / 1e12:.1f} TFLOP/s = "
                f"{flops / (c['step_ms'] / 1e3) / mm_rate:.0%}" for c in r if "step_ms" in c)
                + " of the measured TF32 matmul rate (matmul FLOPs only)")
        log(out, "")

    bn = batch_norm_bandwidth(rounds, copy_bw, quick)
    log(out, "Batch norm fwd+bwd (256×64×56×56 float32, 5 passes counted): " + "; ".join(
        f"{k} {v[0] / 1e12:.2f} TB/s = {v[1]:.0%} of copy ({v[2] * 1e3:.2f} ms)" for k, v in bn.items()) + "\n")

    for dtype in (jnp.float32, jnp.bfloat16):
        log(out, f"### conv2d 3×3 SAME fwd+bwd, {jnp.dtype(dtype).name}: ms (÷ best lax.conv)\n")
        names = ["explicit NCHW", "explicit NHWC", "implicit NHWC", "winograd NHWC", "lax.conv NCHW",
                 "lax.conv NHWC"]
        log(out, "| N, C, H, O | " + " | ".join(names) + " | im2col traffic bound ms |")
        log(out, "|---|" + "---:|" * (len(names) + 1))
        for shape, t, traffic in conv_variants(rounds, dtype, quick):
            log(out, f"| {shape} | " + " | ".join(f"{t[k][0] * 1e3:.2f} ({t[k][1]:.2f}×)" for k in names)
                + f" | {traffic / copy_bw * 1e3:.2f} |")
        log(out, "")

    scale = 1 if quick else 4
    rows = ops_bench.run(rounds, scale, jnp.float32)
    log(out, f"### Ops, fwd+bwd, float32, scale {scale}\n\n{ops_bench.table(rows)}\n")
    log(out, f"(total {time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
