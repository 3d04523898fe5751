"""Time to accuracy on real MNIST, whole processes, measured side by side.

    python benchmarks/time_to_accuracy.py --data-dir DIR recipe --seeds 0 1 2 3 4
    python benchmarks/time_to_accuracy.py --data-dir DIR same-work --rounds 2

``recipe``: ``jaxbp train --data mnist --stop-at-accuracy 0.99`` with the
defaults otherwise (those of the backend it runs on): the first seed with an
empty compilation cache (cold), then every seed with the cache that run filled
(warm; ``--once``: the first run only; ``--cache DIR``: that cache, kept, so
a later call can start warm, e.g. with other JAX settings in its environment).
Reports per run the accuracy reached, the epoch, the wall time of the whole
process measured from outside, and its parts: start-up (process start to the
first step: imports, JAX's devices, reading the data, the state and data put
on the device), compilation, training (the first step to the evaluation that
reached the target, compilation excluded) and what follows the last
evaluation (checkpoint, curves.png, exit).

``same-work``: the CNN of issue #13's table (widths 32/64, dense 128, dropout
0.25, AdamW 3e-3 with one epoch of warm-up, batch 32, 2 epochs, shifts of 1
pixel) in jaxbp and in PyTorch (``benchmarks/pytorch_mnist.py``), alternated
``--rounds`` times in this one run, so that both meet the same machine state;
the ratio is jaxbp's whole-process time over PyTorch's, per round.
"""
import argparse
import contextlib
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# Every option that changes the model or its training is given, so that MNIST's
# recipe changes none of them (it may still choose how jaxbp computes: the conv
# algorithm, the evaluation batch).
SAME_WORK = ["--width", "32", "--block", "conv-bn-relu-pool", "--dropout", "0.25", "--warmup-epochs", "1",
             "--epochs", "2", "--batch-size", "32", "--lr", "3e-3", "--augment", "1"]


# Settings of the environment that change how JAX starts, named in a table's title when set.
ENV_SHOWN = ("XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION", "JAX_PLATFORMS",
             "CUDA_MODULE_LOADING", "XLA_FLAGS")


def run(cmd, env=None):
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t
    if out.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    return wall, out.stdout


def jaxbp_train(data_dir, args, cache):
    with tempfile.TemporaryDirectory() as runs:
        wall, _ = run([sys.executable, "-m", "jaxbp.cli", "train", "--data", "mnist", "--data-dir", data_dir,
                       "--run-dir", os.path.join(runs, "run"), "--quiet", *args],
                      env={"JAXBP_COMPILATION_CACHE": cache})
        with open(os.path.join(runs, "run", "metrics.jsonl")) as f:
            history = [json.loads(line) for line in f]
    return wall, history


def recipe(a):
    rows = []
    with contextlib.ExitStack() as stack:
        # Empty unless --cache names a filled one: then the first run compiles, the others reuse it.
        cache = a.cache or stack.enter_context(tempfile.TemporaryDirectory())
        os.makedirs(cache, exist_ok=True)
        seeds = a.seeds[:1] if a.once else [a.seeds[0]] + a.seeds
        for seed in seeds:
            kind = "warm" if os.listdir(cache) else "cold"
            wall, history = jaxbp_train(a.data_dir, ["--stop-at-accuracy", str(a.target), "--seed", str(seed),
                                                     *a.train_args.split()],
                                        cache)
            first, last = history[0], history[-1]
            rows.append({"seed": seed, "cache": kind, "process_seconds": wall, "epochs": last["epoch"],
                         "test_accuracy": last["test_accuracy"], "compile_seconds": first["compile_seconds"],
                         "epochs_seconds": sum(h["seconds"] for h in history),
                         # Process start to the first step (of which reading the data, and the state
                         # and data put on the device), and the last evaluation to the process's end
                         # (checkpoint, curves.png, exit).
                         "startup_seconds": first["startup_seconds"], "data_seconds": first["data_seconds"],
                         "setup_seconds": first["setup_seconds"], "after_seconds": wall - last["elapsed"],
                         "training_seconds": sum(h["seconds"] for h in history) - first["compile_seconds"]})
            print(json.dumps(rows[-1]), flush=True)
    env = " ".join(f"{k}={os.environ[k]}" for k in ENV_SHOWN if k in os.environ)
    print(f"\n{' '.join(filter(None, [env, a.train_args])) or 'defaults'}\n")
    print("| seed | cache | epochs | test accuracy | whole process s | start-up s | of which data s "
          "| of which setup s | compile s | training s (compile excl.) | after s |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['seed']} | {r['cache']} | {r['epochs']} | {100 * r['test_accuracy']:.2f} % | "
              f"{r['process_seconds']:.1f} | {r['startup_seconds']:.2f} | {r['data_seconds']:.2f} | "
              f"{r['setup_seconds']:.2f} | {r['compile_seconds']:.2f} | {r['training_seconds']:.3f} | "
              f"{r['after_seconds']:.2f} |")


def same_work(a):
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for r in range(a.rounds):
            order = ("jaxbp", "pytorch") if r % 2 == 0 else ("pytorch", "jaxbp")
            got = {}
            for who in order:
                if who == "jaxbp":
                    wall, history = jaxbp_train(a.data_dir, SAME_WORK + ["--seed", str(r)], cache)
                    got[who] = (wall, history[-1]["test_accuracy"])
                else:
                    wall, out = run([sys.executable, os.path.join(HERE, "pytorch_mnist.py"), "--data-dir",
                                     a.data_dir, "--seed", str(r), "--epochs", "2", "--batch-size", "32"])
                    got[who] = (wall, json.loads(out.strip().splitlines()[-1])["history"][-1]["test_accuracy"])
            rows.append(got)
            print(json.dumps(got), flush=True)
    print("\n| round | jaxbp s | jaxbp acc | PyTorch s | PyTorch acc | jaxbp ÷ PyTorch |")
    print("|---:|---:|---:|---:|---:|---:|")
    for i, g in enumerate(rows):
        print(f"| {i} | {g['jaxbp'][0]:.1f} | {100 * g['jaxbp'][1]:.2f} % | {g['pytorch'][0]:.1f} | "
              f"{100 * g['pytorch'][1]:.2f} % | {g['jaxbp'][0] / g['pytorch'][0]:.2f} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="the four MNIST files (gzip IDX)")
    sub = p.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("recipe")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    r.add_argument("--target", type=float, default=0.99)
    r.add_argument("--train-args", default="", help="more options for jaxbp train, e.g. '--algorithm implicit'")
    r.add_argument("--once", action="store_true", help="one run, of the first seed")
    r.add_argument("--cache", help="JAX's compilation cache directory to use and keep (default: a new, empty one)")
    s = sub.add_parser("same-work")
    s.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    import platform
    print(f"{platform.machine()}, {os.cpu_count()} cores, {datetime.date.today()}", flush=True)
    recipe(a) if a.mode == "recipe" else same_work(a)


if __name__ == "__main__":
    main()
