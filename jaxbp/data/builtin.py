"""The data sets that need no files from the user: the bundled digits and
synthetic images."""
from __future__ import annotations

from importlib import resources

import numpy as np

from jaxbp.data._base import Dataset


def load_digits(seed=0, test_fraction=0.2):
    """The bundled 8×8 digits, split per class with a fixed seed."""
    with resources.files("jaxbp.data").joinpath("digits.npz").open("rb") as f:
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
