"""Layers and models on jaxbp's ops, in the style of ``jax.example_libraries.stax``.

A layer is a pair of pure functions::

    init(key, input_shape) -> (output_shape, params, state)
    apply(params, state, x, *, train, key) -> (y, new_state)

``params`` (trained) and ``state`` (e.g. batch-norm running statistics) are
separate pytrees of arrays. ``train`` selects batch statistics and active
dropout; ``key`` is a PRNG key, used only by dropout. :func:`serial` chains
layers.

Every layer takes ``ops``: the namespace whose functions it calls —
:mod:`jaxbp.ops` (hand-derived backward rules) or :mod:`jaxbp.autodiff` (their
twins). Models take ``gradients="custom" | "autodiff"`` and pass the matching
namespace down, so the choice is part of the model function itself and no jit
cache can silently keep the other one.

Layers never cast: an op promotes its arguments together (docs/derivation.md
§8). Training casts the parameters to the compute dtype once per step, at the
model's edge (:mod:`jaxbp.precision`).

Images are NCHW at the model's edge. ``layout="NHWC"`` runs the convolutional
part channels-last inside (one transpose at the input, none per layer), which
is what the explicit im2col wants on CPUs and GPUs (see BENCHMARKS.md).
"""
from __future__ import annotations

import math
import typing

import jax
import jax.numpy as jnp

from jaxbp import autodiff, ops as custom_ops
from jaxbp.ops.conv import select
from jaxbp.validate import pair

GRADIENTS = {"custom": custom_ops, "autodiff": autodiff}


class Layer(typing.NamedTuple):
    init: typing.Callable
    apply: typing.Callable
    kind: str = ""                # "conv", "dense", "bn", ...: names parameters (conv1.w)
    children: tuple = ()          # the layers of a serial()


def param_names(model):
    """One name per layer of a :func:`serial` model, numbered per kind
    (``conv1``, ``bn1``, ``conv2``, ``dense1``, ...), as ``jaxbp gradcheck``
    labels parameters (``conv1.w``)."""
    counts, names = {}, []
    for layer in model.children:
        counts[layer.kind] = counts.get(layer.kind, 0) + 1
        names.append(f"{layer.kind}{counts[layer.kind]}")
    return names


def named(model, params):
    """A :func:`serial` model's ``params`` list as ``{layer name: params}``
    (layers without parameters left out), so that gradients and reports say
    ``conv1.w``, not ``[0]['w']``; :func:`unnamed` turns it back."""
    return {n: p for n, p in zip(param_names(model), params) if p}


def unnamed(model, params_by_name):
    """The params list of ``model`` from :func:`named`'s dict."""
    return [params_by_name.get(n, {}) for n in param_names(model)]


def namespace(gradients):
    """``"custom"`` -> :mod:`jaxbp.ops`, ``"autodiff"`` -> :mod:`jaxbp.autodiff`."""
    if gradients not in GRADIENTS:
        raise ValueError(f"gradients must be 'custom' or 'autodiff', got {gradients!r}")
    return GRADIENTS[gradients]


# Initializers: variance 2/fan_in (He, for ReLU nets) or 2/(fan_in + fan_out) (Glorot).
def he_normal(key, shape, fan_in, fan_out, dtype=jnp.float32):
    return jax.random.normal(key, shape, dtype) * math.sqrt(2.0 / fan_in)


def glorot_uniform(key, shape, fan_in, fan_out, dtype=jnp.float32):
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, shape, dtype, -limit, limit)


INITIALIZERS = {"he": he_normal, "glorot": glorot_uniform}


def _stateless(init_params, apply_fn, kind):
    def init(key, shape):
        out_shape, params = init_params(key, shape)
        return out_shape, params, {}

    def apply(params, state, x, *, train=False, key=None):
        return apply_fn(params, x), state

    return Layer(init, apply, kind)


def Dense(features, *, ops=custom_ops, init="he", bias=True):
    """``(N, in) -> (N, features)``; params ``w (features, in)``, ``b (features,)``
    (no ``b`` with ``bias=False``, e.g. before batch norm, which cancels it)."""
    def init_params(key, shape):
        fan_in = shape[-1]
        w = INITIALIZERS[init](key, (features, fan_in), fan_in, features)
        params = {"w": w, "b": jnp.zeros((features,), jnp.float32)} if bias else {"w": w}
        return shape[:-1] + (features,), params

    def apply(p, x):
        return ops.dense(x, p["w"], p["b"] if bias else None)

    return _stateless(init_params, apply, "dense")


def Conv2D(features, kernel, stride=1, padding="SAME", *, ops=custom_ops, init="he",
           layout="NCHW", algorithm=custom_ops.DEFAULT_ALGORITHM, bias=True, dilation=1, groups=1,
           beside=None):
    """``(N, C, H, W) -> (N, features, H', W')`` (channels last with ``layout="NHWC"``);
    params ``w (features, C / groups, FH, FW)``, ``b (features,)``. ``algorithm``:
    conv2d's (a name, or a ``(forward's, backward's)`` pair), or ``"auto"``:
    chosen from the input's shape and the backend (:func:`jaxbp.ops.auto_algorithm`).
    ``beside``: ``(features, kernel, stride)`` of another conv layer that
    reads the same input; ``"auto"`` then gives this layer that layer's
    algorithm, so the input is kept in one layout (a projection shortcut
    beside its block's first conv)."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    ch = 1 if layout == "NCHW" else 3
    if beside is not None:
        if not (isinstance(beside, tuple) and len(beside) == 3 and isinstance(beside[0], int)):
            raise ValueError(f"beside must be (features, kernel, stride) of the other conv layer, e.g. (32, 3, 2); "
                             f"got {beside!r}")
        beside_kernel = pair("beside's kernel", beside[1], 1)

    def conv(x, w, b):
        alg = algorithm
        if algorithm == "auto" and beside is not None:   # the other layer's weight shape, from this input
            alg = select.auto_algorithm(x.shape, w.shape, pair("stride", stride, 1), pair("dilation", dilation, 1),
                                        groups, layout, beside=((beside[0], w.shape[1]) + beside_kernel, beside[2]))
        return ops.conv2d(x, w, b, stride, padding, dilation, groups, layout=layout, algorithm=alg)

    def init_params(key, shape):
        c = shape[ch] // groups
        w = INITIALIZERS[init](key, (features, c, kh, kw), c * kh * kw, features // groups * kh * kw)
        params = {"w": w, "b": jnp.zeros((features,), jnp.float32)} if bias else {"w": w}
        out = jax.eval_shape(lambda x: conv(x, w, None), jax.ShapeDtypeStruct(shape, jnp.float32))
        return out.shape, params

    def apply(p, x):
        return conv(x, p["w"], p.get("b"))

    return _stateless(init_params, apply, "conv")


def BatchNorm(*, ops=custom_ops, momentum=0.9, eps=1e-5, axis=1):
    """Batch normalization over every axis but ``axis``.

    Training uses the batch statistics (``ops.batch_norm``) and updates the
    running ones as ``running = momentum·running + (1 − momentum)·batch``
    (the Flax/Keras convention; PyTorch's ``momentum`` is ``1 −`` this), with
    the biased batch variance. Evaluation uses the running statistics only, so
    an example's output does not depend on the rest of its batch.
    Params ``gamma``, ``beta``; state ``mean``, ``var``; all ``(C,)``.
    """
    def init(key, shape):
        c = shape[axis]
        return shape, {"gamma": jnp.ones((c,), jnp.float32), "beta": jnp.zeros((c,), jnp.float32)}, \
            {"mean": jnp.zeros((c,), jnp.float32), "var": jnp.ones((c,), jnp.float32)}

    def apply(params, state, x, *, train=False, key=None):
        if train:
            y, mean, var = ops.batch_norm(x, params["gamma"], params["beta"], eps, axis=axis)
            mean, var = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)
            new = {"mean": momentum * state["mean"] + (1 - momentum) * mean,
                   "var": momentum * state["var"] + (1 - momentum) * var}
            return y, new
        y = ops.batch_norm_eval(x, params["gamma"], params["beta"], state["mean"], state["var"], eps, axis=axis)
        return y.astype(x.dtype), state

    return Layer(init, apply, "bn")


def Activation(name, *, ops=custom_ops, **kwargs):
    """Elementwise ``relu``, ``sigmoid``, ``tanh`` or ``leaky_relu`` (shape
    unchanged), or an op of your own (a ``@jaxbp.op``: its twin
    ``name.autodiff`` when ``ops`` is :mod:`jaxbp.autodiff`); ``kwargs`` go to
    the op (``keep=`` for relu, ``negative_slope=``)."""
    if callable(name):
        if not hasattr(name, "autodiff"):
            raise TypeError(f"Activation: an op of your own must be decorated with @jaxbp.op (it gives the "
                            f"twin the autodiff model runs), got {getattr(name, '__name__', type(name).__name__)}")
        fn, name = (name.autodiff if ops is autodiff else name), name.__name__
    else:
        fn = getattr(ops, name)
    return _stateless(lambda key, shape: (shape, {}), lambda p, x: fn(x, **kwargs), name)


def MaxPool2D(window, stride=None, padding=0, *, ops=custom_ops, layout="NCHW"):
    return _pool(ops.max_pool2d, window, stride, padding, layout, "max_pool")


def AvgPool2D(window, stride=None, padding=0, *, ops=custom_ops, layout="NCHW"):
    return _pool(ops.avg_pool2d, window, stride, padding, layout, "avg_pool")


def _pool(fn, window, stride, padding, layout, kind):
    def init_params(key, shape):
        out = jax.eval_shape(lambda x: fn(x, window, stride, padding, layout=layout),
                             jax.ShapeDtypeStruct(shape, jnp.float32))
        return out.shape, {}

    return _stateless(init_params, lambda p, x: fn(x, window, stride, padding, layout=layout), kind)


def GlobalAvgPool2D(*, ops=custom_ops, layout="NCHW"):
    """``(N, C, H, W) -> (N, C)``: ``ops.avg_pool2d`` with one window over the
    whole image (its backward rule spreads ``δY / (H·W)`` back), then the
    window axes dropped."""
    (ah, aw), ch = ((2, 3), 1) if layout == "NCHW" else ((1, 2), 3)

    def apply(p, x):
        y = ops.avg_pool2d(x, (x.shape[ah], x.shape[aw]), layout=layout)
        return y.reshape(y.shape[0], y.shape[ch])

    return _stateless(lambda key, shape: ((shape[0], shape[ch]), {}), apply, "avg_pool")


def Residual(main, shortcut=None, *, ops=custom_ops, keep="mask"):
    """``relu(main(x) + shortcut(x))``; the identity shortcut when ``shortcut`` is
    ``None``. Params and state ``{"main": ..., "shortcut": ...}``; the sum's
    gradient goes to both branches unchanged (its rule is JAX's: an addition).
    ``keep``: what the relu keeps (``ops.relu``'s ``keep``)."""
    def init(key, shape):
        k_main, k_short = jax.random.split(key)
        out, p_main, s_main = main.init(k_main, shape)
        _, p_short, s_short = shortcut.init(k_short, shape) if shortcut else (shape, {}, {})
        return out, {"main": p_main, "shortcut": p_short}, {"main": s_main, "shortcut": s_short}

    def apply(params, state, x, *, train=False, key=None):
        k_main, k_short = (None, None) if key is None else jax.random.split(key)
        y, s_main = main.apply(params["main"], state["main"], x, train=train, key=k_main)
        s, s_short = (shortcut.apply(params["shortcut"], state["shortcut"], x, train=train, key=k_short)
                      if shortcut else (x, {}))
        return ops.relu(y + s, keep=keep), {"main": s_main, "shortcut": s_short}

    return Layer(init, apply, "block", (main,) + ((shortcut,) if shortcut else ()))


def Flatten():
    """``(N, ...) -> (N, prod(...))``."""
    return _stateless(lambda key, shape: ((shape[0], math.prod(shape[1:])), {}),
                      lambda p, x: x.reshape(x.shape[0], -1), "flatten")


def Transpose(perm):
    """Permute axes, e.g. NCHW -> NHWC once at a model's edge."""
    return _stateless(lambda key, shape: (tuple(shape[i] for i in perm), {}),
                      lambda p, x: x.transpose(perm), "transpose")


def Dropout(rate, *, ops=custom_ops):
    """``ops.dropout`` in training (zero each entry with probability ``rate``,
    scale the rest by ``1/(1 − rate)``); identity in evaluation. Needs ``key``
    when training."""
    def apply(params, state, x, *, train=False, key=None):
        if not train or rate == 0:
            return x, state
        if key is None:
            raise ValueError("Dropout needs a PRNG key when train=True (pass key=...)")
        return ops.dropout(x, rate, key), state

    return Layer(lambda key, shape: (shape, {}, {}), apply, "dropout")


def serial(*layers):
    """Chain layers; params and state are lists with one entry per layer."""
    def init(key, shape):
        params, state = [], []
        for layer, k in zip(layers, jax.random.split(key, len(layers))):
            shape, p, s = layer.init(k, shape)
            params.append(p)
            state.append(s)
        return shape, params, state

    def apply(params, state, x, *, train=False, key=None):
        keys = [None] * len(layers) if key is None else list(jax.random.split(key, len(layers)))
        new_state = []
        for layer, p, s, k in zip(layers, params, state, keys):
            x, s = layer.apply(p, s, x, train=train, key=k)
            new_state.append(s)
        return x, new_state

    return Layer(init, apply, "serial", tuple(layers))


def mlp(num_classes=10, hidden=(256, 256), *, gradients="custom", activation="relu",
        batch_norm=True, dropout=0.0):
    """Flatten, then ``[dense, (batch norm), activation, (dropout)]`` per hidden
    width, then a dense layer to the logits."""
    ops = namespace(gradients)
    init = "he" if activation in ("relu", "leaky_relu") else "glorot"
    body = [Flatten()]
    for width in hidden:
        body.append(Dense(width, ops=ops, init=init, bias=not batch_norm))
        if batch_norm:
            body.append(BatchNorm(ops=ops))
        body.append(Activation(activation, ops=ops, **_keep(activation, dropout == 0)))
        if dropout:
            body.append(Dropout(dropout, ops=ops))
    return serial(*body, Dense(num_classes, ops=ops, init="glorot"))


def _keep(activation, next_keeps_input):
    """relu's ``keep`` in a model: its output where the next layer keeps its
    input anyway (a conv or dense layer; ``max_pool2d`` and ``dropout`` keep
    their own masks), for no memory of its own; else its one-bit mask.
    As options for :func:`Activation` (none for other activations)."""
    return {"keep": "output" if next_keeps_input else "mask"} if activation == "relu" else {}


# The two orders of a cnn block: pooling last (the classic), or right after the
# convolution, so that batch norm and relu see a quarter of the values. relu and
# max commute, and so does batch norm with a positive scale given its
# statistics; the difference is that these are taken after pooling.
CNN_BLOCKS = ("conv-bn-relu-pool", "conv-pool-bn-relu")


def cnn(num_classes=10, channels=(32, 64), *, gradients="custom", layout="NHWC",
        algorithm=custom_ops.DEFAULT_ALGORITHM, dense=128, dropout=0.0, block=CNN_BLOCKS[0]):
    """``[conv 3×3 SAME, batch norm, relu, max pool 2×2]`` per channel count
    (``block="conv-pool-bn-relu"``: the pooling right after the conv), then
    flatten, dense + relu, (dropout), dense to logits. Input NCHW."""
    if block not in CNN_BLOCKS:
        raise ValueError(f"block must be one of {', '.join(CNN_BLOCKS)}, got {block!r}")
    ops = namespace(gradients)
    body = [Transpose((0, 2, 3, 1))] if layout == "NHWC" else []
    axis = 3 if layout == "NHWC" else 1
    for c in channels:
        conv = Conv2D(c, 3, 1, "SAME", ops=ops, layout=layout, algorithm=algorithm, bias=False)
        # pooling last: relu's output goes to the pool; first: to a conv or dense layer
        bn, relu = BatchNorm(ops=ops, axis=axis), Activation("relu", ops=ops, **_keep("relu", block != CNN_BLOCKS[0]))
        pool = MaxPool2D(2, ops=ops, layout=layout)
        body += [conv, bn, relu, pool] if block == CNN_BLOCKS[0] else [conv, pool, bn, relu]
    body += [Flatten(), Dense(dense, ops=ops), Activation("relu", ops=ops, **_keep("relu", not dropout))]
    body += [Dropout(dropout, ops=ops)] if dropout else []
    body += [Dense(num_classes, ops=ops, init="glorot")]
    return serial(*body)


def resnet(num_classes=10, widths=(16, 32, 64), blocks=3, *, gradients="custom", layout="NHWC",
           algorithm=custom_ops.DEFAULT_ALGORITHM, stem=None):
    """A CIFAR-style residual network (He et al. 2016): a 3×3 conv stem, then per
    width ``blocks`` basic blocks ``conv 3×3, bn, relu, conv 3×3, bn`` added to a
    shortcut and passed through relu — the first block of every stage after the
    first halves the resolution (stride 2) with a 1×1 conv + bn projection
    shortcut (also wherever the width changes) — then global average pooling and
    one dense layer to the logits. Input NCHW. With ``algorithm="auto"`` a
    projection shortcut takes the algorithm of its block's first conv, which
    reads the same input (:func:`Conv2D`'s ``beside``).

    ``resnet20``: widths 16/32/64, 3 blocks each (0.27 M parameters);
    ``resnet18``: widths 64/128/256/512, 2 blocks each (11.2 M parameters).
    """
    ops = namespace(gradients)
    axis = 3 if layout == "NHWC" else 1
    conv = lambda c, k, s, beside=None: Conv2D(c, k, s, "SAME" if k > 1 else 0, ops=ops, layout=layout,
                                               algorithm=algorithm, bias=False, beside=beside)
    bn = lambda: BatchNorm(ops=ops, axis=axis)
    relu = lambda: Activation("relu", ops=ops, **_keep("relu", True))   # each goes to a conv
    stem = widths[0] if stem is None else stem
    body = [Transpose((0, 2, 3, 1))] if layout == "NHWC" else []
    body += [conv(stem, 3, 1), bn(), relu()]
    width_in = stem
    for stage, width in enumerate(widths):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            main = serial(conv(width, 3, stride), bn(), relu(), conv(width, 3, 1), bn())
            project = stride != 1 or width != width_in
            shortcut = serial(conv(width, 1, stride, beside=(width, 3, stride)), bn()) if project else None
            last = stage == len(widths) - 1 and block == blocks - 1   # its relu goes to the pooling
            body.append(Residual(main, shortcut, ops=ops, **_keep("relu", not last)))
            width_in = width
    body += [GlobalAvgPool2D(ops=ops, layout=layout), Dense(num_classes, ops=ops, init="glorot")]
    return serial(*body)


def resnet20(num_classes=10, **kwargs):
    """CIFAR ResNet-20: widths 16/32/64, 3 basic blocks each."""
    return resnet(num_classes, (16, 32, 64), 3, **kwargs)


def resnet18(num_classes=10, **kwargs):
    """ResNet-18 widths (64/128/256/512, 2 basic blocks each) with the CIFAR stem (3×3, stride 1)."""
    return resnet(num_classes, (64, 128, 256, 512), 2, **kwargs)


class Model(typing.NamedTuple):
    """One entry of the model registry (:data:`MODELS`): everything training,
    ``jaxbp bench`` and ``jaxbp gradcheck`` ask about a model.

    ``build(num_classes, *, gradients, **options) -> Layer``; ``options``: the
    options the model reads (of ``width``, ``block``, ``dropout``, ``layout``,
    ``algorithm``) with their defaults — any other is refused;
    ``input_shape``: the ``(C, H, W)`` images it is made for (bench's batch,
    gradcheck's inputs); ``data``: the data sets it is made for; ``summary``:
    one line for the documentation."""
    build: typing.Callable
    options: dict
    input_shape: tuple
    data: tuple = ()
    summary: str = ""


MODELS: dict = {}
"""name -> :class:`Model`: the models ``jaxbp train --model``, ``Config``,
``jaxbp bench`` and ``jaxbp gradcheck`` know. :func:`register_model` adds one."""

MODEL_OPTIONS = ("width", "block", "dropout", "layout", "algorithm")


def register_model(name, model):
    """Add ``model`` (a :class:`Model`) under ``name``; a name is registered once."""
    if not isinstance(model, Model):
        raise TypeError(f"register_model takes a jaxbp.layers.Model, got {type(model).__name__}")
    if name in MODELS:
        raise ValueError(f"model {name!r} is already registered")
    unknown = sorted(set(model.options) - set(MODEL_OPTIONS))
    if unknown:
        raise ValueError(f"model {name!r}: unknown options {unknown}; a model reads some of {MODEL_OPTIONS}")
    if len(model.input_shape) != 3:
        raise ValueError(f"model {name!r}: input_shape must be one image's (C, H, W), got {model.input_shape}")
    MODELS[name] = model
    return model


def model_entry(name):
    """The registry entry of model ``name``; ``ValueError`` naming the known ones."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name]


def ignored_options(name, options):
    """The options given (not ``None``) that model ``name`` does not read, sorted."""
    return sorted(k for k, v in options.items() if v is not None and k not in model_entry(name).options)


def model_options(name, *, deterministic=False, **options):
    """Model ``name``'s options: its defaults, then ``options`` (``None``: the
    default). ``ValueError`` for an option the model does not read: it would be
    silently ignored. ``deterministic``: dropout off where the model has it
    (bench and gradcheck, whose steps must not depend on a draw)."""
    entry, ignored = model_entry(name), ignored_options(name, options)
    if ignored:
        reads = ", ".join(entry.options) or "none"
        raise ValueError(f"model {name!r} has no option {', '.join(ignored)} (it reads: {reads}); "
                         f"leave {'it' if len(ignored) == 1 else 'them'} out")
    chosen = {**entry.options, **{k: v for k, v in options.items() if v is not None}}
    return {**chosen, "dropout": 0.0} if deterministic and "dropout" in chosen else chosen


def build_model(name, num_classes, *, gradients="custom", **options):
    """Model ``name`` of the registry with ``options`` (:func:`model_options`)."""
    return model_entry(name).build(num_classes, gradients=gradients, **model_options(name, **options))


_CONV = dict(layout="NHWC", algorithm=custom_ops.DEFAULT_ALGORITHM)
register_model("cnn", Model(
    lambda k, *, gradients, width, block, dropout, layout, algorithm: cnn(
        k, (width, 2 * width), dense=4 * width, dropout=dropout, block=block, gradients=gradients, layout=layout,
        algorithm=algorithm),
    dict(width=32, block=CNN_BLOCKS[0], dropout=0.5, **_CONV), (1, 28, 28), ("digits", "mnist", "fashion-mnist"),
    "two conv blocks (width, 2·width channels), a dense layer of 4·width, dropout"))
register_model("mlp", Model(
    lambda k, *, gradients, width, dropout: mlp(k, (width, width), gradients=gradients, dropout=dropout),
    dict(width=256, dropout=0.5), (1, 28, 28), ("digits", "mnist", "fashion-mnist"),
    "two hidden dense layers of width units, batch norm, relu, dropout"))
register_model("resnet20", Model(lambda k, *, gradients, **conv: resnet20(k, gradients=gradients, **conv),
                                 dict(_CONV), (3, 32, 32), ("cifar10",), "CIFAR ResNet-20 (0.27 M parameters)"))
register_model("resnet18", Model(lambda k, *, gradients, **conv: resnet18(k, gradients=gradients, **conv),
                                 dict(_CONV), (3, 32, 32), ("cifar10",), "ResNet-18 with a CIFAR stem (11.2 M)"))
