"""The status endpoint: what the server is doing, as JSON, on a unix socket of its own.

Off the CRI socket, so kubelet never sees it, and read-only::

    GET /pulls    running and queued pulls, with per-blob progress (crishim.pulls)

``crishim pulls`` reads it; so can ``curl --unix-socket <path> http://crishim/pulls``.
The socket is created with the CRI socket's mode.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socketserver
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Seconds a connection may stay silent before the endpoint drops it.
READ_TIMEOUT = 10.0


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class StatusEndpoint:
    """Serves ``pages`` (path -> a function giving a JSON-ready value) on ``path``."""

    def __init__(self, path: Path, pages: dict[str, Callable[[], Any]], mode: int = 0o660) -> None:
        self.path = path
        self.pages = pages
        self.mode = mode
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._inode: int | None = None

    def start(self) -> None:
        pages = self.pages

        class Handler(BaseHTTPRequestHandler):
            # a client that connects and sends nothing gives its thread back
            timeout = READ_TIMEOUT

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                page = pages.get(self.path.split("?", 1)[0])
                if page is None:
                    body = json.dumps({"error": f"no page {self.path[:100]!r}"}).encode()
                    self.send_response(404)
                else:
                    body = json.dumps(page(), separators=(",", ":")).encode()
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        # the CRI socket's rules: a stale socket is replaced, a live one (another
        # server's) or a file that is not a socket never
        from crishim.server import SocketError, prepare_socket_path

        try:
            prepare_socket_path(self.path)
        except SocketError as exc:
            raise OSError(errno.EEXIST, str(exc)) from exc
        previous = os.umask(0o777 & ~self.mode)
        try:
            self._server = _Server(str(self.path), Handler)
        finally:
            os.umask(previous)
        os.chmod(self.path, self.mode)
        self._inode = self.path.stat().st_ino
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="crishim-status", daemon=True
        )
        self._thread.start()
        log.info("status endpoint on unix://%s (GET /pulls)", self.path)

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server = None
        # only the socket this made: a successor may own the path by now
        with contextlib.suppress(FileNotFoundError):
            if self.path.stat().st_ino == self._inode:
                self.path.unlink()
