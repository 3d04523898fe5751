"""What every data set shares: :class:`Dataset`, :class:`DataError`, the pixel
convention (:func:`to_unit`) and the checks every reader applies."""
from __future__ import annotations

import os
import typing

import numpy as np

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
