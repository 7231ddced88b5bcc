"""Atomic file writes: a temporary file beside the target, flushed and fsynced, then renamed over it.

A reader (or a resumed stage) therefore sees either the old file or the complete new one, never a
half-written file, even after kill -9. The file gets the permissions a plain open() would give it (0666 less
the umask: 0644 by default), not mkstemp's 0600.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | os.PathLike, write: Callable[[IO], Any], mode: str = "wb") -> Path:
    """Call `write(f)` on a temporary file beside `path` (opened with `mode`), then rename it to `path`.

    Parent folders are created; on any error the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, default_mode())
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def default_mode() -> int:
    """0666 less the umask: the mode open() gives a new file."""
    return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask (read without changing it where /proc says it; else set and restored at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically (UTF-8)."""
    return atomic_write(path, lambda h: h.write(text), mode="w")


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write a JSON file atomically (indented, keys sorted, newline at the end)."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
