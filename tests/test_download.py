"""Downloads (jaxbp.data.download) against a local HTTP server on 127.0.0.1: the
files arrive checked and cached; a wrong checksum, a truncated transfer or a
missing file is a clear error that leaves nothing half-written."""
import gzip
import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

from jaxbp import data
from jaxbp.data import download
from helpers import write_mnist_dir


class _Server:
    """Serves ``files`` (name -> bytes); ``truncate`` names files whose transfer
    stops halfway (the Content-Length promises the whole file)."""

    def __init__(self):
        self.files, self.truncate, self.requests = {}, set(), []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                server.requests.append(name)
                if name not in server.files:
                    self.send_error(404)
                    return
                body = server.files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if name in server.truncate else body)
                self.wfile.flush()
                if name in server.truncate:
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.httpd.shutdown()


def _source(server, files):
    server.files.update(files)
    return download.Source(server.url, {n: hashlib.sha256(b).hexdigest() for n, b in files.items()})


def test_files_are_downloaded_checked_and_then_reused(server, tmp_path):
    source = _source(server, {"a.gz": gzip.compress(b"a" * 1000), "b.gz": b"bb"})
    assert download.fetch("x", source, str(tmp_path)) == str(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["a.gz", "b.gz"] and sorted(server.requests) == ["a.gz", "b.gz"]
    download.fetch("x", source, str(tmp_path))
    assert len(server.requests) == 2  # the cache was used
    (tmp_path / "b.gz").write_bytes(b"corrupted")  # a damaged cached file is fetched again
    download.fetch("x", source, str(tmp_path))
    assert server.requests[2:] == ["b.gz"] and (tmp_path / "b.gz").read_bytes() == b"bb"


@pytest.mark.parametrize("fault, reason", [("wrong checksum", r"SHA256 hash of downloaded file \(bad.gz\) does not "
                                                               r"match the known hash"),
                                           ("truncated", r"IncompleteRead\(2500 bytes read, 2500 more expected\)"),
                                           ("missing", r"404 Client Error: Not Found")])
def test_a_bad_transfer_is_a_clear_error_and_leaves_nothing(fault, reason, server, tmp_path):
    """One line: the file, the URL, the innermost reason, the way out."""
    source = _source(server, {"good.gz": b"good", "bad.gz": b"x" * 5000})
    if fault == "wrong checksum":
        server.files["bad.gz"] = b"y" * 5000
    elif fault == "truncated":
        server.truncate.add("bad.gz")
    else:
        del server.files["bad.gz"]
    with pytest.raises(data.DataError, match=rf"could not download bad.gz for --data x from {server.url}bad.gz "
                                             rf"\({reason}.*\); download good.gz, bad.gz yourself \(SHA-256 in "
                                             r"jaxbp/data/registry.py\), put them in .* \(or any directory, with "
                                             r"--data-dir\), and run again$") as raised:
        download.fetch("x", source, str(tmp_path))
    assert "\n" not in str(raised.value)
    assert os.listdir(tmp_path) == ["good.gz"]  # no partial or temporary file


@pytest.fixture
def mnist_mirror(server, tmp_path, monkeypatch):
    """Small MNIST files served by ``server`` as $JAXBP_DATA_MIRROR (with their
    hashes as the published ones), cached in $JAXBP_DATA = tmp_path/cache;
    returns the arrays written and the files (name -> bytes)."""
    src = tmp_path / "src"
    src.mkdir()
    arrays = write_mnist_dir(src, gz=True)
    files = {p.name: p.read_bytes() for p in src.iterdir()}
    server.files.update(files)
    monkeypatch.setitem(data.REGISTRY, "mnist", data.get("mnist")._replace(source=download.Source(
        "unused", {n: hashlib.sha256(b).hexdigest() for n, b in files.items()})))
    monkeypatch.setenv("JAXBP_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("JAXBP_DATA_MIRROR", server.url.rstrip("/"))
    return arrays, files


def test_mnist_from_the_cache_directory_and_a_mirror(mnist_mirror, server, tmp_path):
    """`--data mnist` without --data-dir: $JAXBP_DATA_MIRROR serves, $JAXBP_DATA caches."""
    arrays, files = mnist_mirror
    ds = data.load("mnist")
    np.testing.assert_array_equal(ds.y_train, arrays["train_labels"])
    assert sorted(os.listdir(tmp_path / "cache" / "mnist")) == sorted(files)
    assert sorted(server.requests) == sorted(files)   # each file once, through the mirror


def test_a_background_load_reads_only_what_needs_no_download(mnist_mirror, server, tmp_path):
    """data.load_in_background: nothing starts while a file is missing or damaged
    (a download is left to load, in the caller's thread); once the cache holds
    every file, the same data set as load's comes back from a thread."""
    arrays, files = mnist_mirror
    assert not download.cached("mnist", data.get("mnist").source) and data.load_in_background("mnist") is None and not server.requests
    data.load("mnist")
    assert download.cached("mnist", data.get("mnist").source)
    name = sorted(files)[0]
    (tmp_path / "cache" / "mnist" / name).write_bytes(b"damaged")
    assert not download.cached("mnist", data.get("mnist").source) and data.load_in_background("mnist") is None
    data.load("mnist")  # fetched again
    requests = len(server.requests)
    wait = data.load_in_background("mnist")
    np.testing.assert_array_equal(wait().x_train, arrays["train_images"][:, None])
    assert len(server.requests) == requests


def test_a_background_load_raises_in_the_waiting_thread(tmp_path):
    wait = data.load_in_background("mnist", str(tmp_path / "nowhere"))
    with pytest.raises(data.DataError, match="nowhere"):
        wait()
    assert data.load_in_background("digits")().x_train.shape[1:] == data.load("digits").x_train.shape[1:]


def test_the_published_hashes_are_sha256():
    sources = [e.source for e in data.REGISTRY.values() if e.source is not None]
    assert len(sources) == 3 and all(source.files for source in sources)   # not an empty all()
    for source in sources:
        assert all(len(h) == 64 and int(h, 16) >= 0 for h in source.files.values())


def test_a_download_killed_half_way_is_cleaned_up_by_the_next(server, tmp_path):
    """A killed download left its temporary file in the cache forever."""
    source = _source(server, {"a.gz": b"a" * 100})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    partial = tmp_path / f".download~{socket.gethostname()}~{dead.pid}.tmp"
    partial.mkdir()
    (partial / "a.gz").write_bytes(b"a" * 50)
    download.fetch("x", source, str(tmp_path))
    assert os.listdir(tmp_path) == ["a.gz"]


def test_a_fifo_in_the_cache_is_refused_not_waited_on(server, tmp_path):
    source = _source(server, {"a.gz": b"a" * 100})
    os.mkfifo(tmp_path / "a.gz")
    with pytest.raises(data.DataError, match=r"a.gz is not a regular file; put the data set's file there, or remove "
                                             r"it and run again"):
        download.fetch("x", source, str(tmp_path))
