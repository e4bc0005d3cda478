"""An HTTP proxy between crishim and the registry that counts, slows and corrupts.

It forwards each GET/HEAD to the upstream registry and streams the answer
back, and tests turn knobs on it:

* ``tamper``: path suffixes (a digest or a tag) whose body gets one byte
  flipped (same length, wrong content);
* ``rate``: bytes per second for blob bodies (to hold a pull mid-blob);
* ``override``: path suffix -> (status, headers, body) served instead;
* ``break_after``: path suffix -> bytes; that blob's body is cut there and
  the connection dropped (once: the entry is removed when it fires);
* ``stall_after``: path suffix -> bytes; that blob's body stops there and
  nothing more is sent until the client gives up (once);
* ``hold``: path suffix (``"*"``: every blob) -> bytes; that blob's body
  pauses there, on every GET, until ``released`` is set (``reset`` sets it,
  and a hold gives up after 30 s): a pull caught mid-blob for as long as a
  test needs, then let go.

It records GET counts per path, the Range headers it was sent, and how many
responses are in flight.
"""

from __future__ import annotations

import contextlib
import http.client
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "host", "te"}
CHUNK = 64 * 1024


@dataclass
class TamperingProxy:
    upstream_port: int
    tamper: set[str] = field(default_factory=set)
    rate: float | None = None
    override: dict[str, tuple[int, dict[str, str], bytes]] = field(default_factory=dict)
    break_after: dict[str, int] = field(default_factory=dict)
    stall_after: dict[str, int] = field(default_factory=dict)
    hold: dict[str, int] = field(default_factory=dict)
    #: Set: nothing is held (the default); cleared: bodies in ``hold`` pause.
    released: threading.Event = field(default_factory=threading.Event)
    #: Blob bodies paused by ``hold`` right now.
    holding: int = 0
    #: (path, Range header) of every GET that carried one.
    ranges: list[tuple[str, str]] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    #: Bytes of blob bodies sent, per path.
    sent: Counter[str] = field(default_factory=Counter)
    #: Set when a blob body starts flowing (for crash tests).
    blob_started: threading.Event = field(default_factory=threading.Event)
    _active: int = 0
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def __post_init__(self) -> None:
        self.released.set()

    def reset(self) -> None:
        self.released.set()
        with self._cond:
            self.hold.clear()
            self.tamper.clear()
            self.rate = None
            self.override.clear()
            self.break_after.clear()
            self.stall_after.clear()
            self.ranges.clear()
            self.counts.clear()
            self.sent.clear()
            self.blob_started.clear()

    def blob_gets(self, digest: str) -> int:
        """How many GETs asked for this blob (any repository)."""
        with self._cond:
            return sum(n for path, n in self.counts.items() if path.endswith(f"/blobs/{digest}"))

    @property
    def active(self) -> int:
        with self._cond:
            return self._active

    def wait_holding(self, count: int, timeout: float) -> bool:
        """True once ``count`` blob bodies are paused by ``hold`` (bounded by ``timeout``)."""
        with self._cond:
            return self._cond.wait_for(lambda: self.holding >= count, timeout=timeout)

    def wait_idle(self, timeout: float) -> bool:
        """True once no response is in flight (bounded by ``timeout``)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._active == 0, timeout=timeout)

    def _enter(self, path: str, method: str) -> None:
        with self._cond:
            self._active += 1
            if method == "GET":
                self.counts[path] += 1

    def _leave(self) -> None:
        with self._cond:
            self._active -= 1
            self._cond.notify_all()

    def _match(self, table: Any, path: str) -> Any:
        for suffix in list(table):
            if path.endswith("/" + suffix):
                return suffix
        return None

    def start(self) -> TamperingProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self._forward("HEAD")

            def do_GET(self) -> None:
                self._forward("GET")

            def _forward(self, method: str) -> None:
                path = self.path.split("?", 1)[0]
                proxy._enter(path, method)
                try:
                    self._relay(method, path)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                finally:
                    proxy._leave()

            def _relay(self, method: str, path: str) -> None:
                key = proxy._match(proxy.override, path)
                if key is not None:
                    status, headers, body = proxy.override[key]
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if method == "GET":
                        self.wfile.write(body)
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                    upstream.request(method, self.path, headers=headers)
                    response = upstream.getresponse()
                    length = response.getheader("Content-Length")
                    body_prefix = b""
                    if length is None and method == "GET":
                        body_prefix = response.read()
                        length = str(len(body_prefix))
                    self.send_response(response.status, response.reason)
                    for name, value in response.getheaders():
                        if name.lower() not in _HOP and name.lower() != "content-length":
                            self.send_header(name, value)
                    self.send_header("Content-Length", length or "0")
                    self.end_headers()
                    if method == "HEAD":
                        return
                    is_blob = "/blobs/" in path and response.status in (200, 206)
                    flip = proxy._match(proxy.tamper, path) is not None and response.status == 200
                    cut = stall = None
                    with proxy._cond:
                        if is_blob and self.headers.get("Range"):
                            proxy.ranges.append((path, str(self.headers["Range"])))
                        key = proxy._match(proxy.break_after, path) if is_blob else None
                        if key is not None:
                            cut = proxy.break_after.pop(key)
                        key = proxy._match(proxy.stall_after, path) if is_blob else None
                        if key is not None:
                            stall = proxy.stall_after.pop(key)
                        key = proxy._match(proxy.hold, path) if is_blob else None
                        hold_at = proxy.hold.get(key or "*") if is_blob else None
                    if is_blob:
                        proxy.blob_started.set()
                    pending = body_prefix
                    sent = 0
                    while True:
                        chunk = pending or response.read(CHUNK)
                        pending = b""
                        if not chunk:
                            break
                        if flip:
                            chunk = bytes([chunk[0] ^ 0x01]) + chunk[1:]
                            flip = False
                        if hold_at is not None and sent + len(chunk) >= hold_at:
                            head = hold_at - sent
                            hold_at = None
                            self._send(chunk[:head], path)
                            self.wfile.flush()
                            self._pause()
                            sent += head
                            chunk = chunk[head:]
                            if not chunk:
                                continue
                        limit = cut if cut is not None else stall
                        if limit is not None and sent + len(chunk) >= limit:
                            self._send(chunk[: limit - sent], path)
                            self.wfile.flush()
                            if stall is not None:
                                # hold the connection open, sending nothing
                                self.connection.settimeout(60)
                                with contextlib.suppress(OSError):
                                    self.connection.recv(1)
                            self.close_connection = True
                            return
                        sent += len(chunk)
                        self._send(chunk, path if is_blob else None)
                finally:
                    upstream.close()

            def _pause(self) -> None:
                with proxy._cond:
                    proxy.holding += 1
                    proxy._cond.notify_all()
                try:
                    proxy.released.wait(30)
                finally:
                    with proxy._cond:
                        proxy.holding -= 1
                        proxy._cond.notify_all()

            def _send(self, chunk: bytes, blob_path: str | None) -> None:
                rate = proxy.rate if blob_path is not None else None
                if not rate:
                    self.wfile.write(chunk)
                    if blob_path is not None:
                        with proxy._cond:
                            proxy.sent[blob_path] += len(chunk)
                    return
                assert blob_path is not None
                step = max(1, int(rate * 0.02))
                for i in range(0, len(chunk), step):
                    started = time.monotonic()
                    piece = chunk[i : i + step]
                    self.wfile.write(piece)
                    self.wfile.flush()
                    with proxy._cond:
                        proxy.sent[blob_path] += len(piece)
                    pause = len(piece) / rate - (time.monotonic() - started)
                    if pause > 0:
                        time.sleep(pause)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            with contextlib.suppress(OSError):
                self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
