"""Data sets that need no network: bundled digits, MNIST-style IDX files, synthetic.

Every loader returns a :class:`Dataset` of NCHW images and int32 labels, split
into train and test. Images are float32 in ``[0, 1]``, or, where the files hold
8-bit pixels (MNIST, Fashion-MNIST, CIFAR-10), those uint8 values ``v``
standing for ``v / 255``: a quarter of the memory on the host and on the
device(s), and no conversion pass at start-up. The training and evaluation
programs turn a batch into float32 on the device (:func:`to_unit`, the same
values as dividing on the host); use :func:`to_unit` where floats are needed.

* ``digits``: the 1,797 8×8 handwritten digits of the UCI "Optical Recognition
  of Handwritten Digits" set (as bundled with scikit-learn; CC BY 4.0), shipped
  inside this package; a fixed seeded 80/20 stratified split.
* ``mnist`` / ``fashion-mnist``: the four standard IDX files (raw or ``.gz``,
  named ``train-images-idx3-ubyte`` or ``train-images.idx3-ubyte``) from a
  directory the user provides, or downloaded and checked (:mod:`jaxbp.download`).
* ``cifar10``: the Python-pickle batches (``data_batch_1`` … ``_5``,
  ``test_batch``), from a directory holding them, their
  ``cifar-10-batches-py/`` folder or ``cifar-10-python.tar.gz``; or downloaded.
* ``synthetic``: random class-dependent images, for benchmarks and smoke tests.
"""
from __future__ import annotations

import io
import os
import pickle
import tarfile
import typing
import zlib
from importlib import resources

import numpy as np

IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
             "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "synthetic")
DOWNLOADABLE = ("mnist", "fashion-mnist", "cifar10")
CIFAR_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class DataError(ValueError):
    """A data file or directory that cannot be used, with the reason."""


# v / 255 in float32 for every 8-bit pixel value v, correctly rounded.
UNIT = np.arange(256, dtype=np.float32) / np.float32(255)


def to_unit(x):
    """Images as floats in ``[0, 1]``: uint8 pixels ``v`` -> float32 ``v / 255``
    (a lookup in :data:`UNIT`, so the same values on the host and on any
    device); any other array is returned as it is. NumPy or JAX arrays (traceable)."""
    if x.dtype != np.uint8:
        return x
    if isinstance(x, np.ndarray):
        return UNIT[x]
    import jax.numpy as jnp  # a JAX array: this module itself imports only NumPy
    return jnp.asarray(UNIT)[x]


class Dataset(typing.NamedTuple):
    x_train: np.ndarray  # (N, C, H, W) float32 in [0, 1], or uint8 pixels v for v / 255 (to_unit)
    y_train: np.ndarray  # (N,) int32
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int


def regular_file(path):
    """Raise :class:`DataError` unless ``path`` is a regular file (or a link to
    one): opening a FIFO left in a data directory would wait forever."""
    if not os.path.isfile(path):
        what = "does not exist" if not os.path.lexists(path) else "is not a regular file"
        raise DataError(f"{path} {what}; put the data set's file there, or remove it and run again")


class _Gunzip:
    """A gzip file's bytes read ``n`` at a time, decompressed no further than
    asked (zlib's ``max_length``, at C speed; ``gzip.GzipFile`` reads in small
    Python-level chunks, measured ~0.5 s slower on MNIST). Members are chained as
    ``gzip`` does; a stream that ends early raises ``EOFError``."""

    def __init__(self, compressed):
        self.stream, self.tail = zlib.decompressobj(16 + zlib.MAX_WBITS), compressed

    def read(self, n):
        parts = []
        while n > 0:
            if self.stream.eof:
                rest = self.stream.unused_data
                if not rest.strip(b"\0"):   # the end, or gzip's tolerated zero padding
                    break
                self.stream, self.tail = zlib.decompressobj(16 + zlib.MAX_WBITS), rest
            if not self.tail:
                raise EOFError("compressed file ended before the end-of-stream marker was reached")
            part = self.stream.decompress(self.tail, n)
            self.tail = self.stream.unconsumed_tail
            parts.append(part)
            n -= len(part)
        return b"".join(parts)


def read_idx(path):
    """Parse one IDX file (raw or gzip) into a numpy array, checking it fully.

    Layout: two zero bytes, a type byte, the number of dimensions ``d``, then
    ``d`` big-endian int32 sizes, then exactly ``prod(sizes)`` items. A gzip
    file is decompressed no further than the header's size plus one byte, so
    a small file that expands to gigabytes costs no more than the data set.
    """
    regular_file(path)
    try:
        with open(path, "rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            f = _Gunzip(raw.read()) if gz else raw
            data = f.read(4)
            if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_TYPES:
                raise DataError(f"{path} is not an IDX file: bad magic number {data[:4].hex() or '(empty)'} "
                                "(expected 0000 then a type byte 08/09/0b/0c/0d/0e and a rank)")
            dtype, ndim = np.dtype(IDX_TYPES[data[2]]), data[3]
            header = 4 + 4 * ndim
            data += f.read(4 * ndim)
            if len(data) < header:
                raise DataError(f"{path} is truncated: {len(data)} bytes, the header alone needs {header}")
            shape = tuple(int(s) for s in np.frombuffer(data, ">i4", ndim, 4))
            expected = header + int(np.prod(shape)) * dtype.itemsize
            data += f.read(expected - header + 1)   # one byte more than promised: is there more?
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read IDX file {path}: {e}") from None
    if len(data) < expected:
        raise DataError(f"{path} is truncated: {len(data)} bytes, expected {expected} for shape {shape}")
    if len(data) > expected:
        raise DataError(f"{path} is longer than its header says: more than the {expected} bytes of shape {shape}")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(directory, stem):
    """``stem`` in either common naming (``train-images-idx3-ubyte`` or
    ``train-images.idx3-ubyte``), raw or gzip."""
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if os.path.exists(os.path.join(directory, name)):
            return os.path.join(directory, name)
    raise DataError(f"{directory} has no {stem} (or {stem}.gz), nor {dotted} (or {dotted}.gz)")


def load_idx_dir(directory, num_classes=10):
    """MNIST-format train/test images and labels from ``directory`` (MNIST and
    Fashion-MNIST both have 10 classes)."""
    if not directory or not os.path.isdir(directory):
        raise DataError(f"data directory {directory!r} does not exist or is not a directory")
    paths = {k: _find(directory, stem) for k, stem in IDX_FILES.items()}
    arrays = {k: read_idx(path) for k, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{split} images {images.shape} and labels {labels.shape} in {directory} "
                            "do not match (expected (N, H, W) and (N,))")
    # 8-bit pixels stay uint8 (to_unit); other IDX types become float32 as they are.
    x = {s: arrays[f"{s}_images"][:, None] for s in ("train", "test")}
    x = {s: v if v.dtype == np.uint8 else v.astype(np.float32) for s, v in x.items()}
    for split in ("train", "test"):
        check_labels(arrays[f"{split}_labels"], num_classes, paths[f"{split}_labels"])
        check_pixels(x[split], paths[f"{split}_images"])
    y = {s: arrays[f"{s}_labels"].astype(np.int32) for s in ("train", "test")}
    return Dataset(x["train"], y["train"], x["test"], y["test"], num_classes)


def check_labels(labels, num_classes, where):
    """Labels must be class ids in ``[0, num_classes)``: else a file's stray byte
    would build a model with more classes, or a −1 end in a "non-finite loss"."""
    labels = np.asarray(labels)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise DataError(f"{where}: labels must be class ids in [0, {num_classes}), but {bad.size} are not; "
                        f"the first is index {bad[0]}: {labels[bad[0]]}")


def check_pixels(images, where):
    """Float pixels must be finite (8-bit ones always are)."""
    if images.dtype != np.uint8:
        bad = np.flatnonzero(~np.isfinite(np.asarray(images).reshape(len(images), -1)).all(axis=1))
        if bad.size:
            raise DataError(f"{where}: images must be finite, but {bad.size} hold NaN or infinity; "
                            f"the first is index {bad[0]}")


def check_dataset(ds, where="the dataset"):
    """A :class:`Dataset`'s labels and pixels, as the loaders check their files'."""
    for split in ("train", "test"):
        check_labels(getattr(ds, f"y_{split}"), ds.num_classes, f"{where} ({split} labels)")
        check_pixels(getattr(ds, f"x_{split}"), f"{where} ({split} images)")


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR batch: a dict of bytes, lists and numpy arrays, and
    nothing else — no other class can be constructed, so a hostile file cannot
    run code."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"a CIFAR batch holds no {module}.{name}")
        return super().find_class(module, name)


def read_cifar_batch(f, where):
    """One CIFAR-10 batch (an open binary file) -> ``(N, 3, 32, 32)`` uint8, ``(N,)`` int32.

    Format: a pickled dict with ``b"data"`` (``N × 3072`` uint8: the red, green
    and blue 32×32 planes of each image, row-major) and ``b"labels"`` (N ints).
    """
    try:
        batch = _BatchUnpickler(f, encoding="bytes").load()
    except Exception as e:
        raise DataError(f"{where} is not a CIFAR-10 batch: {type(e).__name__}: {e}") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{where} is not a CIFAR-10 batch: expected a dict with b'data' and b'labels'")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (len(data),):
        raise DataError(f"{where}: data {data.shape} {data.dtype} and labels {labels.shape} do not match "
                        "(expected (N, 3072) uint8 and (N,))")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int32)


def load_cifar10(directory):
    """CIFAR-10 from ``directory``: the batch files, their ``cifar-10-batches-py``
    folder, or ``cifar-10-python.tar.gz`` (read in place, not extracted)."""
    if not directory or not os.path.isdir(directory):
        raise DataError(f"data directory {directory!r} does not exist or is not a directory")
    tar_path = os.path.join(directory, "cifar-10-python.tar.gz")
    folders = [directory, os.path.join(directory, "cifar-10-batches-py")]
    folder = next((d for d in folders if os.path.exists(os.path.join(d, "test_batch"))), None)

    def splits(read):
        """``read(batch name) -> (x, y)`` over every batch, concatenated per split."""
        parts = {split: [read(n) for n in names] for split, names in CIFAR_BATCHES.items()}
        return [tuple(np.concatenate(a) for a in zip(*parts[split])) for split in ("train", "test")]

    if folder is not None:
        def read(name):
            path = os.path.join(folder, name)
            if not os.path.exists(path):
                raise DataError(f"{folder} has test_batch but no {name}")
            regular_file(path)
            with open(path, "rb") as f:
                return read_cifar_batch(f, path)
        (xt, yt), (xv, yv) = splits(read)
    elif os.path.exists(tar_path):
        regular_file(tar_path)
        try:
            with tarfile.open(tar_path, "r:gz") as tar:
                members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}

                def read(name):
                    if name not in members:
                        raise DataError(f"{tar_path} has no {name}")
                    return read_cifar_batch(io.BytesIO(tar.extractfile(members[name]).read()), f"{tar_path}:{name}")
                (xt, yt), (xv, yv) = splits(read)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"cannot read {tar_path}: {e}") from None
    else:
        raise DataError(f"{directory} has neither the CIFAR-10 batches (data_batch_1 … test_batch, "
                        "or a cifar-10-batches-py folder) nor cifar-10-python.tar.gz")
    for labels in (yt, yv):
        if labels.size and not 0 <= labels.min() <= labels.max() < 10:
            raise DataError(f"CIFAR-10 labels in {directory} must be in [0, 10), got {labels.min()}..{labels.max()}")
    return Dataset(xt, yt, xv, yv, 10)  # uint8 pixels (to_unit)


def load_digits(seed=0, test_fraction=0.2):
    """The bundled 8×8 digits, split per class with a fixed seed."""
    with resources.files("jaxbp").joinpath("data/digits.npz").open("rb") as f:
        d = np.load(f)
        images, labels = d["images"], d["labels"].astype(np.int32)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test[idx[:round(len(idx) * test_fraction)]] = True
    x = (images[:, None] / 16.0).astype(np.float32)
    return Dataset(x[~test], labels[~test], x[test], labels[test], 10)


def synthetic(n_train=1024, n_test=256, shape=(1, 8, 8), num_classes=10, seed=0):
    """Images = a fixed random template per class + noise; learnable, no files."""
    rng = np.random.default_rng(seed)
    templates = rng.uniform(size=(num_classes,) + tuple(shape))

    def draw(n):
        y = rng.integers(0, num_classes, n).astype(np.int32)
        x = np.clip(templates[y] + 0.3 * rng.standard_normal((n,) + tuple(shape)), 0, 1)
        return x.astype(np.float32), y

    (xt, yt), (xv, yv) = draw(n_train), draw(n_test)
    return Dataset(xt, yt, xv, yv, num_classes)


def load_in_background(name, data_dir=None, seed=0):
    """Start :func:`load` in a background thread (reading, hashing and
    decompressing let other threads run), e.g. while JAX starts its devices;
    return a function that waits for the :class:`Dataset`, or raises the error
    ``load`` raised. ``None`` where files would have to be downloaded first: a
    download is not left to a thread the process might abandon half-way."""
    import threading

    if name in DOWNLOADABLE and data_dir is None:
        from jaxbp import download
        if not download.cached(name):
            return None
    outcome = {}

    def work():
        try:
            outcome["dataset"] = load(name, data_dir, seed)
        except BaseException as e:  # raised again by wait(), in the caller's thread
            outcome["error"] = e

    thread = threading.Thread(target=work, daemon=True, name="jaxbp-load-data")
    thread.start()

    def wait():
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["dataset"]
    return wait


def load(name, data_dir=None, seed=0):
    """Dispatch on a data set name (see :data:`DATASETS`)."""
    if name == "digits":
        return load_digits(seed=0)  # the split is fixed, whatever the training seed
    if name in DOWNLOADABLE and data_dir is None:
        from jaxbp import download
        data_dir = download.fetch(name)
    if name in ("mnist", "fashion-mnist"):
        return load_idx_dir(data_dir)
    if name == "cifar10":
        return load_cifar10(data_dir)
    if name == "synthetic":
        return synthetic(seed=seed)
    raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
