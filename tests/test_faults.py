"""Crashes and divergence: nothing saved is lost, and a resumed run finishes
exactly as an uninterrupted one (CPU, bitwise)."""
import glob
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxbp.train import checkpoint
from helpers import command_env

ARGS = ["train", "--model", "mlp", "--data", "synthetic", "--batch-size", "128", "--epochs", "8",
        "--quiet", "--augment", "0"]


def env(delay="0", cache=None):
    e = command_env(JAXBP_CHECKPOINT_WRITE_DELAY=delay)  # widen the write window so kills land inside it
    if cache:  # JAX's persistent compilation cache: the 11 processes compile once (same results)
        e.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return e


def jaxbp(run_dir, *extra, delay="0", cache=None):
    return subprocess.run([sys.executable, "-m", "jaxbp.cli", *ARGS, "--run-dir", run_dir, *extra],
                          capture_output=True, text=True, env=env(delay, cache), timeout=300)


def final_arrays(run_dir):
    newest = checkpoint.list_checkpoints(os.path.join(run_dir, "checkpoints"))[-1]
    with np.load(os.path.join(newest, "arrays.npz")) as z:
        return os.path.basename(newest), {k: z[k] for k in z.files}


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(tmp_path):
    reference, cache = str(tmp_path / "reference"), str(tmp_path / "jax_cache")
    assert jaxbp(reference, cache=cache).returncode == 0
    ref_name, ref = final_arrays(reference)
    rng = random.Random(0)
    mid_write = 0
    for trial in range(5):
        run = str(tmp_path / f"trial{trial}")
        proc = subprocess.Popen([sys.executable, "-m", "jaxbp.cli", *ARGS, "--run-dir", run],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env("0.3", cache))
        # Wait for the first complete checkpoint, then kill at a random later moment.
        deadline = time.time() + 120
        while not checkpoint.list_checkpoints(os.path.join(run, "checkpoints")) and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        mid_write += bool(glob.glob(os.path.join(run, "checkpoints", ".tmp-*")))
        r = jaxbp(run, "--resume", cache=cache)
        assert r.returncode == 0, r.stderr
        name, arrays = final_arrays(run)
        assert name == ref_name and arrays.keys() == ref.keys()
        for k in ref:
            np.testing.assert_array_equal(arrays[k], ref[k])
    assert mid_write >= 1, "no kill landed during a checkpoint write"


def test_non_finite_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path):
    """One good epoch is saved; the resumed run meets non-finite inputs in its
    second epoch: it stops naming the step and that checkpoint, which stays."""
    import pytest
    from jaxbp import data, train
    run = str(tmp_path / "run")
    cfg = dict(model="mlp", data="synthetic", batch_size=128, epochs=3, augment=0, run_dir=run)
    good = data.synthetic()
    train.fit(train.Config(**cfg), dataset=good, quiet=True, max_epochs=1)
    before = final_arrays(run)
    bad = good._replace(x_train=np.full_like(good.x_train, 3e38))   # finite, but the products overflow
    with pytest.raises(train.NonFiniteError,
                       match=r"non-finite (loss|gradients|state \(.*\)) at step 9; the checkpoint after epoch 1 "
                             r"\(.*ckpt-000000008\) is the last good state"):
        train.fit(train.Config(resume=True, **cfg), dataset=bad, quiet=True)
    after = final_arrays(run)
    assert after[0] == before[0]
    for k in before[1]:
        np.testing.assert_array_equal(after[1][k], before[1][k])
        assert np.all(np.isfinite(after[1][k].astype(np.float64))) or after[1][k].dtype.kind in "iu"


def test_a_non_finite_state_is_never_checkpointed_as_the_last_good_one(tmp_path):
    """With a huge learning rate the running variance overflowed while the loss was
    still finite: that state was saved as "the last good state" (evaluating it gave
    chance accuracy, resuming failed again). Every checkpoint must be finite."""
    from jaxbp import data, train
    run = tmp_path / "run"
    ds = data.load_digits()
    cfg = train.Config(model="cnn", width=8, epochs=4, lr=1e6, warmup_epochs=0, run_dir=str(run))
    with pytest.raises(train.NonFiniteError, match=r"non-finite \w+"):
        train.fit(cfg, dataset=ds._replace(x_train=ds.x_train[:256], y_train=ds.y_train[:256]), quiet=True)
    for path in glob.glob(str(run / "checkpoints" / "ckpt-*" / "arrays.npz")):
        with np.load(path) as z:
            for k in z.files:
                assert z[k].dtype.kind in "iub" or np.isfinite(z[k].astype(np.float64)).all(), (path, k)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.pop("lr"), r"config.json has no 'lr': the run's lr is unknown"),
    (lambda c: c.update(seed="0"), r"config.json: 'seed' must be an integer, got \"0\""),
    (lambda c: c.update(lr=None), r"config.json: 'lr' must be a number, got null"),
    (lambda c: c.update(batch_size=[32]), r"config.json: 'batch_size' must be an integer, got \[32\]"),
    (lambda c: c.update(model="vgg"), r"config.json: 'model' must be one of"),
    (lambda c: c.update(colour="blue"), r"config.json: unknown key 'colour'"),
], ids=["missing_lr", "seed_string", "lr_null", "batch_size_list", "model_unknown", "unknown_key"])
def test_an_edited_config_json_is_refused_naming_the_key(tmp_path, edit, message):
    """A missing key silently took today's default (--lr 0.01 resumed as 0.003);
    a list, null or a string gave a traceback."""
    import dataclasses
    import json
    from jaxbp import train
    from jaxbp.train import rundir
    cfg = train.Config(model="mlp", lr=0.01, run_dir=str(tmp_path))
    saved = dataclasses.asdict(cfg)
    edit(saved)
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(rundir.RunDirError, match=message):
        train.fit(dataclasses.replace(cfg, resume=True), quiet=True)


def test_a_config_json_without_the_options_that_may_change_still_resumes(tmp_path):
    import dataclasses
    from jaxbp.train import rundir
    saved = {k: v for k, v in dataclasses.asdict(__import__("jaxbp").train.Config()).items()
             if k not in rundir.MAY_CHANGE}
    rundir.check_saved(saved, "config.json")   # e.g. a run written before --audit-every existed
