"""Where a whole ``jaxbp train`` process spends its wall time, call by call.

    python benchmarks/startup_profile.py -- train --data mnist --data-dir DIR --stop-at-accuracy 0.99
    python benchmarks/startup_profile.py --top 60 -- train --data digits --epochs 1

Runs the command in this process under Python's profiler and prints when the
interpreter started (before any import), when the command returned, and the
calls of the main thread with the most time: cumulative (what a phase costs:
``import jax``, JAX's device start, reading the data, compiling or reading the
compilation cache, the steps, the checkpoint, curves.png) and own (the calls
into JAX's C++ runtime, where that time is spent). The threads jaxbp starts
(data reading, matplotlib's import, the evaluation's compilation) are not
profiled by Python 3.11's profiler; Python 3.12's listed their calls too (its
times then overlap). The profiler slows the run (on an H200, 3.4 s became ~6 s):
read it for what is called and in what proportion. Used for the GPU's
whole-process time (BENCHMARKS.md), where start-up, not training, is most
of it.
"""
import argparse
import cProfile
import io
import pstats
import sys
import time


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--top", type=int, default=40, help="calls listed per table")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the jaxbp command line")
    a = p.parse_args()
    argv = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not argv:
        p.error("give the jaxbp command after --, e.g. -- train --data digits --epochs 1")
    on = time.time()
    profile = cProfile.Profile()
    profile.enable()
    from jaxbp import cli
    cli.process_defaults()  # as the command does
    code = cli.main(argv)
    profile.disable()
    returned = time.time()
    from jaxbp.train.loop import PROCESS_START  # from /proc on Linux: the interpreter's start
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    for order, what in (("cumulative", "cumulative time"), ("tottime", "own time")):
        out.write(f"\n## by {what}\n")
        stats.sort_stats(order).print_stats(a.top)
    print(f"command {' '.join(argv)!r} exited {code}")
    print(f"interpreter start to profiling: {on - PROCESS_START:.2f} s; command: {returned - on:.2f} s; "
          f"process so far: {returned - PROCESS_START:.2f} s")
    print(out.getvalue())
    return code


if __name__ == "__main__":
    sys.exit(main())
