"""Run directories: one run per directory, and what ``--resume`` may change.

A run directory holds ``config.json``, ``metrics.jsonl``, ``curves.png`` and
``checkpoints/`` of exactly one run. Starting a run in a directory that already
holds files is an error unless the caller asks to replace it (``overwrite``);
resuming reads the run's own ``config.json`` and refuses options that would make
it a different run. Without a run directory of their own, runs go to
``runs/<time>-<model>-<data>``, and ``runs/latest`` points at the newest.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
import tempfile

from jaxbp._files import atomic_write

try:
    import fcntl
except ImportError:  # Windows: run directories are not locked
    fcntl = None

ROOT = "runs"
LATEST = "latest"
LOCK = ".lock"          # held by the process writing the run (Claim)
METRICS = "metrics.jsonl"
# Options that may differ on --resume: extending the schedule, where it runs,
# where the data and outputs are. Every other field defines the run.
MAY_CHANGE = frozenset({"audit_every", "epochs", "devices", "data_dir", "run_dir", "resume", "overwrite", "stop_at_accuracy",
                        "checkpoint_every"})


class RunDirError(ValueError):
    """A run directory that cannot be used as asked, with what to do instead."""


def new_path(model, data, root=ROOT):
    """``runs/<YYYYmmdd-HHMMSS>-<model>-<data>`` (with ``-2``, ``-3``… if taken)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = os.path.join(root, f"{stamp}-{model}-{data}")
    path, i = base, 1
    while os.path.lexists(path):
        i += 1
        path = f"{base}-{i}"
    return path


def point_latest(run_dir):
    """Point ``<parent>/latest`` at ``run_dir`` (atomically; a real directory
    named ``latest``, left by an older version, is left alone)."""
    parent = os.path.dirname(os.path.abspath(run_dir))
    link = os.path.join(parent, LATEST)
    if os.path.lexists(link) and not os.path.islink(link):
        return
    tmp = os.path.join(parent, f".{LATEST}-{os.getpid()}")
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(os.path.basename(os.path.abspath(run_dir)), tmp)
    os.replace(tmp, link)


def contents(run_dir):
    """What ``run_dir`` holds besides its lock file."""
    return sorted(n for n in os.listdir(run_dir) if n != LOCK) if os.path.isdir(run_dir) else []


def check_new(run_dir, overwrite=False):
    """Whether a new run can start in ``run_dir``, changing nothing: a start
    that fails later (bad data, say) must not leave an empty run behind.

    Raises :class:`RunDirError` if it is not a directory, already holds files
    (unless ``overwrite``), is in use, or could not be created or written."""
    _check_empty(run_dir, overwrite)
    check_free(run_dir)
    parent = os.path.abspath(run_dir)
    while not os.path.exists(parent):  # what exists of the path must be a writable directory
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise RunDirError(f"run directory {run_dir} cannot be written: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RunDirError(f"run directory {run_dir} cannot be written: {parent} is not writable")


def _check_empty(run_dir, overwrite):
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise RunDirError(f"run directory {run_dir} exists and is not a directory")
    existing = contents(run_dir)
    if existing and not overwrite:
        shown = ", ".join(existing[:5]) + (", …" if len(existing) > 5 else "")
        raise RunDirError(f"run directory {run_dir} already holds a run ({shown}); choose a new run_dir "
                          "(--run-dir), continue that run (resume=True, --resume), or replace it (overwrite=True, "
                          "--overwrite)")


def check_writable(run_dir):
    try:
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as e:
        raise RunDirError(f"run directory {run_dir} cannot be written: {e.strerror or e}") from None


class RunDirBusy(RunDirError):
    """The run directory is held by another process (the ``jaxbp`` command exits 2)."""


def _holder(path):
    """Who holds the lock file at ``path``, in words."""
    try:
        with open(path) as f:
            held = json.load(f)
        return f"process {held['pid']} on {held['host']} (since {held['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _busy(path):
    return RunDirBusy(f"run directory {os.path.dirname(path)} is in use by {_holder(path)}: a run directory "
                      "is written by one process at a time; wait for that run to end, or choose another run_dir (--run-dir)")


def check_free(run_dir):
    """Raise :class:`RunDirBusy` if another process holds ``run_dir`` now."""
    path = os.path.join(run_dir, LOCK)
    if fcntl is None or not os.path.exists(path):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(path) from None
    finally:
        os.close(fd)


class Claim:
    """This process's hold on a run directory: an exclusive ``flock`` on its
    ``.lock`` file, which holds the holder's host, pid and start time. The
    kernel drops the lock when the process ends, however it ends, so a lock
    file left by a dead process is free (and rewritten). Without ``fcntl``
    (Windows) nothing is locked."""

    def __init__(self, run_dir):
        self.fd = None
        if fcntl is None:
            return
        path = os.path.join(run_dir, LOCK)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _busy(path) from None
        self.fd = fd
        since = datetime.datetime.now().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}).encode())

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # the lock file stays: removing it would race with a process locking it
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def claim(run_dir, overwrite=False, resume=False):
    """Take ``run_dir`` for this process's run (:class:`Claim`), creating it.

    A new run (``resume`` false) checks again, under the lock, that the
    directory holds nothing (or removes what it holds, with ``overwrite``):
    another process may have started there since :func:`check_new`."""
    if not resume:
        check_new(run_dir, overwrite)
        try:
            os.makedirs(run_dir, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"run directory {run_dir} cannot be created: {e.strerror or e}") from None
    held = Claim(run_dir)
    try:
        if not resume:
            _check_empty(run_dir, overwrite)  # again: another process may have run here meanwhile
            for name in contents(run_dir):
                path = os.path.join(run_dir, name)
                shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
        check_writable(run_dir)
    except BaseException:
        held.release()
        raise
    return held


def read_config(run_dir):
    """The saved ``config.json`` of the run in ``run_dir``; creates nothing."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.isdir(run_dir):
        raise RunDirError(f"run directory {run_dir} does not exist: there is no run to resume")
    if not os.path.exists(path):
        raise RunDirError(f"run directory {run_dir} has no config.json: there is no run to resume")
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        raise RunDirError(f"cannot read {path}: {e}") from None
    check_saved(saved, path)
    return _without_ignored(saved)


def _without_ignored(saved):
    """``saved`` with the model options its model does not read set to null:
    a run written before the model registry holds every option (a resnet20
    run, the cnn's width), which had no effect and is now refused."""
    from jaxbp import layers
    reads = layers.MODELS[saved["model"]].options if saved.get("model") in layers.MODELS else None
    if reads is None:
        return saved
    return {k: (None if k in layers.MODEL_OPTIONS and k not in reads else v) for k, v in saved.items()}


_TYPES = {"str": ((str,), "a string"), "int": ((int,), "an integer"), "float": ((int, float), "a number"),
          "bool": ((bool,), "true or false")}


def check_saved(saved, path):
    """``config.json`` as strictly as the command line: an object with every
    option that defines the run (those in :data:`MAY_CHANGE` may be absent), each
    of its type and valid; one line naming the key. A missing key would silently
    take today's default and rewrite the run's config."""
    import dataclasses
    from jaxbp.train.config import Config, choices
    if not isinstance(saved, dict):
        raise RunDirError(f"{path} must hold a JSON object of the run's options, got {type(saved).__name__}")
    fields = {f.name: f for f in dataclasses.fields(Config)}
    for key in saved:
        if key not in fields:
            raise RunDirError(f"{path}: unknown key {key!r}")
    for name, f in fields.items():
        if name not in saved:
            if name in MAY_CHANGE:
                continue
            raise RunDirError(f"{path} has no {name!r}: the run's {name} is unknown (restore the line, "
                              f"e.g. \"{name}\": {json.dumps(f.default)} if the run used the default)")
        value, optional = saved[name], f.type.endswith("| None")
        kinds, kind = _TYPES[f.type.split(" |")[0]]
        if value is None and optional:
            continue
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise RunDirError(f"{path}: {name!r} must be {'null or ' if optional else ''}{kind}, "
                              f"got {json.dumps(value)}")
        meta, allowed = f.metadata, choices(f)
        if allowed is not None and value not in allowed:
            raise RunDirError(f"{path}: {name!r} must be one of {', '.join(allowed)}, got {value!r}")
        if "rule" in meta and not meta["rule"][0](value):
            raise RunDirError(f"{path}: {name!r} must be {meta['rule'][1]}, got {value!r}")


def conflicts(saved, given):
    """``(field, given value, saved value)`` for each field of ``given`` that
    would change the saved run (fields in :data:`MAY_CHANGE` may differ)."""
    return [(k, v, saved[k]) for k, v in given.items()
            if k not in MAY_CHANGE and k in saved and v != saved[k]]


class ConfigConflict(RunDirError):
    """Resuming with an option that differs from the run's config.json."""


def conflict_message(run_dir, field, given, saved):
    return (f"{field}={given!r} (--{field.replace('_', '-')} {given}) conflicts with the run in {run_dir}, which "
            f"has {field} {saved} (config.json); resuming continues that run: drop the option, or start a new "
            "run in another run_dir (--run-dir)")


def write_json(path, obj):
    atomic_write(path, lambda f: json.dump(obj, f, indent=2))


def write_metrics(run_dir, history):
    atomic_write(os.path.join(run_dir, METRICS), lambda f: f.writelines(json.dumps(r) + "\n" for r in history))


def read_metrics(run_dir):
    """The rows of ``metrics.jsonl`` (none if it is missing); a line that is not
    a JSON object raises :class:`RunDirError` naming the file and line."""
    path = os.path.join(run_dir, METRICS)
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise RunDirError(f"{path}, line {number}: not a JSON object ({e})") from None
            if not isinstance(row, dict):
                raise RunDirError(f"{path}, line {number}: not a JSON object")
            rows.append(row)
    return rows
