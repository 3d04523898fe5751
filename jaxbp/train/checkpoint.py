"""Crash-safe checkpoints of any pytree of arrays.

A checkpoint is a directory ``ckpt-<step>/`` holding ``arrays.npz`` (one entry
per leaf, no pickles) and ``meta.json`` (each leaf's tree path, shape and
dtype, the SHA-256 of ``arrays.npz``, the caller's metadata, and the SHA-256
of all of that: a hand edit is caught like a flipped bit). It is written under
the writer's own temporary name, flushed to disk, then renamed into place: a crash leaves
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
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp import _files

PREFIX = "ckpt-"
FORMAT = 2   # meta.json under its own checksum (format 1: only arrays.npz was)


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not fit the template."""


class CheckpointMismatch(CheckpointError):
    """A checkpoint that reads fine but belongs to another model or optimizer:
    an older one would not fit either, so nothing falls back."""


class CheckpointWarning(UserWarning):
    """A checkpoint skipped for an older one (``jaxbp`` prints it as one line)."""


def _leaves(tree):
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [jax.tree_util.keystr(p) for p, _ in flat], [v for _, v in flat], treedef


def _encode(leaf):
    a = np.asarray(leaf)
    # bfloat16 and other ml_dtypes: store the raw bits, restore by dtype name.
    return a.view(np.uint16) if a.dtype == jnp.bfloat16 else a


def _meta_digest(meta):
    """SHA-256 of everything in ``meta`` but its own ``sha256`` (canonical JSON)."""
    body = json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def save(directory, step, tree, metadata=None, keep=2):
    """Write ``tree`` as ``directory/ckpt-<step>`` atomically; keep the newest ``keep``.

    ``metadata``: a JSON object kept with the arrays, under the same checksum."""
    os.makedirs(directory, exist_ok=True)
    paths, leaves, _ = _leaves(tree)
    leaves = [np.asarray(jax.device_get(v)) for v in leaves]
    final = os.path.join(directory, f"{PREFIX}{step:09d}")
    tmp = _files.temporary(final)  # this writer's own: no other process touches it
    try:
        os.makedirs(tmp)
        arrays = os.path.join(tmp, "arrays.npz")
        with _files.naming(os.path.join(final, "arrays.npz")), open(arrays, "wb") as f:
            np.savez(f, **{str(i): _encode(v) for i, v in enumerate(leaves)})
            f.flush()
            os.fsync(f.fileno())
        with open(arrays, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        meta = {"format": FORMAT, "step": int(step), "arrays_sha256": digest, "metadata": metadata or {},
                "leaves": [{"path": p, "shape": list(v.shape), "dtype": str(v.dtype)}
                           for p, v in zip(paths, leaves)]}
        meta["sha256"] = _meta_digest(meta)
        with _files.naming(os.path.join(final, "meta.json")), open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f)
            f.flush()
            os.fsync(f.fileno())
        _files.fsync_dir(tmp)
        old = _files.temporary(final + "-old")
        if os.path.lexists(final):  # the same step again: move the old one aside first
            os.replace(final, old)
        os.replace(tmp, final)
        _files.fsync_dir(directory)
    except BaseException:
        _files.remove(tmp)
        raise
    _files.remove(old)
    # Prune among this run's checkpoints up to the one just written: a newer
    # one (a corrupt checkpoint that --resume skipped) is never a reason to
    # delete what this run just wrote.
    older = [c for c in list_checkpoints(directory) if _step(c) <= step]
    for path in older[:-keep]:
        _files.remove(path)
    _files.remove_stale(directory)  # left by writers that died
    return final


def _step(path):
    return int(os.path.basename(path)[len(PREFIX):])


def list_checkpoints(directory):
    """Checkpoint directories (a link to one that leads nowhere is none), oldest first."""
    if not os.path.isdir(directory):
        return []
    names = sorted(n for n in os.listdir(directory) if n.startswith(PREFIX) and n[len(PREFIX):].isdigit())
    return [os.path.join(directory, n) for n in names if os.path.isdir(os.path.join(directory, n))]


def _read(path):
    """``(meta, arrays.npz bytes)`` of the checkpoint at ``path``, both verified
    against their checksums."""
    try:
        with open(os.path.join(path, "meta.json")) as f:
            meta = json.load(f)
        with open(os.path.join(path, "arrays.npz"), "rb") as f:
            raw = f.read()
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is unreadable: {e}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path} is corrupt: meta.json is not a JSON object")
    if meta.get("format") == FORMAT:
        if meta.get("sha256") != _meta_digest(meta):
            raise CheckpointError(f"checkpoint {path} is corrupt: meta.json does not match its checksum")
        arrays_sha256 = meta["arrays_sha256"]
    elif "format" not in meta:  # format 1: arrays.npz alone was checked
        arrays_sha256 = meta.get("sha256")
    else:
        raise CheckpointError(f"checkpoint {path} has format {meta['format']!r}; this jaxbp reads {FORMAT}")
    if hashlib.sha256(raw).hexdigest() != arrays_sha256:
        raise CheckpointError(f"checkpoint {path} is corrupt: arrays.npz does not match its checksum")
    try:  # format 1's meta.json has no checksum of its own
        saved = [(s["path"], list(s["shape"]), s["dtype"]) for s in meta["leaves"]]
        if not isinstance(meta["metadata"], dict):
            raise TypeError("metadata is not an object")
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt: meta.json's leaves or metadata: {e}") from None
    return meta, saved, raw


def _shape_dtype(leaf):
    """A template leaf's ``[shape], dtype name``: an array's or scalar's, or a
    ``jax.ShapeDtypeStruct``'s (a template of shapes: nothing computed)."""
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return list(leaf.shape), str(leaf.dtype)
    return list(np.shape(leaf)), str(jnp.asarray(leaf).dtype)


def restore(path, template):
    """Load the checkpoint at ``path`` into the structure of ``template``
    (arrays, or ``jax.ShapeDtypeStruct`` leaves: its shapes and dtypes alone).

    Returns ``(tree, metadata)``. Raises :class:`CheckpointError` naming what
    is wrong: unreadable or corrupt files, or leaves that do not match.
    """
    meta, got, raw = _read(path)
    paths, leaves, treedef = _leaves(template)
    want = [(p, *_shape_dtype(v)) for p, v in zip(paths, leaves)]
    if want != got:
        fmt = lambda leaf: f"{leaf[0]} {tuple(leaf[1])} {leaf[2]}"
        diffs = [f"{fmt(w)} in the model vs {fmt(g)} in the checkpoint"
                 for w, g in zip(want, got) if w != g][:3]
        if len(want) != len(got):
            diffs.insert(0, f"{len(want)} leaves in the model vs {len(got)} in the checkpoint")
        raise CheckpointMismatch(f"checkpoint {path} does not fit this model/optimizer: " + "; ".join(diffs))
    arrays = []
    try:  # no pickles: a file of arrays is all a checkpoint may hold
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            for i, (_, shape, dtype) in enumerate(got):
                a = npz[str(i)]
                a = a.view(jnp.bfloat16) if dtype == "bfloat16" else a
                if list(a.shape) != shape or str(a.dtype) != dtype:
                    raise ValueError(f"array {i} is {a.shape} {a.dtype}, meta.json says {tuple(shape)} {dtype}")
                arrays.append(a)
    except Exception as e:  # a zip that is not one, a pickle, a missing entry
        raise CheckpointError(f"checkpoint {path} is corrupt: arrays.npz cannot be read: {e}") from None
    return treedef.unflatten([jnp.asarray(a) for a in arrays]), meta["metadata"]


def restore_latest(directory, template, check=None):
    """Restore the newest checkpoint that loads, warning about each one skipped.

    ``check(metadata, tree)``, if given, raises :class:`CheckpointError` for a
    checkpoint that loads but does not make sense to the caller (it is skipped
    like a corrupt one). Returns ``(tree, metadata, path)``; raises
    :class:`CheckpointError` when none loads.
    """
    candidates = list_checkpoints(directory)
    if not candidates:
        raise CheckpointError(f"no checkpoint in {directory}")
    errors = []
    for path in reversed(candidates):
        try:
            tree, metadata = restore(path, template)
            if check is not None:
                check(metadata, tree)
        except CheckpointMismatch:
            raise
        except CheckpointError as e:
            errors.append(str(e))
            warnings.warn(f"{e}; trying an older checkpoint", CheckpointWarning, stacklevel=2)
            continue
        return tree, metadata, path
    raise CheckpointError("no usable checkpoint: " + "; ".join(errors))
