"""The three checks every op gets: twin, finite differences, composition.

A :class:`Case` is one op applied to fixed arguments; ``argnums`` names the
arguments differentiated. The custom op is ``case.op``, its twin
``case.op.autodiff``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gzip
import importlib.util
import os
import pathlib
import socket
import subprocess
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxbp.data import cifar, idx

TWIN_TOL = 1e-10       # float64, first order
TWIN_TOL_2ND = 1e-10   # float64, grad of grad (worst measured 5.8e-12)


@dataclasses.dataclass
class Case:
    op: Callable
    args: tuple
    argnums: tuple
    kwargs: dict = dataclasses.field(default_factory=dict)

    def fn(self, impl):
        def f(*diff):
            args = list(self.args)
            for i, d in zip(self.argnums, diff):
                args[i] = d
            return impl(*args, **self.kwargs)
        return f

    @property
    def diff(self):
        return tuple(self.args[i] for i in self.argnums)


def normal(seed, *shapes, dtype=jnp.float64):
    """Standard normal arrays, one per shape, from NumPy's generator: JAX's
    would compile a program for every new shape (~0.1 s each, hundreds of
    shapes in the suite)."""
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.standard_normal(s), dtype) for s in shapes)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def assert_close_trees(a, b, tol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.shape == y.shape and x.dtype == y.dtype, (x.shape, x.dtype, y.shape, y.dtype)
        assert rel_err(x, y) <= tol, rel_err(x, y)


def _cotangent(y, seed=7):
    leaves, tree = jax.tree.flatten(y)
    return tree.unflatten(normal(seed, *[l.shape for l in leaves], dtype=leaves[0].dtype))


def vjp(case, impl):
    """Primal and pullback of a random cotangent, in one compiled computation."""
    f = case.fn(impl)
    ct = _cotangent(jax.eval_shape(f, *case.diff))

    @jax.jit
    def run(diff, ct):
        y, pullback = jax.vjp(f, *diff)
        return y, pullback(ct)

    return run(case.diff, ct)


def scalar_loss(case, impl):
    """A scalar of the op's outputs with fixed random weights (for grad of grad)."""
    f = case.fn(impl)
    w = _cotangent(jax.eval_shape(f, *case.diff), seed=11)
    return lambda *d: sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(f(*d)), jax.tree.leaves(w)))


def assert_twin(case):
    """Custom VJP vs autodiff twin in float64: same primal, gradients within TWIN_TOL."""
    y, g = vjp(case, case.op)
    y_twin, g_twin = vjp(case, case.op.autodiff)
    assert_close_trees(y, y_twin, 1e-14)  # same forward; fusion may reorder a sum
    assert_close_trees(g, g_twin, TWIN_TOL)


FD_EPS, FD_TOL = 1e-4, 1e-5   # jax.test_util.check_grads' step and float64 tolerance


def assert_first_order(case):
    """:func:`assert_twin` and the finite-difference check of
    ``jax.test_util.check_grads(f, args, order=1, modes=["rev"])`` in one
    compiled program (half the compile time of the four programs they took):
    the custom and twin VJPs of a random cotangent ``c``, and the central
    difference of ``<c, f>`` along a random direction ``v``, which must equal
    ``<VJP(c), v>`` (check_grads' step and float64 tolerance)."""
    f, twin = case.fn(case.op), case.fn(case.op.autodiff)
    ct = _cotangent(jax.eval_shape(f, *case.diff))
    v = normal(13, *[d.shape for d in case.diff])

    @jax.jit
    def run(diff, ct, v):
        y, g = (lambda out: (out[0], out[1](ct)))(jax.vjp(f, *diff))
        y_twin, g_twin = (lambda out: (out[0], out[1](ct)))(jax.vjp(twin, *diff))
        at = lambda s: jax.tree.leaves(f(*(d + s * FD_EPS * u for d, u in zip(diff, v))))
        numeric = sum(jnp.vdot(c, (p - m) / (2 * FD_EPS)) for c, p, m in zip(jax.tree.leaves(ct), at(1), at(-1)))
        return y, g, y_twin, g_twin, numeric, sum(jnp.vdot(gi, vi) for gi, vi in zip(g, v))

    y, g, y_twin, g_twin, numeric, analytic = run(case.diff, ct, v)
    assert_close_trees(y, y_twin, 1e-14)  # same forward; fusion may reorder a sum
    assert_close_trees(g, g_twin, TWIN_TOL)
    np.testing.assert_allclose(analytic, numeric, rtol=FD_TOL, atol=FD_TOL, err_msg="VJP vs central differences")


def assert_second_order(case):
    """grad of (grad · v): custom vs twin within TWIN_TOL_2ND."""
    v = normal(5, *[d.shape for d in case.diff])

    def hvp(impl):
        grad = jax.grad(scalar_loss(case, impl), argnums=tuple(range(len(case.diff))))
        return jax.grad(lambda *d: sum(jnp.vdot(a, b) for a, b in zip(grad(*d), v)),
                        argnums=tuple(range(len(case.diff))))(*case.diff)

    assert_close_trees(jax.jit(lambda: hvp(case.op))(), jax.jit(lambda: hvp(case.op.autodiff))(),
                       TWIN_TOL_2ND)


def assert_composes(case, batched=True):
    """Under jit, checkpoint and vmap the custom gradients stay the same."""
    loss = scalar_loss(case, case.op)
    grad = jax.grad(loss, argnums=tuple(range(len(case.diff))))
    expected = jax.jit(grad)(*case.diff)
    remat = jax.jit(jax.grad(jax.checkpoint(loss), argnums=tuple(range(len(case.diff)))))
    assert_close_trees(remat(*case.diff), expected, 1e-12)
    # vmap over a new leading axis of two stacked copies (the second one scaled).
    stacked = tuple(jnp.stack([d, 0.5 * d]) for d in case.diff)
    per_example = jax.jit(jax.vmap(grad))(*stacked)
    for i, scale in enumerate((1.0, 0.5)):
        one = jax.jit(grad)(*(scale * d for d in case.diff))
        assert_close_trees([p[i] for p in per_example], one, 1e-12)


def assert_sharded(case, batch_args):
    """jit with the batch axis of ``batch_args`` sharded over all devices."""
    devices = jax.devices()
    mesh = Mesh(np.array(devices), ("batch",))
    args = list(case.diff)
    for i in batch_args:
        assert args[i].shape[0] % len(devices) == 0
        args[i] = jax.device_put(args[i], NamedSharding(mesh, P("batch")))
    grad = jax.jit(jax.grad(scalar_loss(case, case.op), argnums=tuple(range(len(args)))))
    sharded = grad(*args)
    assert len(args[batch_args[0]].sharding.device_set) == len(devices)
    assert_close_trees(sharded, grad(*case.diff), 1e-12)


FIRST_ORDER = {"twin_and_finite_differences": assert_first_order}
COMPOSITION = {"second_order": assert_second_order, "composes": assert_composes}


def gradient_test(cases, composition=None):
    """One parametrized test: every case x the first-order checks, and the cases
    named in ``composition`` (default: all) x grad-of-grad and jit/vmap/checkpoint."""
    import pytest

    composition = list(cases) if composition is None else composition
    assert set(composition) <= set(cases), set(composition) - set(cases)
    params = [(n, c) for n in cases for c in FIRST_ORDER]
    params += [(n, c) for n in composition for c in COMPOSITION]

    @pytest.mark.parametrize("name,check", params)
    def test_gradients(name, check):
        {**FIRST_ORDER, **COMPOSITION}[check](cases[name])

    return test_gradients


def sharded_test(cases, batch_args=(0,)):
    """jit over all devices with the batch sharded, for the cases whose batch is 8."""
    import pytest

    @pytest.mark.skipif(jax.device_count() < 2, reason="needs several devices")
    @pytest.mark.parametrize("name", list(cases))
    def test_sharded(name):
        assert_sharded(cases[name], batch_args)

    return test_sharded


def conv_stack_temp(depth, x_shape, gradients="custom", algorithm="implicit", keep="mask"):
    """Compiled temporary bytes of the gradient of ``depth`` conv → batch norm →
    relu layers (16 channels, NHWC; relu's ``keep``) on an ``x_shape`` batch: what XLA keeps."""
    from jaxbp import layers
    ops = layers.namespace(gradients)
    net = layers.serial(*[layer for _ in range(depth) for layer in (
        layers.Conv2D(16, 3, ops=ops, layout="NHWC", bias=False, algorithm=algorithm),
        layers.BatchNorm(ops=ops, axis=3), layers.Activation("relu", ops=ops, keep=keep))])
    x = jax.random.normal(jax.random.key(0), x_shape, jnp.float32)
    _, params, state = net.init(jax.random.key(1), x.shape)
    grad = jax.jit(jax.grad(lambda p: net.apply(p, state, x, train=True)[0].sum()))
    return grad.lower(params).compile().memory_analysis().temp_size_in_bytes


def write_idx(path, array):
    """Write ``array`` as an IDX file (gzip if ``path`` ends in .gz), as MNIST's files are."""
    code = {np.dtype(v).newbyteorder("="): k for k, v in idx.IDX_TYPES.items()}[array.dtype]
    payload = (bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
               + array.astype(np.dtype(idx.IDX_TYPES[code])).tobytes())
    with (gzip.open if str(path).endswith(".gz") else open)(path, "wb") as f:
        f.write(payload)


def write_mnist_dir(path, n_train=12, n_test=5, gz=False):
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    arrays = {"train_images": rng.integers(0, 256, (n_train, 6, 5), dtype=np.uint8),
              "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
              "test_images": rng.integers(0, 256, (n_test, 6, 5), dtype=np.uint8),
              "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8)}
    for key, stem in idx.IDX_FILES.items():
        write_idx(str(path / (stem + suffix)), arrays[key])
    return arrays


def write_cifar_dir(path, n_per_batch=4, n_test=6, seed=0):
    """CIFAR-10 in its exact published format, tiny: ``path/cifar-10-batches-py/``
    with five training batches and a test batch, each a protocol-2 pickle of a
    dict with byte-string keys, ``b"data"`` an ``(N, 3072)`` uint8 array (the R,
    G, B planes of each 32×32 image) and ``b"labels"`` a list of ints."""
    import pickle
    rng = np.random.default_rng(seed)
    folder = path / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in cifar.CIFAR_BATCHES["train"] + cifar.CIFAR_BATCHES["test"]:
        n = n_test if name == "test_batch" else n_per_batch
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in rng.integers(0, 10, n)],
                 b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"filenames": [f"img{i}.png".encode() for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        written[name] = batch
    return written


def load_benchmark(name):
    """A script of benchmarks/ (``name`` without ``.py``) as a module, for tests
    that check it still runs against the code it measures."""
    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def command_env(**extra_env):
    """The environment a user's shell would give a ``jaxbp`` process: without
    the tests' JAX settings (float64, XLA flags), plus ``extra_env``."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_ENABLE_X64")}
    env.update(extra_env)
    return env


@contextlib.contextmanager
def running(*commands, **popen):
    """``subprocess.Popen`` of each command; every one still running when the
    block ends (a failed assertion, a ``communicate`` timeout) is killed and
    reaped, so no child outlives its test."""
    procs = []
    try:
        for cmd in commands:
            procs.append(subprocess.Popen(cmd, **popen))
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


@contextlib.contextmanager
def reserved_port():
    """A local TCP port held for the block: bound with ``SO_REUSEPORT`` (which
    JAX's coordinator, a gRPC server, also sets), so the coordinator can bind it
    while no other process, another test worker's included, can take it first."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]
