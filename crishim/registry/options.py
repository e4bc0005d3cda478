"""The options every pulling backend shares: registries, timeouts, downloads.

A pulling backend's options model subclasses :class:`PullOptions` and adds
what is its own (a store path, an address).

Registry hosts are configured in the spirit of containerd's ``hosts.toml``:
each registry name has an ordered list of endpoints (mirrors) and its
traffic goes only to them. Secrets are :class:`pydantic.SecretStr` (their
``repr`` hides them) or come from a file or an environment variable read
when they are needed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from crishim.config import ExistingFile
from crishim.types import BackendOptions

#: docker.io is served from this host (as docker and containerd do).
DOCKER_HUB = "docker.io"
DOCKER_HUB_ENDPOINT = "https://registry-1.docker.io"
_DOCKER_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})

_HOST_RE = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:.]+\])(?::[0-9]{1,5})?$"
)


def normalize_host(host: str) -> str:
    """A registry host as references spell it: lowercase, docker.io for Docker Hub."""
    text = host.strip()
    if "://" in text:
        text = urlsplit(text).netloc
    text = text.split("/", 1)[0].lower()
    return DOCKER_HUB if text in _DOCKER_ALIASES else text


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EndpointOptions(_Model):
    """One place a registry's content is fetched from."""

    #: ``https://host[:port][/prefix]``, or ``http://...`` with ``plain_http: true``.
    url: str
    #: Allow plain HTTP to this endpoint (an explicit opt-in).
    plain_http: bool = False
    #: PEM bundle of CAs trusted for this endpoint, in addition to the system's.
    ca_file: ExistingFile | None = None
    #: PEM client certificate (and ``client_key``) for mutual TLS.
    client_cert: ExistingFile | None = None
    client_key: ExistingFile | None = None
    #: Do not verify the server's certificate (an explicit opt-in; insecure).
    skip_verify: bool = False

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        text = value.strip()
        if "://" not in text:
            text = "https://" + text
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"scheme {parts.scheme!r} is not http or https")
        if not parts.hostname:
            raise ValueError("has no host")
        if parts.username or parts.password:
            raise ValueError("must not hold credentials; use the registry's credentials key")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or fragment")
        path = parts.path.rstrip("/")
        if path.endswith("/v2"):
            path = path[: -len("/v2")]
        return f"{parts.scheme}://{parts.netloc}{path}"

    @model_validator(mode="after")
    def _consistent(self) -> EndpointOptions:
        scheme = urlsplit(self.url).scheme
        if scheme == "http" and not self.plain_http:
            raise ValueError(
                f"url {self.url} is plain http: set plain_http: true to allow it explicitly"
            )
        if scheme == "https" and self.plain_http:
            raise ValueError(f"plain_http: true needs an http:// url, not {self.url}")
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together")
        if scheme == "http" and (self.ca_file or self.client_cert or self.skip_verify):
            raise ValueError("ca_file, client_cert and skip_verify need an https:// url")
        return self


class CredentialOptions(_Model):
    """Credentials for one registry, used when a PullImage call brings none.

    Either ``username`` with exactly one of ``password``, ``password_file``,
    ``password_env``; or exactly one of ``identity_token``,
    ``identity_token_file`` (an OAuth2 refresh token).
    """

    username: str = ""
    password: SecretStr | None = None
    password_file: str | None = None
    password_env: str | None = None
    identity_token: SecretStr | None = None
    identity_token_file: str | None = None

    @model_validator(mode="after")
    def _one_form(self) -> CredentialOptions:
        passwords = [
            k for k in ("password", "password_file", "password_env") if getattr(self, k) is not None
        ]
        tokens = [k for k in ("identity_token", "identity_token_file") if getattr(self, k)]
        if len(passwords) > 1 or len(tokens) > 1:
            raise ValueError(f"give one of {' / '.join(passwords or tokens)}, not several")
        if passwords and tokens:
            raise ValueError("give a password or an identity token, not both")
        if passwords and not self.username:
            raise ValueError("a password needs a username")
        if not passwords and not tokens:
            raise ValueError("give username and password, or identity_token")
        if ":" in self.username:
            raise ValueError("username must not contain ':'")
        return self


class RegistryOptions(_Model):
    """Where one registry name is served from, and its credentials."""

    #: Tried in order; the first that has the image serves it. Empty: the
    #: registry's own host over https (Docker Hub: registry-1.docker.io).
    endpoints: list[EndpointOptions] = Field(default_factory=list)
    credentials: CredentialOptions | None = None
    #: A pull by digest of an image already held still proves, with the
    #: request's credentials, that the registry grants it (a manifest HEAD)
    #: before it is answered, so a pod without the credentials cannot use an
    #: image another pod pulled (kubelet's KEP-2535 relies on it). ``false``
    #: answers such pulls at once: only for public images and mirrors.
    verify_held_images: bool = True


class PullOptions(BackendOptions):
    """What a pulling backend's options hold whatever its store is."""

    #: Per registry name (``docker.io``, ``gcr.io``, ``127.0.0.1:5000``).
    registries: dict[str, RegistryOptions] = Field(default_factory=dict)
    #: Seconds to wait for a connection to an endpoint.
    connect_timeout: float = Field(default=10.0, gt=0, le=600)
    #: Seconds a single read may wait for data; a pull's deadline, when
    #: shorter, wins.
    read_timeout: float = Field(default=60.0, gt=0, le=3600)
    #: Blobs of one pull downloaded at once.
    max_concurrent_downloads: int = Field(default=3, ge=1, le=64)
    #: Seconds a blob download may go without receiving a byte before it is
    #: abandoned (then resumed, on the next endpoint when there is one).
    pull_progress_timeout: float = Field(default=60.0, gt=0, le=3600)
    #: Bytes per second a blob download must average over
    #: ``min_pull_rate_window`` seconds, else it is abandoned like a stalled
    #: one; 0 (the default) turns the check off.
    min_pull_rate: int = Field(default=0, ge=0)
    min_pull_rate_window: float = Field(default=30.0, gt=0, le=3600)
    #: Honour HTTP(S)_PROXY / NO_PROXY from the environment.
    trust_env: bool = True
    #: Pull and serve OCI artifacts (kubelet's ``image`` volumes) as well as
    #: container images; ``false`` refuses them (FAILED_PRECONDITION), for
    #: nodes that want runnable images only.
    artifacts: bool = True

    @field_validator("registries")
    @classmethod
    def _hosts(cls, value: dict[str, RegistryOptions]) -> dict[str, RegistryOptions]:
        out: dict[str, RegistryOptions] = {}
        for host, options in value.items():
            if not _HOST_RE.match(host.strip()):
                raise ValueError(f"{host!r} is not a registry host (host[:port])")
            key = normalize_host(host)
            if key in out:
                raise ValueError(f"registry {key!r} is configured twice")
            out[key] = options
        return out


def read_secret(
    value: SecretStr | None, file: str | None, env: str | None, base: Path
) -> str | None:
    """A secret from the config value, a file (stripped of one trailing newline) or an env var.

    Raises OSError for an unreadable file and KeyError for an unset variable;
    neither message holds the secret.
    """
    if value is not None:
        return value.get_secret_value()
    if file is not None:
        path = Path(file).expanduser()
        text = (path if path.is_absolute() else base / path).read_text(encoding="utf-8")
        return text.removesuffix("\n").removesuffix("\r")
    if env is not None:
        return os.environ[env]
    return None
