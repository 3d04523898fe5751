"""Files written so that a crash, a full disk or a second process never leaves
a half-written file where a whole one is expected.

Temporary files carry their writer's identity (:func:`writer`: host and
process id): only its writer removes one while it runs, and a leftover of a
writer that died (same host, process gone) is recognized as stale and removed
by the next writer (:func:`remove_stale`).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket


def writer():
    """This process as temporary files name it: ``<host>~<pid>``."""
    return f"{socket.gethostname()}~{os.getpid()}"


def alive(host, pid):
    """Whether process ``pid`` of ``host`` may still run: ``False`` only when it
    is on this host and gone (another host's processes cannot be seen)."""
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


def temporary(path):
    """The name ``path`` is written under: ``<dir>/.<name>~<host>~<pid>.tmp``."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}~{writer()}.tmp")


def stale(name):
    """Whether ``name`` is a temporary (:func:`temporary`) whose writer is gone."""
    if not (name.startswith(".") and name.endswith(".tmp") and name.count("~") >= 2):
        return False
    _, host, pid = name[:-len(".tmp")].rsplit("~", 2)
    return pid.isdigit() and not alive(host, int(pid))


def remove(path):
    """Remove a file or a directory tree (not a link's target), if it is there."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    except FileNotFoundError:
        pass


def remove_stale(directory):
    """Remove the temporaries in ``directory`` left by writers that died."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if stale(name):
            try:
                remove(os.path.join(directory, name))
            except OSError:
                pass


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def naming(path):
    """Raise an ``OSError`` from the block again with ``path`` as its file name
    (the file the user knows, not a temporary one, nor none)."""
    try:
        yield
    except OSError as e:
        if e.filename == path:
            raise
        raise OSError(e.errno, e.strerror or str(e), path) from None


def atomic_write(path, write, mode="w"):
    """Write ``path`` through ``write(file)`` into its temporary, flushed to disk,
    then renamed into place: the old file or the whole new one, never a part.
    On any failure (a full disk, a file too large) the temporary is removed and
    the error raised again with ``path`` as its file name."""
    tmp = temporary(path)
    try:
        with naming(path), open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        try:
            remove(tmp)
        except OSError:
            pass
        raise
