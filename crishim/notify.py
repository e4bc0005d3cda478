"""Telling systemd what the service is doing: the ``sd_notify`` datagram protocol.

A unit with ``Type=notify`` sets ``NOTIFY_SOCKET`` to a unix datagram
socket (a path, or ``@name`` in the abstract namespace); the service sends
newline-separated ``KEY=VALUE`` assignments to it: ``READY=1`` once it
serves, ``RELOADING=1`` while it re-reads its config, ``STOPPING=1`` when it
begins to stop, ``STATUS=...`` for ``systemctl status``. The protocol is
documented in sd_notify(3) and stable; it is one ``sendto`` per message, so
crishim speaks it directly instead of depending on libsystemd (a C
extension to build on every node) or on a pure-Python package that has not
been released since 2017. Without ``NOTIFY_SOCKET`` (not under systemd)
every call is a no-op; a failed send is logged at debug level and never
raises: telling systemd must not cost an answer.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

ENV = "NOTIFY_SOCKET"


def _address(value: str) -> str | bytes | None:
    if value.startswith("@"):
        return b"\0" + value[1:].encode()  # the abstract namespace
    if value.startswith("/"):
        return value
    return None  # vsock: and anything else this implementation does not speak


class Notifier:
    """Sends state changes to the service manager named by ``NOTIFY_SOCKET``."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        raw = (os.environ if environ is None else environ).get(ENV, "")
        self.address = _address(raw) if raw else None
        if raw and self.address is None:
            log.warning("%s=%r is not a unix socket address; not notifying", ENV, raw)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """Send ``KEY=VALUE`` lines (keys upper-cased); True when delivered."""
        if self.address is None:
            return False
        lines = []
        for key, value in fields.items():
            text = str(value).replace("\n", " ")
            lines.append(f"{key.upper()}={text}")
        data = "\n".join(lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(data, self.address)
        except OSError as exc:
            log.debug("cannot notify the service manager: %s", exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(ready=1, status=status)

    def reloading(self, status: str) -> bool:
        # MONOTONIC_USEC lets Type=notify-reload (systemd 253+) pair the
        # RELOADING=1 with this reload; older managers ignore it
        return self.send(
            reloading=1,
            monotonic_usec=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000,
            status=status,
        )

    def stopping(self, status: str) -> bool:
        return self.send(stopping=1, status=status)

    def status(self, status: str) -> bool:
        return self.send(status=status)
