"""Resumable, checksummed downloads over HTTP(S) with urllib.

``download(url)`` writes to ``<dest_dir>/<name>.part``, resumes an interrupted download with an HTTP Range
request (and starts over when the server ignores Range), and renames the finished file into place with an atomic
``os.replace``.

Checksum record: for a downloaded file, a sidecar file ``<file>.sha256`` next to it, in ``sha256sum`` format
(``<64 hex digits><two spaces><file name>``, so ``sha256sum -c x.pkl.sha256`` works in its folder). A local file of
the user's is never written beside: its record lives in rfpp's cache (``record_dir()``: ``$RFPP_CACHE_DIR``, else
``$XDG_CACHE_HOME/rfpp``, else ``~/.cache/rfpp``, under ``sha256/``), named after the file's absolute path. A record
is written at the first download (or the first use of a local file) and checked at every later call; a mismatch
raises :class:`ChecksumError`. Pass ``expected_sha256`` to pin a hash yourself: it takes precedence over the record and,
when the file matches it, replaces the record.

Concurrent callers (several pair-generation workers) are serialised with an advisory lock on ``<file>.lock``.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

__all__ = ["ChecksumError", "DownloadError", "download", "sha256_file", "verify_or_record_sha256"]

CHUNK = 1 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class DownloadError(RuntimeError):
    """A file could not be downloaded (network failure, HTTP error, interrupted transfer)."""


class ChecksumError(RuntimeError):
    """A file's sha256 differs from the recorded or expected one."""


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def record_dir() -> Path:
    """Where the checksum records of the user's own local files go (see the module docstring)."""
    if os.environ.get("RFPP_CACHE_DIR"):
        return Path(os.environ["RFPP_CACHE_DIR"]) / "sha256"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rfpp" / "sha256"


def _sidecar(path: Path, in_cache: bool = False) -> Path:
    """The checksum record of `path`: beside it, or (a user's file, `in_cache`) in record_dir()."""
    if not in_cache:
        return path.with_name(path.name + ".sha256")
    key = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:16]
    return record_dir() / f"{path.name}.{key}.sha256"


def _read_record(path: Path, in_cache: bool = False) -> str | None:
    side = _sidecar(path, in_cache)
    if not side.exists():
        return None
    text = side.read_text().strip()
    digest = text.split()[0].lower() if text else ""
    if not _HEX64.match(digest):
        raise ChecksumError(f"the checksum record {side} is not a sha256 record (expected '<64 hex digits>  "
                            f"{path.name}'); delete it to record the current file's hash again")
    return digest


def _write_record(path: Path, digest: str, in_cache: bool = False) -> None:
    side = _sidecar(path, in_cache)
    tmp = side.with_name(f"{side.name}.{os.getpid()}.tmp")
    try:
        side.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(f"{digest}  {path.name}\n")
        os.replace(tmp, side)
    except OSError as e:
        warnings.warn(f"could not write the checksum record {side} ({e}); {path} will not be verified at later "
                      "uses", stacklevel=3)


def _normalise_hash(expected: str | None) -> str | None:
    if expected is None:
        return None
    digest = expected.strip().lower()
    if digest.startswith("sha256:"):
        digest = digest[len("sha256:"):]
    if not _HEX64.match(digest):
        raise ValueError(f"expected_sha256 must be 64 hex digits, got {expected!r}")
    return digest


def verify_or_record_sha256(path: str | os.PathLike, expected_sha256: str | None = None,
                            in_cache: bool = False) -> str:
    """Check `path` against `expected_sha256` or its ``.sha256`` record; record the hash if there is none.

    `in_cache`: the record lives in rfpp's cache (a user's own file), not beside the file. Returns the file's
    sha256. Raises :class:`ChecksumError` on a mismatch.
    """
    path = Path(path)
    expected = _normalise_hash(expected_sha256)
    actual = sha256_file(path)
    recorded = _read_record(path, in_cache)
    side = _sidecar(path, in_cache)
    if expected is not None:
        if actual != expected:
            raise ChecksumError(
                f"sha256 mismatch for {path}: expected {expected} (passed as expected_sha256), got {actual}. "
                f"The file is corrupted, was modified, or is a different version. Delete {path} (and "
                f"{side.name}) and run again to download it afresh, or pass the right expected_sha256.")
        if recorded != actual:
            _write_record(path, actual, in_cache)
        return actual
    if recorded is None:
        _write_record(path, actual, in_cache)
        return actual
    if actual != recorded:
        raise ChecksumError(
            f"sha256 mismatch for {path}: recorded {recorded} in {side} when it was first "
            f"downloaded/used, now {actual}. The file was modified, truncated or replaced since. Delete {path} and "
            f"{side} and run again to download it afresh; or, if this file is the one you want, pass "
            f"expected_sha256='{actual}' (or delete {side.name} to record the new hash).")
    return actual


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Advisory exclusive lock on ``<path>.lock`` (no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _local_path(url: str) -> Path | None:
    """The local path `url` names, or None for a remote URL."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("http", "https"):
        return None
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:
        raise ValueError(f"unsupported URL scheme {parsed.scheme!r} in {url!r}: use http(s)://, file:// or a path")
    return Path(url)


def _fetch(url: str, part: Path, progress: bool, timeout: float) -> None:
    """Download `url` into `part`, resuming from its current size. Raises DownloadError if incomplete."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "rfpp-download/1"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # our partial file is not a prefix the server accepts: start over
            part.unlink()
            return _fetch(url, part, progress, timeout)
        raise
    with response:
        status = response.status
        length = response.headers.get("Content-Length")
        length = int(length) if length is not None and length.isdigit() else None
        if offset and status == 206:
            match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != offset:
                raise DownloadError(f"the server answered the resume request for {url} with an unexpected "
                                    f"Content-Range {response.headers.get('Content-Range')!r}; delete {part} "
                                    "and run again")
            total = int(match.group(2)) if match.group(2) != "*" else None
            mode = "ab"
        else:  # 200: the server sent the whole file (it ignored Range, or we did not ask): start cleanly
            offset = 0
            total = length
            mode = "wb"
        received = offset
        with open(part, mode) as f, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                        unit_divisor=1024, desc=part.name[: -len(".part")],
                                        disable=not progress, leave=False) as bar:
            while True:
                block = response.read(CHUNK)
                if not block:
                    break
                f.write(block)
                received += len(block)
                bar.update(len(block))
    if total is not None and received != total:
        raise DownloadError(f"the connection to {url} closed after {received} of {total} bytes; the partial "
                            f"download is kept in {part}: run again to resume it")
    return None


def download(url: str, dest_dir: str | os.PathLike = "resources", filename: str | None = None,
             progress: bool = True, expected_sha256: str | None = None, timeout: float = 60.0) -> Path:
    """Download `url` into `dest_dir` (once) and return the file's path, its sha256 checked.

    `url` may also be a local path or a ``file://`` URL: it is used where it is (not copied), with the same
    sha256 record and check. An existing complete file is not downloaded again; an interrupted download
    (``<name>.part``) is resumed. Raises DownloadError (network, HTTP error, interrupted transfer),
    ChecksumError (hash differs from `expected_sha256` or the ``.sha256`` record) or FileNotFoundError.
    """
    local = _local_path(url)
    if local is not None:
        if not local.is_file():
            raise FileNotFoundError(f"{local} does not exist (or is not a file)")
        verify_or_record_sha256(local, expected_sha256, in_cache=True)
        return local

    name = filename or Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    if not name:
        raise ValueError(f"cannot tell a file name from {url!r}: pass filename=")
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / name
    part = dest.with_name(name + ".part")
    with _locked(dest):
        if dest.exists():
            verify_or_record_sha256(dest, expected_sha256)
            return dest
        try:
            _fetch(url, part, progress, timeout)
        except DownloadError:
            raise
        except urllib.error.HTTPError as e:
            raise DownloadError(f"could not download {url}: HTTP {e.code} {e.reason}. Check the URL, or download "
                                f"the file by other means and put it at {dest}") from e
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            kept = f" (the partial download is kept in {part}; run again to resume)" if part.exists() else ""
            raise DownloadError(f"could not download {url}: {reason}{kept}. Without network access, download "
                                f"the file by other means and put it at {dest}") from e
        expected = _normalise_hash(expected_sha256)
        actual = sha256_file(part)
        if expected is not None and actual != expected:
            part.unlink()
            raise ChecksumError(f"the file downloaded from {url} has sha256 {actual}, not the expected {expected}; "
                                "it was deleted. Run again to retry, or check expected_sha256 (a different "
                                "version of the file?)")
        _write_record(dest, actual)
        os.replace(part, dest)
    return dest
