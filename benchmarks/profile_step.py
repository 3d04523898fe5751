"""Where a compiled chunk of train steps spends its time, operation by operation.

    python benchmarks/profile_step.py --data-dir DIR                 # MNIST's recipe on this backend
    python benchmarks/profile_step.py --data-dir DIR width=32 block=conv-bn-relu-pool dropout=0.25
    python benchmarks/profile_step.py --data digits                  # the bundled digits
    python benchmarks/profile_step.py --data cifar10 --random 512 model=resnet20 batch_size=32
    python benchmarks/profile_step.py --data cifar10 --random 512 model=resnet20 gradients=autodiff
    python benchmarks/profile_step.py --data cifar10 --flax model=resnet20 batch_size=32

Builds the chunk program as ``jaxbp train`` would (the data set's recipe for
this backend, then the ``FIELD=VALUE`` settings given, as in
``jaxbp.train.Config``; ``--random N``: N random images of the data set's
shape instead of its files; ``--flax``: the model's Flax NNX step, from
``benchmarks/flax_models.py``), times it without the profiler, then runs it
again under JAX's profiler and prints two tables. Per kind: each jaxbp op's
forward and backward operations (every op runs under a name scope of its
name, so its operations' metadata reads ``jvp(conv2d)``, or
``transpose(jvp(conv2d))`` for the backward — the rules' or the twin's); the
convolution's products split into forward, δX and δF (an operation of a
kernel's size); a peer's convolutions by the same rule. Per operation: its
time, result shape and source. For every convolution and matmul, its FLOPs
(2 × multiply-adds read from the optimized HLO; the zeros a stride-dilated
δY puts in δX's windows left out) over its time, as a fraction of "peak": XLA's
2048 × 2048 float32 matmul rate on this machine (best of 5), measured at the
start — a nominal rate is not known inside a virtual machine.

Each operation's time is its span on the profile's timeline: from its event's
start to the end of its completion event (``end: <name>``), which XLA:CPU
records when the operation's result is ready. That matters for the
convolutions XLA:CPU hands to Eigen's thread pool: their own event ends when
they are dispatched, and the work runs on while later operations start.
Where operations overlap (two threads, or an operation beside a dispatched
convolution), each instant is split evenly among those running, so the
operations' times add up to the time the program was busy, and a kind's share
is of that. The profiler adds its own cost to every operation; the shares are
what to read. Control flow (``while``, ``call``, ``conditional``) spans the
operations it runs: it counts its own event only. Used on XLA:CPU, whose
profile names each event after its operation; where no event matches (another
backend's naming), the script says so.
"""
import argparse
import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

import jax
import numpy as np

from jaxbp import data as data_lib, ops
from jaxbp.train import Config, build_model, build_optimizer, epoch_order, make_steps, new_state
from jaxbp.tools import bench
from jaxbp.tools.timing import matmul_flops
from jaxbp.train.step import chunk_size


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


def random_dataset(name, n):
    """``n`` uniform images in the registry entry's shape, random labels of its classes."""
    entry, rng = data_lib.get(name), np.random.default_rng(0)
    x = rng.uniform(size=(n,) + tuple(entry.shape)).astype(np.float32)
    y = rng.integers(0, len(entry.classes), n).astype(np.int32)
    return data_lib.Dataset(x, y, x[:1], y[:1], len(entry.classes))


def instructions(compiled):
    """Every instruction of the optimized HLO: name -> dict(shape, opcode, text,
    source (its op_name metadata), computation), and each computation's
    parameter shapes (name -> shape), which the instruction lines do not repeat."""
    found, shapes, comp = {}, {}, None
    for line in compiled.as_text().splitlines():
        head = re.match(r"(?:ENTRY )?%(\S+) \((.*)\) -> .* \{$", line)
        if head:
            comp = head.group(1)
            for name, shape in re.findall(r"(\w[\w.]*): (\w+\[[^\]]*\])", head.group(2)):
                shapes[(comp, name)] = shape
            continue
        m = re.match(r"\s*(?:ROOT )?%(\S+) = (\([^)]*\)|\S+?)(?:\{[^}]*\})? (\w[\w-]*)\((.*)", line)
        if not m:
            continue
        source = re.search(r'op_name="([^"]+)"', line)
        source = re.sub(r"^jit\([^)]*\)/(while/body/)?(closed_call/)?", "", source.group(1)) if source else ""
        found[m.group(1)] = dict(shape=m.group(2), opcode=m.group(3), text=m.group(4), source=source, computation=comp)
        shapes[(comp, m.group(1))] = m.group(2)
    return found, shapes


def _dims(shape):
    return [int(d) for d in re.findall(r"\d+", shape.split("[", 1)[1].split("]")[0])] if "[" in shape else []


def useful_flops(op, products, shapes):
    """Multiply-adds × 2 of a convolution or dot (or the one a fusion calls), the
    zeros a stride-dilated input (``lhs_dilate``, δX of a strided conv) puts in
    its windows left out; None for other operations. ``products``: the
    program's convolutions and dots per computation."""
    called = re.search(r"calls=%([\w.]+)", op["text"])
    if op["opcode"] == "fusion" and called:
        inner = products.get(called.group(1), ())
        return useful_flops(inner[0], products, shapes) if len(inner) == 1 else None
    out = int(np.prod(_dims(op["shape"])))
    operands = re.findall(r"%([\w.]+)", op["text"].split(")", 1)[0])
    if op["opcode"] == "dot":
        lhs = _dims(shapes.get((op["computation"], operands[0]), ""))
        axes = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", op["text"])
        return 2 * out * int(np.prod([lhs[int(i)] for i in axes.group(1).split(",") if i])) if lhs and axes else None
    if op["opcode"] != "convolution":
        return None
    window = re.search(r"size=([\dx]+)", op["text"])
    labels = re.search(r"dim_labels=\w+_(\w+)->", op["text"])
    rhs = _dims(shapes.get((op["computation"], operands[1]), ""))
    if not (window and labels and rhs):
        return None
    dilate = re.search(r"lhs_dilate=([\dx]+)", op["text"])
    taps = np.prod([int(k) for k in window.group(1).split("x")])
    zeros = np.prod([int(k) for k in dilate.group(1).split("x")]) if dilate else 1
    return 2 * out * taps * rhs[labels.group(1).index("i")] / zeros


_CONTROL = ("while", "call", "conditional")   # their events span the operations they run


def spans(events, alias, hlo):
    """(microseconds per operation, events per operation) from the profile's
    ``events``: each event of an operation (``alias``: event name -> operation)
    spans from its start to the end of its ``end: <name>`` event, the n-th
    start paired with the n-th end; the time in which several spans overlap is
    split evenly among them (a sweep over the spans' ends)."""
    starts, ends = collections.defaultdict(list), collections.defaultdict(list)
    for e in events:
        if e.get("ph") != "X":
            continue
        name = e.get("name", "")
        if name in alias:
            starts[alias[name]].append((e["ts"], e["ts"] + e["dur"]))
        elif name.startswith("end: ") and name[5:] in alias:
            ends[alias[name[5:]]].append(e["ts"] + e["dur"])
    marks, count = [], collections.Counter()
    for name, found in starts.items():
        found.sort()
        done = sorted(ends[name]) if hlo[name]["opcode"] not in _CONTROL else []
        for i, (t0, t1) in enumerate(found):
            t1 = max(t1, done[i]) if i < len(done) else t1
            marks += [(t0, 1, name), (t1, -1, name)]
        count[name] = len(found)
    total, running, last = collections.Counter(), collections.Counter(), None
    for t, step, name in sorted(marks, key=lambda m: (m[0], m[1])):
        n = sum(running.values())
        if n and t > last:
            for k, v in running.items():
                total[k] += (t - last) * v / n
        running[name] += step
        if not running[name]:
            del running[name]
        last = t
    return total, count


OPS = set(ops.__all__)   # jaxbp's ops: each runs under a name scope of its name


def kind(op, flops, kernels):
    """What an operation computes: ``conv2d forward|δX|δF|other``, ``<op>
    forward|backward`` for jaxbp's other ops (its name scope; the twin's
    backward too, as ``transpose(jvp(op))``), else by primitive: ``convolution
    forward|δX|δF`` for a peer's convolutions (δF: a result of a kernel's size), else ``rest``."""
    scopes = [n for pair in re.findall(r"jvp\((\w+)\)|/(\w+)/", op["source"]) for n in pair if n in OPS]
    backward = op["source"].startswith("transpose(")
    name = scopes[-1] if scopes else None
    if name == "conv2d" or (name is None and "conv_general_dilated" in op["source"]):
        if flops is None:
            return "conv2d other" if name else "rest"
        label = "conv2d" if name else "convolution"
        if not backward:
            return f"{label} forward"
        return f"{label} δF" if int(np.prod(_dims(op["shape"]))) in kernels else f"{label} δX"
    if name:
        return f"{name} {'backward' if backward else 'forward'}"
    return "rest"


def jaxbp_program(a):
    """(compiled chunk of train steps, its runner, steps per call, events per
    call of an operation run once per step (1 where the steps are written out:
    each has its own operations), kernel sizes, title)."""
    cfg = Config.for_data(a.data, **settings(a.set)).validate()
    ds = random_dataset(a.data, a.random) if a.random else data_lib.load(a.data, a.data_dir)
    steps_per_epoch = len(ds.x_train) // cfg.batch_size
    model = build_model(cfg, ds.num_classes)
    optimizer = build_optimizer(cfg, steps_per_epoch)
    steps = make_steps(model, optimizer, cfg)
    ts = new_state(model, cfg, optimizer, ds.x_train.shape[1:])
    x, y = jax.device_put(ds.x_train), jax.device_put(ds.y_train)
    order = epoch_order(ts.key, 0, len(ds.x_train), cfg.batch_size)
    length = chunk_size(steps_per_epoch, unrolled=steps.unrolled)
    compiled = steps.chunk.lower(ts, x, y, order, length=length).compile()
    kernels = {int(np.prod(v.shape)) for v in jax.tree.leaves(ts.params) if v.ndim == 4}
    carry = [ts]

    def run(n):
        for _ in range(n):
            carry[0], metrics = compiled(carry[0], x, y, order)
        jax.block_until_ready(metrics)

    title = (f"jaxbp {cfg.gradients}: {cfg.model}, batch {cfg.batch_size}, " +
             ", ".join(f"{k} {v}" for k, v in cfg.model_options().items()) + f"; {length} steps per chunk")
    return compiled, run, length, 1 if steps.unrolled else length, kernels, title


def flax_program(a):
    """The same for the Flax NNX version of the model (``benchmarks/flax_models.py``), one step per call."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from flax_models import flax_step
    cfg = Config.for_data(a.data, **settings(a.set)).validate()
    x, y = bench.batch(cfg.batch_size, cfg.model)   # the batch jaxbp bench gives Flax
    step, state = flax_step(cfg.model, "float32", x, cfg.model_options())
    compiled = step.lower(state, x, y).compile()
    kernels = {int(np.prod(v.shape)) for v in jax.tree.leaves(state) if getattr(v, "ndim", 0) == 4}
    carry = [state]

    def run(n):
        for _ in range(n):
            carry[0], metrics = compiled(carry[0], x, y)
        jax.block_until_ready(metrics)
    return compiled, run, 1, 1, kernels, f"Flax NNX: {cfg.model}, batch {cfg.batch_size}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="mnist", choices=data_lib.names(), help="the data set")
    p.add_argument("--data-dir", help="directory with its files (mnist: the four IDX files)")
    p.add_argument("--random", type=int, metavar="N",
                   help="N random images of the data set's shape and classes instead of its files")
    p.add_argument("--flax", action="store_true", help="profile the model's Flax NNX step instead")
    p.add_argument("--chunks", type=int, default=8, help="calls run under the profiler")
    p.add_argument("--top", type=int, default=40, help="operations listed")
    p.add_argument("set", nargs="*", metavar="FIELD=VALUE", help="Config fields changed from the recipe")
    a = p.parse_args(argv)

    compiled, run, length, per_chunk, kernels, title = (flax_program if a.flax else jaxbp_program)(a)
    peak = matmul_flops()
    run(2)
    times = []
    for _ in range(a.chunks):
        t = time.perf_counter()
        run(1)
        times.append((time.perf_counter() - t) / length * 1e3)
    print(f"{title}; {jax.devices()[0].device_kind}")
    print(f"step without the profiler: median {np.median(times):.3f} ms, min {min(times):.3f} ms")
    print(f"peak used: {peak / 1e9:.1f} GFLOP/s, XLA's 2048×2048 float32 matmul on this backend (best of 5)")

    with tempfile.TemporaryDirectory() as where:
        with jax.profiler.trace(where, create_perfetto_trace=True):
            run(a.chunks)
        trace = glob.glob(os.path.join(where, "**", "*.trace.json.gz"), recursive=True)[0]
        with gzip.open(trace) as f:
            events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    hlo, shapes = instructions(compiled)
    # Events named after the instruction (XLA:CPU), or after its kernel, whose
    # name has "_" for the instruction's "." (GPUs; not measured here).
    alias = {name.replace(".", "_"): name for name in hlo}
    alias.update({name: name for name in hlo})
    total, count = spans(events, alias, hlo)
    if not total:
        raise SystemExit("the profile has no events named after the program's operations on this backend")
    # Steps captured, from the count most operations have (``per_chunk`` events
    # each per chunk): the profiler's buffer can drop a long run's last events.
    n_steps = min(a.chunks, collections.Counter(count.values()).most_common(1)[0][0] / per_chunk) * length
    if n_steps < a.chunks * length:
        print(f"the profile holds {n_steps:g} of the {a.chunks * length} steps run: per step of those")
    step_us = sum(total.values()) / n_steps
    products = collections.defaultdict(list)
    for op in hlo.values():
        if op["opcode"] in ("convolution", "dot"):
            products[op["computation"]].append(op)
    flops = {name: useful_flops(hlo[name], products, shapes) for name in total}
    kinds = {name: kind(hlo[name], flops[name], kernels) for name in total}
    print(f"under the profiler: {step_us:.0f} us per step busy, in {len(total)} operations\n")

    def rate(f, us):
        return f"{f / us / 1e3:.1f} | {100 * f / us / 1e-6 / peak:.0f} %" if f else "– | –"

    print("| kind | us/step | share | GFLOP/step | GFLOP/s | of peak |\n|---|---:|---:|---:|---:|---:|")
    by_kind = collections.defaultdict(lambda: [0.0, 0.0])
    for name, us in total.items():
        by_kind[kinds[name]][0] += us / n_steps
        by_kind[kinds[name]][1] += (flops[name] or 0) * count[name] / n_steps
    for k, (us, f) in sorted(by_kind.items(), key=lambda kv: -kv[1][0]):
        print(f"| {k} | {us:.0f} | {100 * us / step_us:.1f} % | {f / 1e9:.3f} | {rate(f, us)} |")
    print("\n| us/step | share | per step | kind | GFLOP/s | of peak | operation | result | from |"
          "\n|---:|---:|---:|---|---:|---:|---|---|---|")
    for name, us in total.most_common(a.top):
        f, per = flops[name], count[name] / n_steps
        cells = rate(f * per if f else None, us / n_steps)
        print(f"| {us / n_steps:.1f} | {100 * us / n_steps / step_us:.1f} % | {per:g} | {kinds[name]} | "
              f"{cells} | {name} | `{hlo[name]['shape'][:50]}` | {hlo[name]['source'][:60]} |")


if __name__ == "__main__":
    main()
