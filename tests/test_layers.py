"""Layers and models (jaxbp.layers) and the precision policy they run under."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbp import layers, precision
from jaxbp.ops import auto_algorithm
from helpers import assert_close_trees, normal

KEY = jax.random.PRNGKey(0)


@pytest.mark.parametrize("layer,in_shape,out_shape,params", [
    (layers.Dense(5), (2, 3), (2, 5), {"w": (5, 3), "b": (5,)}),
    (layers.Dense(5, bias=False), (2, 3), (2, 5), {"w": (5, 3)}),
    (layers.Conv2D(4, 3, 2, "SAME"), (2, 3, 7, 6), (2, 4, 4, 3), {"w": (4, 3, 3, 3), "b": (4,)}),
    (layers.Conv2D(4, (3, 2), layout="NHWC", bias=False), (2, 7, 6, 3), (2, 7, 6, 4), {"w": (4, 3, 3, 2)}),
    (layers.MaxPool2D(2), (2, 3, 8, 6), (2, 3, 4, 3), {}),
    (layers.AvgPool2D(3, 1, 1, layout="NHWC"), (2, 5, 5, 3), (2, 5, 5, 3), {}),
    (layers.BatchNorm(axis=1), (4, 3, 2, 2), (4, 3, 2, 2), {"gamma": (3,), "beta": (3,)}),
    (layers.Flatten(), (2, 3, 4, 5), (2, 60), {}),
    (layers.Activation("leaky_relu", negative_slope=0.2), (2, 3), (2, 3), {}),
    (layers.Conv2D(6, 3, dilation=2, groups=3, bias=False), (2, 3, 7, 6), (2, 6, 7, 6), {"w": (6, 1, 3, 3)}),
    (layers.GlobalAvgPool2D(layout="NHWC"), (2, 5, 4, 3), (2, 3), {}),
    (layers.Residual(layers.serial(layers.Conv2D(4, 3, 2), layers.BatchNorm()),
                     layers.serial(layers.Conv2D(4, 1, 2, 0))), (2, 3, 6, 6), (2, 4, 3, 3),
     {"main": [{"w": (4, 3, 3, 3), "b": (4,)}, {"gamma": (4,), "beta": (4,)}],
      "shortcut": [{"w": (4, 3, 1, 1), "b": (4,)}]}),
])
def test_init_shapes_match_apply(layer, in_shape, out_shape, params):
    shape, p, state = layer.init(KEY, in_shape)
    assert tuple(shape) == out_shape
    assert jax.tree.map(jnp.shape, p) == params
    x = normal(1, in_shape, dtype=jnp.float32)[0]
    y, _ = layer.apply(p, state, x, train=True)
    assert y.shape == out_shape


@pytest.mark.parametrize("name,blocks,projections,params", [("resnet20", 9, 2, 272_474),
                                                            ("resnet18", 8, 3, 11_173_962)])
def test_resnets_have_their_published_shape(name, blocks, projections, params):
    """ResNet-20: 0.27 M parameters (He et al. 2016, table 6); ResNet-18 with CIFAR stem: 11.2 M."""
    model = layers.build_model(name, 10)
    shapes = {}

    def init():
        shapes["out"], p, _ = model.init(KEY, (2, 3, 32, 32))
        return p

    p, out = jax.eval_shape(init), shapes["out"]  # traced only: no arrays allocated
    residual = [l for l in model.children if l.kind == "block"]
    assert out == (2, 10) and len(residual) == blocks
    assert sum(len(l.children) == 2 for l in residual) == projections
    assert sum(int(np.prod(a.shape)) for a in jax.tree.leaves(p)) == params


def test_cnn_block_orders():
    kinds = lambda model: [l.kind for l in model.children]
    assert kinds(layers.cnn(10, (4,)))[1:5] == ["conv", "bn", "relu", "max_pool"]
    assert kinds(layers.cnn(10, (4,), block="conv-pool-bn-relu"))[1:5] == ["conv", "max_pool", "bn", "relu"]
    with pytest.raises(ValueError, match="block must be one of conv-bn-relu-pool, conv-pool-bn-relu, got 'x'"):
        layers.cnn(10, block="x")


def test_param_names_number_each_kind():
    model = layers.cnn(10)
    assert [n for n, p in zip(layers.param_names(model), model.init(KEY, (2, 1, 8, 8))[1]) if p] == [
        "conv1", "bn1", "conv2", "bn2", "dense1", "dense2"]


@pytest.mark.parametrize("build,channels", [
    (lambda g: layers.cnn(10, (4, 8), gradients=g, dense=16), 1),
    (lambda g: layers.cnn(10, (4, 8), gradients=g, dense=16, block="conv-pool-bn-relu", algorithm="explicit"), 1),
    (lambda g: layers.mlp(10, (16, 16), gradients=g), 1),
    (lambda g: layers.cnn(10, (4, 8), gradients=g, dense=16, algorithm="winograd"), 1),
    (lambda g: layers.resnet(10, (4, 8), 1, gradients=g), 3)],
    ids=["cnn", "cnn-pool-first", "cnn-winograd", "mlp", "resnet"])
def test_custom_and_autodiff_models_agree(build, channels):
    """The same parameters through both namespaces: same outputs, gradients
    within float64 rounding."""
    x = normal(2, (4, channels, 8, 8))[0]
    custom, twin = build("custom"), build("autodiff")
    _, params, state = custom.init(KEY, x.shape)
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)

    def loss(model, p):
        return jnp.sum(model.apply(p, state, x, train=True)[0] ** 2)

    # jit: one compilation each instead of op-by-op dispatch (the suite's time)
    assert_close_trees(jax.jit(jax.grad(lambda p: loss(custom, p)))(params),
                       jax.jit(jax.grad(lambda p: loss(twin, p)))(params), 1e-10)
    # Agreement alone would pass with the twins on both sides: the custom model's
    # forward must call the hand-derived rules (custom_vjp), one per op, the twin's none.
    calls = lambda model: str(jax.make_jaxpr(lambda p: loss(model, p))(params)).count("custom_vjp_call")
    assert calls(custom) >= len(custom.children) // 2 and calls(twin) == 0, (calls(custom), calls(twin))


@pytest.mark.slow
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="auto mixes algorithms on CPUs only")
def test_auto_layers_compute_what_they_choose():
    """A cnn with algorithm="auto" is the same function as with the explicit conv
    (float64: outputs and gradients to rounding), and its traced program holds
    the algorithms auto chose: conv 1 (one input channel) im2col's patch matrix
    forward and an XLA convolution backward, conv 2 (32·14·14 positions) XLA
    convolutions and no patch matrix."""
    x = normal(3, (32, 1, 28, 28))[0]
    auto, explicit = (layers.cnn(10, (64, 8), dense=16, algorithm=a) for a in ("auto", "explicit"))
    layer_shapes = (((32, 1, 28, 28), (64, 1, 3, 3)), ((32, 64, 14, 14), (8, 64, 3, 3)))
    assert [auto_algorithm(*shapes) for shapes in layer_shapes] == [("explicit", "implicit"), "implicit"]
    _, params, state = auto.init(KEY, x.shape)
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)

    def loss(model, p):
        return jnp.sum(model.apply(p, state, x, train=True)[0] ** 2)

    assert_close_trees(jax.grad(lambda p: loss(auto, p))(params), jax.grad(lambda p: loss(explicit, p))(params),
                       1e-12)
    text, fixed = (str(jax.make_jaxpr(lambda p: loss(m, p))(params)) for m in (auto, explicit))
    assert "f64[32,28,28,9,1]" in text                                 # X̃ of conv 1 (NHWC): 9 columns
    assert "f64[32,14,14,9,64]" in fixed and "f64[32,14,14,9,64]" not in text   # X̃ of conv 2, explicit only
    assert "conv_general_dilated" in text and "conv_general_dilated" not in fixed


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="auto mixes algorithms on CPUs only")
def test_a_projection_shortcut_under_auto_takes_its_blocks_first_conv_algorithm():
    """ResNet-20 at batch 128 kept more with auto than with the implicit conv
    everywhere: its 1×1 projection shortcut, explicit by its own shape, read the
    block's input beside the block's implicit strided conv, and XLA kept that
    input both as it is and transposed (8 MiB here). Beside it, the shortcut
    takes that conv's algorithm; the same structure, smaller: one block per
    stage. Within 0.1 %: the same buffers alive at the peak (auto's stem
    differs) may pack into XLA's heap a few KiB apart (16 KiB of 96 MiB here)."""
    x = jnp.zeros((128, 3, 32, 32), jnp.float32)
    block_input, shortcut, first = (128, 16, 32, 32), (32, 16, 1, 1), (32, 16, 3, 3)
    assert auto_algorithm(block_input, shortcut, 2) == "explicit"
    assert auto_algorithm(block_input, first, 2) == auto_algorithm(block_input, shortcut, 2, beside=(first, 2)) \
        == "implicit"

    def temp(algorithm):
        net = layers.resnet(10, (16, 32), 1, algorithm=algorithm)
        _, params, state = net.init(KEY, x.shape)
        grad = jax.jit(jax.grad(lambda p: net.apply(p, state, x, train=True)[0].sum()))
        return grad.lower(params).compile().memory_analysis().temp_size_in_bytes

    assert temp("auto") <= 1.001 * temp("implicit")
    with pytest.raises(ValueError, match=r"beside must be \(features, kernel, stride\) of the other conv layer, "
                       r"e.g. \(32, 3, 2\); got \(32, 3\)"):
        layers.Conv2D(32, 1, 2, beside=(32, 3))


def test_batch_norm_uses_running_statistics_in_evaluation():
    layer = layers.BatchNorm(axis=1, momentum=0.5)
    _, p, state = layer.init(KEY, (6, 3))
    x = normal(3, (6, 3))[0] * 2 + 1
    _, new = layer.apply(p, state, x, train=True)
    np.testing.assert_allclose(new["mean"], 0.5 * np.asarray(x).mean(0), rtol=1e-12)
    y1, _ = layer.apply(p, new, x[:1], train=False)
    y6, _ = layer.apply(p, new, x, train=False)
    np.testing.assert_allclose(y1, y6[:1], rtol=1e-12)  # an example's output does not depend on its batch


def test_dropout_needs_a_key_and_scales():
    layer = layers.Dropout(0.5)
    x = jnp.ones((1000,))
    with pytest.raises(ValueError, match="Dropout needs a PRNG key"):
        layer.apply({}, {}, x, train=True)
    y, _ = layer.apply({}, {}, x, train=True, key=KEY)
    assert set(np.unique(np.asarray(y))) == {0.0, 2.0}
    assert layer.apply({}, {}, x, train=False)[0] is x


@pytest.mark.parametrize("name,params,compute,output", [("float32", "float32", "float32", "float32"),
                                                        ("bfloat16", "float32", "bfloat16", "float32"),
                                                        ("float64", "float64", "float64", "float64")])
def test_precision_policy(name, params, compute, output):
    policy = precision.Policy.named(name)
    assert (policy.params, policy.compute, policy.output) == tuple(map(jnp.dtype, (params, compute, output)))
    tree = {"w": jnp.ones((2, 2), jnp.float32)}
    assert policy.stored(tree)["w"].dtype == policy.params and policy.computed(tree)["w"].dtype == policy.compute


def test_bfloat16_model_computes_in_bfloat16_from_float32_params():
    """Layers do not cast: an op promotes its arguments, so the policy casts the
    parameters once, at the model's edge."""
    model = layers.mlp(10, hidden=(8,))
    _, params, state = model.init(KEY, (4, 1, 8, 8))
    policy = precision.Policy.named("bfloat16")
    x = normal(4, (4, 1, 8, 8), dtype=jnp.float32)[0]
    y, _ = model.apply(policy.computed(params), state, policy.computed(x), train=True)
    assert y.dtype == jnp.bfloat16
    y32, _ = model.apply(params, state, policy.computed(x), train=True)
    assert y32.dtype == jnp.float32  # float32 params promote a bfloat16 input, as JAX does


def test_an_op_of_your_own_as_an_activation_follows_the_models_gradients():
    from user_rules import my_tanh

    def model(gradients):
        ops = layers.namespace(gradients)
        return layers.serial(layers.Dense(4, ops=ops), layers.Activation(my_tanh, ops=ops), layers.Dense(2, ops=ops))
    x = normal(2, (3, 5))[0]
    _, params, state = model("custom").init(KEY, x.shape)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)

    def loss(gradients):
        return lambda p: model(gradients).apply(p, state, x)[0].sum()
    jaxprs = {g: str(jax.make_jaxpr(loss(g))(params)) for g in layers.GRADIENTS}
    assert jaxprs["custom"].count("custom_vjp_call") == 3 and "custom_vjp" not in jaxprs["autodiff"]
    assert_close_trees(jax.grad(loss("custom"))(params), jax.grad(loss("autodiff"))(params), 1e-12)
    with pytest.raises(TypeError, match="Activation: an op of your own must be decorated with @jaxbp.op"):
        layers.Activation(jnp.tanh)
