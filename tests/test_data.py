import os

import numpy as np
import pytest

from jaxbp import data
from helpers import write_mnist_dir


def test_idx_files_named_with_a_dot_are_accepted(tmp_path):
    arrays = write_mnist_dir(tmp_path)
    for stem in data.IDX_FILES.values():
        os.rename(tmp_path / stem, tmp_path / stem.replace("-idx", ".idx"))  # train-images.idx3-ubyte
    ds = data.load_idx_dir(str(tmp_path))
    np.testing.assert_array_equal(ds.y_train, arrays["train_labels"])


@pytest.mark.parametrize("gz", [False, True])
def test_idx_directory_round_trip(tmp_path, gz):
    arrays = write_mnist_dir(tmp_path, gz=gz)
    ds = data.load_idx_dir(str(tmp_path))
    assert ds.x_train.shape == (12, 1, 6, 5) and ds.x_train.dtype == np.float32
    np.testing.assert_array_equal(ds.x_train[:, 0], arrays["train_images"] / np.float32(255))
    np.testing.assert_array_equal(ds.y_test, arrays["test_labels"])


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_read_idx_every_type(tmp_path, dtype):
    a = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    data.write_idx(str(tmp_path / "a.idx"), a)
    b = data.read_idx(str(tmp_path / "a.idx"))
    assert b.dtype == np.dtype(dtype) and b.shape == a.shape
    np.testing.assert_array_equal(a, b)


def test_bad_magic(tmp_path):
    (tmp_path / "x").write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(data.DataError, match=r"is not an IDX file: bad magic number 12340801"):
        data.read_idx(str(tmp_path / "x"))


@pytest.mark.parametrize("cut", [2, 10, 30])
def test_truncated_file(tmp_path, cut):
    data.write_idx(str(tmp_path / "a"), np.zeros((4, 3, 3), np.uint8))
    raw = (tmp_path / "a").read_bytes()
    (tmp_path / "b").write_bytes(raw[:-cut] if cut < len(raw) else raw[:3])
    with pytest.raises(data.DataError, match="truncated|not an IDX"):
        data.read_idx(str(tmp_path / "b"))


def test_trailing_bytes(tmp_path):
    data.write_idx(str(tmp_path / "a"), np.zeros((2, 2), np.uint8))
    (tmp_path / "a").write_bytes((tmp_path / "a").read_bytes() + b"\x00")
    with pytest.raises(data.DataError, match="longer than its header says"):
        data.read_idx(str(tmp_path / "a"))


def test_truncated_gzip(tmp_path):
    data.write_idx(str(tmp_path / "a.gz"), np.zeros((50, 3), np.uint8))
    raw = (tmp_path / "a.gz").read_bytes()
    (tmp_path / "a.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(data.DataError, match="cannot read IDX file"):
        data.read_idx(str(tmp_path / "a.gz"))


def test_missing_directory_and_file(tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        data.load_idx_dir(str(tmp_path / "nope"))
    with pytest.raises(data.DataError, match=r"has no train-images-idx3-ubyte \(or train-images-idx3-ubyte.gz\)"):
        data.load_idx_dir(str(tmp_path))


def test_images_and_labels_must_match(tmp_path):
    write_mnist_dir(tmp_path)
    data.write_idx(str(tmp_path / "train-labels-idx1-ubyte"), np.zeros(7, np.uint8))
    with pytest.raises(data.DataError, match=r"train images \(12, 6, 5\) and labels \(7,\)"):
        data.load_idx_dir(str(tmp_path))


def test_digits_split_is_fixed_and_stratified():
    a, b = data.load_digits(), data.load_digits()
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert len(a.x_train) + len(a.x_test) == 1797 and a.x_train.shape[1:] == (1, 8, 8)
    assert 0 <= a.x_train.min() and a.x_train.max() <= 1
    assert np.bincount(a.y_test).min() >= 34


def test_unknown_dataset():
    with pytest.raises(data.DataError, match="unknown data set 'cifar'"):
        data.load("cifar")
