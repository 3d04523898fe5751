"""Data files fetched on first use: downloaded, checked against SHA-256, cached.

``pooch`` does the network part (a temporary file moved into place only after
its SHA-256 matched, so an interrupted or corrupted transfer never leaves a
file that looks complete; retries; a progress bar). This module fetches a data set's
:class:`Source` (its entry in :mod:`jaxbp.data.registry` says which files,
where from, and their SHA-256) and turns every failure into a
:class:`jaxbp.data.DataError` that says what to download and where to put it.

The cache directory is ``$JAXBP_DATA`` if set, else the platform's user cache
directory (``~/.cache/jaxbp`` on Linux), one subdirectory per data set.
``$JAXBP_DATA_MIRROR`` replaces the authors' servers: files are then fetched
from ``$JAXBP_DATA_MIRROR/<data set>/<file>`` and checked against the same hashes.
"""
from __future__ import annotations

import logging
import os
import sys
import typing

from jaxbp import _files
from jaxbp.data._base import DataError, regular_file


class Source(typing.NamedTuple):
    url: str                 # base URL; the file names are appended
    files: dict              # file name -> SHA-256 of the file as served


def cache_dir(name):
    """Where data set ``name`` is cached: ``$JAXBP_DATA/name`` or the user cache dir."""
    root = os.environ.get("JAXBP_DATA")
    if not root:
        import pooch
        root = str(pooch.os_cache("jaxbp"))
    return os.path.join(root, name)


def _present(path, sha256):
    """Whether ``path`` exists with this SHA-256 (a cached file that can be reused).
    Something there that is not a regular file (a FIFO would never end the hash)
    is an error naming it."""
    import pooch
    if not os.path.lexists(path):
        return False
    regular_file(path)
    return pooch.file_hash(path) == sha256


def _reason(error):
    """Why a download failed, in a few words: the innermost cause's own words
    (a refused connection, an HTTP status, a wrong checksum), not the client
    library's page of wrappers."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "] " in text and text.startswith("<"):   # urllib3's "<connection object>: Failed ... [Errno 111] ..."
        text = text.rsplit("] ", 1)[-1]
    return text[:200]


def cached(name, source, directory=None):
    """Whether every file of data set ``name`` (its ``source``) is in ``directory``
    (default :func:`cache_dir`) with its SHA-256: :func:`fetch` would download nothing."""
    directory = cache_dir(name) if directory is None else directory
    return all(_present(os.path.join(directory, f), h) for f, h in source.files.items())


def fetch(name, source, directory=None, mirror=True):
    """The files of data set ``name`` (its ``source``) in ``directory`` (default
    :func:`cache_dir`), downloading any that are missing; returns the directory.
    ``mirror``: fetch from ``$JAXBP_DATA_MIRROR`` when it is set.

    A cached file is reused only if its SHA-256 matches (pooch checks it);
    otherwise it is downloaded again. Every failure raises ``DataError`` naming
    the file, the URL, the reason and the manual way out, and leaves nothing
    half-written in ``directory``.
    """
    import pooch

    if mirror and os.environ.get("JAXBP_DATA_MIRROR"):
        source = source._replace(url=f"{os.environ['JAXBP_DATA_MIRROR'].rstrip('/')}/{name}/")
    directory = cache_dir(name) if directory is None else directory
    pooch.get_logger().setLevel(logging.WARNING)  # jaxbp prints its own line (pooch's is not logging's "pooch")
    _files.remove_stale(directory)  # downloads killed half-way
    for fname, sha256 in source.files.items():
        if _present(os.path.join(directory, fname), sha256):
            continue
        url = source.url + fname
        print(f"downloading {url} -> {directory}", file=sys.stderr, flush=True)
        # Into this process's own folder, moved into place once complete and
        # checked: a download killed half-way leaves that folder, which the next
        # fetch recognizes as stale (its writer gone) and removes.
        partial = _files.temporary(os.path.join(directory, "download"))
        try:
            pooch.retrieve(url, known_hash=f"sha256:{sha256}", fname=fname, path=partial,
                           progressbar=sys.stderr.isatty())
            os.replace(os.path.join(partial, fname), os.path.join(directory, fname))
        except Exception as e:  # network errors, HTTP errors, a wrong checksum: one message
            files = ", ".join(source.files)
            raise DataError(
                f"could not download {fname} for --data {name} from {url} ({_reason(e)}); download "
                f"{files} yourself (SHA-256 in jaxbp/data/registry.py), put them in {directory} (or any directory, "
                "with --data-dir), and run again"
            ) from None
        finally:
            _files.remove(partial)
    return directory
