"""Run the ``jaxbp`` command, killing this process (SIGKILL) at the ``N``-th
time a checkpoint's directory is synced: odd ``N`` fall after the files are
written and before the rename, even ones after the rename, before pruning.

    python tests/kill_during_write.py N train --run-dir ...

A test-only driver: the library carries no fault-injection hook.
"""
import os
import signal
import sys

from jaxbp import _files, cli

kill_at, calls = int(sys.argv[1]), [0]
sync = _files.fsync_dir


def fsync_dir(path):
    sync(path)
    calls[0] += 1
    if calls[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)


_files.fsync_dir = fsync_dir
sys.argv = [sys.argv[0]] + sys.argv[2:]
cli.run()
