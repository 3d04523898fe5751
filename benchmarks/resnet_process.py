"""Whole processes, ResNet on CIFAR-shaped data: N train steps from an empty
interpreter to the last step's loss, start-up and compilation included —
jaxbp (its train step, custom rules, Adam) against ``benchmarks/pytorch_resnet.py``
(the same network, Adam, eager), alternated process by process.

    python benchmarks/resnet_process.py --model resnet20 --batch-size 32 --steps 50 [--rounds 3]

Each round runs both, alternating which goes first; wall time is measured
from outside (``time.perf_counter`` around the subprocess). jaxbp compiles
from scratch every time (the library keeps no persistent compilation cache;
``jaxbp train`` does, which would hide compilation after a first run); the
step is ``jaxbp bench``'s (``jaxbp.tools.bench.jaxbp_step``) on its one random
batch, as PyTorch's script reuses one. Prints one Markdown table: per
framework the median whole-process seconds, and jaxbp ÷ PyTorch per round
(median, range).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

START = time.perf_counter()
HERE = os.path.dirname(os.path.abspath(__file__))


def jaxbp_process(model, batch, steps):
    """The inner process: N steps of ``jaxbp bench``'s train step (custom rules,
    Adam) on its batch; prints one JSON line."""
    import jax

    from jaxbp.tools import bench

    x, y = bench.batch(batch, model)
    step, carry = bench.jaxbp_step(model, "custom", "float32", x)
    for _ in range(steps):
        carry, metrics = step(carry, x, y)
    loss = float(metrics["loss"])
    print(json.dumps({"framework": f"jaxbp (jax {jax.__version__})", "loss": loss,
                      "process_s": time.perf_counter() - START}))


def timed(cmd):
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return time.perf_counter() - t, json.loads(out[out.index("{"):])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20", choices=("resnet20", "resnet18"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.inner:
        return jaxbp_process(a.model, a.batch_size, a.steps)
    jaxbp = [sys.executable, os.path.abspath(__file__), "--inner", "--model", a.model,
             "--batch-size", str(a.batch_size), "--steps", str(a.steps)]
    torch = [sys.executable, os.path.join(HERE, "pytorch_resnet.py"), "--model", a.model,
             "--batch-size", str(a.batch_size), "--steps", str(a.steps), "--warmup", "0"]
    walls = {"jaxbp": [], "pytorch": []}
    names = {}
    for r in range(a.rounds):
        for name, cmd in ((("jaxbp", jaxbp), ("pytorch", torch)) if r % 2 == 0 else
                          (("pytorch", torch), ("jaxbp", jaxbp))):
            wall, result = timed(cmd)
            walls[name].append(wall)
            names[name] = result["framework"]
        print(f"round {r}: jaxbp {walls['jaxbp'][-1]:.1f} s, pytorch {walls['pytorch'][-1]:.1f} s", file=sys.stderr)
    ratios = [j / t for j, t in zip(walls["jaxbp"], walls["pytorch"])]
    print(f"| {a.model}, batch {a.batch_size}, {a.steps} steps, whole process | s (median) | ÷ PyTorch (median, range) |")
    print("|---|---:|---:|")
    print(f"| {names['pytorch']} | {statistics.median(walls['pytorch']):.1f} | 1.00 |")
    print(f"| {names['jaxbp']} | {statistics.median(walls['jaxbp']):.1f} | "
          f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f}) |")


if __name__ == "__main__":
    main()
