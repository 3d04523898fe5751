import os

import jax.numpy as jnp
import numpy as np
import pytest

from jaxbp.train import checkpoint


def tree(scale=1.0):
    return {"w": scale * jnp.arange(6.0).reshape(2, 3), "layers": [jnp.ones(2, jnp.bfloat16), jnp.int32(7)]}


def test_round_trip_and_keep(tmp_path):
    for step in (1, 2, 3):
        checkpoint.save(tmp_path, step, tree(step), {"epoch": step})
    assert [os.path.basename(p) for p in checkpoint.list_checkpoints(tmp_path)] == ["ckpt-000000002",
                                                                                     "ckpt-000000003"]
    restored, meta, path = checkpoint.restore_latest(tmp_path, tree())
    assert meta == {"epoch": 3} and path.endswith("ckpt-000000003")
    np.testing.assert_array_equal(restored["w"], 3 * np.arange(6.0).reshape(2, 3))
    assert restored["layers"][0].dtype == jnp.bfloat16


def test_structure_mismatch_is_explained(tmp_path):
    checkpoint.save(tmp_path, 1, tree())
    other = {"w": jnp.zeros((3, 3)), "layers": [jnp.ones(2, jnp.bfloat16), jnp.int32(7)]}
    with pytest.raises(checkpoint.CheckpointError, match=r"does not fit .*\['w'\] \(3, 3\) float64 in the model vs \['w'\] \(2, 3\) float64 in the checkpoint"):
        checkpoint.restore_latest(tmp_path, other)


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


def test_half_written_checkpoint_is_invisible(tmp_path):
    checkpoint.save(tmp_path, 1, tree())
    # A writer killed mid-way leaves only its temporary directory.
    os.makedirs(tmp_path / ".tmp-ckpt-000000002-99999")
    (tmp_path / ".tmp-ckpt-000000002-99999" / "arrays.npz").write_bytes(b"partial")
    _, _, path = checkpoint.restore_latest(tmp_path, tree())
    assert path.endswith("ckpt-000000001")
    checkpoint.save(tmp_path, 2, tree())  # and the next save cleans it up
    assert not (tmp_path / ".tmp-ckpt-000000002-99999").exists()


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
