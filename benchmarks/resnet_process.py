"""Whole processes, ResNet on CIFAR-shaped data: N train steps from an empty
interpreter to the last step's loss, start-up and compilation included —
jaxbp (its train step, custom rules, Adam) against ``benchmarks/pytorch_resnet.py``
(the same network, Adam, eager), alternated process by process.

    python benchmarks/resnet_process.py --model resnet20 --batch-size 32 --steps 50 [--rounds 3]
        [--algorithm auto] [--warm-cache]

Each round runs every process once, in turn going first; wall time is measured from
outside (``time.perf_counter`` around the subprocess). jaxbp compiles from
scratch (the library keeps no persistent compilation cache); with
``--warm-cache`` each round also runs jaxbp with JAX's persistent compilation
cache filled, as ``jaxbp train`` keeps it: a second run of the same model.
Each process runs once untimed first (the libraries' files read from disk,
the cache filled). The step is ``jaxbp bench``'s
(``jaxbp.tools.bench.jaxbp_step``) on its one random batch, as PyTorch's
script reuses one, compiled beside the initial state as ``jaxbp train``
compiles its first chunk. Prints one Markdown table: per process the median
whole-process seconds, and its ÷ PyTorch per round (median, range); then
where each process's time goes (jaxbp: importing, the initial state and the
step's compilation side by side, the first step, the other steps; PyTorch:
its steps and everything else).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

START = time.perf_counter()
HERE = os.path.dirname(os.path.abspath(__file__))
# where a jaxbp process's time goes; the rest of its wall time is the interpreter's start
PHASES = ("import", "initial state and compilation (side by side)", "first step", "other steps")


def jaxbp_process(model, batch, steps, algorithm):
    """The inner process: N steps of ``jaxbp bench``'s train step (custom rules,
    Adam, conv ``algorithm``) on its batch; prints one JSON line."""
    import jax

    from jaxbp.tools import bench

    marks = [START, time.perf_counter()]
    x, y = bench.batch(batch, model)
    # the step compiles from the state's shapes while the state is computed, as in `jaxbp train`
    step, carry = bench.jaxbp_step(model, "custom", "float32", x, y, algorithm=algorithm)
    marks.append(time.perf_counter())
    for i in range(steps):
        carry, metrics = step(carry, x, y)
        if i == 0:
            jax.block_until_ready(metrics)
            marks.append(time.perf_counter())
    loss = float(metrics["loss"])
    marks.append(time.perf_counter())
    print(json.dumps({"framework": f"jaxbp (jax {jax.__version__})", "loss": loss,
                      "process_s": marks[-1] - START,
                      "phases_s": dict(zip(PHASES, (b - a for a, b in zip(marks, marks[1:]))))}))


def timed(cmd, env=None):
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    return time.perf_counter() - t, json.loads(out[out.index("{"):])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20", choices=("resnet20", "resnet18"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--algorithm", default="implicit", help="jaxbp's conv algorithm (implicit: the default)")
    p.add_argument("--warm-cache", action="store_true", help="also jaxbp with its compilation cache filled")
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.inner:
        return jaxbp_process(a.model, a.batch_size, a.steps, a.algorithm)
    jaxbp = [sys.executable, os.path.abspath(__file__), "--inner", "--model", a.model,
             "--batch-size", str(a.batch_size), "--steps", str(a.steps), "--algorithm", a.algorithm]
    torch = [sys.executable, os.path.join(HERE, "pytorch_resnet.py"), "--model", a.model,
             "--batch-size", str(a.batch_size), "--steps", str(a.steps), "--warmup", "0"]
    cold = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    runs = {"jaxbp": (jaxbp, cold), "pytorch": (torch, None)}
    if a.warm_cache:
        cache = tempfile.TemporaryDirectory(prefix="jaxbp-xla-")   # removed when the script ends
        # what `jaxbp train` sets: the train step and the initial state, not each small eager op
        warm = dict(cold, JAX_COMPILATION_CACHE_DIR=cache.name, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.2")
        runs["jaxbp, compilation cache warm"] = (jaxbp, warm)
    for cmd, env in runs.values():   # untimed: the files read from disk (and the cache filled)
        timed(cmd, env)
    walls = {name: [] for name in runs}
    phases = {name: [] for name in runs}
    names = {}
    for r in range(a.rounds):
        order = list(runs)[r % len(runs):] + list(runs)[:r % len(runs)]
        for name in order:
            wall, result = timed(*runs[name])
            walls[name].append(wall)
            phases[name].append(result.get("phases_s") or {"start-up": wall - result["steps_s"],
                                                           "steps": result["steps_s"]})
            names[name] = result["framework"] + (name[5:] if name.startswith("jaxbp,") else "")
        print(f"round {r}: " + ", ".join(f"{n} {walls[n][-1]:.1f} s" for n in runs), file=sys.stderr)
    print(f"| {a.model}, batch {a.batch_size}, {a.steps} steps, {a.algorithm}, whole process | s (median) "
          "| ÷ PyTorch (median, range) |")
    print("|---|---:|---:|")
    print(f"| {names['pytorch']} | {statistics.median(walls['pytorch']):.1f} | 1.00 |")
    for name in runs:
        if name != "pytorch":
            ratios = [j / t for j, t in zip(walls[name], walls["pytorch"])]
            print(f"| {names[name]} | {statistics.median(walls[name]):.1f} | "
                  f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f}) |")
    print("\n| process | where its time goes: median s per phase |\n|---|---|")
    for name in runs:
        median = {k: statistics.median(p[k] for p in phases[name]) for k in phases[name][0]}
        print(f"| {names[name]} | " + ", ".join(f"{k} {v:.1f}" for k, v in median.items()) + " |")


if __name__ == "__main__":
    main()
