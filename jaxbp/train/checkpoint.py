"""Crash-safe checkpoints of any pytree of arrays.

A checkpoint is a directory ``ckpt-<step>/`` holding ``arrays.npz`` (one entry
per leaf) and ``meta.json`` (each leaf's tree path, shape and dtype, the
SHA-256 of ``arrays.npz`` and the caller's metadata). It is written under a
temporary name, flushed to disk, then renamed into place: a crash leaves
either the complete new checkpoint or none, and older checkpoints stay until
the new one is complete (the ``keep`` newest up to the one written are kept;
one of a higher step, which ``--resume`` skipped as corrupt, stays too).

Restoring checks the file's checksum and that its tree paths, shapes and
dtypes equal those of a template, and says which leaves differ.
:func:`restore_latest` falls back past a corrupt checkpoint to an older one.

(Plain numpy files rather than orbax: the training state here is small and
replicated, and a format readable with numpy alone keeps the dependency list
and the start-up time of ``jaxbp train`` short.)
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

PREFIX = "ckpt-"
_WRITE_DELAY = float(os.environ.get("JAXBP_CHECKPOINT_WRITE_DELAY", "0"))


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not fit the template."""


class CheckpointMismatch(CheckpointError):
    """A checkpoint that reads fine but belongs to another model or optimizer:
    an older one would not fit either, so nothing falls back."""


class CheckpointWarning(UserWarning):
    """A checkpoint skipped for an older one (``jaxbp`` prints it as one line)."""


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _leaves(tree):
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [jax.tree_util.keystr(p) for p, _ in flat], [v for _, v in flat], treedef


def _encode(leaf):
    a = np.asarray(leaf)
    # bfloat16 and other ml_dtypes: store the raw bits, restore by dtype name.
    return a.view(np.uint16) if a.dtype == jnp.bfloat16 else a


def save(directory, step, tree, metadata=None, keep=2):
    """Write ``tree`` as ``directory/ckpt-<step>`` atomically; keep the newest ``keep``."""
    os.makedirs(directory, exist_ok=True)
    paths, leaves, _ = _leaves(tree)
    leaves = [np.asarray(jax.device_get(v)) for v in leaves]
    final = os.path.join(directory, f"{PREFIX}{step:09d}")
    tmp = os.path.join(directory, f".tmp-{PREFIX}{step:09d}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    arrays = os.path.join(tmp, "arrays.npz")
    with open(arrays, "wb") as f:
        np.savez(f, **{str(i): _encode(v) for i, v in enumerate(leaves)})
        f.flush()
        os.fsync(f.fileno())
    with open(arrays, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    meta = {"step": int(step), "sha256": digest, "metadata": metadata or {},
            "leaves": [{"path": p, "shape": list(v.shape), "dtype": str(v.dtype)}
                       for p, v in zip(paths, leaves)]}
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    if _WRITE_DELAY:  # fault-injection tests widen the window in which a kill lands mid-write
        time.sleep(_WRITE_DELAY)
    if os.path.exists(final):  # the same step again: move the old one aside first
        os.replace(final, tmp + ".old")
    os.replace(tmp, final)
    _fsync_dir(directory)
    shutil.rmtree(tmp + ".old", ignore_errors=True)
    # Prune among this run's checkpoints up to the one just written: a newer
    # one (a corrupt checkpoint that --resume skipped) is never a reason to
    # delete what this run just wrote.
    older = [c for c in list_checkpoints(directory) if _step(c) <= step]
    for old in older[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for name in os.listdir(directory):  # leftovers of writers that crashed
        if name.startswith(".tmp-") and not name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
    return final


def _step(path):
    return int(os.path.basename(path)[len(PREFIX):])


def list_checkpoints(directory):
    """Complete checkpoint directories, oldest first."""
    if not os.path.isdir(directory):
        return []
    names = sorted(n for n in os.listdir(directory) if n.startswith(PREFIX) and n[len(PREFIX):].isdigit())
    return [os.path.join(directory, n) for n in names]


def restore(path, template):
    """Load the checkpoint at ``path`` into the structure of ``template``.

    Returns ``(tree, metadata)``. Raises :class:`CheckpointError` naming what
    is wrong: unreadable or corrupt files, or leaves that do not match.
    """
    try:
        with open(os.path.join(path, "meta.json")) as f:
            meta = json.load(f)
        with open(os.path.join(path, "arrays.npz"), "rb") as f:
            raw = f.read()
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is unreadable: {e}") from None
    if hashlib.sha256(raw).hexdigest() != meta.get("sha256"):
        raise CheckpointError(f"checkpoint {path} is corrupt: arrays.npz does not match its checksum")
    paths, leaves, treedef = _leaves(template)
    saved = meta["leaves"]
    want = [(p, list(np.shape(v)), str(jnp.asarray(v).dtype)) for p, v in zip(paths, leaves)]
    got = [(s["path"], s["shape"], s["dtype"]) for s in saved]
    if want != got:
        fmt = lambda leaf: f"{leaf[0]} {tuple(leaf[1])} {leaf[2]}"
        diffs = [f"{fmt(w)} in the model vs {fmt(g)} in the checkpoint"
                 for w, g in zip(want, got) if w != g][:3]
        if len(want) != len(got):
            diffs.insert(0, f"{len(want)} leaves in the model vs {len(got)} in the checkpoint")
        raise CheckpointMismatch(f"checkpoint {path} does not fit this model/optimizer: " + "; ".join(diffs))
    with np.load(io.BytesIO(raw)) as npz:
        arrays = [npz[str(i)] for i in range(len(saved))]
    arrays = [a.view(jnp.bfloat16) if s["dtype"] == "bfloat16" else a for a, s in zip(arrays, saved)]
    return treedef.unflatten([jnp.asarray(a) for a in arrays]), meta["metadata"]


def restore_latest(directory, template):
    """Restore the newest checkpoint that loads, warning about each one skipped.

    Returns ``(tree, metadata, path)``; raises :class:`CheckpointError` when none loads.
    """
    candidates = list_checkpoints(directory)
    if not candidates:
        raise CheckpointError(f"no checkpoint in {directory}")
    errors = []
    for path in reversed(candidates):
        try:
            tree, metadata = restore(path, template)
        except CheckpointMismatch:
            raise
        except CheckpointError as e:
            errors.append(str(e))
            warnings.warn(f"{e}; trying an older checkpoint", CheckpointWarning, stacklevel=2)
            continue
        return tree, metadata, path
    raise CheckpointError("no usable checkpoint: " + "; ".join(errors))
