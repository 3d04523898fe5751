"""Where a compiled chunk of train steps spends its time, operation by operation.

    python benchmarks/profile_step.py --data-dir DIR                 # MNIST's recipe on this backend
    python benchmarks/profile_step.py --data-dir DIR width=32 block=conv-bn-relu-pool dropout=0.25
    python benchmarks/profile_step.py --data digits                  # the bundled digits

Builds the chunk program as ``jaxbp train --data mnist`` would (the data
set's recipe for this backend, then the ``FIELD=VALUE`` settings given,
as in ``jaxbp.train.Config``), times it without the profiler, then runs it
again under JAX's profiler and prints, per XLA operation of the optimized
program, its time per step, the instruction's result shape and where it comes
from (``jvp(...)``: the forward pass; ``transpose(jvp(...))``: the backward
pass, i.e. the custom rules or the twin's autodiff). The profiler adds its own
cost to every operation, so the sum over operations exceeds the step's time;
the shares are what to read. Used for the step changes in BENCHMARKS.md, on
XLA:CPU, whose profile names each event after its operation; where no event
matches (another backend's naming), the script says so.
"""
import argparse
import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import tempfile
import time

import jax
import numpy as np

from jaxbp import data as data_lib
from jaxbp.train import Config, build_model, build_optimizer, epoch_order, make_steps, new_state
from jaxbp.train.loop import chunk_size


def settings(pairs):
    """``FIELD=VALUE`` strings as Config fields, each cast to the field's type
    (its option's, else its default's; ``true``/``false`` for flags)."""
    fields = {f.name: f for f in dataclasses.fields(Config)}
    out = {}
    for pair in pairs:
        name, _, text = pair.partition("=")
        if name not in fields or not text:
            raise SystemExit(f"expected FIELD=VALUE with a field of jaxbp.train.Config, got {pair!r}")
        default = fields[name].default
        if isinstance(default, bool):
            out[name] = text.lower() in ("1", "true", "yes", "on")
        else:
            cast = fields[name].metadata.get("type") or (str if default is None else type(default))
            try:
                out[name] = cast(text)
            except ValueError:
                raise SystemExit(f"{name}: {text!r} is not a valid {cast.__name__}") from None
    return out


def optimized_ops(compiled):
    """Instruction name -> (result shape, op_name metadata) of the optimized HLO."""
    ops = {}
    for line in compiled.as_text().splitlines():
        m = re.match(r"\s*(?:ROOT )?%(\S+) = (\([^)]*\)|\S+) .*op_name=\"([^\"]+)\"", line)
        if m:
            ops[m.group(1)] = (m.group(2), re.sub(r"^jit\([^)]*\)/while/body/(closed_call/)?", "", m.group(3)))
    return ops


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="mnist", choices=data_lib.names(), help="the data set")
    p.add_argument("--data-dir", help="directory with its files (mnist: the four IDX files)")
    p.add_argument("--chunks", type=int, default=8, help="chunks run under the profiler")
    p.add_argument("--top", type=int, default=40, help="operations listed")
    p.add_argument("set", nargs="*", metavar="FIELD=VALUE", help="Config fields changed from the recipe")
    a = p.parse_args(argv)

    cfg = Config.for_data(a.data, **settings(a.set)).validate()
    ds = data_lib.load(a.data, a.data_dir)
    steps_per_epoch = len(ds.x_train) // cfg.batch_size
    model = build_model(cfg, ds.num_classes)
    optimizer = build_optimizer(cfg, steps_per_epoch)
    steps = make_steps(model, optimizer, cfg)
    ts = new_state(model, cfg, optimizer, ds.x_train.shape[1:])
    x, y = jax.device_put(ds.x_train), jax.device_put(ds.y_train)
    order = epoch_order(ts.key, 0, len(ds.x_train), cfg.batch_size)
    length = chunk_size(steps_per_epoch)
    compiled = steps.chunk.lower(ts, x, y, order, length=length).compile()

    def run(ts, n):
        for _ in range(n):
            ts, metrics = compiled(ts, x, y, order)
        jax.block_until_ready(metrics)
        return ts

    ts = run(ts, 2)
    times = []
    for _ in range(a.chunks):
        t = time.perf_counter()
        ts = run(ts, 1)
        times.append((time.perf_counter() - t) / length * 1e3)
    print(f"{cfg.model} width {cfg.width}, batch {cfg.batch_size}, algorithm {cfg.algorithm}, "
          f"block {cfg.block}, dropout {cfg.dropout}; {length} steps per chunk; {jax.devices()[0].device_kind}")
    print(f"step without the profiler: median {np.median(times):.3f} ms, min {min(times):.3f} ms")

    with tempfile.TemporaryDirectory() as where:
        with jax.profiler.trace(where, create_perfetto_trace=True):
            ts = run(ts, a.chunks)
        trace = glob.glob(os.path.join(where, "**", "*.trace.json.gz"), recursive=True)[0]
        with gzip.open(trace) as f:
            events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    ops = optimized_ops(compiled)
    # Events named after the instruction (XLA:CPU), or after its kernel, whose
    # name has "_" for the instruction's "." (GPUs; not measured here).
    ops.update({name.replace(".", "_"): op for name, op in ops.items() if name.replace(".", "_") not in ops})
    total, count = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in ops:
            total[e["name"]] += e["dur"]
            count[e["name"]] += 1
    if not total:
        raise SystemExit("the profile has no events named after the program's operations on this backend")
    n_steps = a.chunks * length
    step_us = sum(total.values()) / n_steps
    print(f"under the profiler: {step_us:.0f} us per step in {len(total)} operations\n")
    print("| us/step | share | per step | operation | result | from |\n|---:|---:|---:|---|---|---|")
    for name, us in total.most_common(a.top):
        shape, source = ops[name]
        print(f"| {us / n_steps:.1f} | {100 * us / n_steps / step_us:.1f} % | {count[name] / n_steps:g} | "
              f"{name} | `{shape[:60]}` | {source[:80]} |")


if __name__ == "__main__":
    main()
