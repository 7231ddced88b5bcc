"""rfpp.teachers.download against a real HTTP server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import hashlib
import os
import socket

import pytest
from local_http_server import LocalFileServer

from rfpp.teachers import ChecksumError, DownloadError, download

DATA = os.urandom(3 * (1 << 20) + 12345)  # a few chunks, not a whole number of them
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def server():
    with LocalFileServer({"/edm/pretrained/net.pkl": DATA}) as srv:
        yield srv


def test_download_records_sha256_and_reuses_the_file(server, tmp_path):
    url = server.url("/edm/pretrained/net.pkl")
    path = download(url, tmp_path, progress=True)
    assert path == tmp_path / "net.pkl" and path.read_bytes() == DATA
    assert not (tmp_path / "net.pkl.part").exists()
    assert (tmp_path / "net.pkl.sha256").read_text() == f"{SHA}  net.pkl\n"
    assert server.state.requests == [("/edm/pretrained/net.pkl", None)]
    assert download(url, tmp_path, progress=False) == path  # no second request, hash checked
    assert len(server.state.requests) == 1
    assert download(url, tmp_path, progress=False, expected_sha256=SHA.upper()) == path


def test_interrupted_download_resumes_with_range(server, tmp_path):
    url = server.url("/edm/pretrained/net.pkl")
    cut = 1_500_000
    server.state.cut_next_after = cut
    with pytest.raises(DownloadError, match="resume"):
        download(url, tmp_path, progress=False)
    part = tmp_path / "net.pkl.part"
    assert part.stat().st_size == cut and not (tmp_path / "net.pkl").exists()

    path = download(url, tmp_path, filename=None, progress=False, expected_sha256=SHA)
    assert server.state.requests[-1] == ("/edm/pretrained/net.pkl", f"bytes={cut}-")
    assert path.read_bytes() == DATA and not part.exists()


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    server.state.ignore_range = True
    (tmp_path / "net.pkl.part").write_bytes(b"stale bytes from an earlier attempt")
    path = download(server.url("/edm/pretrained/net.pkl"), tmp_path, progress=False)
    assert server.state.requests[-1][1] == "bytes=35-"  # it asked, the server sent everything (200)
    assert path.read_bytes() == DATA


def test_partial_longer_than_file_restarts(server, tmp_path):
    (tmp_path / "net.pkl.part").write_bytes(b"x" * (len(DATA) + 10))
    path = download(server.url("/edm/pretrained/net.pkl"), tmp_path, progress=False)  # 416, then from scratch
    assert path.read_bytes() == DATA
    assert [r[1] for r in server.state.requests] == [f"bytes={len(DATA) + 10}-", None]


def test_tampered_file_is_refused_with_instructions(server, tmp_path):
    url = server.url("/edm/pretrained/net.pkl")
    path = download(url, tmp_path, progress=False)
    with open(path, "r+b") as f:
        f.seek(1000)
        f.write(b"tampered")
    with pytest.raises(ChecksumError) as info:
        download(url, tmp_path, progress=False)
    msg = str(info.value)
    assert SHA in msg and "Delete" in msg and "expected_sha256=" in msg and "net.pkl.sha256" in msg
    # The user accepts the new content explicitly: the record follows.
    new = hashlib.sha256(path.read_bytes()).hexdigest()
    download(url, tmp_path, progress=False, expected_sha256=new)
    assert (tmp_path / "net.pkl.sha256").read_text().startswith(new)
    download(url, tmp_path, progress=False)


def test_wrong_expected_hash_on_fresh_download(server, tmp_path):
    with pytest.raises(ChecksumError, match="not the expected"):
        download(server.url("/edm/pretrained/net.pkl"), tmp_path, progress=False, expected_sha256="0" * 64)
    assert {p.name for p in tmp_path.iterdir()} <= {"net.pkl.lock"}  # nothing kept but the lock file
    with pytest.raises(ValueError, match="64 hex"):
        download(server.url("/edm/pretrained/net.pkl"), tmp_path, progress=False, expected_sha256="abc")


def test_http_404_is_a_clear_error(server, tmp_path):
    url = server.url("/edm/pretrained/missing.pkl")
    with pytest.raises(DownloadError) as info:
        download(url, tmp_path, progress=False)
    msg = str(info.value)
    assert url in msg and "404" in msg and str(tmp_path / "missing.pkl") in msg


def test_unreachable_server_is_a_clear_error(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x/net.pkl"
    with pytest.raises(DownloadError) as info:
        download(url, tmp_path, progress=False, timeout=5)
    msg = str(info.value)
    assert url in msg and "put it at" in msg and str(tmp_path / "net.pkl") in msg


def test_local_path_passes_through_with_checksum(tmp_path, monkeypatch):
    """A user's own file is used where it is; its checksum record goes to rfpp's cache, never beside the file."""
    from rfpp.teachers.download import record_dir

    monkeypatch.setenv("RFPP_CACHE_DIR", str(tmp_path / "cache"))
    mine = tmp_path / "mine"
    mine.mkdir()
    f = mine / "mine.pkl"
    f.write_bytes(b"local snapshot")
    assert download(str(f), tmp_path / "unused") == f
    assert sorted(p.name for p in mine.iterdir()) == ["mine.pkl"] and not (tmp_path / "unused").exists()
    records = list(record_dir().iterdir())
    assert record_dir() == tmp_path / "cache" / "sha256" and len(records) == 1
    assert records[0].read_text().startswith(hashlib.sha256(b"local snapshot").hexdigest())
    assert download(f.as_uri()) == f
    f.write_bytes(b"local snapshot, changed")
    with pytest.raises(ChecksumError, match="recorded"):
        download(str(f))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        download(str(tmp_path / "nope.pkl"))
    records[0].write_text("garbage\n")
    with pytest.raises(ChecksumError, match="not a sha256 record"):
        download(str(f))
