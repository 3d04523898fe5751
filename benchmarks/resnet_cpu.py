"""ResNet train steps side by side: jaxbp (custom rules, autodiff twin), Flax NNX
and PyTorch, on the same network, optimizer (Adam) and CIFAR-shaped batch.

    python benchmarks/resnet_cpu.py --model resnet20 --batch-size 32 --rounds 5

Each round runs ``benchmarks/vs_flax.py --json`` (jaxbp custom, twin and, if
installed, Flax NNX, interleaved in one process) and ``benchmarks/pytorch_resnet.py`` as
separate processes, alternating which goes first; per-round ratios to PyTorch
are reported as medians with their range. Prints a Markdown table row per
candidate.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run_json(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out[out.index("{"):])   # the JSON object the command ends with


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20", choices=("resnet20", "resnet18"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--bench-rounds", type=int, default=10, help="jaxbp bench's own rounds per call")
    p.add_argument("--steps", type=int, default=20, help="PyTorch's timed steps per call")
    p.add_argument("--algorithm", default="implicit")
    a = p.parse_args()
    jaxbp = [sys.executable, os.path.join(HERE, "vs_flax.py"), "--model", a.model, "--batch-size", str(a.batch_size),
             "--rounds", str(a.bench_rounds), "--algorithm", a.algorithm, "--json"]
    torch = [sys.executable, os.path.join(HERE, "pytorch_resnet.py"), "--model", a.model,
             "--batch-size", str(a.batch_size), "--steps", str(a.steps)]
    rows = {}
    for r in range(a.rounds):
        order = (jaxbp, torch) if r % 2 == 0 else (torch, jaxbp)
        results = {id(cmd): run_json(cmd) for cmd in order}
        ref = results[id(torch)]["step_ms"]
        rows.setdefault(results[id(torch)]["framework"], []).append((ref, 1.0))
        for c in results[id(jaxbp)]["results"]:
            if c.get("step_ms") is not None:
                rows.setdefault(c["candidate"], []).append((c["step_ms"], c["step_ms"] / ref))
        print(f"round {r}: " + ", ".join(f"{k} {v[-1][0]:.1f} ms" for k, v in rows.items()), file=sys.stderr)
    print(f"| {a.model}, batch {a.batch_size}, {a.algorithm} | step ms (median) | ÷ PyTorch (median, range) |")
    print("|---|---:|---:|")
    for name, values in rows.items():
        ms = statistics.median(v[0] for v in values)
        ratios = [v[1] for v in values]
        print(f"| {name} | {ms:.1f} | {statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f}) |")


if __name__ == "__main__":
    main()
