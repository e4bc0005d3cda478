"""One pull's conversation with one registry: requests, manifests, errors.

A :class:`Session` sends every request through its endpoint's client with
the pull's :class:`~crishim.registry.auth.RegistryAuth`, a timeout taken
from what is left of the pull's deadline, and a streamed body; it maps
what goes wrong to :mod:`crishim.errors` exceptions that name the pull,
the registry and the endpoint, never a URL's query string or a secret
(:meth:`Session.safe`). Manifests are bounded in size and checked against
their digest; blobs stream through :mod:`crishim.registry.download`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from crishim.errors import (
    Cancelled,
    CrishimError,
    DataLoss,
    DeadlineExceeded,
    ImageNotFound,
    NotSupported,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from crishim.oci.spec import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    MAX_JSON_BLOB,
    OCI_INDEX,
    OCI_MANIFEST,
    InvalidContent,
    digest_of,
)
from crishim.oci.spec import json_object as parse_object

from .auth import Credentials, RegistryAuth, Secrets, refused
from .deadline import Deadline
from .download import BlobDownload, ByteSink, Watchdog
from .endpoints import Endpoint

log = logging.getLogger(__name__)
T = TypeVar("T")

MANIFEST_ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))
_QUERY_RE = re.compile(r"(https?://[^\s?#\"']*)\?[^\s\"']*")
_MESSAGE_LIMIT = 300


def redact(text: str) -> str:
    """``text`` with URL query strings replaced, shortened for a message."""
    text = _QUERY_RE.sub(r"\1?<redacted>", text)
    return text if len(text) <= _MESSAGE_LIMIT else text[:_MESSAGE_LIMIT] + "..."


def json_object(data: bytes, what: str) -> dict[str, Any]:
    """A manifest, index or config a registry sent, as a JSON object; DATA_LOSS otherwise."""
    try:
        return parse_object(data, what)
    except InvalidContent as exc:
        raise DataLoss(redact(str(exc))) from None


@dataclass(frozen=True)
class Fetched:
    """A manifest or index as fetched and verified."""

    digest: str
    media_type: str
    data: bytes
    #: Where it came from (an endpoint's base URL, a file), for spans and messages.
    origin: str = ""


def _registry_message(response: httpx.Response) -> str:
    """The ``errors`` of a distribution error body, if the body was read."""
    try:
        body = json.loads(response.content[:4096])
    except (ValueError, RecursionError, httpx.ResponseNotRead):
        return ""
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list):
        return ""
    parts = []
    for err in errors[:3]:
        if isinstance(err, dict):
            code, message = err.get("code", ""), err.get("message", "")
            parts.append(f"{code}: {message}" if code and message else str(code or message))
    return redact("; ".join(parts))


def _media_type(header: str | None, data: bytes) -> str:
    media_type = (header or "").split(";", 1)[0].strip()
    if media_type in (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST):
        return media_type
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError):
        return media_type
    inner = parsed.get("mediaType") if isinstance(parsed, dict) else None
    if isinstance(inner, str) and inner:
        return inner
    if isinstance(parsed, dict) and "manifests" in parsed:
        return OCI_INDEX
    if isinstance(parsed, dict) and "layers" in parsed:
        return OCI_MANIFEST
    return media_type


# precedence when every endpoint failed: the most telling error wins
_PRECEDENCE: tuple[type[CrishimError], ...] = (
    DataLoss,
    PermissionDenied,
    Unauthenticated,
    NotSupported,
    ImageNotFound,
    Unavailable,
)


def most_telling(failures: list[CrishimError]) -> CrishimError:
    """One error for failures on every endpoint: the most telling, naming the others."""
    if len(failures) == 1:
        return failures[0]
    for kind in _PRECEDENCE:
        chosen = next((f for f in failures if isinstance(f, kind)), None)
        if chosen is not None:
            others = "; ".join(str(f) for f in failures if f is not chosen)
            return type(chosen)(f"{chosen} [other endpoints: {others}]")
    return failures[-1]


@dataclass(eq=False)
class Session:
    """One pull's conversation with one registry: endpoints, auth, deadline.

    :meth:`resolve` tries the endpoints in order; the one that answered is
    :attr:`endpoint`, and :meth:`manifest` and :meth:`blob` fetch the rest
    of the image from it.
    """

    host: str
    repository: str
    endpoints: list[Endpoint]
    credentials: Credentials | None
    deadline: Deadline
    connect_timeout: float
    read_timeout: float
    watchdog: Watchdog = field(default_factory=Watchdog)
    #: Every secret this session may send: scrubbed from whatever it says.
    secrets: Secrets = field(init=False)
    #: The endpoint that resolved the reference (the first one until then).
    endpoint: Endpoint = field(init=False)
    _auth: dict[str, RegistryAuth] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.secrets = Secrets(self.credentials)
        self.endpoint = self.endpoints[0]
        self._auth = {
            e.base: RegistryAuth(
                e,
                repository=self.repository,
                credentials=self.credentials,
                secrets=self.secrets,
                where=self.where_at(e),
                deadline=self.deadline,
                timeout=self.timeout,
            )
            for e in self.endpoints
        }

    # -- requests and errors ---------------------------------------------

    def where_at(self, endpoint: Endpoint) -> str:
        """The pull, the registry and ``endpoint``, to start a message with."""
        return f"{self.deadline.what}: {self.host} at {endpoint.base}"

    def safe(self, text: str) -> str:
        """``text`` (from a library or a registry) fit for a message: no query
        strings, none of this session's secrets, shortened."""
        return redact(self.secrets.scrub(text))

    def timeout(self, read_timeout: float | None = None) -> httpx.Timeout:
        """Request timeouts, none past what is left of the deadline."""
        read = self.deadline.bound(read_timeout or self.read_timeout)
        connect = self.deadline.bound(self.connect_timeout)
        return httpx.Timeout(read, connect=connect, pool=connect)

    @contextlib.contextmanager
    def network(self, endpoint: Endpoint) -> Iterator[None]:
        """Turn httpx errors into domain errors that name the endpoint, not the URL."""
        try:
            yield
        except httpx.TimeoutException as exc:
            self.deadline.check()
            raise Unavailable(
                f"{self.where_at(endpoint)}: timed out ({type(exc).__name__})"
            ) from None
        except httpx.HTTPError as exc:
            self.deadline.check()
            where = self.where_at(endpoint)
            if isinstance(exc, httpx.LocalProtocolError):
                # what we were about to send, headers included: never repeat it
                raise Unavailable(
                    f"{where}: the request could not be sent ({type(exc).__name__})"
                ) from None
            reason = self.safe(str(exc)) or type(exc).__name__
            if "[SSL" in reason or "CERTIFICATE" in reason.upper():
                raise Unavailable(f"{where}: TLS failed: {reason}") from None
            if isinstance(exc, httpx.ConnectError):
                raise Unavailable(f"{where}: cannot connect: {reason}") from None
            raise Unavailable(f"{where}: {type(exc).__name__}: {reason}") from None

    def send(
        self,
        endpoint: Endpoint,
        url: str,
        headers: dict[str, str],
        method: str = "GET",
        read_timeout: float | None = None,
    ) -> httpx.Response:
        """Send (streamed) with the pull's auth; the caller closes the response."""
        self.deadline.check()
        with self.network(endpoint):
            request = endpoint.client.build_request(
                method, url, headers=headers, timeout=self.timeout(read_timeout)
            )
            response = endpoint.client.send(request, auth=self._auth[endpoint.base], stream=True)
        if response.status_code == 401:
            # the auth flow answered what it could: refused
            response.close()
            raise refused(self.where_at(endpoint), self.credentials)
        return response

    def check(self, response: httpx.Response, endpoint: Endpoint, what: str) -> None:
        """Raise the domain error for a status other than 200 (reading a short body)."""
        status = response.status_code
        if status == 200:
            return
        with contextlib.suppress(httpx.HTTPError):
            response.read()
        detail = self.safe(_registry_message(response))
        tail = f" ({detail})" if detail else ""
        where = self.where_at(endpoint)
        if status == 404:
            raise ImageNotFound(f"{where}: {what} not found{tail}")
        if status in (401, 403):
            reason = "401 Unauthorized" if status == 401 else "403 Forbidden"
            raise refused(where, self.credentials, f"{reason}{tail}")
        if status == 429:
            raise Unavailable(f"{where}: rate limited (429){tail}")
        raise Unavailable(f"{where}: {what}: unexpected HTTP status {status}{tail}")

    def _first(self, attempt: Callable[[Endpoint], T]) -> T:
        """``attempt`` on each endpoint in order; the first that succeeds is :attr:`endpoint`."""
        failures: list[CrishimError] = []
        for endpoint in self.endpoints:
            try:
                result = attempt(endpoint)
            except (DeadlineExceeded, Cancelled):
                raise
            except CrishimError as exc:
                log.info("%s", exc)
                failures.append(exc)
                continue
            self.endpoint = endpoint
            return result
        raise most_telling(failures)

    # -- manifests ---------------------------------------------------------

    def resolve(self, reference: str, expected: str | None) -> Fetched:
        """The manifest or index ``reference`` names, from the first endpoint that has it."""
        return self._first(lambda endpoint: self.fetch_manifest(endpoint, reference, expected))

    def fetch_manifest(self, endpoint: Endpoint, reference: str, expected: str | None) -> Fetched:
        """GET one manifest, bounded in size, checked against its digest."""
        url = endpoint.url(self.repository, "manifests", reference)
        what = f"manifest {reference}" if ":" in reference else f"tag {reference!r}"
        where = self.where_at(endpoint)
        response = self.send(endpoint, url, {"Accept": MANIFEST_ACCEPT})
        try:
            self.check(response, endpoint, what)
            length = response.headers.get("content-length")
            if length and length.isdigit() and int(length) > MAX_JSON_BLOB:
                raise DataLoss(
                    f"{where}: {what} is {length} bytes, over the {MAX_JSON_BLOB}-byte limit"
                )
            chunks: list[bytes] = []
            size = 0
            with self.network(endpoint):
                for chunk in response.iter_raw():
                    self.deadline.check()
                    size += len(chunk)
                    if size > MAX_JSON_BLOB:
                        raise DataLoss(f"{where}: {what} is over the {MAX_JSON_BLOB}-byte limit")
                    chunks.append(chunk)
            header_digest = response.headers.get("docker-content-digest", "")
            content_type = response.headers.get("content-type")
        finally:
            response.close()
        data = b"".join(chunks)
        algorithm = expected.partition(":")[0] if expected else "sha256"
        digest = digest_of(data, algorithm)
        if expected and digest != expected:
            raise DataLoss(
                f"{where}: {what}: content has digest {digest}, not the {expected} asked for"
            )
        if header_digest.startswith(f"{algorithm}:") and header_digest != digest:
            raise DataLoss(
                f"{where}: {what}: content has digest {digest}, but the "
                f"registry says {redact(header_digest)}"
            )
        return Fetched(digest, _media_type(content_type, data), data, endpoint.base)

    def manifest(self, digest: str) -> Fetched:
        """A manifest the resolved one refers to, by digest, from :attr:`endpoint`."""
        return self.fetch_manifest(self.endpoint, digest, digest)

    def check_access(self, digest: str) -> None:
        """Prove this session may pull the manifest ``digest`` (a HEAD, endpoints in order).

        Raises what a fresh pull would: ImageNotFound, Unauthenticated,
        PermissionDenied, Unavailable.
        """

        def head(endpoint: Endpoint) -> None:
            url = endpoint.url(self.repository, "manifests", digest)
            response = self.send(endpoint, url, {"Accept": MANIFEST_ACCEPT}, method="HEAD")
            try:
                self.check(response, endpoint, f"manifest {digest}")
            finally:
                response.close()

        self._first(head)

    @property
    def origin(self) -> str:
        """Where content comes from, for spans and messages: the endpoint's base URL."""
        return self.endpoint.base

    def where(self) -> str:
        return self.where_at(self.endpoint)

    # -- blobs -------------------------------------------------------------

    def blob(
        self, digest: str, writer: ByteSink, on_bytes: Callable[[int], None] | None = None
    ) -> None:
        """Stream a blob into ``writer``, resuming and failing over when it breaks
        (see :class:`~crishim.registry.download.BlobDownload`)."""
        BlobDownload(self, digest, writer, on_bytes).run()
