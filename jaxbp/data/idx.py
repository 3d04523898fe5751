"""MNIST-style IDX files: the four standard files (raw or ``.gz``, named
``train-images-idx3-ubyte`` or ``train-images.idx3-ubyte``) of MNIST and
Fashion-MNIST."""
from __future__ import annotations

import os
import zlib

import numpy as np

from jaxbp.data._base import DataError, Dataset, check_labels, check_pixels, regular_file

IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
             "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


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
