"""Test-only HTTP server on 127.0.0.1 that serves in-memory files (or files on disk), honours Range, and can cut a
transfer."""

from __future__ import annotations

import http.server
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

CHUNK = 1 << 20


@dataclass
class ServerState:
    files: dict[str, bytes | Path] = field(default_factory=dict)  # a Path is streamed from disk (large files)
    ignore_range: bool = False  # answer every request with 200 and the whole file
    cut_next_after: int | None = None  # the next GET sends this many body bytes, then drops the connection
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)


class LocalFileServer:
    """``with LocalFileServer({"/a.bin": data, "/big.pkl": Path(...)}) as srv: srv.url("/a.bin")``."""

    def __init__(self, files: dict[str, bytes | Path] | None = None):
        self.state = ServerState(files=dict(files or {}))
        state = self.state

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                rng = self.headers.get("Range")
                state.requests.append((self.path, rng))
                data = state.files.get(self.path)
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                size = data.stat().st_size if isinstance(data, Path) else len(data)
                start, status = 0, 200
                match = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if match and not state.ignore_range:
                    start = int(match.group(1))
                    if start >= size:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(size - start))
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
                self.end_headers()
                cut = state.cut_next_after
                if cut is not None:
                    state.cut_next_after = None
                    self.close_connection = True
                limit = size if cut is None else min(size, start + cut)
                if isinstance(data, Path):
                    with data.open("rb") as handle:
                        handle.seek(start)
                        for pos in range(start, limit, CHUNK):
                            self.wfile.write(handle.read(min(CHUNK, limit - pos)))
                else:
                    self.wfile.write(data[start:limit])
                self.wfile.flush()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}{path}"

    def __enter__(self) -> LocalFileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
