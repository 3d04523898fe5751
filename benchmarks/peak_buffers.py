"""What XLA keeps at the peak of a compiled train step: the buffers alive at the
moment the step's live bytes are largest, grouped by the op that made them.

    python benchmarks/peak_buffers.py --model resnet20 --batch-size 32 [--gradients autodiff]
        [--algorithm implicit|explicit|winograd|auto] [--top 20]

JAX's saved residuals (``saved_residuals.py``) say what a rule *declares*; XLA
may recompute a residual from what it came from and keep that instead, or
compute a backward-pass value in the forward pass and keep it (BENCHMARKS.md,
"What a ResNet-20 step keeps"). This reads the optimized, scheduled program
(``compiled.as_text()``, as ``profile_step.py`` reads it): each instruction
of its entry computation in schedule order, its result's bytes, and its last
use (aliases — bitcasts,
tuples, their elements — share their operand's buffer; the step's results are
output memory, not temporaries; a fusion writes into an operand's buffer that
dies there). The peak of that simulation is XLA's temp memory
(``memory_analysis()``) within 1 % on the MLP and ResNet-20 steps and 7 % on
the CNN's at batch 128; it overstates small steps whose peak is the
optimizer's update (the CNN at batch 8: 1.3×). Each op's name scope
(``jvp(conv2d)``: its forward, ``transpose(jvp(conv2d))``: its backward, as
``jaxbp.ops`` names them) says who made each buffer.
"""
import argparse
import collections
import math
import os
import re
import sys

from jaxbp import layers
from jaxbp.ops import CHOICES
from jaxbp.tools import bench
from jaxbp.tools.timing import machine

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from profile_step import instructions  # noqa: E402  (the same reading of the optimized program)

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
          "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}
_ARRAY = re.compile(r"\b(" + "|".join(_BYTES) + r")\[([0-9,]*)\]")
_ALIASES = {"bitcast", "get-tuple-element", "tuple", "opt-barrier"}   # no buffer of their own
_NO_BUFFER = _ALIASES | {"parameter", "constant"}                      # or not a temporary


def nbytes(shape_text):
    """Bytes of every array in an HLO shape (a tuple's elements summed)."""
    return sum(_BYTES[t] * math.prod(int(d) for d in dims.split(",") if d)
               for t, dims in _ARRAY.findall(shape_text))


def entry(compiled):
    """``[(name, shape, opcode, operands, op_name)]`` of the entry computation, in schedule order."""
    main = re.search(r"^ENTRY %(\S+) ", compiled.as_text(), re.M).group(1)
    found, _ = instructions(compiled)
    return [(name, op["shape"], op["opcode"], re.findall(r"%([\w.\-]+)", op["text"].split(")", 1)[0]),
             op["source"]) for name, op in found.items() if op["computation"] == main]


def peak(instructions):
    """``(peak bytes, index of the instruction at the peak, {name: (bytes, shape, op_name)} alive there)``."""
    owners, last = {}, {}
    for i, (name, shape, opcode, args, _) in enumerate(instructions):
        owners[name] = ([b for a in args for b in owners.get(a, [a])] if opcode in _ALIASES else [name])
        for a in args:
            for b in owners.get(a, [a]):
                last[b] = i
    outputs = set(owners[instructions[-1][0]])   # the step's results: not temporaries (XLA's output memory)
    live, now, best = {}, 0, (0, 0, {})
    for i, (name, shape, opcode, args, scope) in enumerate(instructions):
        if opcode not in _NO_BUFFER and name not in outputs:
            size = nbytes(shape)
            # XLA writes a fusion's result into an operand's buffer that dies there, if as large.
            reused = next((b for a in args for b in owners.get(a, [a]) if b in live and last.get(b) == i
                           and live[b][0] == size), None) if opcode == "fusion" else None
            if reused is not None:
                now -= live.pop(reused)[0]
            live[name] = (size, shape, scope)
            now += size
        if now > best[0]:
            best = (now, i, dict(live))
        for b in [b for b in live if last.get(b, -1) <= i]:
            now -= live.pop(b)[0]
    return best


def scope(op_name):
    """The op's part of an ``op_name``: ``transpose(jvp(conv2d))``, ``jvp(relu)``, else the last path element."""
    m = re.findall(r"(?:transpose\()?jvp\(\w+\)\)?", op_name)
    return m[-1] if m else (op_name.rsplit("/", 1)[-1] or "(unnamed)")


def report(model, gradients, batch, top, algorithm=None):
    x, y = bench.batch(batch, model)
    step, carry = bench.jaxbp_step(model, gradients, "float32", x, algorithm=algorithm)
    compiled = step.lower(carry, x, y).compile()
    total, at, live = peak(entry(compiled))
    temp = compiled.memory_analysis().temp_size_in_bytes
    groups = collections.defaultdict(lambda: [0, 0, collections.Counter()])
    for size, shape, op_name in live.values():
        g = groups[scope(op_name)]
        g[0], g[1] = g[0] + 1, g[1] + size
        g[2][_ARRAY.search(shape).group(0) if _ARRAY.search(shape) else shape] += 1
    return total, temp, at, sorted(groups.items(), key=lambda kv: -kv[1][1])[:top]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20", choices=tuple(layers.MODELS))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--gradients", default="custom", choices=("custom", "autodiff"))
    p.add_argument("--algorithm", default=None, choices=CHOICES, help="the convs' (default: the model's)")
    p.add_argument("--top", type=int, default=20)
    a = p.parse_args(argv)
    total, temp, at, groups = report(a.model, a.gradients, a.batch_size, a.top, a.algorithm)
    conv = f", {a.algorithm} conv" if a.algorithm else ""
    print(f"### Alive at the peak: {a.model}, batch {a.batch_size}, {a.gradients}{conv} — {machine()}\n")
    print(f"Peak of the schedule {total / 2**20:.1f} MiB (instruction {at}); XLA's temp memory "
          f"{temp / 2**20:.1f} MiB.\n")
    print("| made by | buffers | MiB | shapes |")
    print("|---|---:|---:|---|")
    for name, (count, size, shapes) in groups:
        listed = ", ".join(f"{n}× {s}" for s, n in shapes.most_common(3))
        print(f"| {name} | {count} | {size / 2**20:.1f} | {listed} |")


if __name__ == "__main__":
    main()
