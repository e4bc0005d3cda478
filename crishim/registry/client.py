"""Talking to OCI distribution registries: the client every pulling backend holds.

:class:`RegistryClient` keeps the endpoints and credentials of every
registry a backend pulls from and hands out one :class:`Session` per pull.
The work is done by the modules beside it, one job each:

* :mod:`crishim.registry.endpoints`: where a registry is served from, each
  endpoint with its httpx client and TLS context;
* :mod:`crishim.registry.auth`: the pull's credentials and the distribution
  token flow, as an ``httpx.Auth``;
* :mod:`crishim.registry.session`: requests, manifests bounded and checked
  against their digest, errors mapped to :mod:`crishim.errors`;
* :mod:`crishim.registry.download`: blobs streamed into a verifying writer,
  watched for stalls, resumed where they broke;
* :mod:`crishim.registry.deadline`: the pull's deadline and cancellation.

Nothing here puts a credential, an ``Authorization`` header or a URL query
string into an error message, a log line or a span.

The names the rest of crishim (and plugins: ``RegistryClient``,
``Deadline``) import from here stay importable from here.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from crishim.errors import Unauthenticated
from crishim.reference import Reference
from crishim.types import PullAuth

from .auth import (
    Credentials,
    RegistryAuth,
    configured_credentials,
    credentials_from_request,
    parse_challenge,
    usable_token,
)
from .deadline import Aborted, Deadline
from .download import BlobDownload, ByteSink, Stalled, Watchdog
from .endpoints import USER_AGENT, Endpoint, build_endpoints
from .options import PullOptions, normalize_host
from .session import MANIFEST_ACCEPT, Fetched, Session, json_object, redact

__all__ = [
    "MANIFEST_ACCEPT",
    "USER_AGENT",
    "Aborted",
    "BlobDownload",
    "ByteSink",
    "Credentials",
    "Deadline",
    "Endpoint",
    "Fetched",
    "RegistryAuth",
    "RegistryClient",
    "Session",
    "Stalled",
    "Watchdog",
    "credentials_from_request",
    "json_object",
    "parse_challenge",
    "redact",
    "usable_token",
]

log = logging.getLogger(__name__)


class RegistryClient:
    """Endpoints and credentials per registry host; hands out pull sessions."""

    def __init__(self, options: PullOptions, config_dir: Path) -> None:
        self.options = options
        self.config_dir = config_dir
        self._endpoints: dict[str, list[Endpoint]] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        """Build every configured endpoint now, so a bad CA or key fails start-up."""
        for host in self.options.registries:
            self.endpoints(host)

    def close(self) -> None:
        with self._lock:
            endpoints = [e for group in self._endpoints.values() for e in group]
            self._endpoints.clear()
        for endpoint in endpoints:
            endpoint.client.close()

    def endpoints(self, host: str) -> list[Endpoint]:
        host = normalize_host(host)
        with self._lock:
            known = self._endpoints.get(host)
            if known is None:
                known = self._endpoints[host] = build_endpoints(host, self.options, self.config_dir)
            return known

    def credentials(self, host: str, auth: PullAuth | None) -> Credentials | None:
        """The request's credentials for this host, else the configured ones."""
        host = normalize_host(host)
        if auth:
            server = auth.server_address
            if not server or normalize_host(server) == host:
                found = credentials_from_request(auth)
                if found is not None:
                    return found
            else:
                log.info(
                    "pull from %s: the request's credentials are for another registry; not sent",
                    host,
                )
        return configured_credentials(host, self.options, self.config_dir)

    def session(self, ref: Reference, auth: PullAuth | None, deadline: Deadline) -> Session:
        host = ref.domain
        try:
            credentials = self.credentials(host, auth)
        except Unauthenticated as exc:
            raise Unauthenticated(f"{deadline.what}: {exc}") from None
        return Session(
            host=host,
            repository=ref.path,
            endpoints=self.endpoints(host),
            credentials=credentials,
            deadline=deadline,
            connect_timeout=self.options.connect_timeout,
            read_timeout=self.options.read_timeout,
            watchdog=Watchdog(
                self.options.pull_progress_timeout,
                self.options.min_pull_rate,
                self.options.min_pull_rate_window,
            ),
        )

    def verifies_held_images(self, host: str) -> bool:
        """Whether a pull by digest of an image held still asks this registry."""
        configured = self.options.registries.get(normalize_host(host))
        return configured is None or configured.verify_held_images
