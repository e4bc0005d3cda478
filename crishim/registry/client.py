"""Talking to OCI distribution registries: endpoints, TLS, auth, deadlines, errors.

HTTP goes through httpx: one connection-pooling client per endpoint with
its own TLS context, per-request timeouts (set from what is left of the
caller's deadline), streaming bodies, and redirects that drop the
``Authorization`` header when they leave the origin (blob storage).

Auth follows the distribution token spec: a request answered 401 carries a
``WWW-Authenticate`` challenge; ``Basic`` is answered with the
credentials, ``Bearer`` by asking the challenge's realm for a token for
``repository:<name>:pull`` (HTTP basic with username/password, an OAuth2
refresh-token grant with an identity token, or anonymously), then
retrying once. A registry token from the request is sent as the bearer
token as it is.

Nothing here puts a credential, an ``Authorization`` header or a URL query
string into an error message, a log line or a span.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

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
from crishim.oci.atomic import fault_point
from crishim.oci.layout import DOCKER_LIST, DOCKER_MANIFEST, MAX_JSON_BLOB, OCI_INDEX, OCI_MANIFEST
from crishim.reference import Reference
from crishim.types import PullAuth

from .options import (
    DOCKER_HUB,
    DOCKER_HUB_ENDPOINT,
    EndpointOptions,
    PullOptions,
    normalize_host,
    read_secret,
)

log = logging.getLogger(__name__)

# httpx logs every request URL at INFO and httpcore every response header at
# DEBUG; a redirect to blob storage carries signed query strings. Keep them
# quiet unless someone configured them.
for _name in ("httpx", "httpcore"):
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.WARNING)

MANIFEST_ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))
USER_AGENT = "crishim"
_QUERY_RE = re.compile(r"(https?://[^\s?#\"']*)\?[^\s\"']*")
_MESSAGE_LIMIT = 300


def redact(text: str) -> str:
    """``text`` with URL query strings replaced, shortened for a message."""
    text = _QUERY_RE.sub(r"\1?<redacted>", text)
    return text if len(text) <= _MESSAGE_LIMIT else text[:_MESSAGE_LIMIT] + "..."


# -- deadlines ----------------------------------------------------------------


class Aborted(Exception):
    """Another part of the same pull failed; stop quietly (internal)."""


@dataclass
class Deadline:
    """The caller's deadline and cancellation, checked between chunks."""

    at: float | None
    cancelled: Callable[[], bool]
    what: str
    _abort: threading.Event = field(default_factory=threading.Event)

    def remaining(self) -> float | None:
        return None if self.at is None else self.at - time.monotonic()

    def expired(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at

    def check(self) -> None:
        if self.expired():
            raise DeadlineExceeded(f"{self.what}: the client's deadline ran out")
        if self.cancelled():
            raise Cancelled(f"{self.what}: the client went away")
        if self._abort.is_set():
            raise Aborted

    def abort(self) -> None:
        self._abort.set()

    def bound(self, limit: float) -> float:
        """``limit`` seconds, or less when the deadline is nearer."""
        rem = self.remaining()
        return limit if rem is None else max(0.001, min(limit, rem))


# -- endpoints ----------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """One configured place a registry is served from, with its HTTP client."""

    base: str
    plain_http: bool
    client: httpx.Client = field(compare=False, repr=False)

    def url(self, repository: str, kind: str, reference: str) -> str:
        return f"{self.base}/v2/{repository}/{kind}/{reference}"


@dataclass(frozen=True)
class Credentials:
    """Resolved credentials for one pull; ``repr`` hides the values."""

    username: str = ""
    password: str = ""
    identity_token: str = ""
    registry_token: str = ""
    origin: str = ""

    def __repr__(self) -> str:
        return f"Credentials(<from {self.origin}>)"

    __str__ = __repr__

    @property
    def basic(self) -> str | None:
        if not self.username and not self.password:
            return None
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


#: What a token sent as ``Bearer <token>`` (or in a token request) may hold:
#: visible ASCII, no spaces. Anything else would be refused by the HTTP layer
#: with the header, token included, in its error.
_TOKEN_RE = re.compile(r"^[\x21-\x7e]+$")
#: A username: no control characters, no ``:`` (it separates the password).
_USERNAME_RE = re.compile(r"^[^\x00-\x1f\x7f:]*$")


def usable_token(value: str, what: str) -> str:
    """``value`` without surrounding white space (a token read from a file ends in a
    newline), checked to be sendable; Unauthenticated, naming ``what`` and never the
    value, when it is not."""
    token = value.strip()
    if token and not _TOKEN_RE.match(token):
        raise Unauthenticated(
            f"{what} is not usable: a token is visible ASCII characters without spaces"
        )
    return token


def _usable_username(value: str, what: str) -> str:
    name = value.strip()
    if not _USERNAME_RE.match(name):
        raise Unauthenticated(f"{what} is not usable: it holds ':' or control characters")
    return name


def credentials_from_request(auth: PullAuth) -> Credentials | None:
    """The PullImageRequest's auth, or None when it holds nothing usable.

    Validated here, before any library sees them: tokens are stripped of
    surrounding white space and must be visible ASCII; a username may not
    hold ``:`` or control characters (a password may hold anything: it
    travels base64-encoded).
    """
    username, password = auth.username, auth.password
    if auth.auth and not (username or password):
        try:
            decoded = base64.b64decode(auth.auth, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise Unauthenticated(
                "the auth field of the pull request is not base64 of user:password"
            ) from None
        username, sep, password = decoded.partition(":")
        if not sep:
            raise Unauthenticated(
                "the auth field of the pull request is not base64 of user:password"
            )
    identity_token = usable_token(auth.identity_token, "the pull request's identity_token")
    registry_token = usable_token(auth.registry_token, "the pull request's registry_token")
    username = _usable_username(username, "the pull request's username")
    if not (username or password or identity_token or registry_token):
        return None
    return Credentials(
        username=username,
        password=password,
        identity_token=identity_token,
        registry_token=registry_token,
        origin="the pull request",
    )


def _ssl_context(options: EndpointOptions, base: Path) -> ssl.SSLContext:
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

    def _client(self, verify: ssl.SSLContext | bool) -> httpx.Client:
        return httpx.Client(
            verify=verify,
            follow_redirects=True,
            max_redirects=5,
            trust_env=self.options.trust_env,
            headers={"User-Agent": USER_AGENT},
            timeout=httpx.Timeout(self.options.read_timeout, connect=self.options.connect_timeout),
        )

    def endpoints(self, host: str) -> list[Endpoint]:
        host = normalize_host(host)
        with self._lock:
            known = self._endpoints.get(host)
            if known is not None:
                return known
            configured = self.options.registries.get(host)
            built: list[Endpoint] = []
            if configured is not None and configured.endpoints:
                for ep in configured.endpoints:
                    verify: ssl.SSLContext | bool = (
                        True if ep.plain_http else _ssl_context(ep, self.config_dir)
                    )
                    built.append(Endpoint(ep.url, ep.plain_http, self._client(verify)))
            else:
                base = DOCKER_HUB_ENDPOINT if host == DOCKER_HUB else f"https://{host}"
                built.append(Endpoint(base, False, self._client(ssl.create_default_context())))
            self._endpoints[host] = built
            return built

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
        configured = self.options.registries.get(host)
        if configured is None or configured.credentials is None:
            return None
        c = configured.credentials
        try:
            password = read_secret(c.password, c.password_file, c.password_env, self.config_dir)
            token = read_secret(c.identity_token, c.identity_token_file, None, self.config_dir)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise Unauthenticated(
                f"credentials configured for {host} cannot be read: {reason}"
            ) from None
        except KeyError as exc:
            raise Unauthenticated(
                f"credentials configured for {host}: environment variable {exc.args[0]} is not set"
            ) from None
        return Credentials(
            username=c.username,
            password=password or "",
            identity_token=usable_token(token or "", f"the identity token configured for {host}"),
            origin="the config",
        )

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


# -- responses ------------------------------------------------------------------


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


def _most_telling(failures: list[CrishimError]) -> CrishimError:
    """One error for failures on every endpoint: the most telling, naming the others."""
    if len(failures) == 1:
        return failures[0]
    for kind in _PRECEDENCE:
        chosen = next((f for f in failures if isinstance(f, kind)), None)
        if chosen is not None:
            others = "; ".join(str(f) for f in failures if f is not chosen)
            return type(chosen)(f"{chosen} [other endpoints: {others}]")
    return failures[-1]


@dataclass(frozen=True)
class Watchdog:
    """When a blob download counts as stuck: no byte for ``stall`` seconds, or less
    than ``min_rate`` bytes/s over ``window`` seconds (``min_rate`` 0: no rate check)."""

    stall: float = 60.0
    min_rate: int = 0
    window: float = 30.0


class Stalled(Exception):
    """A blob download made too little progress (internal: it is retried)."""


class ByteSink(Protocol):
    """Where a downloaded blob's bytes go (a store's verifying writer)."""

    def write(self, data: bytes) -> None: ...


class Session:
    """One pull's conversation with one registry: endpoints, tokens, deadline.

    :meth:`resolve` tries the endpoints in order; the one that answered is
    :attr:`endpoint`, and :meth:`manifest` and :meth:`blob` fetch the rest
    of the image from it.
    """

    def __init__(
        self,
        *,
        host: str,
        repository: str,
        endpoints: list[Endpoint],
        credentials: Credentials | None,
        deadline: Deadline,
        connect_timeout: float,
        read_timeout: float,
        watchdog: Watchdog | None = None,
    ) -> None:
        self.host = host
        self.repository = repository
        self.endpoints = endpoints
        self.credentials = credentials
        self.deadline = deadline
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.watchdog = watchdog or Watchdog()
        #: The endpoint that resolved the reference (the first one until then).
        self.endpoint = endpoints[0]
        self._auth: dict[str, str] = {}
        self._lock = threading.Lock()
        #: Every secret this session may send: scrubbed from whatever it says.
        self._secrets: set[str] = set()
        if credentials is not None:
            basic = credentials.basic
            self._secrets.update(
                v
                for v in (
                    credentials.password,
                    credentials.identity_token,
                    credentials.registry_token,
                    basic.removeprefix("Basic ") if basic else "",
                )
                if len(v) >= 4
            )
        if credentials is not None and credentials.registry_token:
            for endpoint in endpoints:
                self._auth[endpoint.base] = f"Bearer {credentials.registry_token}"

    # -- plumbing ----------------------------------------------------------

    def _where(self, endpoint: Endpoint) -> str:
        return f"{self.deadline.what}: {self.host} at {endpoint.base}"

    def safe(self, text: str) -> str:
        """``text`` (from a library or a registry) fit for a message: no query
        strings, none of this session's secrets, shortened."""
        with self._lock:
            secrets = sorted(self._secrets, key=len, reverse=True)
        for secret in secrets:
            text = text.replace(secret, "<redacted>")
        return redact(text)

    def _timeout(self, read_timeout: float | None = None) -> httpx.Timeout:
        read = self.deadline.bound(read_timeout or self.read_timeout)
        connect = self.deadline.bound(self.connect_timeout)
        return httpx.Timeout(read, connect=connect, pool=connect)

    @contextlib.contextmanager
    def _network(self, endpoint: Endpoint) -> Iterator[None]:
        """Turn httpx errors into domain errors that name the endpoint, not the URL."""
        try:
            yield
        except httpx.TimeoutException as exc:
            self.deadline.check()
            raise Unavailable(
                f"{self._where(endpoint)}: timed out ({type(exc).__name__})"
            ) from None
        except httpx.HTTPError as exc:
            self.deadline.check()
            if isinstance(exc, httpx.LocalProtocolError):
                # what we were about to send, headers included: never repeat it
                raise Unavailable(
                    f"{self._where(endpoint)}: the request could not be sent ({type(exc).__name__})"
                ) from None
            reason = self.safe(str(exc)) or type(exc).__name__
            if "[SSL" in reason or "CERTIFICATE" in reason.upper():
                raise Unavailable(f"{self._where(endpoint)}: TLS failed: {reason}") from None
            if isinstance(exc, httpx.ConnectError):
                raise Unavailable(f"{self._where(endpoint)}: cannot connect: {reason}") from None
            raise Unavailable(f"{self._where(endpoint)}: {type(exc).__name__}: {reason}") from None

    def _send(
        self,
        endpoint: Endpoint,
        url: str,
        headers: dict[str, str],
        method: str = "GET",
        read_timeout: float | None = None,
    ) -> httpx.Response:
        """Send (streamed), answering one auth challenge; the caller closes the response."""
        challenged = False
        while True:
            self.deadline.check()
            request_headers = dict(headers)
            with self._lock:
                authorization = self._auth.get(endpoint.base)
            if authorization:
                request_headers["Authorization"] = authorization
            with self._network(endpoint):
                request = endpoint.client.build_request(
                    method, url, headers=request_headers, timeout=self._timeout(read_timeout)
                )
                response = endpoint.client.send(request, stream=True)
            if response.status_code != 401:
                return response
            challenge = response.headers.get("www-authenticate", "")
            response.close()
            if challenged or (self.credentials is not None and self.credentials.registry_token):
                raise self._refused(endpoint)
            self._authorize(endpoint, challenge)
            challenged = True

    def _refused(self, endpoint: Endpoint, detail: str = "") -> CrishimError:
        tail = f" ({detail})" if detail else ""
        if self.credentials is None:
            return Unauthenticated(
                f"{self._where(endpoint)}: the registry wants credentials and none were given{tail}"
            )
        return PermissionDenied(
            f"{self._where(endpoint)}: the registry refused the credentials from "
            f"{self.credentials.origin}{tail}"
        )

    def _authorize(self, endpoint: Endpoint, challenge: str) -> None:
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            basic = self.credentials.basic if self.credentials else None
            if basic is None:
                raise self._refused(endpoint)
            with self._lock:
                self._auth[endpoint.base] = basic
            return
        if scheme != "bearer":
            raise self._refused(endpoint, f"unsupported auth scheme {scheme or '(none)'!r}")
        token = self._fetch_token(endpoint, params)
        with self._lock:
            self._auth[endpoint.base] = f"Bearer {token}"

    def _fetch_token(self, endpoint: Endpoint, params: dict[str, str]) -> str:
        realm = params.get("realm", "")
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Unavailable(f"{self._where(endpoint)}: the auth challenge has no usable realm")
        realm_name = f"{parts.scheme}://{parts.netloc}{parts.path}"
        creds = self.credentials
        if creds is not None and parts.scheme == "http" and not endpoint.plain_http:
            raise PermissionDenied(
                f"{self._where(endpoint)}: refusing to send credentials to the plain-http "
                f"token service {realm_name} of an https registry"
            )
        scope = f"repository:{self.repository}:pull"
        query = {"scope": scope}
        if params.get("service"):
            query["service"] = params["service"]
        with self._network(endpoint):
            if creds is not None and creds.identity_token:
                form = {
                    "grant_type": "refresh_token",
                    "refresh_token": creds.identity_token,
                    "client_id": USER_AGENT,
                    **query,
                }
                response = endpoint.client.post(realm, data=form, timeout=self._timeout())
            else:
                headers = {}
                if creds is not None and creds.basic:
                    headers["Authorization"] = creds.basic
                response = endpoint.client.get(
                    realm, params=query, headers=headers, timeout=self._timeout()
                )
        if response.status_code in (401, 403):
            raise self._refused(endpoint, f"token service {realm_name} said {response.status_code}")
        if response.status_code != 200:
            raise Unavailable(
                f"{self._where(endpoint)}: token service {realm_name} answered "
                f"{response.status_code}"
            )
        try:
            body = response.json()
        except (ValueError, RecursionError):
            body = None
        token = None
        if isinstance(body, dict):
            token = body.get("token") or body.get("access_token")
        if not isinstance(token, str) or not token:
            raise Unavailable(f"{self._where(endpoint)}: token service {realm_name} gave no token")
        with self._lock:
            self._secrets.add(token)
        if not _TOKEN_RE.match(token):
            raise Unavailable(
                f"{self._where(endpoint)}: token service {realm_name} gave a token that "
                "cannot be sent (not visible ASCII)"
            )
        return token

    def _check(self, response: httpx.Response, endpoint: Endpoint, what: str) -> None:
        status = response.status_code
        if status == 200:
            return
        with contextlib.suppress(httpx.HTTPError):
            response.read()
        detail = self.safe(_registry_message(response))
        tail = f" ({detail})" if detail else ""
        where = self._where(endpoint)
        if status == 404:
            raise ImageNotFound(f"{where}: {what} not found{tail}")
        if status == 403:
            raise self._refused(endpoint, f"403 Forbidden{tail}")
        if status == 401:
            raise self._refused(endpoint, f"401 Unauthorized{tail}")
        if status == 429:
            raise Unavailable(f"{where}: rate limited (429){tail}")
        raise Unavailable(f"{where}: {what}: unexpected HTTP status {status}{tail}")

    # -- manifests ---------------------------------------------------------

    def resolve(self, reference: str, expected: str | None) -> Fetched:
        """The manifest or index ``reference`` names, from the first endpoint that has it."""
        failures: list[CrishimError] = []
        for endpoint in self.endpoints:
            try:
                fetched = self.fetch_manifest(endpoint, reference, expected)
            except (DeadlineExceeded, Cancelled):
                raise
            except CrishimError as exc:
                log.info("%s", exc)
                failures.append(exc)
                continue
            self.endpoint = endpoint
            return fetched
        raise _most_telling(failures)

    def fetch_manifest(self, endpoint: Endpoint, reference: str, expected: str | None) -> Fetched:
        """GET one manifest, bounded in size, checked against its digest."""
        url = endpoint.url(self.repository, "manifests", reference)
        what = f"manifest {reference}" if ":" in reference else f"tag {reference!r}"
        response = self._send(endpoint, url, {"Accept": MANIFEST_ACCEPT})
        try:
            self._check(response, endpoint, what)
            length = response.headers.get("content-length")
            if length and length.isdigit() and int(length) > MAX_JSON_BLOB:
                raise DataLoss(
                    f"{self._where(endpoint)}: {what} is {length} bytes, over the "
                    f"{MAX_JSON_BLOB}-byte limit"
                )
            chunks: list[bytes] = []
            size = 0
            with self._network(endpoint):
                for chunk in response.iter_raw():
                    self.deadline.check()
                    size += len(chunk)
                    if size > MAX_JSON_BLOB:
                        raise DataLoss(
                            f"{self._where(endpoint)}: {what} is over the "
                            f"{MAX_JSON_BLOB}-byte limit"
                        )
                    chunks.append(chunk)
            header_digest = response.headers.get("docker-content-digest", "")
            content_type = response.headers.get("content-type")
        finally:
            response.close()
        data = b"".join(chunks)
        algorithm = expected.partition(":")[0] if expected else "sha256"
        digest = f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
        if expected and digest != expected:
            raise DataLoss(
                f"{self._where(endpoint)}: {what}: content has digest {digest}, "
                f"not the {expected} asked for"
            )
        if header_digest.startswith(f"{algorithm}:") and header_digest != digest:
            raise DataLoss(
                f"{self._where(endpoint)}: {what}: content has digest {digest}, but the "
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
        failures: list[CrishimError] = []
        for endpoint in self.endpoints:
            url = endpoint.url(self.repository, "manifests", digest)
            try:
                response = self._send(endpoint, url, {"Accept": MANIFEST_ACCEPT}, method="HEAD")
                try:
                    self._check(response, endpoint, f"manifest {digest}")
                finally:
                    response.close()
            except (DeadlineExceeded, Cancelled):
                raise
            except CrishimError as exc:
                log.info("%s", exc)
                failures.append(exc)
                continue
            self.endpoint = endpoint
            return
        raise _most_telling(failures)

    @property
    def origin(self) -> str:
        """Where content comes from, for spans and messages: the endpoint's base URL."""
        return self.endpoint.base

    def where(self) -> str:
        return self._where(self.endpoint)

    # -- blobs -------------------------------------------------------------

    def blob(
        self, digest: str, writer: ByteSink, on_bytes: Callable[[int], None] | None = None
    ) -> None:
        """Stream a blob into ``writer``, resuming and failing over when it breaks.

        Starts on :attr:`endpoint`. A download that breaks after some bytes
        (a reset, a stall the :class:`Watchdog` sees) continues with an HTTP
        Range request: a reset on the same endpoint, a stall on the next one
        (the same when there is no other); the writer goes on hashing and
        counting, so the whole blob is verified. After two retries the pull
        fails UNAVAILABLE naming the blob, the endpoints and the rate seen.
        """
        done = [0]
        order = [self.endpoint, *(e for e in self.endpoints if e is not self.endpoint)]
        endpoint = order[0]
        failures: list[str] = []
        for attempt in range(3):
            try:
                self.download(endpoint, digest, writer, on_bytes, done=done)
                return
            except Stalled as exc:
                failures.append(f"{endpoint.base}: {exc}")
                nxt = order[(order.index(endpoint) + 1) % len(order)]
            except (Unavailable, ImageNotFound) as exc:
                if done[0] == 0 and len(order) == 1:
                    raise  # nothing received and nowhere else to go
                if isinstance(exc, ImageNotFound) and len(order) == 1:
                    raise
                failures.append(str(exc))
                following = order[(order.index(endpoint) + 1) % len(order)]
                # a reset after some bytes: once more where it broke, then elsewhere;
                # an endpoint without the blob: the next one
                resumable = done[0] and attempt == 0 and isinstance(exc, Unavailable)
                nxt = endpoint if resumable else following
            log.info(
                "%s: blob %s broke after %d bytes at %s (%s); resuming at %s",
                self.deadline.what,
                digest,
                done[0],
                endpoint.base,
                failures[-1],
                nxt.base,
            )
            endpoint = nxt
        raise Unavailable(
            f"{self.deadline.what}: {self.host}: blob {digest} could not be downloaded "
            f"({done[0]} bytes received): " + "; ".join(failures)
        )

    def download(
        self,
        endpoint: Endpoint,
        digest: str,
        writer: ByteSink,
        on_bytes: Callable[[int], None] | None = None,
        *,
        done: list[int] | None = None,
    ) -> None:
        """Stream a blob from ``endpoint`` into ``writer`` (which hashes and bounds it).

        ``done[0]`` counts the bytes ``writer`` has had; when it is not 0 the
        download resumes from there (Range), skipping what a server that
        ignores the range sends again.
        """
        done = done if done is not None else [0]
        offset = done[0]
        url = endpoint.url(self.repository, "blobs", digest)
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        watchdog = self.watchdog
        response = self._send(endpoint, url, headers, read_timeout=watchdog.stall)
        try:
            skip = 0
            if offset and response.status_code == 206:
                started = response.headers.get("content-range", "").partition(" ")[2]
                if not started.startswith(f"{offset}-"):
                    raise Unavailable(
                        f"{self._where(endpoint)}: blob {digest}: the registry answered the "
                        f"range from {offset} with {redact(started) or 'no range'}"
                    )
            else:
                self._check(response, endpoint, f"blob {digest}")
                skip = offset  # the whole blob again: what was written is skipped
            first = True
            window_start = time.monotonic()
            window_bytes = 0
            with self._network(endpoint):
                stream = response.iter_raw()
                while True:
                    try:
                        chunk = next(stream)
                    except StopIteration:
                        break
                    except httpx.ReadTimeout:
                        self.deadline.check()
                        raise Stalled(f"no bytes for {watchdog.stall:g}s") from None
                    self.deadline.check()
                    if skip:
                        dropped = min(skip, len(chunk))
                        skip -= dropped
                        chunk = chunk[dropped:]
                        if not chunk:
                            continue
                    writer.write(chunk)
                    done[0] += len(chunk)
                    if on_bytes is not None:
                        on_bytes(len(chunk))
                    if first:
                        first = False
                        fault_point("registry:mid-blob")
                    if watchdog.min_rate:
                        window_bytes += len(chunk)
                        elapsed = time.monotonic() - window_start
                        if elapsed >= watchdog.window:
                            rate = window_bytes / elapsed
                            if rate < watchdog.min_rate:
                                raise Stalled(
                                    f"{rate:.0f} bytes/s over {elapsed:.0f}s, under the "
                                    f"{watchdog.min_rate} bytes/s min_pull_rate"
                                )
                            window_start, window_bytes = time.monotonic(), 0
        finally:
            response.close()


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """(lowercase scheme, params) of a ``WWW-Authenticate`` header."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    for match in re.finditer(
        r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))', rest
    ):
        key = match[1].lower()
        value = match[2] if match[2] is not None else match[3]
        params[key] = re.sub(r"\\(.)", r"\1", value)
    return scheme.lower(), params


def json_object(data: bytes, what: str) -> dict[str, Any]:
    """Parse a JSON object or raise DataLoss naming ``what``."""
    try:
        parsed = json.loads(data)
    except ValueError as exc:
        raise DataLoss(f"{what} is not valid JSON: {redact(str(exc))}") from None
    except RecursionError:
        raise DataLoss(f"{what} is nested too deep to be a manifest") from None
    if not isinstance(parsed, dict):
        raise DataLoss(f"{what} is not a JSON object")
    return parsed
