"""Flax NNX versions of jaxbp's registry models, the baselines of the benchmarks.

Each is the same network as ``jaxbp.layers.build_model(name, **options)``
(same layers, widths, block order, batch-norm momentum; NHWC inside) with the
same optimizer (Adam), and its train step is Flax's fastest form: ``nnx.split``
once, then ``nnx.merge`` inside one ``jax.jit`` with the state donated
(``nnx.jit`` adds per-call Python overhead and would flatter jaxbp).

    from flax_models import BASELINES
    jaxbp.tools.bench.run("resnet20", 32, baselines=BASELINES)
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxbp.ops import compiler_options

NUM_CLASSES = 10
MODELS = ("cnn", "mlp", "resnet20", "resnet18")   # those with a Flax version here


def flax_step(model, dtype, x, options, xla_options=None):
    """(step, carry) of the Flax NNX version of registry model ``model`` with
    ``options`` (its :func:`jaxbp.layers.model_options`); ``KeyError`` for a
    model with no Flax version here. ``xla_options``: compiler options for
    its ``jax.jit`` (default: XLA's, what a Flax user gets)."""
    compute = jnp.dtype(dtype)
    width = options.get("width")

    class CNN(nnx.Module):
        def __init__(self, rngs):
            kw = dict(dtype=compute, rngs=rngs)
            c, h, w = x.shape[1:]
            self.c1 = nnx.Conv(c, width, (3, 3), padding="SAME", use_bias=False, **kw)
            self.b1 = nnx.BatchNorm(width, momentum=0.9, **kw)
            self.c2 = nnx.Conv(width, 2 * width, (3, 3), padding="SAME", use_bias=False, **kw)
            self.b2 = nnx.BatchNorm(2 * width, momentum=0.9, **kw)
            self.d1 = nnx.Linear(2 * width * (h // 4) * (w // 4), 4 * width, **kw)
            self.d2 = nnx.Linear(4 * width, NUM_CLASSES, **kw)

        def __call__(self, x):
            x = x.transpose(0, 2, 3, 1)  # NCHW at the edge, NHWC inside (Flax's layout)
            pool = lambda x: nnx.max_pool(x, (2, 2), (2, 2))
            for conv, bn in ((self.c1, self.b1), (self.c2, self.b2)):
                if options["block"] == "conv-bn-relu-pool":
                    x = pool(nnx.relu(bn(conv(x))))
                else:   # conv-pool-bn-relu
                    x = nnx.relu(bn(pool(conv(x))))
            return self.d2(nnx.relu(self.d1(x.reshape(x.shape[0], -1))))

    class MLP(nnx.Module):
        def __init__(self, rngs):
            kw = dict(dtype=compute, rngs=rngs)
            # As layers.mlp: no dense bias in front of batch norm, which cancels it.
            self.l1 = nnx.Linear(int(np.prod(x.shape[1:])), width, use_bias=False, **kw)
            self.l2 = nnx.Linear(width, width, use_bias=False, **kw)
            self.l3 = nnx.Linear(width, NUM_CLASSES, **kw)
            self.b1 = nnx.BatchNorm(width, momentum=0.9, **kw)
            self.b2 = nnx.BatchNorm(width, momentum=0.9, **kw)

        def __call__(self, x):
            x = x.reshape(x.shape[0], -1)
            for dense, bn in ((self.l1, self.b1), (self.l2, self.b2)):
                x = nnx.relu(bn(dense(x)))
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

    builders = {"cnn": CNN, "mlp": MLP, "resnet20": lambda r: ResNet(r, (16, 32, 64), 3),
                "resnet18": lambda r: ResNet(r, (64, 128, 256, 512), 2)}
    net = builders[model](nnx.Rngs(0))
    optimizer = nnx.Optimizer(net, optax.adam(1e-3), wrt=nnx.Param)
    graphdef, state = nnx.split((net, optimizer))

    @functools.partial(jax.jit, donate_argnums=0, compiler_options=xla_options)
    def step(state, x, y):
        net, optimizer = nnx.merge(graphdef, state)

        def loss_fn(net):
            logits = net(x.astype(compute)).astype(jnp.float32)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(net)
        optimizer.update(net, grads)
        return nnx.split((net, optimizer))[1], {"loss": loss}

    return step, state


BASELINES = {"flax nnx": flax_step}
if compiler_options():   # the kernels jaxbp's steps compile with, where they differ from XLA's defaults
    BASELINES["flax nnx, jaxbp's XLA options"] = functools.partial(flax_step, xla_options=compiler_options())
