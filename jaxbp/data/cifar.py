"""CIFAR-10's Python-pickle batches (``data_batch_1`` … ``_5``, ``test_batch``),
from a directory holding them, their ``cifar-10-batches-py/`` folder or
``cifar-10-python.tar.gz`` (read in place, not extracted)."""
from __future__ import annotations

import io
import os
import pickle
import tarfile

import numpy as np

from jaxbp.data._base import DataError, Dataset, regular_file

CIFAR_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


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
