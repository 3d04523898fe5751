"""Data parallelism on JAX's SPMD engine: 8 CPU devices give what 1 device gives."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbp import data, train
from jaxbp.train import Config

needs8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices (XLA_FLAGS in conftest)")


def digits(n_train, n_test=100):
    d = data.load_digits()
    return data.Dataset(d.x_train[:n_train], d.y_train[:n_train], d.x_test[:n_test], d.y_test[:n_test], 10)


@pytest.mark.slow
@needs8
@pytest.mark.parametrize("model,dtype,tol,state_tol", [
    ("cnn", "float64", 1e-12, 1e-12), ("mlp", "float64", 1e-12, 1e-12), ("mlp", "float32", 1e-5, 1e-5),
    # Max pooling routes δY to an arg-max, a discontinuous choice: where two
    # entries of a window are within float32 rounding, the two summation orders
    # (one device, eight) can pick different ones, and that step moves one
    # gradient entry (seen here at step 19: 5e-7 relative before, 2e-3 in Adam's
    # moments after). Float64 shows the math is the same; float32 shows the
    # losses stay within rounding and the parameters close.
    ("cnn", "float32", 1e-5, 1e-3)])
def test_eight_devices_equal_one_device(model, dtype, tol, state_tol):
    ds = digits(20 * 32)  # one epoch = 20 steps of a global batch of 32
    cfg = dict(model=model, dtype=dtype, batch_size=32, epochs=1)  # batch norm, dropout, shifts
    one = train.fit(Config(devices=1, **cfg), dataset=ds, quiet=True)
    eight = train.fit(Config(devices=8, **cfg), dataset=ds, quiet=True)
    assert len(one.step_losses) == 20
    np.testing.assert_allclose(eight.step_losses, one.step_losses, rtol=tol)
    sharding = jax.tree.leaves(eight.state.params)[0].sharding
    assert len(sharding.device_set) == 8 and sharding.is_fully_replicated
    compared = (eight.state, one.state) if state_tol == tol else (eight.state.params, one.state.params)
    for a, b in zip(*map(jax.tree.leaves, compared), strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert np.linalg.norm(a - b) <= state_tol * max(np.linalg.norm(b), 1e-30)
    assert eight.history[0]["test_accuracy"] == pytest.approx(one.history[0]["test_accuracy"])


@needs8
def test_batch_must_divide_over_devices():
    with pytest.raises(ValueError, match="batch_size must be a multiple of the 8 devices, got 12"):
        Config(devices=8, batch_size=12).validate()
    with pytest.raises(ValueError, match=r"devices \(--devices\) must be at most the 8 available device"):
        Config(devices=9).validate()


def shard_map_fn():
    try:
        from jax import shard_map
    except ImportError:  # older JAX
        from jax.experimental.shard_map import shard_map
    return shard_map


def batch_norm_both_ways(axis_name, twin=False):
    """Statistics and gradients of one batch-norm loss, computed globally (plain
    jit) and as the sum of 8 devices' losses in shard_map (grad taken outside)."""
    import jaxbp
    from jax.sharding import Mesh, PartitionSpec as P
    from helpers import normal
    x, gamma, beta, ct = normal(3, (16, 3, 4, 4), (3,), (3,), (16, 3, 4, 4))
    x = 2.0 * x + 1.0
    op = jaxbp.autodiff.batch_norm if twin else jaxbp.batch_norm
    devices = 8

    def loss(x, gamma, beta, ct, name, share=1):
        y, mean, var = op(x, gamma, beta, axis_name=name)
        # The statistics are the same on every device: each adds its share.
        return jnp.vdot(y, ct) + (jnp.sum(mean ** 2) + jnp.sum(var)) / share, (mean, var)

    mesh = Mesh(np.array(jax.devices()[:devices]), ("batch",))

    def total(x, gamma, beta, ct):
        def per_device(x, gamma, beta, ct):
            value, stats = loss(x, gamma, beta, ct, axis_name, devices)
            # Without axis_name the statistics are per device: one row each.
            return jax.lax.psum(value, "batch"), stats if axis_name else jax.tree.map(lambda s: s[None], stats)
        stats_spec = P() if axis_name else P("batch")
        return shard_map_fn()(per_device, mesh=mesh, in_specs=(P("batch"), P(), P(), P("batch")),
                              out_specs=(P(), stats_spec))(x, gamma, beta, ct)

    grads = lambda f: jax.jit(jax.grad(f, argnums=(0, 1, 2), has_aux=True))
    global_grads, global_stats = grads(lambda *a: loss(*a, None))(x, gamma, beta, ct)
    sharded_grads, sharded_stats = grads(total)(x, gamma, beta, ct)
    return global_grads, global_stats, sharded_grads, sharded_stats


@needs8
@pytest.mark.parametrize("twin", [False, True])
def test_shard_map_batch_norm_psums_equal_the_global_path(twin):
    global_grads, global_stats, grads, stats = batch_norm_both_ways("batch", twin)
    for a, b in zip(stats + grads, global_stats + global_grads):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


@needs8
def test_dropping_the_psum_is_caught():
    global_grads, global_stats, grads, stats = batch_norm_both_ways(None)  # per-device statistics
    assert not np.allclose(stats[0], global_stats[0], rtol=1e-3)
    assert not np.allclose(grads[0], global_grads[0], rtol=1e-3)


@pytest.mark.slow
def test_cli_trains_on_eight_devices(tmp_path):
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    r = subprocess.run([sys.executable, "-m", "jaxbp.cli", "train", "--devices", "8", "--epochs", "1",
                        "--run-dir", str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "epoch   1/1" in r.stdout and "final test accuracy" in r.stdout


def _shard_map_cases():
    """(op, args, kwargs, argnums, spec per arg): the batch axis (0) of every
    batched argument split over 8 devices, the rest replicated."""
    from helpers import normal
    import jaxbp
    from jaxbp.ops import ALGORITHMS
    B, R = "batch", None
    x4, w4, b4 = normal(20, (8, 3, 5, 5), (4, 3, 3, 3), (4,))
    xh = x4.transpose(0, 2, 3, 1)
    x2, w2, b2 = normal(21, (8, 6), (5, 6), (5,))
    logits, soft = normal(22, (8, 5), (8, 5))
    cases = {"dense": (jaxbp.dense, (x2, w2, b2), {}, (0, 1, 2), (B, R, R)),
             "dense_no_bias": (jaxbp.dense, (x2, w2, None), {}, (0, 1), (B, R, R))}
    for alg in ALGORITHMS:
        for layout, x in (("NCHW", x4), ("NHWC", xh)):
            cases[f"conv2d_{alg}_{layout}"] = (jaxbp.conv2d, (x, w4, b4),
                                               {"stride": 1 if alg == "winograd" else 2, "padding": 1, "algorithm": alg,
                                                "layout": layout}, (0, 1, 2), (B, R, R))
    cases.update({
        "max_pool2d": (jaxbp.max_pool2d, (x4,), {"window": 2}, (0,), (B,)),
        "avg_pool2d": (jaxbp.avg_pool2d, (xh,), {"window": 3, "stride": 1, "padding": 1, "layout": "NHWC"},
                       (0,), (B,)),
        "batch_norm": (jaxbp.batch_norm, (x4, b4[:3], b4[1:]), {"axis_name": "batch"}, (0, 1, 2), (B, R, R)),
        "softmax_cross_entropy": (jaxbp.softmax_cross_entropy, (logits, jnp.abs(soft)), {}, (0, 1), (B, B)),
        "softmax_cross_entropy_labels": (jaxbp.softmax_cross_entropy, (logits, jnp.arange(8) % 5), {},
                                         (0,), (B, B)),
        "euclidean_loss": (jaxbp.euclidean_loss, (x2, 2 * x2), {}, (0, 1), (B, B)),
        "mse": (jaxbp.mse, (x2, b2[None, :1] * x2), {}, (0, 1), (B, B)),
    })
    for name in ("relu", "leaky_relu", "sigmoid", "tanh", "gelu", "silu", "softmax", "log_softmax"):
        cases[name] = (getattr(jaxbp, name), (x2,), {}, (0,), (B,))
    cases["relu_keep_output"] = (jaxbp.relu, (x2,), {"keep": "output"}, (0,), (B,))
    cases["layer_norm"] = (jaxbp.layer_norm, (x2, w2[0] + 1.0, w2[1]), {}, (0, 1, 2), (B, R, R))
    cases["batch_norm_eval"] = (jaxbp.batch_norm_eval, (x4, b4[:3], b4[1:], b4[:3] - 1, 1 + b4[1:] ** 2), {},
                                (0, 1, 2, 3, 4), (B, R, R, R, R))
    # dropout is left out: per-device masks from one key are not the global mask.
    return cases


SHARD_MAP_CASES = _shard_map_cases()


def test_the_shard_map_cases_cover_every_op_but_dropout():
    import jaxbp
    assert {c[0].__name__ for c in SHARD_MAP_CASES.values()} == set(jaxbp.ops.__all__) - {"dropout"}


@needs8
@pytest.mark.parametrize("name", list(SHARD_MAP_CASES))
def test_every_op_under_shard_map_with_default_checks_equals_one_device(name):
    """shard_map with its default type checks (check_vma=True): the gradient of the
    total loss w.r.t. every argument, replicated ones included, equals the
    single-device gradient."""
    from jax.sharding import Mesh, PartitionSpec as P
    from helpers import normal
    op, args, kwargs, argnums, specs = SHARD_MAP_CASES[name]
    mesh = Mesh(np.array(jax.devices()[:8]), ("batch",))
    single = {k: v for k, v in kwargs.items() if k != "axis_name"}
    y = jax.eval_shape(lambda *a: op(*a, **single), *args)
    out = y[0] if isinstance(y, tuple) else y  # batch norm: y, not the statistics
    (ct,) = normal(23, out.shape)

    def full(args, kw):
        o = op(*args, **kw)
        return jnp.vdot(o[0] if isinstance(o, tuple) else o, ct)

    def with_diff(diff):
        a = list(args)
        for i, d in zip(argnums, diff):
            a[i] = d
        return a

    def total(*diff):
        def per_device(a, ct_shard):
            o = op(*a, **kwargs)
            return jax.lax.psum(jnp.vdot(o[0] if isinstance(o, tuple) else o, ct_shard), "batch")
        in_specs = ([P(s) if s else P() for s in specs], P("batch"))
        return shard_map_fn()(per_device, mesh=mesh, in_specs=in_specs, out_specs=P())(with_diff(diff), ct)

    diff = tuple(args[i] for i in argnums)
    expected = jax.jit(jax.grad(lambda *d: full(with_diff(d), single), argnums=range(len(diff))))(*diff)
    got = jax.jit(jax.grad(total, argnums=range(len(diff))))(*diff)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape and g.dtype == e.dtype
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12)
