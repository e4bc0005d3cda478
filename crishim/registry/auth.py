"""Registry auth: the pull's credentials and the distribution token flow, as an ``httpx.Auth``.

A request answered 401 carries a ``WWW-Authenticate`` challenge
(the distribution spec, docker's token auth): ``Basic`` is answered with
the credentials; ``Bearer`` by asking the challenge's realm for a token
for ``repository:<name>:pull`` (HTTP basic with username and password, an
OAuth2 refresh-token grant with an identity token, or anonymously); the
request is then sent once more with it. The answer is kept: later requests
of the pull to that endpoint send it at once. A registry token from the
request is sent as the bearer token as it is, and never exchanged.

:class:`RegistryAuth` is that flow for one pull and one endpoint; httpx
runs it around each request (``client.send(request, auth=...)``), so
redirects still drop the ``Authorization`` header when they leave the
origin (blob storage). Credentials are checked before any library sees
them (:func:`credentials_from_request`), and every secret the pull may send,
tokens it is issued included, is kept in :class:`Secrets` to be blanked
out of whatever a registry or a library says.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
from collections.abc import AsyncGenerator, Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from crishim.errors import CrishimError, PermissionDenied, Unauthenticated, Unavailable
from crishim.types import PullAuth

from .deadline import Deadline
from .endpoints import USER_AGENT, Endpoint
from .options import PullOptions, read_secret

#: What a token sent as ``Bearer <token>`` (or in a token request) may hold:
#: visible ASCII, no spaces. Anything else would be refused by the HTTP layer
#: with the header, token included, in its error.
_TOKEN_RE = re.compile(r"^[\x21-\x7e]+$")
#: A username: no control characters, no ``:`` (it separates the password).
_USERNAME_RE = re.compile(r"^[^\x00-\x1f\x7f:]*$")
_CHALLENGE_PARAM_RE = re.compile(
    r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))'
)
#: Bytes of a 401 answer's body read (httpx reads the answers an auth flow
#: goes past; nothing in this one is needed) and of a token service's answer.
MAX_CHALLENGE_BODY = 64 * 1024
MAX_TOKEN_ANSWER = 1024 * 1024


@dataclass(frozen=True)
class Credentials:
    """Resolved credentials for one pull; ``repr`` (and ``str``) shows only their origin."""

    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)
    registry_token: str = field(default="", repr=False)
    #: Where they came from (``the pull request``, ``the config``), for messages.
    origin: str = ""

    @property
    def basic(self) -> str | None:
        if not self.username and not self.password:
            return None
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


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
            decoded = ""
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


def configured_credentials(host: str, options: PullOptions, config_dir: Path) -> Credentials | None:
    """The credentials the config gives registry ``host``, read now (files, variables)."""
    configured = options.registries.get(host)
    if configured is None or configured.credentials is None:
        return None
    c = configured.credentials
    try:
        password = read_secret(c.password, c.password_file, c.password_env, config_dir)
        token = read_secret(c.identity_token, c.identity_token_file, None, config_dir)
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


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """(lowercase scheme, params) of a ``WWW-Authenticate`` header."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    for match in _CHALLENGE_PARAM_RE.finditer(rest):
        value = match[2] if match[2] is not None else match[3]
        params[match[1].lower()] = re.sub(r"\\(.)", r"\1", value)
    return scheme.lower(), params


class Secrets:
    """Every secret one pull may send (thread-safe): blanked out of what it says."""

    def __init__(self, credentials: Credentials | None) -> None:
        self._lock = threading.Lock()
        self._values: set[str] = set()
        if credentials is not None:
            basic = credentials.basic
            for value in (
                credentials.password,
                credentials.identity_token,
                credentials.registry_token,
                basic.removeprefix("Basic ") if basic else "",
            ):
                if len(value) >= 4:
                    self._values.add(value)

    def add(self, value: str) -> None:
        with self._lock:
            self._values.add(value)

    def scrub(self, text: str) -> str:
        """``text`` with every secret replaced by ``<redacted>``, longest first."""
        with self._lock:
            values = sorted(self._values, key=len, reverse=True)
        for value in values:
            text = text.replace(value, "<redacted>")
        return text


def refused(where: str, credentials: Credentials | None, detail: str = "") -> CrishimError:
    """What a registry refusing the pull is: UNAUTHENTICATED without credentials,
    PERMISSION_DENIED with them (naming where they came from, never what they are)."""
    tail = f" ({detail})" if detail else ""
    if credentials is None:
        return Unauthenticated(f"{where}: the registry wants credentials and none were given{tail}")
    return PermissionDenied(
        f"{where}: the registry refused the credentials from {credentials.origin}{tail}"
    )


class _Head(httpx.SyncByteStream):
    """The first ``limit`` bytes of a response body; the rest is never read."""

    def __init__(self, stream: httpx.SyncByteStream, limit: int) -> None:
        self._stream = stream
        self._limit = limit

    def __iter__(self) -> Iterator[bytes]:
        left = self._limit
        for chunk in self._stream:
            if len(chunk) > left:
                return
            left -= len(chunk)
            yield chunk

    def close(self) -> None:
        self._stream.close()


def _cap(response: httpx.Response, limit: int) -> None:
    if isinstance(response.stream, httpx.SyncByteStream):
        response.stream = _Head(response.stream, limit)


class RegistryAuth(httpx.Auth):
    """One pull's auth at one endpoint: credentials sent, challenges answered once.

    Thread-safe: a pull's concurrent blob downloads share it, and the
    ``Authorization`` a challenge earned. The flow overrides
    ``sync_auth_flow`` (httpx's advice for flows that read bodies and hold
    locks); it reads only the token service's answer, bounded. After it a
    401 still means the registry refused: the caller makes that
    :func:`refused`.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        repository: str,
        credentials: Credentials | None,
        secrets: Secrets,
        where: str,
        deadline: Deadline,
        timeout: Callable[[], httpx.Timeout],
    ) -> None:
        self.endpoint = endpoint
        self.scope = f"repository:{repository}:pull"
        self.credentials = credentials
        self.secrets = secrets
        self.where = where
        self.deadline = deadline
        self.timeout = timeout
        self._lock = threading.Lock()
        #: What the last answered challenge earned (a registry token: from the start).
        self._authorization = ""
        #: A registry token is all there is: a 401 is not answered.
        self._answers = True
        if credentials is not None and credentials.registry_token:
            self._authorization = f"Bearer {credentials.registry_token}"
            self._answers = False

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        with self._lock:
            authorization = self._authorization
        if authorization:
            request.headers["Authorization"] = authorization
        response = yield request
        if response.status_code != 401 or not self._answers:
            return
        challenge = response.headers.get("www-authenticate", "")
        _cap(response, MAX_CHALLENGE_BODY)
        authorization = yield from self._answer(challenge)
        with self._lock:
            self._authorization = authorization
        self.deadline.check()
        request.headers["Authorization"] = authorization
        yield request

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        raise NotImplementedError("RegistryAuth serves crishim's synchronous clients only")
        yield request  # an async generator, as httpx expects

    def _answer(self, challenge: str) -> Generator[httpx.Request, httpx.Response, str]:
        """The ``Authorization`` that answers ``challenge`` (a token request on the way)."""
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            basic = self.credentials.basic if self.credentials else None
            if basic is None:
                raise refused(self.where, self.credentials)
            return basic
        if scheme != "bearer":
            raise refused(
                self.where, self.credentials, f"unsupported auth scheme {scheme or '(none)'!r}"
            )
        request, realm = self._token_request(params)
        response = yield request
        _cap(response, MAX_TOKEN_ANSWER)
        response.read()
        return f"Bearer {self._token(response, realm)}"

    def _token_request(self, params: dict[str, str]) -> tuple[httpx.Request, str]:
        """The request for a token, and the realm to name in messages (no query)."""
        realm = params.get("realm", "")
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Unavailable(f"{self.where}: the auth challenge has no usable realm")
        realm_name = f"{parts.scheme}://{parts.netloc}{parts.path}"
        creds = self.credentials
        if creds is not None and parts.scheme == "http" and not self.endpoint.plain_http:
            raise PermissionDenied(
                f"{self.where}: refusing to send credentials to the plain-http "
                f"token service {realm_name} of an https registry"
            )
        query = {"scope": self.scope}
        if params.get("service"):
            query["service"] = params["service"]
        client = self.endpoint.client
        if creds is not None and creds.identity_token:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": creds.identity_token,
                "client_id": USER_AGENT,
                **query,
            }
            return client.build_request(
                "POST", realm, data=form, timeout=self.timeout()
            ), realm_name
        headers = {}
        if creds is not None and creds.basic:
            headers["Authorization"] = creds.basic
        request = client.build_request(
            "GET", realm, params=query, headers=headers, timeout=self.timeout()
        )
        return request, realm_name

    def _token(self, response: httpx.Response, realm: str) -> str:
        """The token in a token service's answer, checked to be sendable."""
        if response.status_code in (401, 403):
            raise refused(
                self.where, self.credentials, f"token service {realm} said {response.status_code}"
            )
        if response.status_code != 200:
            raise Unavailable(
                f"{self.where}: token service {realm} answered {response.status_code}"
            )
        try:
            body = response.json()
        except (ValueError, RecursionError):
            body = None
        token = None
        if isinstance(body, dict):
            token = body.get("token") or body.get("access_token")
        if not isinstance(token, str) or not token:
            raise Unavailable(f"{self.where}: token service {realm} gave no token")
        self.secrets.add(token)
        if not _TOKEN_RE.match(token):
            raise Unavailable(
                f"{self.where}: token service {realm} gave a token that "
                "cannot be sent (not visible ASCII)"
            )
        return token
