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
import tempfile

ROOT = "runs"
LATEST = "latest"
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
    return sorted(os.listdir(run_dir)) if os.path.isdir(run_dir) else []


def prepare_new(run_dir, overwrite=False):
    """Make ``run_dir`` ready for a new run; check it can be written.

    Raises :class:`RunDirError` if it already holds files (unless ``overwrite``,
    which removes them first) or cannot be written."""
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise RunDirError(f"run directory {run_dir} exists and is not a directory")
    existing = contents(run_dir)
    if existing and not overwrite:
        shown = ", ".join(existing[:5]) + (", …" if len(existing) > 5 else "")
        raise RunDirError(f"run directory {run_dir} already holds a run ({shown}); choose a new "
                          "--run-dir, continue that run with --resume, or replace it with --overwrite")
    if existing:
        shutil.rmtree(run_dir)
    check_writable(run_dir)


def check_writable(run_dir):
    try:
        os.makedirs(run_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as e:
        raise RunDirError(f"run directory {run_dir} cannot be written: {e.strerror or e}") from None


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
    return saved


_TYPES = {"str": ((str,), "a string"), "int": ((int,), "an integer"), "float": ((int, float), "a number"),
          "bool": ((bool,), "true or false")}


def check_saved(saved, path):
    """``config.json`` as strictly as the command line: an object with every
    option that defines the run (those in :data:`MAY_CHANGE` may be absent), each
    of its type and valid; one line naming the key. A missing key would silently
    take today's default and rewrite the run's config."""
    import dataclasses
    from jaxbp.train.config import Config
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
        meta = f.metadata
        if "choices" in meta and value not in meta["choices"]:
            raise RunDirError(f"{path}: {name!r} must be one of {', '.join(meta['choices'])}, got {value!r}")
        if "rule" in meta and not meta["rule"][0](value):
            raise RunDirError(f"{path}: {name!r} must be {meta['rule'][1]}, got {value!r}")


def conflicts(saved, given):
    """``(field, given value, saved value)`` for each field of ``given`` that
    would change the saved run (fields in :data:`MAY_CHANGE` may differ)."""
    return [(k, v, saved[k]) for k, v in given.items()
            if k not in MAY_CHANGE and k in saved and v != saved[k]]


def conflict_message(run_dir, field, given, saved):
    return (f"--{field.replace('_', '-')} {given} conflicts with the run in {run_dir}, which has "
            f"{field} {saved} (config.json); --resume continues that run: drop the option, "
            "or start a new run in another --run-dir")


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def write_metrics(run_dir, history):
    path = os.path.join(run_dir, "metrics.jsonl")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in history)
    os.replace(tmp, path)


def read_metrics(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
