"""Two processes on loopback (jax.distributed) train one job: both end with the
same parameters as a one-process run over the same number of devices."""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from helpers import command_env

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(devices):
    return command_env(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def load(path):
    with np.load(path) as z:
        return [z[k] for k in sorted(z.files, key=lambda k: int(k.split("_")[1]))]


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
    coordinator = f"127.0.0.1:{free_port()}"
    worker = os.path.join(HERE, "distributed_worker.py")
    procs = [subprocess.Popen([sys.executable, worker, coordinator, "2", str(i), str(tmp_path / f"p{i}.npz")],
                              env=env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
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
def test_cli_multi_process_run(tmp_path):
    coordinator = f"127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "jaxbp.cli", "train", "--model", "mlp", "--data", "synthetic", "--epochs", "1",
           "--batch-size", "64", "--run-dir", str(tmp_path / "run"), "--coordinator", coordinator,
           "--num-processes", "2"]
    procs = [subprocess.Popen(cmd + ["--process-id", str(i)], env=env(1), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "final test accuracy" in outs[0] and "final test accuracy" not in outs[1]
    assert len(os.listdir(tmp_path / "run" / "checkpoints")) == 1  # written once, by process 0
