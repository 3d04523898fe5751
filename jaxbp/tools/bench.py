"""``jaxbp bench``: one jitted train step, three ways, timed side by side.

The candidates are the same architecture and optimizer (Adam) on the same
synthetic batch: jaxbp with the custom rules, jaxbp with the autodiff twins,
and — if Flax is installed — Flax NNX, in its fastest form (``nnx.split`` /
``nnx.merge`` inside ``jax.jit`` with donated state). They are timed
interleaved after warm-up (median of rounds); compiled temporary memory comes
from XLA's ``memory_analysis()``.
"""
from __future__ import annotations

import functools
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbp import ops, train
from jaxbp.tools.timing import machine, paired_ratio, temp_bytes, timings

FLAX_MISSING = "not measured: Flax is not installed (pip install -e '.[flax]')"
INPUT_SHAPE = (1, 28, 28)  # MNIST-sized images, NCHW (CIFAR-sized for the ResNets)
INPUT_SHAPES = {"mlp": INPUT_SHAPE, "cnn": INPUT_SHAPE, "resnet20": (3, 32, 32), "resnet18": (3, 32, 32)}
NUM_CLASSES = 10


def _batch(batch_size, model="cnn", seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(batch_size,) + INPUT_SHAPES[model]).astype(np.float32)
    y = rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32)
    return jnp.asarray(x), jnp.asarray(y)


def jaxbp_step(model, gradients, dtype, width, layout, algorithm, x, batch_norm=True):
    """(step function, initial carry) of jaxbp's train step; step(carry) -> carry."""
    cfg = train.Config(model=model, gradients=gradients, dtype=dtype, optimizer="adam", lr=1e-3,
                       weight_decay=0.0, augment=0, flip="off", dropout=0.0, layout=layout, algorithm=algorithm)
    if model == "mlp":
        from jaxbp import layers
        net = layers.mlp(NUM_CLASSES, hidden=(width, width), gradients=gradients, batch_norm=batch_norm)
    else:
        net = train.build_model(cfg, NUM_CLASSES)
    opt = optax.adam(1e-3)
    step = train.make_steps(net, opt, cfg).train
    return step, train.new_state(net, cfg, opt, x.shape[1:])


def flax_step(model, dtype, width, x, batch_norm=True):
    from flax import nnx

    compute = jnp.dtype(dtype)

    class CNN(nnx.Module):
        def __init__(self, rngs):
            kw = dict(dtype=compute, rngs=rngs)
            self.c1 = nnx.Conv(1, 32, (3, 3), padding="SAME", use_bias=False, **kw)
            self.b1 = nnx.BatchNorm(32, momentum=0.9, **kw)
            self.c2 = nnx.Conv(32, 64, (3, 3), padding="SAME", use_bias=False, **kw)
            self.b2 = nnx.BatchNorm(64, momentum=0.9, **kw)
            self.d1 = nnx.Linear(64 * 7 * 7, 128, **kw)
            self.d2 = nnx.Linear(128, NUM_CLASSES, **kw)

        def __call__(self, x):
            x = x.transpose(0, 2, 3, 1)  # NCHW at the edge, NHWC inside (Flax's layout)
            for conv, bn in ((self.c1, self.b1), (self.c2, self.b2)):
                x = nnx.max_pool(nnx.relu(bn(conv(x))), (2, 2), (2, 2))
            return self.d2(nnx.relu(self.d1(x.reshape(x.shape[0], -1))))

    class MLP(nnx.Module):
        def __init__(self, rngs):
            kw = dict(dtype=compute, rngs=rngs)
            # As layers.mlp: no dense bias in front of batch norm, which cancels it.
            self.l1 = nnx.Linear(int(np.prod(INPUT_SHAPE)), width, use_bias=not batch_norm, **kw)
            self.l2 = nnx.Linear(width, width, use_bias=not batch_norm, **kw)
            self.l3 = nnx.Linear(width, NUM_CLASSES, **kw)
            if batch_norm:
                self.b1 = nnx.BatchNorm(width, momentum=0.9, **kw)
                self.b2 = nnx.BatchNorm(width, momentum=0.9, **kw)

        def __call__(self, x):
            x = x.reshape(x.shape[0], -1)
            for dense, bn in ((self.l1, "b1"), (self.l2, "b2")):
                x = dense(x)
                x = nnx.relu(getattr(self, bn)(x) if batch_norm else x)
            return self.l3(x)

    class ResNet(nnx.Module):
        """jaxbp.layers.resnet in Flax: the same stem, basic blocks, projections,
        pooling and head (layers.resnet's docstring), NHWC inside."""

        def __init__(self, rngs, widths, blocks):
            kw = dict(dtype=compute, rngs=rngs)
            conv = lambda i, o, k, s: nnx.Conv(i, o, (k, k), (s, s), padding="SAME" if k > 1 else "VALID",
                                               use_bias=False, **kw)
            bn = lambda c: nnx.BatchNorm(c, momentum=0.9, **kw)
            self.stem, self.stem_bn = conv(3, widths[0], 3, 1), bn(widths[0])
            self.blocks, c_in = nnx.List(), widths[0]
            for stage, width in enumerate(widths):
                for block in range(blocks):
                    stride = 2 if stage > 0 and block == 0 else 1
                    project = stride != 1 or width != c_in
                    self.blocks.append(nnx.List([
                        conv(c_in, width, 3, stride), bn(width), conv(width, width, 3, 1), bn(width),
                        nnx.List([conv(c_in, width, 1, stride), bn(width)] if project else [])]))
                    c_in = width
            self.head = nnx.Linear(c_in, NUM_CLASSES, **kw)

        def __call__(self, x):
            x = nnx.relu(self.stem_bn(self.stem(x.transpose(0, 2, 3, 1))))
            for c1, b1, c2, b2, short in self.blocks:
                s = short[1](short[0](x)) if len(short) else x
                x = nnx.relu(b2(c2(nnx.relu(b1(c1(x))))) + s)
            return self.head(x.mean(axis=(1, 2)))

    if model in ("resnet20", "resnet18"):
        net = ResNet(nnx.Rngs(0), *({"resnet20": ((16, 32, 64), 3), "resnet18": ((64, 128, 256, 512), 2)}[model]))
    else:
        net = (CNN if model == "cnn" else MLP)(nnx.Rngs(0))
    optimizer = nnx.Optimizer(net, optax.adam(1e-3), wrt=nnx.Param)
    graphdef, state = nnx.split((net, optimizer))

    @functools.partial(jax.jit, donate_argnums=0)
    def step(state, x, y):
        net, optimizer = nnx.merge(graphdef, state)

        def loss_fn(net):
            logits = net(x.astype(compute)).astype(jnp.float32)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(net)
        optimizer.update(net, grads)
        return nnx.split((net, optimizer))[1], {"loss": loss}

    return step, state


def run(model="cnn", batch_size=128, dtype="float32", width=256, rounds=20, layout="NHWC",
        algorithm=ops.DEFAULT_ALGORITHM, flax=True, batch_norm=True):
    """Time the train step of each candidate; returns a list of result dicts.
    ``batch_norm=False`` drops the MLP's batch norm (dense + relu only)."""
    x, y = _batch(batch_size, model)
    candidates = {f"jaxbp {g}": jaxbp_step(model, g, dtype, width, layout, algorithm, x, batch_norm)
                  for g in ("custom", "autodiff")}
    skipped = []
    if flax:
        try:
            candidates["flax nnx"] = flax_step(model, dtype, width, x, batch_norm)
        except ImportError:
            skipped.append({"candidate": "flax nnx", "skipped": FLAX_MISSING})
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
