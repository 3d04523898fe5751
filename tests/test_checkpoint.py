import hashlib
import io
import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbp.train import checkpoint


def tree(scale=1.0):
    return {"w": scale * jnp.arange(6.0).reshape(2, 3), "layers": [jnp.ones(2, jnp.bfloat16), jnp.int32(7)]}


@pytest.mark.parametrize("template", ["arrays", "shapes"])
def test_round_trip_and_keep(tmp_path, template):
    """A checkpoint restores into a template of arrays or of their shapes alone
    (``jax.ShapeDtypeStruct``: what a resumed run and an evaluation give)."""
    for step in (1, 2, 3):
        checkpoint.save(tmp_path, step, tree(step), {"epoch": step})
    assert [os.path.basename(p) for p in checkpoint.list_checkpoints(tmp_path)] == ["ckpt-000000002",
                                                                                     "ckpt-000000003"]
    like = tree() if template == "arrays" else jax.eval_shape(tree)
    restored, meta, path = checkpoint.restore_latest(tmp_path, like)
    assert meta == {"epoch": 3} and path.endswith("ckpt-000000003")
    np.testing.assert_array_equal(restored["w"], 3 * np.arange(6.0).reshape(2, 3))
    assert restored["layers"][0].dtype == jnp.bfloat16


def test_structure_mismatch_is_explained(tmp_path):
    checkpoint.save(tmp_path, 1, tree())
    other = {"w": jnp.zeros((3, 3)), "layers": [jnp.ones(2, jnp.bfloat16), jnp.int32(7)]}
    for like in (other, jax.eval_shape(lambda: other)):
        with pytest.raises(checkpoint.CheckpointError, match=r"does not fit .*\['w'\] \(3, 3\) float64 in the model vs \['w'\] \(2, 3\) float64 in the checkpoint"):
            checkpoint.restore_latest(tmp_path, like)


def test_corrupt_newest_falls_back_with_a_warning(tmp_path):
    checkpoint.save(tmp_path, 1, tree(1.0))
    newest = checkpoint.save(tmp_path, 2, tree(2.0))
    with open(os.path.join(newest, "arrays.npz"), "r+b") as f:
        f.seek(100)
        f.write(b"garbage")
    with pytest.warns(UserWarning, match="is corrupt"):
        restored, _, path = checkpoint.restore_latest(tmp_path, tree())
    assert path.endswith("ckpt-000000001")
    np.testing.assert_array_equal(restored["w"], np.arange(6.0).reshape(2, 3))


@pytest.mark.parametrize("writer_alive", [False, True])
def test_half_written_checkpoint_is_invisible_and_only_a_dead_writers_is_removed(tmp_path, writer_alive):
    checkpoint.save(tmp_path, 1, tree())
    # A writer killed mid-way leaves only its temporary directory, named after it.
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    if not writer_alive:
        proc.kill()
        proc.wait()
    leftover = tmp_path / f".ckpt-000000002~{socket.gethostname()}~{proc.pid}.tmp"
    os.makedirs(leftover)
    (leftover / "arrays.npz").write_bytes(b"partial")
    _, _, path = checkpoint.restore_latest(tmp_path, tree())
    assert path.endswith("ckpt-000000001")
    checkpoint.save(tmp_path, 2, tree())  # the next save removes it if its writer is gone
    assert leftover.exists() == writer_alive
    proc.kill()
    proc.wait()


def test_no_checkpoint(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint in"):
        checkpoint.restore_latest(tmp_path, tree())


def test_pruning_never_deletes_what_the_run_just_wrote(tmp_path):
    """A run resumed from step 20 past a corrupt step-30 checkpoint keeps its own
    two newest (20 → 21, 22), not the corrupt one in their place."""
    for step in (10, 20, 30):
        checkpoint.save(tmp_path, step, tree(step))
    with open(os.path.join(checkpoint.list_checkpoints(tmp_path)[-1], "arrays.npz"), "ab") as f:
        f.write(b"x")
    with pytest.warns(UserWarning, match="corrupt"):
        _, _, path = checkpoint.restore_latest(tmp_path, tree())
    assert path.endswith("ckpt-000000020")
    checkpoint.save(tmp_path, 21, tree(21))
    checkpoint.save(tmp_path, 22, tree(22))
    names = [os.path.basename(p) for p in checkpoint.list_checkpoints(tmp_path)]
    assert names == ["ckpt-000000021", "ckpt-000000022", "ckpt-000000030"]


def _edit_meta(path, edit):
    with open(os.path.join(path, "meta.json")) as f:
        meta = json.load(f)
    edit(meta)
    with open(os.path.join(path, "meta.json"), "w") as f:
        json.dump(meta, f)


def _pickle_with_its_hash(path):
    """arrays.npz replaced by an npz holding a pickled object, its hash in
    meta.json updated as a forger would: allow_pickle=False still refuses it."""
    buf = io.BytesIO()
    np.savez(buf, **{str(i): np.array([{"a": 1}], dtype=object) for i in range(3)})
    raw = buf.getvalue()
    with open(os.path.join(path, "arrays.npz"), "wb") as f:
        f.write(raw)

    def edit(meta):
        meta["arrays_sha256"] = hashlib.sha256(raw).hexdigest()
        meta["sha256"] = checkpoint._meta_digest(meta)
    _edit_meta(path, edit)


TAMPERING = {
    "metadata_epoch_edited": (lambda p: _edit_meta(p, lambda m: m["metadata"].update(epoch=0)),
                              "meta.json does not match its checksum"),
    "metadata_epoch_huge": (lambda p: _edit_meta(p, lambda m: m["metadata"].update(epoch=1000000)),
                            "meta.json does not match its checksum"),
    "leaves_edited": (lambda p: _edit_meta(p, lambda m: m["leaves"].pop()), "meta.json does not match its checksum"),
    "meta_a_list": (lambda p: open(os.path.join(p, "meta.json"), "w").write("[1, 2]"), "not a JSON object"),
    "meta_not_json": (lambda p: open(os.path.join(p, "meta.json"), "w").write("{"), "is unreadable"),
    "format_unknown": (lambda p: _edit_meta(p, lambda m: m.update(format=99)), "has format 99"),
    "arrays_a_pickle_with_its_hash": (_pickle_with_its_hash, "arrays.npz cannot be read: .*allow_pickle"),
}


@pytest.mark.parametrize("name", TAMPERING)
def test_every_part_of_a_checkpoint_is_verified_and_falls_back(tmp_path, name):
    tamper, message = TAMPERING[name]
    checkpoint.save(tmp_path, 1, tree(), {"epoch": 0})
    newest = checkpoint.save(tmp_path, 2, tree(2.0), {"epoch": 1})
    tamper(newest)
    with pytest.warns(checkpoint.CheckpointWarning, match=message) as caught:
        restored, meta, path = checkpoint.restore_latest(tmp_path, tree())
    assert len(caught) == 1 and path.endswith("ckpt-000000001") and meta == {"epoch": 0}
    np.testing.assert_array_equal(restored["w"], np.arange(6.0).reshape(2, 3))


def test_a_format_1_checkpoint_still_restores(tmp_path):
    """Written before meta.json had a checksum of its own: arrays.npz's is checked."""
    path = checkpoint.save(tmp_path, 1, tree(), {"epoch": 0})

    def as_format_1(meta):
        meta["sha256"] = meta.pop("arrays_sha256")
        del meta["format"]
    _edit_meta(path, as_format_1)
    restored, meta, _ = checkpoint.restore_latest(tmp_path, tree())
    assert meta == {"epoch": 0}
    np.testing.assert_array_equal(restored["w"], np.arange(6.0).reshape(2, 3))


def test_a_link_loop_named_as_the_newest_checkpoint_is_no_checkpoint(tmp_path):
    checkpoint.save(tmp_path, 1, tree())
    os.symlink("ckpt-000000009", tmp_path / "ckpt-000000009")   # points at itself
    _, _, path = checkpoint.restore_latest(tmp_path, tree())
    assert path.endswith("ckpt-000000001")
    checkpoint.save(tmp_path, 2, tree())
    checkpoint.save(tmp_path, 3, tree())
    assert [os.path.basename(p) for p in checkpoint.list_checkpoints(tmp_path)] == ["ckpt-000000002",
                                                                                      "ckpt-000000003"]
