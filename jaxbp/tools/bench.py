"""``jaxbp bench``: one jitted train step of a registry model, timed side by side.

The candidates are the same model (:data:`jaxbp.layers.MODELS`, with the same
options and no dropout) and optimizer (Adam) on the same synthetic batch of
the model's input shape: jaxbp with the custom rules, jaxbp with the autodiff
twins, and any ``baselines`` given (the Flax NNX versions in
``benchmarks/flax_models.py``). They are timed interleaved after warm-up
(median of rounds); compiled temporary memory comes from XLA's
``memory_analysis()``.
"""
from __future__ import annotations

import concurrent.futures
import statistics

import jax.numpy as jnp
import numpy as np
import optax

from jaxbp import layers, train
from jaxbp.tools.timing import machine, paired_ratio, temp_bytes, timings

NUM_CLASSES = 10


def batch(batch_size, model="cnn", seed=0):
    """A synthetic batch ``(x, y)`` of model ``model``'s input shape (its registry entry's)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(batch_size,) + tuple(layers.model_entry(model).input_shape)).astype(np.float32)
    y = rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32)
    return jnp.asarray(x), jnp.asarray(y)


def options(model, **given):
    """The options bench builds ``model`` with: the model's, then ``given``
    (``None``: the model's), dropout off (a baseline has none)."""
    return layers.model_options(model, deterministic=True, **given)


def jaxbp_step(model, gradients, dtype, x, y=None, **given):
    """(step, carry) of jaxbp's train step for registry model ``model``;
    ``step(carry, x, y) -> (carry, metrics)``. With ``y``, the step is already
    compiled for ``(carry, x, y)``, from the state's shapes while the state is
    computed, as ``fit`` compiles its first chunk (a ``jax.stages.Compiled``)."""
    opts = options(model, **given)
    cfg = train.Config(model=model, gradients=gradients, dtype=dtype, optimizer="adam", lr=1e-3,
                       weight_decay=0.0, augment=0, flip="off", **opts)
    net = train.build_model(cfg, NUM_CLASSES)
    opt = optax.adam(1e-3)
    step = train.make_steps(net, opt, cfg).train
    shapes, make_state = train.initial_state(net, cfg, opt, x.shape[1:])
    if y is None:
        return step, make_state()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        compiled = pool.submit(lambda: step.lower(shapes, x, y).compile())
        carry = make_state()
        return compiled.result(), carry


def run(model="cnn", batch_size=128, dtype="float32", rounds=20, baselines=None, **given):
    """Time the train step of each candidate; returns a list of result dicts.
    ``given``: model options (:func:`options`); ``baselines``: name ->
    ``make(model, dtype, x, options) -> (step, carry)`` (a ``KeyError``: no
    version of this model; skipped with a row saying so)."""
    x, y = batch(batch_size, model)
    candidates = {f"jaxbp {g}": jaxbp_step(model, g, dtype, x, **given) for g in ("custom", "autodiff")}
    skipped = []
    for name, make in (baselines or {}).items():
        try:
            candidates[name] = make(model, dtype, x, options(model, **given))
        except KeyError:
            skipped.append({"candidate": name, "skipped": f"not measured: no {name} version of {model}"})
    carries = {}
    memory = {}
    for name, (step, carry) in candidates.items():
        memory[name] = temp_bytes(step, carry, x, y)
        carries[name] = carry

    def call(name):
        step = candidates[name][0]

        def f():
            carries[name], m = step(carries[name], x, y)
            return m["loss"]
        return f

    samples = timings({name: call(name) for name in candidates}, rounds=rounds, warmup=3)
    base = samples["jaxbp custom"]
    results = []
    for name, t in samples.items():
        step = statistics.median(t)
        ratio, q1, q3 = paired_ratio(base, t)
        results.append({"candidate": name, "step_ms": step * 1e3, "examples_per_s": batch_size / step,
                        "custom_over_this": ratio, "custom_over_this_quartiles": [q1, q3],
                        "temp_mib": (memory[name] or 0) / 2**20,
                        "custom_mem_over_this": (memory["jaxbp custom"] or 0) / max(memory[name] or 1, 1)})
    return results + skipped


def table(results, model, batch_size, dtype, extra=""):
    lines = [f"### Train step: {model}, batch {batch_size}, {dtype}{extra} — {machine()}", "",
             "| candidate | step ms | examples/s | jaxbp custom time ÷ this, < 1: jaxbp faster (quartiles) "
             "| temp MiB | jaxbp custom memory ÷ this, < 1: jaxbp smaller |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['candidate']} | {r['skipped']} | | | | |")
            continue
        q1, q3 = r["custom_over_this_quartiles"]
        lines.append(f"| {r['candidate']} | {r['step_ms']:.3f} | {r['examples_per_s']:,.0f} | "
                     f"{r['custom_over_this']:.2f} ({q1:.2f}–{q3:.2f}) | {r['temp_mib']:.1f} | "
                     f"{r['custom_mem_over_this']:.2f} |")
    return "\n".join(lines)
