import concurrent.futures
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxbp
from jaxbp import data, layers, train
from jaxbp.train import Config
from jaxbp.train.loop import _check_finite
from helpers import load_benchmark


# Bitwise equality is a CPU property: on GPUs XLA's autotuned kernels and atomic
# reductions differ between compilations (seen on an H200: ~1e-7 differences; the uint8 and
# float runs below are two compilations, and differed there).
cpu_only = pytest.mark.skipif(jax.default_backend() != "cpu", reason="bitwise reproducibility is promised on CPU")


def epoch_batches(n, batch_size, key, epoch):
    """The batches ``fit`` trains on in epoch ``epoch`` (0-based), to replay them step by step."""
    return jax.jit(train.epoch_order, static_argnums=(2, 3))(key, epoch * (n // batch_size), n, batch_size)


def small_digits(n_train=320, n_test=100):
    d = data.load_digits()
    return data.Dataset(d.x_train[:n_train], d.y_train[:n_train], d.x_test[:n_test], d.y_test[:n_test], 10)


def trajectory(cfg, ds, steps):
    """Losses of the first ``steps`` train steps, and the final params."""
    model = train.build_model(cfg, ds.num_classes)
    opt = train.build_optimizer(cfg, len(ds.x_train) // cfg.batch_size)
    ts = train.new_state(model, cfg, opt, ds.x_train.shape[1:])
    step = train.make_steps(model, opt, cfg).train
    losses, batches = [], np.asarray(epoch_batches(len(ds.x_train), cfg.batch_size, ts.key, 0))
    for idx in batches[:steps]:
        x = ds.x_train[idx].astype(np.float64 if cfg.dtype == "float64" else np.float32)
        if not losses:   # which rules the model runs: the hand-derived ones are custom_vjp calls
            forward = lambda p: model.apply(p, ts.state, x, train=True, key=jax.random.PRNGKey(0))
            rules = str(jax.make_jaxpr(forward)(ts.params)).count("custom_vjp_call")
        ts, m = step(ts, x, ds.y_train[idx])
        losses.append(float(m["loss"]))
    return np.array(losses), ts.params, rules


@pytest.mark.slow
@pytest.mark.parametrize("gradients", ["custom", "autodiff"])
def test_a_compiled_epoch_equals_its_steps_one_at_a_time(monkeypatch, gradients):
    """fit() runs an epoch as compiled chunks of steps (lax.scan over batches
    gathered from the device-resident data, or on CPUs the twin's written out;
    here a chunk of 8, then one of 5); the same batches given to the train step
    one at a time give the same losses and parameters."""
    steps = 13
    from jaxbp.train import loop
    monkeypatch.setattr(loop, "chunk_size", lambda n, unrolled: 8)
    ds = small_digits(n_train=16 * steps)
    cfg = Config(model="cnn", dtype="float64", batch_size=16, epochs=1, devices=1, gradients=gradients)
    result = train.fit(cfg, dataset=ds, quiet=True)
    losses, params, _ = trajectory(cfg, ds, steps)
    np.testing.assert_allclose(result.step_losses, losses, rtol=1e-12)
    for a, b in zip(jax.tree.leaves(result.state.params), jax.tree.leaves(params)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
@cpu_only
@pytest.mark.parametrize("devices", [1, 8])
def test_uint8_pixels_train_and_evaluate_exactly_as_their_floats(devices):
    """Data sets of 8-bit pixels stay uint8 on the device(s) and each batch
    becomes float32 there (data.to_unit); a run on them equals, bitwise, a run
    on the floats the loader used to make on the host, also data-parallel."""
    d = small_digits(n_train=64, n_test=40)
    pixels = d._replace(x_train=np.round(d.x_train * 255).astype(np.uint8),
                        x_test=np.round(d.x_test * 255).astype(np.uint8))
    floats = pixels._replace(x_train=pixels.x_train.astype(np.float32) / np.float32(255),
                             x_test=pixels.x_test.astype(np.float32) / np.float32(255))
    cfg = Config(model="cnn", batch_size=16, epochs=1, devices=devices, augment=1)
    a, b = (train.fit(cfg, dataset=ds, quiet=True) for ds in (pixels, floats))
    assert a.history[-1]["test_loss"] == b.history[-1]["test_loss"]
    for x, y in zip(jax.tree.leaves(a.state), jax.tree.leaves(b.state)):
        np.testing.assert_array_equal(x, y)


def test_the_epoch_order_is_a_permutation_per_epoch_drawn_from_the_key():
    key, n, b = jax.random.PRNGKey(3), 103, 10  # 10 batches; 3 examples left out each epoch
    first, second = (np.asarray(epoch_batches(n, b, key, e)) for e in (0, 1))
    for order in (first, second):
        assert order.shape == (10, 10) and order.dtype == np.int32
        assert len(set(order.ravel())) == 100 and 0 <= order.min() and order.max() < n
    assert not np.array_equal(first, second)
    # What the chunk program sees mid-epoch: the epoch is step // steps_per_epoch.
    np.testing.assert_array_equal(train.epoch_order(key, 17, n, b), second)
    assert not np.array_equal(epoch_batches(n, b, jax.random.PRNGKey(4), 0), first)


def test_chunks_divide_the_epoch_when_they_can():
    from jaxbp.train.loop import chunk_size
    assert [chunk_size(n) for n in (44, 1875, 390, 67, 5, 469)] == [44, 25, 39, 64, 5, 64]
    # Written out step by step: one program, at most 4 steps, whatever divides the epoch.
    assert [chunk_size(n, unrolled=True) for n in (44, 1875, 390, 67, 5, 16)] == [4, 3, 3, 1, 1, 4]


@pytest.mark.parametrize("gradients", ["custom", "autodiff"])
def test_the_twins_chunk_on_cpus_is_no_loop(gradients):
    """XLA:CPU runs the twin's backward convolutions inside a loop through its
    generic loop nest (10-30× slower per step, BENCHMARKS.md): on CPUs its chunk
    is written out, step by step; the rules' (stated in XLA:CPU's fast order)
    stays one loop."""
    cfg = Config(model="cnn", width=4, batch_size=4, gradients=gradients)
    model, opt = train.build_model(cfg, 10), optax.sgd(0.1)
    steps = train.make_steps(model, opt, cfg)
    ts = train.new_state(model, cfg, opt, (1, 8, 8))
    x, y = jnp.zeros((16, 1, 8, 8), jnp.float32), jnp.zeros((16,), jnp.int32)
    order = jnp.arange(16, dtype=jnp.int32).reshape(4, 4)
    convs = {n: steps.chunk.lower(ts, x, y, order, length=n).as_text().count("stablehlo.convolution")
             for n in (1, 3)}   # in a loop's body once; written out, once per step
    unrolled = gradients == "autodiff" and jax.default_backend() == "cpu"
    assert convs[1] > 0 and convs[3] == (3 if unrolled else 1) * convs[1], convs
    assert steps.unrolled == unrolled


def test_a_new_runs_first_chunk_compiles_from_shapes_beside_its_initial_state(monkeypatch):
    """fit starts compiling a new run's first chunk from the initial state's
    shapes before the state's own program compiles and runs (the two side by
    side, BENCHMARKS.md), and trains with that program, not a second one."""
    from jaxbp.train import loop
    events, real_initial, real_start, real_get = [], loop.initial_state, loop._Programs.start, loop._Programs.get

    def initial_state(*args):
        shapes, make = real_initial(*args)
        assert all(isinstance(a, jax.ShapeDtypeStruct) for a in jax.tree.leaves(shapes))
        return shapes, lambda: (events.append("state computed"), make())[1]

    def start(self, fn, *args, **static):
        events.append(("started", fn.__name__, static))
        return real_start(self, fn, *args, **static)

    def get(self, fn, *args, **static):
        events.append(("got", fn.__name__, static, isinstance(self.programs.get((fn, tuple(static.items()))),
                                                               concurrent.futures.Future)))
        return real_get(self, fn, *args, **static)
    monkeypatch.setattr(loop, "initial_state", initial_state)
    monkeypatch.setattr(loop._Programs, "start", start)
    monkeypatch.setattr(loop._Programs, "get", get)
    result = train.fit(Config(model="mlp", batch_size=32, epochs=1), dataset=small_digits(), quiet=True)
    assert len(result.step_losses) == 10
    assert events[:2] == [("started", "train_steps", {"length": 10}), "state computed"], events
    assert [e for e in events if e[:2] == ("got", "train_steps")] == [("got", "train_steps", {"length": 10}, True)]


def test_a_resumed_run_and_an_evaluation_read_the_checkpoint_into_shapes_not_a_new_state(tmp_path, monkeypatch):
    """Resuming and evaluating a run read its checkpoint into the state's shapes
    (initial_state's first half); neither computes an initial state to throw away."""
    from jaxbp.train import evaluation, loop
    cfg = dict(model="mlp", batch_size=32, epochs=2, run_dir=str(tmp_path / "run"))
    first = train.fit(Config(**cfg), dataset=small_digits(), quiet=True, max_epochs=1)

    def shapes_only(*args):
        shapes, _ = train.initial_state(*args)
        return shapes, lambda: pytest.fail("an initial state was computed")
    monkeypatch.setattr(loop, "initial_state", shapes_only)
    monkeypatch.setattr(evaluation, "initial_state", shapes_only)
    resumed = train.fit(Config(resume=True, **cfg), dataset=small_digits(), quiet=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2] and resumed.history[0] == first.history[0]
    monkeypatch.setattr(evaluation.data_lib, "load", lambda *a: small_digits())
    result = train.evaluate_run(cfg["run_dir"], picture=False)
    assert (result.epoch, result.accuracy) == (2, resumed.test_accuracy)


def test_evaluation_is_one_call_over_padded_batches():
    """eval_set pads the last batch and masks it: the totals are those of the
    real rows only, for any batch size."""
    ds = small_digits(n_train=64, n_test=37)
    cfg = Config(model="mlp", dtype="float64", epochs=1)
    model = train.build_model(cfg, 10)
    params, state, _ = train.init_state(model, cfg, ds.x_train.shape[1:])
    steps = train.make_steps(model, train.build_optimizer(cfg, 1), cfg)
    results = [train.evaluate(steps.eval, params, state, train.eval_set(ds.x_test, ds.y_test, b), predictions=True)
               for b in (10, 64)]
    logits, _ = model.apply(params, state, ds.x_test.astype(np.float64), train=False)
    loss = float(np.mean(jaxbp.softmax_cross_entropy(logits, ds.y_test)))
    for got_loss, got_acc, predicted in results:
        np.testing.assert_allclose(got_loss, loss, rtol=1e-12)
        np.testing.assert_array_equal(predicted, np.argmax(logits, -1))
        assert got_acc == np.mean(np.argmax(logits, -1) == ds.y_test)


@pytest.mark.parametrize("model", ["cnn", "mlp"])
def test_custom_and_autodiff_training_follow_the_same_trajectory(model):
    ds = small_digits()
    cfg = dict(model=model, dtype="float64", batch_size=16, epochs=1, optimizer="adam", lr=1e-2)
    losses_c, params_c, rules_c = trajectory(Config(gradients="custom", **cfg), ds, 20)
    losses_a, params_a, rules_a = trajectory(Config(gradients="autodiff", **cfg), ds, 20)
    assert rules_c >= 3 and rules_a == 0, (rules_c, rules_a)   # else the two runs compare nothing
    assert losses_c[-1] < losses_c[0]  # it is learning
    # float64, measured: losses 4e-16 apart, parameters 1e-11 (Adam divides by
    # √v, which magnifies rounding differences in the smallest gradients).
    assert np.max(np.abs(losses_c - losses_a) / np.abs(losses_a)) <= 1e-13
    for c, a in zip(jax.tree.leaves(params_c), jax.tree.leaves(params_a)):
        np.testing.assert_allclose(c, a, rtol=1e-9, atol=1e-13)


@pytest.mark.slow
@cpu_only
def test_resume_equals_straight_run_bitwise(tmp_path):
    ds = small_digits(n_train=192)
    cfg = dict(epochs=4, batch_size=32)
    straight = train.fit(Config(run_dir=str(tmp_path / "a"), **cfg), dataset=ds, quiet=True)
    train.fit(Config(run_dir=str(tmp_path / "b"), **cfg), dataset=ds, quiet=True, max_epochs=2)
    resumed = train.fit(Config(run_dir=str(tmp_path / "b"), resume=True, **cfg), dataset=ds, quiet=True)
    for a, b in zip(jax.tree.leaves(straight.state), jax.tree.leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [1, 2, 3, 4]
    assert [json.loads(l)["train_loss"] for l in lines] == [r["train_loss"] for r in straight.history]


@pytest.mark.slow
@cpu_only
def test_resume_from_a_checkpoint_written_mid_epoch_equals_a_straight_run_bitwise(tmp_path, monkeypatch, capsys):
    """With checkpoint_every, a checkpoint is also written after the chunk that
    reaches each multiple of it (here chunks of 4 steps, every 6: after step 8
    of each 12-step epoch, i.e. steps 8 and 20; the chunk ending at step 12
    reaches 12 too, but that is the epoch's end, which has its own checkpoint).
    Resumed from the run directory as a kill right after the one at step 20
    leaves it, the run continues mid-epoch and ends bitwise where an
    uninterrupted one does, the interrupted epoch's mean loss included."""
    import shutil
    from jaxbp.train import checkpoint, loop
    monkeypatch.setattr(loop, "chunk_size", lambda n, unrolled: 4)
    ds = small_digits(n_train=12 * 16)
    cfg = dict(epochs=2, batch_size=16, checkpoint_every=6)
    real_save, written = checkpoint.save, []

    def save_and_snapshot(directory, step, tree, metadata=None, **kw):
        path = real_save(directory, step, tree, metadata, **kw)
        written.append((step, metadata))
        if step == 20:  # the directory as the kill would leave it
            shutil.copytree(tmp_path / "a", tmp_path / "killed")
        return path

    monkeypatch.setattr(checkpoint, "save", save_and_snapshot)
    straight = train.fit(Config(run_dir=str(tmp_path / "a"), **cfg), dataset=ds, quiet=True)
    assert [s for s, _ in written] == [8, 12, 20, 24]
    assert written[2][1] == {"epoch": 0, "in_epoch": 8, "losses": straight.step_losses[12:20],
                             "history": straight.history[:1]}
    assert sorted(os.listdir(tmp_path / "a" / "checkpoints")) == ["ckpt-000000020", "ckpt-000000024"]
    monkeypatch.setattr(checkpoint, "save", real_save)
    capsys.readouterr()
    resumed = train.fit(Config(run_dir=str(tmp_path / "killed"), resume=True, **cfg), dataset=ds)
    assert "resumed from the checkpoint at step 20, 8 steps into epoch 2" in capsys.readouterr().out
    assert resumed.step_losses == straight.step_losses[20:]  # the epoch's last 4 steps only
    for a, b in zip(jax.tree.leaves(straight.state), jax.tree.leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    lines = [json.loads(l) for l in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [1, 2]
    for key in ("train_loss", "test_loss", "step"):
        assert [l[key] for l in lines] == [r[key] for r in straight.history]


@pytest.mark.slow   # a training run into a run directory: the end-to-end lane
def test_run_directory_contents(tmp_path):
    ds = small_digits(n_train=128)
    train.fit(Config(model="mlp", epochs=2, run_dir=str(tmp_path)), dataset=ds, quiet=True)
    records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    first = {"startup_seconds", "data_seconds", "setup_seconds", "compile_seconds"}
    assert {"epoch", "train_loss", "test_loss", "test_accuracy", "seconds", "elapsed"} | first <= set(records[0])
    assert not first & set(records[1])  # the process's start-up is reported once
    # elapsed: wall seconds since the process started, so more than this epoch's own seconds.
    assert records[0]["elapsed"] > records[0]["seconds"] > records[0]["compile_seconds"] > 0
    # Start-up (process start to the first step) holds the data and setup phases, and
    # elapsed holds the start-up and the first epoch.
    r = records[0]
    assert 0 <= r["data_seconds"] and 0 < r["setup_seconds"]
    assert r["data_seconds"] + r["setup_seconds"] < r["startup_seconds"]
    # Nothing runs between the start-up's end and the first epoch's start: the
    # gap is the order of the calls (≥ 0, up to the two clocks' microseconds),
    # bounded loosely so that a loaded machine does not fail it.
    assert -1e-3 <= r["elapsed"] - (r["startup_seconds"] + r["seconds"]) < 1.0
    assert records[1]["elapsed"] > records[0]["elapsed"]
    assert json.loads((tmp_path / "config.json").read_text())["model"] == "mlp"
    png = (tmp_path / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image
    assert matplotlib.image.imread(str(tmp_path / "curves.png")).shape[:2] == (400, 1000)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["ckpt-000000004", "ckpt-000000008"]


@pytest.mark.slow
def test_stop_at_accuracy_ends_the_run_at_the_first_evaluation_reaching_it(tmp_path, capsys):
    ds = small_digits(n_train=128)
    cfg = dict(model="mlp", epochs=30, batch_size=32, lr=1e-2)
    full = train.fit(Config(**cfg), dataset=ds, quiet=True)
    accuracies = [r["test_accuracy"] for r in full.history]
    target = sorted(accuracies)[len(accuracies) // 2]  # reached part-way through
    first = next(i for i, a in enumerate(accuracies) if a >= target) + 1
    capsys.readouterr()
    stopped = train.fit(Config(stop_at_accuracy=target, run_dir=str(tmp_path), **cfg), dataset=ds, quiet=True)
    assert len(stopped.history) == first < 30 and stopped.test_accuracy >= target
    assert f"at epoch {first}: " in capsys.readouterr().out  # said even with quiet
    assert [r["train_loss"] for r in stopped.history] == [r["train_loss"] for r in full.history[:first]]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["cnn", "mlp"])
def test_evaluation_of_an_example_does_not_depend_on_its_batch(model):
    ds = small_digits()
    m = train.build_model(Config(model=model), 10)
    _, params, state = m.init(jax.random.PRNGKey(0), (1, 1, 8, 8))
    # Non-trivial running statistics, as after training.
    _, state = m.apply(params, state, ds.x_train[:64], train=True, key=jax.random.PRNGKey(1))
    predict = jax.jit(lambda x: m.apply(params, state, x, train=False)[0])
    alone = predict(ds.x_test[:1])
    for others in (ds.x_test[1:16], 100 * ds.x_test[16:48]):
        together = predict(np.concatenate([ds.x_test[:1], others]))
        # float32 (the default policy): XLA blocks a matmul by its batch size, so
        # the sums are ordered differently; float64 is checked in test_layers.py.
        np.testing.assert_allclose(together[:1], alone, rtol=1e-5, atol=1e-6)


def test_batch_norm_uses_running_statistics_with_documented_momentum():
    bn = layers.BatchNorm(momentum=0.9)
    _, params, state = bn.init(None, (4, 3))
    x = jnp.arange(12.0).reshape(4, 3)
    _, new = bn.apply(params, state, x, train=True)
    # The state starts in float32: 0.9 · 1.0 is rounded there (2.4e-8 of the result).
    np.testing.assert_allclose(new["mean"], 0.1 * x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(new["var"], 0.9 + 0.1 * x.var(0), rtol=1e-7)


def test_regularizer_reaches_weights_not_logits():
    params = [{"w": jnp.ones((2, 3)), "b": jnp.ones(2)}, {"gamma": jnp.ones(2), "beta": jnp.zeros(2)}]
    g = jax.grad(train.regularizer)(params, 0.5)
    assert g[0]["w"].tolist() == (0.5 * jnp.ones((2, 3))).tolist()
    assert g[0]["b"].tolist() == [0.0, 0.0] and g[1]["gamma"].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("field,value", [("epochs", 0), ("batch_size", -1), ("lr", 0.0), ("lr", float("nan")),
                                         ("model", "resnet"), ("optimizer", "lbfgs"), ("gradients", "numeric"),
                                         ("dropout", 1.0), ("stop_at_accuracy", 1.5), ("stop_at_accuracy", 0.0),
                                         ("flip", "yes"), ("augment", -1)])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=f"{field} must be"):
        Config(**{field: value}).validate()


@pytest.mark.parametrize("backend, entry", [("cpu", "cpu"), ("gpu", "accelerator"), ("tpu", "accelerator")])
def test_a_data_sets_recipe_changes_only_the_defaults(backend, entry):
    from jaxbp.train.config import RECIPES
    assert Config.for_data("digits", backend) == Config()
    assert Config.for_data("digits", backend).width == RECIPES["digits", "cnn"][entry]["width"]
    assert Config.for_data("cifar10", backend) == Config(data="cifar10")
    cfg = Config.for_data("mnist", backend, epochs=5, seed=3)
    assert cfg.epochs == 5 and cfg.seed == 3 and cfg.data == "mnist"
    recipe = RECIPES["mnist", "cnn"][entry]
    assert all(getattr(cfg, k) == v for k, v in recipe.items() if k != "epochs")
    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    untouched = set(defaults) - set(recipe) - {"epochs", "seed", "data"}
    assert all(getattr(cfg, k) == defaults[k] for k in untouched)
    # The recipe is the cnn's: another model on MNIST keeps its own defaults.
    assert Config.for_data("mnist", backend, model="mlp") == Config(data="mnist", model="mlp") \
        and Config(data="mnist", model="mlp").width is None


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_the_recipe_follows_the_backend_jax_computes_on(monkeypatch, backend):
    from jaxbp.train.config import RECIPES
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    cfg = Config.for_data("mnist")
    entry = RECIPES["mnist", "cnn"]["cpu" if backend == "cpu" else "accelerator"]
    assert all(getattr(cfg, k) == v for k, v in entry.items())


def test_batch_larger_than_data_is_an_error():
    with pytest.raises(ValueError, match="batch_size 504 is larger than the training set \\(128 examples\\)"):
        train.fit(Config(batch_size=504), dataset=small_digits(n_train=128), quiet=True)


@pytest.mark.slow
@cpu_only
def test_same_seed_gives_bitwise_identical_params():
    ds = small_digits(n_train=96)
    a = train.fit(Config(epochs=1), dataset=ds, quiet=True).state
    b = train.fit(Config(epochs=1), dataset=ds, quiet=True).state
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam", "adamw"])
def test_every_optimizer_lowers_the_loss(optimizer):
    ds = small_digits(n_train=128)
    lr = {"sgd": 0.1, "momentum": 0.05}.get(optimizer, 3e-3)
    r = train.fit(Config(model="mlp", epochs=3, optimizer=optimizer, lr=lr, warmup_epochs=0), dataset=ds,
                  quiet=True)
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]


def test_first_non_finite_step_and_quantity_are_named():
    t, f = jnp.bool_(True), jnp.bool_(False)
    _check_finite([(t, t), (t, t)], 40)  # all finite: no error
    with pytest.raises(train.NonFiniteError, match="non-finite gradients at step 42"):
        _check_finite([(t, t), (t, f), (f, f)], 40)
    with pytest.raises(train.NonFiniteError, match="non-finite loss at step 41"):
        _check_finite([(f, t), (f, f)], 40)
    with pytest.raises(train.NonFiniteError, match=r"non-finite state \(parameters, optimizer state or running "
                                                   r"statistics\) at step 43"):
        _check_finite([(t, t, t), (t, t, t), (t, t, f)], 40)


@pytest.mark.slow   # three whole training runs into run directories: the end-to-end lane
def test_a_run_directory_holds_one_run(tmp_path):
    """The Python API keeps the rules of the command line: a used directory is
    refused unless overwrite=True; resume refuses a config that changes the run."""
    from jaxbp.train import rundir
    ds = small_digits(n_train=64)
    cfg = dict(model="mlp", epochs=1, run_dir=str(tmp_path))
    train.fit(Config(**cfg), dataset=ds, quiet=True)
    with pytest.raises(rundir.RunDirError, match="already holds a run"):
        train.fit(Config(seed=5, **cfg), dataset=ds, quiet=True)
    with pytest.raises(rundir.RunDirError, match=r"seed=5 \(--seed 5\) conflicts with the run in .*, which has seed 0"):
        train.fit(Config(seed=5, resume=True, **cfg), dataset=ds, quiet=True)
    train.fit(Config(seed=5, overwrite=True, **cfg), dataset=ds, quiet=True)
    assert json.loads((tmp_path / "config.json").read_text())["seed"] == 5
    with pytest.raises(rundir.RunDirError, match="does not exist: there is no run to resume"):
        train.fit(Config(model="mlp", run_dir=str(tmp_path / "nope"), resume=True), dataset=ds, quiet=True)
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize("epochs", [(1,), (1, 2, 3)])
def test_curves_have_integer_epoch_ticks_and_plain_loss_labels(epochs):
    """A 1-epoch run had ticks 0.945…1.065 and loss labels like 2.65×10⁰."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from jaxbp.train.plot import figure
    history = [{"epoch": e, "train_loss": 2.65 / e, "test_loss": 2.5 / e, "test_accuracy": 0.5 + 0.1 * e}
               for e in epochs]
    fig = figure(history)
    FigureCanvasAgg(fig).draw()
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks == list(epochs) if len(epochs) == 1 else all(float(t).is_integer() for t in ticks), ticks
        labels = [t.get_text() for t in ax.get_yticklabels() + ax.yaxis.get_minorticklabels()]
        assert labels and not any("times" in t for t in labels), labels


@pytest.mark.slow
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="matches XLA:CPU's event names")
def test_the_step_profiler_lists_the_chunks_operations(capsys):
    """benchmarks/profile_step.py (BENCHMARKS.md's per-operation tables) runs
    on the bundled digits and lists the compiled chunk's operations."""
    load_benchmark("profile_step").main(["--data", "digits", "--chunks", "1", "--top", "1000", "width=8"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "us/step" not in line]
    assert len(rows) > 20   # every operation (which are the slowest five is the machine's noise)
    assert any("transpose(jvp" in row for row in rows)  # the backward pass's operations are named
    assert any("jvp(" in row and "transpose" not in row for row in rows)   # and the forward pass's
    kinds = {cells[4].strip() for cells in (row.split("|") for row in rows) if len(cells) == 11}
    # Each op's operations by its name scope, the conv's products by what they compute.
    assert {"conv2d forward", "conv2d δX", "conv2d δF", "batch_norm forward", "batch_norm backward",
            "relu backward"} <= kinds, kinds


def test_the_step_profiler_times_an_operation_until_its_result_is_ready():
    """XLA:CPU ends a convolution's event when it hands the work to Eigen's
    thread pool and records ``end: <name>`` when the result is ready: the
    profiler read the first event alone, and a ResNet-20 step's convolutions
    came out at 9 % of it (batch 128), their time in whatever ran next. Overlapping spans
    share their time; control flow counts its own event, not its body's."""
    spans = load_benchmark("profile_step").spans
    ops = {"conv.1": {"opcode": "convolution"}, "fusion.2": {"opcode": "fusion"}, "while.3": {"opcode": "while"}}
    alias = {name: name for name in ops}

    def event(name, ts, dur):
        return {"ph": "X", "name": name, "ts": ts, "dur": dur}
    events = [event("while.3", 0, 0.5), event("conv.1", 0, 1), event("fusion.2", 2, 4), event("end: fusion.2", 6, 0),
              event("end: conv.1", 9.5, 0.5), event("end: while.3", 12, 0),
              event("conv.1", 20, 1), event("end: conv.1", 22, 1), {"ph": "M", "name": "thread_name"}]
    total, count = spans(events, alias, ops)
    # [0, 0.5] conv and while; [0.5, 2] conv; [2, 6] conv and fusion; [6, 10] conv; then [20, 23] conv.
    assert total == pytest.approx({"while.3": 0.25, "conv.1": 0.25 + 1.5 + 2 + 4 + 3, "fusion.2": 2})
    assert count == {"conv.1": 2, "fusion.2": 1, "while.3": 1}


@pytest.mark.slow   # a training run into a run directory: the end-to-end lane
def test_resume_before_the_first_checkpoint_starts_the_run_again(tmp_path, capsys):
    """Interrupted before its first checkpoint, a run sent the user in a circle:
    rerun said "use --resume", --resume said "no checkpoint"."""
    from jaxbp.train import rundir
    cfg = Config(model="mlp", epochs=2, run_dir=str(tmp_path / "run"))
    claim = rundir.claim(cfg.run_dir)          # the directory as an interrupted start leaves it
    rundir.write_json(str(tmp_path / "run" / "config.json"), dataclasses.asdict(cfg))
    claim.release()
    result = train.fit(dataclasses.replace(cfg, resume=True), dataset=small_digits(n_train=128))
    assert "the run starts from its beginning" in capsys.readouterr().out
    assert [r["epoch"] for r in result.history] == [1, 2]


@pytest.mark.slow   # a training run, then its resumption: the end-to-end lane
def test_resume_with_more_epochs_says_the_schedule_changes(tmp_path, capsys):
    cfg = Config(model="mlp", epochs=1, run_dir=str(tmp_path / "run"))
    train.fit(cfg, dataset=small_digits(n_train=128), quiet=True)
    capsys.readouterr()
    train.fit(dataclasses.replace(cfg, epochs=2, resume=True), dataset=small_digits(n_train=128))
    assert "the schedule now spans 2 epochs (the run had 1)" in capsys.readouterr().out


def test_jaxbp_train_is_reachable_from_import_jaxbp():
    """`import jaxbp; jaxbp.train.fit(...)` as the README writes it was an AttributeError."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", "import jaxbp; print(jaxbp.train.fit.__name__, jaxbp.data.Dataset)"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("fit "), r.stderr


def test_the_api_applies_the_recipe_the_command_line_applies():
    """`fit(Config(data="mnist"))` ran the 60-epoch default CNN where `jaxbp
    train --data mnist` ran MNIST's recipe."""
    from jaxbp import cli
    a = cli.build_parser().parse_args(["train", "--data", "mnist"])
    a.given = cli._given(["train", "--data", "mnist"])
    given = {k: v for k, v in vars(a).items() if k in a.given and k in Config.__dataclass_fields__}
    assert Config(data="mnist") == Config.for_data("mnist") == Config(**given)
    assert Config(data="mnist").epochs != Config().epochs
    assert Config(data="mnist", epochs=60).epochs == 60   # what is given still wins


@pytest.mark.slow   # several training runs
def test_a_run_resumes_on_another_device_count(tmp_path):
    """A checkpoint holds whole arrays, not shards: a run begun on one device
    goes on on two, and ends where a run on one device throughout ends."""
    ds = small_digits(n_train=256, n_test=64)
    base = dict(model="mlp", dtype="float64", batch_size=32, epochs=2, lr=1e-2)
    first = train.fit(Config(devices=1, run_dir=str(tmp_path), **base), dataset=ds, quiet=True, max_epochs=1)
    second = train.fit(Config(devices=2, run_dir=str(tmp_path), resume=True, **base), dataset=ds, quiet=True)
    alone = train.fit(Config(devices=1, **base), dataset=ds, quiet=True)
    assert [r["epoch"] for r in second.history] == [1, 2] and second.history[0] == first.history[0]
    assert second.history[1]["step"] == 2 * 256 // 32
    # float64: only the order of the batch's sums differs between one device and two.
    for key in ("train_loss", "test_loss"):
        np.testing.assert_allclose(second.history[1][key], alone.history[1][key], rtol=1e-10)


@pytest.mark.slow   # several training runs
def test_bfloat16_training_follows_float32_and_keeps_float32_parameters():
    """The bfloat16 policy computes in bfloat16 and updates float32 parameters:
    its losses stay within a few percent of the float32 run's (measured: 1.3 %)."""
    cfg = dict(model="cnn", width=8, epochs=6, batch_size=32, lr=1e-2, dropout=0.0, warmup_epochs=0.1)
    runs = {dt: train.fit(Config(dtype=dt, **cfg), dataset=small_digits(), quiet=True)
            for dt in ("float32", "bfloat16")}
    low, full = ([r["train_loss"] for r in runs[dt].history] for dt in ("bfloat16", "float32"))
    assert low[-1] < 0.6 * low[0], low
    np.testing.assert_allclose(low, full, rtol=0.05)
    assert {p.dtype for p in jax.tree.leaves(runs["bfloat16"].state.params)} == {jnp.dtype("float32")}
