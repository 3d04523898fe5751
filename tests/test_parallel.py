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


@needs8
@pytest.mark.parametrize("model", ["cnn", "mlp"])
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 1e-5)])
def test_eight_devices_equal_one_device(model, dtype, tol):
    ds = digits(20 * 32)  # one epoch = 20 steps of a global batch of 32
    cfg = dict(model=model, dtype=dtype, batch_size=32, epochs=1)  # batch norm, dropout, shifts
    one = train.fit(Config(devices=1, **cfg), dataset=ds, quiet=True)
    eight = train.fit(Config(devices=8, **cfg), dataset=ds, quiet=True)
    assert len(one["step_losses"]) == 20
    np.testing.assert_allclose(eight["step_losses"], one["step_losses"], rtol=tol)
    sharding = jax.tree.leaves(eight["state"].params)[0].sharding
    assert len(sharding.device_set) == 8 and sharding.is_fully_replicated
    for a, b in zip(jax.tree.leaves(eight["state"]), jax.tree.leaves(one["state"]), strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert np.linalg.norm(a - b) <= tol * max(np.linalg.norm(b), 1e-30)
    assert eight["history"][0]["test_accuracy"] == pytest.approx(one["history"][0]["test_accuracy"])


@needs8
def test_batch_must_divide_over_devices():
    with pytest.raises(ValueError, match="batch_size must be a multiple of the 8 devices, got 12"):
        Config(devices=8, batch_size=12).validate()
    with pytest.raises(ValueError, match="devices must be at most the 8 available device"):
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
            return jax.lax.psum(value, "batch"), stats
        return shard_map_fn()(per_device, mesh=mesh, in_specs=(P("batch"), P(), P(), P("batch")),
                              out_specs=(P(), P()), check_vma=False)(x, gamma, beta, ct)

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
