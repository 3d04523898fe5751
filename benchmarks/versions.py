"""Versions of jaxbp side by side: one compiled chunk of ``fit``'s train steps,
as each version builds it, timed interleaved in one process.

    python benchmarks/versions.py 504c713 HEAD [--rounds 30] [--steps 25] [FIELD=VALUE ...]

Each version is a git revision of this repository (checked out into a
temporary worktree, removed at the end) or a directory holding a ``jaxbp``
package. Each one is imported in turn (the previous one's modules dropped),
builds the model, optimizer, initial state and chunk program of a
``jaxbp.train.Config`` (the same-work MNIST CNN of ``time_to_accuracy.py``
unless ``FIELD=VALUE`` pairs say otherwise), compiles it for random uint8
images of ``--input`` shape, and keeps the compiled program; then every
round runs each program once, each round starting with the next in turn.
On a shared machine a process's speed moves by 10–20 % from one process to
the next, and a step's from one second to the next, so two versions compare
only within one process: the ratio per round to the first version is steady
where either time alone is not. Prints per version the median ms per step,
its ÷ the first (median of the per-round ratios, quartiles) and the compiled
temporary memory. For versions since 2026-11-27 (``Config``, ``build_model``,
``build_optimizer``, ``new_state``, ``make_steps(...).chunk``).
"""
import argparse
import contextlib
import importlib
import os
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from profile_step import settings  # noqa: E402  (FIELD=VALUE as Config fields, cast by this tree's Config)
from jaxbp import layers  # noqa: E402  (this tree's registry: which options a model reads)

# time_to_accuracy.py's same-work CNN, with MNIST's CPU recipe's conv algorithm
SAME_WORK = dict(data="mnist", model="cnn", width=32, block="conv-bn-relu-pool", dropout=0.25, warmup_epochs=1,
                 epochs=2, batch_size=32, lr=3e-3, augment=1, algorithm="auto")
CNN_OPTIONS = ("width", "block", "dropout", "algorithm")


def checkout(rev, stack):
    """A directory holding version ``rev``'s ``jaxbp``: ``rev`` itself if it
    is one, else a temporary worktree of this repository at that revision."""
    if os.path.isdir(os.path.join(rev, "jaxbp")):
        return os.path.abspath(rev)
    where = stack.enter_context(tempfile.TemporaryDirectory(prefix="jaxbp-version-"))
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", "--force", where, rev], check=True,
                   capture_output=True)
    stack.callback(subprocess.run, ["git", "-C", ROOT, "worktree", "remove", "--force", where], capture_output=True)
    return where


def config_fields(given):
    """The Config fields of the compared chunk: the same-work CNN's, then
    ``given``; of the CNN's model options only those the model reads (a ResNet
    reads its conv algorithm alone, the MLP none but ``width`` and ``dropout``)."""
    reads = layers.model_entry(given.get("model", SAME_WORK["model"])).options
    return {k: v for k, v in SAME_WORK.items() if k not in CNN_OPTIONS or k in reads} | given


def build(tree, fields, data, steps):
    """``(compiled chunk, state)`` of the ``jaxbp`` in ``tree``."""
    for name in [m for m in sys.modules if m == "jaxbp" or m.startswith("jaxbp.")]:
        del sys.modules[name]
    sys.path.insert(0, tree)
    try:
        train = importlib.import_module("jaxbp.train")
        config = importlib.import_module("jaxbp.train.config")
        if not train.__file__.startswith(tree):
            raise RuntimeError(f"imported {train.__file__}, not the jaxbp in {tree}")
        cfg = config.Config(**fields)
        xs, ys, order = data
        model = train.build_model(cfg, 10)
        optimizer = train.build_optimizer(cfg, order.shape[0])
        ts = train.new_state(model, cfg, optimizer, xs.shape[1:])
        run = train.make_steps(model, optimizer, cfg).chunk.lower(ts, xs, ys, order, length=steps).compile()
    finally:
        sys.path.remove(tree)
    ts, metrics = run(ts, xs, ys, order)   # the first call, untimed
    jax.block_until_ready(metrics)
    return run, ts


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("versions", nargs="+", help="git revisions or directories holding jaxbp; then FIELD=VALUE pairs")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--steps", type=int, default=25, help="steps per chunk")
    p.add_argument("--input", default="1,28,28", help="one image's shape")
    a = p.parse_intermixed_args()
    versions = [v for v in a.versions if "=" not in v]
    fields = config_fields(settings([f for f in a.versions if "=" in f]))
    shape = tuple(int(s) for s in a.input.split(","))
    rng = np.random.default_rng(0)
    n = fields["batch_size"] * 4 * a.steps
    data = (jnp.asarray(rng.integers(0, 256, (n,) + shape, dtype=np.uint8)),
            jnp.asarray(rng.integers(0, 10, n).astype(np.int32)),
            jnp.arange(n, dtype=jnp.int32).reshape(-1, fields["batch_size"]))
    with contextlib.ExitStack() as stack:
        programs = [list(build(checkout(v, stack), fields, data, a.steps)) for v in versions]
        times = [[] for _ in versions]
        for r in range(a.rounds):
            for i in [(r + k) % len(versions) for k in range(len(versions))]:
                run, ts = programs[i]
                t = time.perf_counter()
                ts, metrics = run(ts, *data)
                jax.block_until_ready(metrics)
                times[i].append((time.perf_counter() - t) / a.steps)
                programs[i][1] = ts
    print(" ".join(f"{k}={v}" for k, v in fields.items()) + f", {a.rounds} rounds of {a.steps} steps\n")
    print("| version | ms per step (median) | ÷ first (median, quartiles) | temp MiB |\n|---|---:|---:|---:|")
    for v, (run, _), own in zip(versions, programs, times):
        ratios = [t / f for t, f in zip(own, times[0])]
        q1, _, q3 = statistics.quantiles(ratios, n=4)
        temp = run.memory_analysis().temp_size_in_bytes / 2 ** 20
        print(f"| {v} | {1e3 * statistics.median(own):.2f} | {statistics.median(ratios):.3f} "
              f"({q1:.3f}–{q3:.3f}) | {temp:.1f} |")

if __name__ == "__main__":
    main()
