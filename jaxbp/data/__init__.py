"""Data sets: one registry entry each (:mod:`jaxbp.data.registry`), read into a :class:`Dataset`.

Every reader returns a :class:`Dataset` of NCHW images and int32 labels, split
into train and test. Images are float32 in ``[0, 1]``, or, where the files hold
8-bit pixels (MNIST, Fashion-MNIST, CIFAR-10), those uint8 values ``v``
standing for ``v / 255``: a quarter of the memory on the host and on the
device(s), and no conversion pass at start-up. The training and evaluation
programs turn a batch into float32 on the device (:func:`to_unit`, the same
values as dividing on the host); use :func:`to_unit` where floats are needed.

The data sets (``docs/data.md``): ``digits`` (bundled), ``mnist`` and
``fashion-mnist`` (:mod:`.idx`), ``cifar10`` (:mod:`.cifar`), ``synthetic``
(:mod:`.builtin`). Files are read from a directory the user gives, or
downloaded, checked and cached (:mod:`.download`). A new data set is one
:func:`register` call plus its reader.
"""
from __future__ import annotations

from jaxbp.data import download
from jaxbp.data._base import (DataError, Dataset, UNIT, check_dataset, check_labels, check_pixels,  # noqa: F401
                              regular_file, to_unit)
from jaxbp.data.builtin import load_digits, synthetic  # noqa: F401
from jaxbp.data.cifar import CIFAR_CLASSES, load_cifar10, read_cifar_batch  # noqa: F401
from jaxbp.data.idx import IDX_FILES, load_idx_dir, read_idx  # noqa: F401
from jaxbp.data.registry import REGISTRY, DataSet, get, names, register  # noqa: F401


def _directory(entry, data_dir):
    """Where ``entry``'s files are: ``data_dir``, or its download cache
    (fetched first if needed); ``None`` for a set without files."""
    if entry.local:
        return None
    if data_dir is not None:
        return data_dir
    if entry.source is None:
        raise DataError(f"data set {entry.name!r} is read from a directory: give it (data_dir=..., --data-dir)")
    return download.fetch(entry.name, entry.source)


def load(name, data_dir=None, seed=0):
    """Data set ``name`` (see :func:`names`) from ``data_dir``, or from its
    download cache; ``seed`` draws the synthetic set. The reader's images must
    be NCHW with the entry's channels (their height and width may differ from
    the published files', as in a smaller copy) and its classes the entry's."""
    entry = get(name)
    ds = entry.read(_directory(entry, data_dir), seed)
    for split, x in (("train", ds.x_train), ("test", ds.x_test)):
        if x.ndim != 4 or x.shape[1] != entry.shape[0]:
            raise DataError(f"data set {name!r}: its reader returned {split} images of shape {tuple(x.shape)}, "
                            f"expected (N, {entry.shape[0]}, H, W) (its registry entry's shape is "
                            f"{tuple(entry.shape)})")
    if ds.num_classes != len(entry.classes):
        raise DataError(f"data set {name!r}: its reader returned {ds.num_classes} classes, its registry entry "
                        f"names {len(entry.classes)}")
    return ds


def load_in_background(name, data_dir=None, seed=0):
    """Start :func:`load` in a background thread (reading, hashing and
    decompressing let other threads run), e.g. while JAX starts its devices;
    return a function that waits for the :class:`Dataset`, or raises the error
    ``load`` raised. ``None`` where files would have to be downloaded first: a
    download is not left to a thread the process might abandon half-way."""
    import threading

    entry = REGISTRY.get(name)
    if (entry is not None and data_dir is None and entry.source is not None and not entry.local
            and not download.cached(name, entry.source)):
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
