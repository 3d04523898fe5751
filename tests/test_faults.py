"""Crashes and divergence: nothing saved is lost, and a resumed run finishes
exactly as an uninterrupted one (CPU, bitwise)."""
import dataclasses
import glob
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from jaxbp.train import checkpoint, rundir
from bad_inputs import FAULTS
from helpers import command_env, running

HERE = os.path.dirname(os.path.abspath(__file__))
ARGS = ["train", "--model", "mlp", "--data", "synthetic", "--batch-size", "128", "--epochs", "8",
        "--quiet", "--augment", "0"]


def env(cache=None):
    e = command_env()
    if cache:  # JAX's persistent compilation cache: the processes compile once (same results)
        e.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return e


def jaxbp(run_dir, *extra, cache=None):
    return subprocess.run([sys.executable, "-m", "jaxbp.cli", *ARGS, "--run-dir", run_dir, *extra],
                          capture_output=True, text=True, env=env(cache), timeout=300)


def final_arrays(run_dir):
    newest = checkpoint.list_checkpoints(os.path.join(run_dir, "checkpoints"))[-1]
    with np.load(os.path.join(newest, "arrays.npz")) as z:
        return os.path.basename(newest), {k: z[k] for k in z.files}


def leftovers(run_dir):
    """Temporary files anywhere in the run directory."""
    return [os.path.relpath(os.path.join(d, n), run_dir) for d, dirs, files in os.walk(run_dir)
            for n in dirs + files if ".tmp" in n]


@pytest.mark.slow
def test_sigkill_inside_checkpoint_writes_then_resume_equals_uninterrupted(tmp_path):
    """Killed at fixed points inside the 2nd, 3rd, 5th and 7th checkpoint writes
    (before and after the rename): the resumed run ends bitwise equal to an
    uninterrupted one, and the dead writer's temporary is cleaned up."""
    reference, cache = str(tmp_path / "reference"), str(tmp_path / "jax_cache")
    assert jaxbp(reference, cache=cache).returncode == 0
    ref_name, ref = final_arrays(reference)
    for kill_at in (3, 6, 9, 14):
        run = str(tmp_path / f"kill{kill_at}")
        proc = subprocess.run([sys.executable, os.path.join(HERE, "kill_during_write.py"), str(kill_at), *ARGS,
                               "--run-dir", run], capture_output=True, env=env(cache), timeout=300)
        assert proc.returncode == -signal.SIGKILL
        assert bool(glob.glob(os.path.join(run, "checkpoints", ".ckpt-*.tmp"))) == (kill_at % 2 == 1)
        r = jaxbp(run, "--resume", cache=cache)
        assert r.returncode == 0, r.stderr
        assert leftovers(run) == []
        name, arrays = final_arrays(run)
        assert name == ref_name and arrays.keys() == ref.keys()
        for k in ref:
            np.testing.assert_array_equal(arrays[k], ref[k])


@pytest.mark.slow   # a training run into a run directory: the end-to-end lane
def test_non_finite_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path):
    """One good epoch is saved; the resumed run meets non-finite inputs in its
    second epoch: it stops naming the step and that checkpoint, which stays."""
    from jaxbp import data, train
    run = str(tmp_path / "run")
    cfg = dict(model="mlp", data="synthetic", batch_size=128, epochs=3, augment=0, run_dir=run)
    good = data.synthetic()
    train.fit(train.Config(**cfg), dataset=good, quiet=True, max_epochs=1)
    before = final_arrays(run)
    bad = good._replace(x_train=np.full_like(good.x_train, 3e38))   # finite, but the products overflow
    with pytest.raises(train.NonFiniteError,
                       match=r"non-finite (loss|gradients|state \(.*\)) at step 9; the checkpoint after epoch 1 "
                             r"\(.*ckpt-000000008\) is the last good state") as raised:
        train.fit(train.Config(resume=True, **cfg), dataset=bad, quiet=True)
    assert re.fullmatch(FAULTS["non_finite"][1], f"jaxbp: error: {raised.value}")
    after = final_arrays(run)
    assert after[0] == before[0]
    for k in before[1]:
        np.testing.assert_array_equal(after[1][k], before[1][k])
        assert np.all(np.isfinite(after[1][k].astype(np.float64))) or after[1][k].dtype.kind in "iu"


@pytest.mark.slow   # a training run into a run directory: the end-to-end lane
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


@pytest.mark.slow
def test_two_processes_racing_for_one_run_directory_one_runs_and_nothing_mixes(tmp_path):
    """Both exited 0 and mixed their runs (config.json of one, checkpoints of
    both); each deleted the other's temporary checkpoint as a leftover."""
    run = str(tmp_path / "run")
    seeds = (1, 2)
    with running(*[[sys.executable, "-m", "jaxbp.cli", *ARGS, "--seed", str(seed), "--run-dir", run] for seed in seeds],
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env()) as started:
        procs = dict(zip(seeds, started))
        outcome = {seed: (p.communicate(timeout=300)[1], p.returncode) for seed, p in procs.items()}
    winner = [seed for seed, (_, rc) in outcome.items() if rc == 0]
    assert len(winner) == 1, outcome
    (loser_err, loser_rc), = [v for seed, v in outcome.items() if seed != winner[0]]
    if loser_rc == 2:   # started while the winner ran: told who holds the directory
        assert f"is in use by process {procs[winner[0]].pid} on " in loser_err, loser_err
        assert re.fullmatch(FAULTS["run_dir_raced"][1], loser_err.strip().splitlines()[-1]), loser_err
    else:               # started after it ended
        assert loser_rc == 1 and "already holds a run" in loser_err, loser_err
    with open(os.path.join(run, "config.json")) as f:
        assert json.load(f)["seed"] == winner[0]
    r = jaxbp(run, "--resume", "--epochs", "9")
    assert r.returncode == 0, r.stderr
    assert [row["epoch"] for row in rundir.read_metrics(run)] == list(range(1, 10))


@pytest.mark.slow   # a second process (the holder): the end-to-end lane
def test_a_run_directory_held_by_a_live_process_is_refused_and_a_dead_ones_lock_is_free(tmp_path):
    from jaxbp import data, train
    run = str(tmp_path / "run")
    cfg = train.Config(model="mlp", data="synthetic", batch_size=256, epochs=2, augment=0, run_dir=run)
    train.fit(cfg, dataset=data.synthetic(), quiet=True, max_epochs=1)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from jaxbp.train import rundir; "
                               f"c = rundir.claim({run!r}, resume=True); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, env=env())
    try:
        assert holder.stdout.readline() == "held\n"
        busy = rf"run directory .*run is in use by process {holder.pid} on .* \(since .*\): a run directory is written"
        with pytest.raises(rundir.RunDirBusy, match=busy):
            train.fit(dataclasses.replace(cfg, resume=True), dataset=data.synthetic(), quiet=True)
        with pytest.raises(rundir.RunDirBusy, match=busy):
            train.fit(dataclasses.replace(cfg, overwrite=True), dataset=data.synthetic(), quiet=True)
    finally:
        holder.kill()
        holder.wait()
    with open(os.path.join(run, rundir.LOCK)) as f:
        assert json.load(f)["pid"] == holder.pid   # the dead holder's lock file is still there, and free
    result = train.fit(dataclasses.replace(cfg, resume=True), dataset=data.synthetic(), quiet=True)
    assert [r["epoch"] for r in result.history] == [1, 2]


METRICS_EDITS = {
    "last_line_deleted": lambda lines: lines[:-1],
    "last_line_truncated": lambda lines: lines[:-1] + [lines[-1][:25]],
    "a_line_of_garbage": lambda lines: lines[:1] + ["not json"] + lines[1:],
    "emptied": lambda lines: [],
}


@pytest.mark.slow   # a training run into a run directory: the end-to-end lane
@pytest.mark.parametrize("edit", METRICS_EDITS)
def test_metrics_jsonl_is_rebuilt_from_the_checkpoint_on_resume(tmp_path, edit):
    """With its last line deleted the resumed history was epochs [1, 2, 4]; with
    it truncated, resume failed with "Expecting ',' delimiter" naming no file."""
    from jaxbp import data, train
    run = str(tmp_path / "run")
    cfg = train.Config(model="mlp", data="synthetic", batch_size=256, epochs=3, augment=0, run_dir=run)
    first = train.fit(cfg, dataset=data.synthetic(), quiet=True, max_epochs=2).history
    path = os.path.join(run, rundir.METRICS)
    with open(path) as f:
        lines = f.read().splitlines()
    with open(path, "w") as f:
        f.write("".join(line + "\n" for line in METRICS_EDITS[edit](lines)))
    result = train.fit(dataclasses.replace(cfg, resume=True), dataset=data.synthetic(), quiet=True)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert result.history[:2] == first
    assert rundir.read_metrics(run) == result.history


def test_a_bad_metrics_line_is_named_with_its_file_and_line(tmp_path):
    (tmp_path / rundir.METRICS).write_text('{"epoch": 1}\n{"epoch": 2, "train_loss"\n')
    with pytest.raises(rundir.RunDirError, match=r"metrics.jsonl, line 2: not a JSON object"):
        rundir.read_metrics(str(tmp_path))


@pytest.mark.slow   # a training run into a run directory: the end-to-end lane
def test_an_edited_checkpoint_epoch_falls_back_with_one_warning(tmp_path):
    """"epoch": 2 edited to 1 resumed with no warning and trained an extra epoch."""
    from jaxbp import data, train
    run = str(tmp_path / "run")
    cfg = train.Config(model="mlp", data="synthetic", batch_size=256, epochs=3, augment=0, run_dir=run)
    train.fit(cfg, dataset=data.synthetic(), quiet=True, max_epochs=2)
    newest = checkpoint.list_checkpoints(os.path.join(run, "checkpoints"))[-1]
    meta_path = os.path.join(newest, "meta.json")
    with open(meta_path) as f:
        meta = json.load(f)
    meta["metadata"]["epoch"] = 0
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    with pytest.warns(checkpoint.CheckpointWarning, match="meta.json does not match its checksum") as caught:
        result = train.fit(dataclasses.replace(cfg, resume=True), dataset=data.synthetic(), quiet=True)
    assert len(caught) == 1
    assert [(r["epoch"], r["step"]) for r in result.history] == [(1, 4), (2, 8), (3, 12)]


@pytest.mark.slow   # a training run into a run directory: the end-to-end lane
def test_a_failed_write_names_the_file_keeps_the_checkpoint_and_leaves_no_temporary(tmp_path, monkeypatch):
    """A full disk gave "[Errno 28]" naming no file and no checkpoint, and left
    curves.png.tmp.png and config.json.tmp behind."""
    import errno
    from jaxbp import _files, data, train
    run = str(tmp_path / "run")
    cfg = train.Config(model="mlp", data="synthetic", batch_size=256, epochs=3, augment=0, run_dir=run)
    real_savez, calls = np.savez, []

    def savez(f, **arrays):   # the second checkpoint's arrays: half written, then the disk is full
        calls.append(1)
        if len(calls) == 2:
            f.write(b"PK\x03\x04 half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_savez(f, **arrays)
    monkeypatch.setattr(checkpoint.np, "savez", savez)
    real_write = _files.atomic_write

    def atomic_write(path, write, mode="w"):   # and curves.png cannot be written either
        if path.endswith("curves.png"):
            return real_write(path, lambda f: (f.write(b"\x89PNG"), (_ for _ in ()).throw(
                OSError(errno.ENOSPC, "No space left on device"))), mode)
        return real_write(path, write, mode)
    from jaxbp.train import plot
    monkeypatch.setattr(plot, "atomic_write", atomic_write)
    with pytest.raises(train.SaveError, match=r"cannot write .*run/checkpoints/ckpt-000000008/arrays.npz: No space "
                                              r"left on device; the checkpoint after epoch 1 \(.*ckpt-000000004\) is "
                                              r"intact; once it can be written, resume the run \(resume=True, --resume\)"):
        train.fit(cfg, dataset=data.synthetic(), quiet=True)
    assert leftovers(run) == []
    monkeypatch.undo()
    result = train.fit(dataclasses.replace(cfg, resume=True), dataset=data.synthetic(), quiet=True)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]


@pytest.mark.slow
def test_a_file_size_limit_gives_one_line_and_no_temporaries(tmp_path):
    """A real write failure (RLIMIT_FSIZE: 'File too large') in the command."""
    run = str(tmp_path / "run")
    limit = 8192   # config.json and metrics.jsonl fit, the first checkpoint does not
    # The limit set by the child itself: a preexec_fn would fork this multithreaded (JAX) process.
    command = ("import resource, runpy, sys; "
               f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
               "sys.argv = ['jaxbp'] + sys.argv[1:]; runpy.run_module('jaxbp.cli', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", command, *ARGS, "--run-dir", run], capture_output=True,
                       text=True, env={**env(), "JAXBP_COMPILATION_CACHE": "off"}, timeout=300)
    assert r.returncode == 1, r.stderr
    assert re.fullmatch(r"jaxbp: error: cannot write .*arrays.npz: File too large; no checkpoint had been written "
                        r"yet; once it can be written, start the run again \(overwrite=True, --overwrite\)\n", r.stderr), r.stderr
    assert re.fullmatch(FAULTS["write_failed"][1], r.stderr.strip())
    assert leftovers(run) == []
