import gzip
import os

import numpy as np
import pytest

from jaxbp import data
from jaxbp.data import cifar
from helpers import write_cifar_dir, write_idx, write_mnist_dir


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
    assert ds.x_train.shape == (12, 1, 6, 5) and ds.x_train.dtype == np.uint8  # pixels kept as stored
    np.testing.assert_array_equal(ds.x_train[:, 0], arrays["train_images"])
    np.testing.assert_array_equal(data.to_unit(ds.x_train)[:, 0], arrays["train_images"] / np.float32(255))
    np.testing.assert_array_equal(ds.y_test, arrays["test_labels"])


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_read_idx_every_type(tmp_path, dtype):
    a = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    write_idx(str(tmp_path / "a.idx"), a)
    b = data.read_idx(str(tmp_path / "a.idx"))
    assert b.dtype == np.dtype(dtype) and b.shape == a.shape
    np.testing.assert_array_equal(a, b)


def test_bad_magic(tmp_path):
    (tmp_path / "x").write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(data.DataError, match=r"is not an IDX file: bad magic number 12340801"):
        data.read_idx(str(tmp_path / "x"))


@pytest.mark.parametrize("keep, message", [
    (50, r"is truncated: 50 bytes, expected 52 for shape \(4, 3, 3\)"),     # in the items
    (22, r"is truncated: 22 bytes, expected 52 for shape \(4, 3, 3\)"),
    (10, r"is truncated: 10 bytes, the header alone needs 16"),             # in the sizes
    (3, r"is not an IDX file: bad magic number 000008 "),                   # in the magic number
    (0, r"is not an IDX file: bad magic number \(empty\)"),
])
@pytest.mark.parametrize("gz", [False, True])
def test_truncated_file(tmp_path, keep, message, gz):
    write_idx(str(tmp_path / "a"), np.zeros((4, 3, 3), np.uint8))
    raw = (tmp_path / "a").read_bytes()
    assert len(raw) == 52
    path = tmp_path / ("b.gz" if gz else "b")
    path.write_bytes(gzip.compress(raw[:keep]) if gz else raw[:keep])
    with pytest.raises(data.DataError, match=message):
        data.read_idx(str(path))


def test_a_gzip_bomb_is_read_no_further_than_its_header_promises(tmp_path):
    """A 13 MB .gz of 3 GB of zeros reached 6.1 GB of memory before "truncated"."""
    import tracemalloc
    header = bytes([0, 0, 8, 3]) + np.asarray((100, 28, 28), ">i4").tobytes()
    path = tmp_path / "bomb.gz"
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header)
        zeros = bytes(1 << 20)
        for _ in range(64):   # 64 MiB after a header that promises 78 KB
            f.write(zeros)
    tracemalloc.start()
    try:
        with pytest.raises(data.DataError, match=r"bomb.gz is longer than its header says: more than the 78416 bytes "
                                                 r"of shape \(100, 28, 28\)"):
            data.read_idx(str(path))
        assert tracemalloc.get_traced_memory()[1] < 8 << 20
    finally:
        tracemalloc.stop()


def test_a_fifo_in_a_data_directory_is_refused_not_waited_on(tmp_path):
    write_mnist_dir(tmp_path)
    os.remove(tmp_path / "train-labels-idx1-ubyte")
    os.mkfifo(tmp_path / "train-labels-idx1-ubyte")
    with pytest.raises(data.DataError, match=r"train-labels-idx1-ubyte is not a regular file"):
        data.load_idx_dir(str(tmp_path))


def test_trailing_bytes(tmp_path):
    write_idx(str(tmp_path / "a"), np.zeros((2, 2), np.uint8))
    (tmp_path / "a").write_bytes((tmp_path / "a").read_bytes() + b"\x00")
    with pytest.raises(data.DataError, match="longer than its header says"):
        data.read_idx(str(tmp_path / "a"))


def test_truncated_gzip(tmp_path):
    write_idx(str(tmp_path / "a.gz"), np.zeros((50, 3), np.uint8))
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
    write_idx(str(tmp_path / "train-labels-idx1-ubyte"), np.zeros(7, np.uint8))
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


# --- CIFAR-10: the Python-pickle batches ---

def _cifar_expected(batches, names):
    x = np.concatenate([batches[n][b"data"] for n in names]).reshape(-1, 3, 32, 32)
    return x, np.concatenate([batches[n][b"labels"] for n in names]).astype(np.int32)  # uint8 pixels as stored


@pytest.mark.parametrize("form", ["batches folder", "its parent", "tar.gz"])
def test_cifar10_in_every_published_form(form, tmp_path):
    import tarfile
    batches = write_cifar_dir(tmp_path / "w")
    folder = tmp_path / "w" / "cifar-10-batches-py"
    if form == "batches folder":
        where = folder
    elif form == "its parent":
        where = tmp_path / "w"
    else:
        where = tmp_path / "t"
        where.mkdir()
        with tarfile.open(where / "cifar-10-python.tar.gz", "w:gz") as tar:
            tar.add(folder, arcname="cifar-10-batches-py")
    ds = data.load("cifar10", str(where))
    for (x, y), names in (((ds.x_train, ds.y_train), cifar.CIFAR_BATCHES["train"]),
                          ((ds.x_test, ds.y_test), cifar.CIFAR_BATCHES["test"])):
        ex, ey = _cifar_expected(batches, names)
        assert x.dtype == np.uint8
        np.testing.assert_array_equal(x, ex)
        np.testing.assert_array_equal(y, ey)
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.num_classes == 10
    # Pixel (row 0, column 1) of the green plane is byte 1024 + 1 of the row.
    assert ds.x_test[0, 1, 0, 1] == batches["test_batch"][b"data"][0, 1025]


def test_cifar10_batch_that_would_run_code_is_refused(tmp_path):
    import pickle
    write_cifar_dir(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f, protocol=2)
    with pytest.raises(data.DataError, match=r"data_batch_3 is not a CIFAR-10 batch: UnpicklingError: "
                                             r"a CIFAR batch holds no (posix|nt)\.system"):
        data.load("cifar10", str(tmp_path))


@pytest.mark.parametrize("damage,message", [
    ("short row", r"data \(4, 3071\) uint8 and labels \(4,\) do not match \(expected \(N, 3072\) uint8 and \(N,\)\)"),
    ("missing batch", r"has test_batch but no data_batch_2"),
    ("label 10", r"CIFAR-10 labels in .* must be in \[0, 10\), got 0..10"),
])
def test_cifar10_damaged_files_are_clear_errors(damage, message, tmp_path):
    import pickle
    batches = write_cifar_dir(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    batch = batches["data_batch_2"]
    if damage == "missing batch":
        os.remove(folder / "data_batch_2")
    else:
        if damage == "short row":
            batch[b"data"] = batch[b"data"][:, :3071]
        else:
            batch[b"labels"][0] = 10
        with open(folder / "data_batch_2", "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with pytest.raises(data.DataError, match=message):
        data.load("cifar10", str(tmp_path))


def test_to_unit_gives_v_over_255_on_the_host_and_on_the_device():
    """Every 8-bit value maps to float32(v) / float32(255), correctly rounded, the
    values the loaders used to store; the same under jit; floats pass through."""
    import jax
    v = np.arange(256, dtype=np.uint8).reshape(4, 64)
    expected = v.astype(np.float32) / np.float32(255)
    assert expected.dtype == np.float32
    np.testing.assert_array_equal(data.to_unit(v), expected)
    on_device = jax.jit(data.to_unit)(v)
    assert on_device.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(on_device), expected)
    x = np.linspace(0, 1, 5)
    assert data.to_unit(x) is x


@pytest.mark.parametrize("where, value, message", [
    ("train_labels", 200, r"train-labels-idx1-ubyte: labels must be class ids in \[0, 10\), but 1 are not; "
                          r"the first is index 3: 200"),
    ("test_labels", -1, r"t10k-labels-idx1-ubyte: labels must be class ids in \[0, 10\), but 1 are not; "
                        r"the first is index 3: -1"),
    ("train_images", np.nan, r"train-images-idx3-ubyte: images must be finite, but 1 hold NaN or infinity; "
                             r"the first is index 3"),
], ids=["label_200", "label_minus_one", "nan_pixel"])
def test_bad_labels_and_pixels_are_named_with_file_and_index(tmp_path, where, value, message):
    """A stray label byte built a 201-class model; a −1 or a NaN pixel ended as a "non-finite loss"."""
    arrays = write_mnist_dir(tmp_path)
    a = arrays[where].astype(np.int8 if value == -1 else np.float32 if np.isnan(value) else arrays[where].dtype)
    a[3] = value
    write_idx(str(tmp_path / data.IDX_FILES[where]), a)
    with pytest.raises(data.DataError, match=message):
        data.load_idx_dir(str(tmp_path))


def test_a_dataset_given_to_fit_is_checked_too():
    from jaxbp import train
    ds = data.synthetic(n_train=64, n_test=16)
    bad = ds._replace(y_train=np.where(np.arange(64) == 5, 10, ds.y_train))
    with pytest.raises(data.DataError, match=r"fit's dataset \(train labels\): .* the first is index 5: 10"):
        train.fit(train.Config(data="synthetic", model="mlp", epochs=1), dataset=bad, quiet=True)
