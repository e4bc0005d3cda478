"""Where a registry is served from: endpoints, each with its HTTP client and TLS context.

A registry name configured with endpoints (mirrors) is served from them,
in order, and from nowhere else; one without is served from its own host
over https (Docker Hub from ``registry-1.docker.io``). Each endpoint has
one connection-pooling httpx client with its own TLS context (a CA bundle,
a client certificate, or, as an explicit opt-in, no verification), which
follows redirects and drops the ``Authorization`` header when a redirect
leaves the origin (blob storage).
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .options import DOCKER_HUB, DOCKER_HUB_ENDPOINT, EndpointOptions, PullOptions

# httpx logs every request URL at INFO and httpcore every response header at
# DEBUG; a redirect to blob storage carries signed query strings. Keep them
# quiet unless someone configured them.
for _name in ("httpx", "httpcore"):
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.WARNING)

USER_AGENT = "crishim"
#: Redirects one request may follow (a registry, then blob storage).
MAX_REDIRECTS = 5


@dataclass(frozen=True)
class Endpoint:
    """One configured place a registry is served from, with its HTTP client."""

    base: str
    plain_http: bool
    client: httpx.Client = field(compare=False, repr=False)

    def url(self, repository: str, kind: str, reference: str) -> str:
        return f"{self.base}/v2/{repository}/{kind}/{reference}"


def ssl_context(options: EndpointOptions, base: Path) -> ssl.SSLContext:
    """The TLS context of an https endpoint; relative paths are relative to ``base``."""

    def path(p: str) -> str:
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else base / q)

    ctx = ssl.create_default_context()
    if options.ca_file:
        ctx.load_verify_locations(cafile=path(options.ca_file))
    if options.client_cert and options.client_key:
        ctx.load_cert_chain(path(options.client_cert), path(options.client_key))
    if options.skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def http_client(options: PullOptions, verify: ssl.SSLContext | bool) -> httpx.Client:
    """An endpoint's client: redirects followed, the configured timeouts and proxies."""
    return httpx.Client(
        verify=verify,
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        trust_env=options.trust_env,
        headers={"User-Agent": USER_AGENT},
        timeout=httpx.Timeout(options.read_timeout, connect=options.connect_timeout),
    )


def build_endpoints(host: str, options: PullOptions, config_dir: Path) -> list[Endpoint]:
    """The endpoints of registry ``host`` (normalised), as configured or by default.

    Raises OSError or ssl.SSLError when a CA bundle or client key cannot be used.
    """
    configured = options.registries.get(host)
    if configured is None or not configured.endpoints:
        base = DOCKER_HUB_ENDPOINT if host == DOCKER_HUB else f"https://{host}"
        return [Endpoint(base, False, http_client(options, ssl.create_default_context()))]
    built = []
    for ep in configured.endpoints:
        verify: ssl.SSLContext | bool = True if ep.plain_http else ssl_context(ep, config_dir)
        built.append(Endpoint(ep.url, ep.plain_http, http_client(options, verify)))
    return built
