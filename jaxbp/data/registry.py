"""The data sets jaxbp knows: one entry each, the one place a data set is described.

An entry (:class:`DataSet`) holds everything the rest of jaxbp asks about a
data set — its reader, the shape of one image, its class names, where its
files come from and their SHA-256, and its augmentation defaults. A new data
set is one :func:`register` call plus its reader::

    register(DataSet("svhn", read_svhn, shape=(3, 32, 32), classes=tuple("0123456789"),
                     source=Source("https://…/", {"train_32x32.mat": "<sha256>", ...}), shift=2))

and ``jaxbp train --data svhn``, ``Config(data="svhn")``, evaluation's class
names and the downloads follow.
"""
from __future__ import annotations

import typing

from jaxbp.data import builtin, cifar, idx
from jaxbp.data._base import DataError
from jaxbp.data.download import Source


class DataSet(typing.NamedTuple):
    """One data set.

    ``read(directory, seed) -> Dataset``: the train and test splits from the
    files in ``directory`` (``None`` for a ``local`` set); ``shape``: one image,
    ``(C, H, W)``; ``classes``: a name per label id; ``source``: where the
    files are downloaded from when no directory is given (``None``: the user
    must give one); ``local``: needs no files at all (bundled or generated);
    ``shift``, ``flip``: random shifts of up to ``shift`` pixels and horizontal
    flips when training, unless the run says otherwise; ``summary``: one line
    for the documentation."""
    name: str
    read: typing.Callable
    shape: tuple
    classes: tuple
    source: Source | None = None
    local: bool = False
    shift: int = 1
    flip: bool = False
    summary: str = ""


REGISTRY: dict = {}


def register(entry):
    """Add ``entry`` (a :class:`DataSet`); a name is registered once."""
    if not isinstance(entry, DataSet):
        raise TypeError(f"register takes a jaxbp.data.DataSet, got {type(entry).__name__}")
    if entry.name in REGISTRY:
        raise ValueError(f"data set {entry.name!r} is already registered")
    if len(entry.shape) != 3:
        raise ValueError(f"DataSet {entry.name!r}: shape must be one image's (C, H, W), got {entry.shape}")
    REGISTRY[entry.name] = entry
    return entry


def get(name):
    """The entry of data set ``name``; :class:`DataError` naming the known ones."""
    if name not in REGISTRY:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def names():
    """The registered data sets' names, in registration order."""
    return tuple(REGISTRY)


DIGITS = tuple(str(k) for k in range(10))
FASHION = ("T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")

# The files as their authors publish them (MNIST, Fashion-MNIST: gzip IDX;
# CIFAR-10: the Python-pickle batches in one tar.gz), with their SHA-256.
register(DataSet(
    "digits", lambda directory, seed: builtin.load_digits(), (1, 8, 8), DIGITS, local=True,
    summary="1,797 8×8 handwritten digits, bundled; a fixed seeded 80/20 stratified split"))
def _idx_source(url, *sha256):
    """The four gzip IDX files (:data:`idx.IDX_FILES`, in that order) at ``url``, with their SHA-256."""
    return Source(url, {f"{stem}.gz": h for stem, h in zip(idx.IDX_FILES.values(), sha256, strict=True)})


register(DataSet("mnist", lambda directory, seed: idx.load_idx_dir(directory), (1, 28, 28), DIGITS, _idx_source(
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    summary="70,000 28×28 handwritten digits (IDX files)"))
register(DataSet("fashion-mnist", lambda directory, seed: idx.load_idx_dir(directory), (1, 28, 28), FASHION,
                 _idx_source("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                             "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                             "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                             "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                             "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
                 summary="70,000 28×28 clothing images (IDX files, as MNIST)"))
register(DataSet("cifar10", lambda directory, seed: cifar.load_cifar10(directory), (3, 32, 32), cifar.CIFAR_CLASSES,
                 Source("https://www.cs.toronto.edu/~kriz/", {
                     "cifar-10-python.tar.gz": "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"}),
                 shift=4, flip=True,
                 summary="60,000 32×32 colour images in 10 classes (Python-pickle batches); random 32×32 "
                         "crops of the image padded by 4 and horizontal flips"))
register(DataSet("synthetic", lambda directory, seed: builtin.synthetic(seed=seed), (1, 8, 8), DIGITS, local=True,
                 summary="random class-dependent images, for benchmarks and smoke tests"))
