"""Timing and memory helpers shared by ``benchmarks/`` and ``jaxbp bench``.

Machines are noisy: candidates are timed *interleaved* (one call of each per
round), after warm-up, and the median of the rounds is reported, so ratios
between candidates are measured under the same conditions.
"""
from __future__ import annotations

import platform
import statistics
import time

import jax


def timings(fns, rounds=20, warmup=2):
    """Seconds per call of each zero-argument function, one list entry per round.
    Each round starts with the next candidate in turn, so none always runs
    right after the same neighbour."""
    for _ in range(warmup):
        for f in fns.values():
            jax.block_until_ready(f())
    names = list(fns)
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            jax.block_until_ready(fns[name]())
            times[name].append(time.perf_counter() - t0)
    return times


def forward_and_backward(f):
    """``(*args, g) -> (f(*args), *vjp(g))``: a layer's forward and backward
    passes as a train step runs them, to jit and time. The output is returned,
    or XLA drops the forward pass as dead code (a rule's residuals do not need
    it); the cotangent ``g`` is an argument, as a train step's is data: a
    constant one (``jax.grad`` of a sum gives ones) XLA folds into the backward
    pass's products, which changes their cost (BENCHMARKS.md)."""
    def run(*args):
        *primals, g = args
        y, vjp = jax.vjp(f, *primals)
        return y, *vjp(g)
    return run


def interleaved(fns, rounds=20, warmup=2):
    """Median seconds per call of each zero-argument function, timed in rounds."""
    return {name: statistics.median(t) for name, t in timings(fns, rounds, warmup).items()}


def paired_ratio(a, b):
    """``(median, q1, q3)`` of the per-round ratios ``a[i] / b[i]``: calls made
    back to back share the machine's state, so their ratio drifts less than
    either time; the quartiles show how far it still moves."""
    ratios = [x / y for x, y in zip(a, b, strict=True)]
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    return statistics.median(ratios), q1, q3


def best_seconds(fn, rounds=5):
    """The fastest of ``rounds`` calls of the zero-argument ``fn`` (after one
    warm-up call), in seconds: a ceiling's measure, where the noise only slows."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return min(times)


def matmul_flops(n=2048, rounds=5):
    """FLOP/s of XLA's ``n × n`` float32 matmul on the default backend, best of
    ``rounds``: the peak the benchmarks state FLOP rates against (a nominal
    rate is not known inside a virtual machine)."""
    import jax.numpy as jnp
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    return 2 * n ** 3 / best_seconds(lambda: f(a), rounds)


def temp_bytes(jitted, *args):
    """Compiled temporary memory of ``jitted(*args)`` (exact, from XLA), or None."""
    stats = jitted.lower(*args).compile().memory_analysis()
    return None if stats is None else int(stats.temp_size_in_bytes)


def machine():
    """One line naming the machine, backend and versions, for result tables."""
    dev = jax.devices()[0]
    import jaxlib
    return (f"{dev.device_kind} ({jax.default_backend()}, {jax.device_count()} device(s)), "
            f"{platform.processor() or platform.machine()}, jax {jax.__version__}, "
            f"jaxlib {jaxlib.__version__}")
