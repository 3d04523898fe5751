"""Two processes on loopback (jax.distributed) train one job: both end with the
same parameters as a one-process run over the same number of devices."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from bad_inputs import FAULTS
from helpers import command_env, reserved_port, running
from jaxbp.train import checkpoint

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def coordinator():
    """A coordinator address whose port no one else can take meanwhile."""
    with reserved_port() as port:
        yield f"127.0.0.1:{port}"


def env(devices):
    return command_env(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def load(path):
    with np.load(path) as z:
        return [z[k] for k in sorted(z.files, key=lambda k: int(k.split("_")[1]))]


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path, coordinator):
    worker = os.path.join(HERE, "distributed_worker.py")
    with running(*[[sys.executable, worker, coordinator, "2", str(i), str(tmp_path / f"p{i}.npz")] for i in range(2)],
                 env=env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as procs:
        for p in procs:
            out, _ = p.communicate(timeout=240)
            assert p.returncode == 0, out
    single = subprocess.run([sys.executable, worker, "-", "1", "0", str(tmp_path / "single.npz")],
                            env=env(2), capture_output=True, text=True, timeout=240)
    assert single.returncode == 0, single.stderr
    p0, p1, one = load(tmp_path / "p0.npz"), load(tmp_path / "p1.npz"), load(tmp_path / "single.npz")
    assert len(p0) == len(one) > 10
    for a, b, c in zip(p0, p1, one):
        np.testing.assert_array_equal(a, b)   # the two processes agree exactly
        np.testing.assert_array_equal(a, c)   # and equal the one-process, two-device run


@pytest.mark.slow
def test_cli_multi_process_run(tmp_path, coordinator):
    cmd = [sys.executable, "-m", "jaxbp.cli", "train", "--model", "mlp", "--data", "synthetic", "--epochs", "1",
           "--batch-size", "64", "--run-dir", str(tmp_path / "run"), "--coordinator", coordinator,
           "--num-processes", "2"]
    with running(*[cmd + ["--process-id", str(i)] for i in range(2)], env=env(1), stdout=subprocess.PIPE,
                 stderr=subprocess.STDOUT, text=True) as procs:
        outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "final test accuracy" in outs[0] and "final test accuracy" not in outs[1]
    assert len(os.listdir(tmp_path / "run" / "checkpoints")) == 1  # written once, by process 0


def _train_cmd(run_dir, coordinator, *extra):
    return [sys.executable, "-m", "jaxbp.cli", "train", "--model", "mlp", "--data", "synthetic", "--epochs", "60",
            "--batch-size", "64", "--augment", "0", "--quiet", "--run-dir", run_dir, "--coordinator", coordinator,
            "--num-processes", "2", "--peer-timeout", "10", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("killed", [0, 1])
def test_a_killed_process_ends_the_other_with_one_line_and_the_run_resumes(tmp_path, killed, coordinator):
    """Process 1 dying left process 0 with a Gloo traceback and a C++ abort
    after 81 s (exit 134); process 0 dying aborted process 1 in 0.18 s with no
    word from jaxbp. Now the survivor ends in seconds, its last line saying
    which process, what happened, the newest checkpoint and how to go on."""
    import time
    run = str(tmp_path / "run")
    with running(*[_train_cmd(run, coordinator, "--process-id", str(i)) for i in range(2)], env=env(1),
                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as procs:
        deadline = time.time() + 120
        # A complete checkpoint (its folder renamed into place), not the temporary
        # one being written, which the kill would leave incomplete: "newest: none".
        while not checkpoint.list_checkpoints(os.path.join(run, "checkpoints")) and time.time() < deadline:
            time.sleep(0.1)
        procs[killed].kill()
        survivor = procs[1 - killed]
        t = time.time()
        err = survivor.communicate(timeout=60)[1]
        took = time.time() - t
    assert survivor.returncode == 1, err
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(rf"jaxbp: error: process {1 - killed} of 2: the run lost another process \(.*\); newest "
                        r"checkpoint: .*ckpt-\d+; start every process again with --resume", last), err
    assert re.fullmatch(FAULTS["peer_lost"][1], last)
    assert took < 30, took   # not JAX's 100 s heartbeat and 300 s shutdown
    with reserved_port() as port, running(*[_train_cmd(run, f"127.0.0.1:{port}", "--process-id", str(i), "--resume")
                                            for i in range(2)], env=env(1), stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True) as procs:
        outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    from jaxbp.train import rundir
    assert [r["epoch"] for r in rundir.read_metrics(run)] == list(range(1, 61))


@pytest.mark.slow
def test_a_process_whose_peers_never_come_says_so(tmp_path, coordinator):
    """It printed nothing for 307 s."""
    r = subprocess.run(_train_cmd(str(tmp_path / "run"), coordinator, "--process-id", "1",
                                  "--peer-timeout", "3"), env=env(1), capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.startswith("jaxbp: process 1 of 2: joining the others at 127.0.0.1:")
    assert re.fullmatch(r"jaxbp: error: process 1 of 2: the other processes did not join at 127.0.0.1:\d+ within 3 s "
                        r"\(--peer-timeout\): start them, or check the address", r.stderr.strip().splitlines()[-1])
    assert re.fullmatch(FAULTS["peers_absent"][1], r.stderr.strip().splitlines()[-1])
    assert not os.path.exists(tmp_path / "run")   # nothing created for a run that never started
