"""Image references: parse what kubelet and crictl send, the way docker and containerd do.

A reference is one of three things:

* a full image ID, ``sha256:<64 hex>`` or the bare 64 hex characters;
* an ID prefix, ``MIN_ID_PREFIX`` to 63 lowercase hex characters, optionally
  after ``sha256:``;
* a repository name with an optional tag and an optional digest,
  ``[domain/]path[:tag][@digest]``.

Names are normalised as docker does: no domain means ``docker.io``,
``index.docker.io`` is ``docker.io``, a one-component Docker Hub path is an
official image under ``library/``, and a name with neither tag nor digest is
``:latest``.

Lowercase hex is also a valid repository name, so ``deadbeefcafe1234`` could be
either the image ``docker.io/library/deadbeefcafe1234:latest`` or an ID prefix.
Such a reference parses as ``ID_PREFIX`` with the name reading in ``also_name``;
like containerd, the caller looks the name up first and the prefix second.

Everything here is pure and cheap: the patterns are compiled once, the common
case is a handful of string searches and three anchored matches, and the
careful diagnosis of what is wrong only runs once the input has been rejected.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import re
from dataclasses import dataclass
from typing import NoReturn

__all__ = [
    "MAX_REFERENCE_LENGTH",
    "MIN_ID_PREFIX",
    "NAME_TOTAL_LENGTH_MAX",
    "RefKind",
    "Reference",
    "ReferenceError",
    "familiar",
    "is_valid_digest",
    "normalize_name",
    "parse",
    "parse_digest",
]

MIN_ID_PREFIX = 12
"""Fewest hex characters (without ``sha256:``) accepted as an image ID prefix."""

MAX_REFERENCE_LENGTH = 4096
"""Longer input is refused outright, before any pattern sees it."""

NAME_TOTAL_LENGTH_MAX = 255
"""Longest repository name (``domain/path`` after normalisation), as in Docker."""

_DEFAULT_DOMAIN = "docker.io"
_LEGACY_DEFAULT_DOMAIN = "index.docker.io"
_OFFICIAL_PREFIX = "library/"
_DEFAULT_TAG = "latest"

# Supported digest algorithms and the length of their lowercase-hex encoding.
_DIGEST_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_DIGEST_ALGORITHM_PREFIXES = tuple(f"{alg}:" for alg in _DIGEST_HEX_LENGTH)

_MESSAGE_ECHO_LIMIT = 120

# Parsed references are immutable, so recent ones are kept and shared: kubelet asks about the
# same few images over and over. Bounded, so hostile input cannot grow it; errors are not kept.
_CACHE_SIZE = 1024

# -- grammar ----------------------------------------------------------------------------------
# All patterns are ASCII-only (so \w and [0-9] never admit other scripts) and are applied with
# fullmatch (so "$" never tolerates a trailing newline).

_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"

_PATH_COMPONENT_RE = re.compile(_PATH_COMPONENT, re.ASCII)
_PATH_RE = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*", re.ASCII)
_DOMAIN_RE = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[(?P<ipv6>[0-9a-fA-F:]+)\])(?::[0-9]+)?",
    re.ASCII,
)
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", re.ASCII)
_TAG_CHARS_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", re.ASCII)

# Only the supported algorithms with a correct encoding: the fast acceptance test.
_GOOD_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}", re.ASCII)
# The general digest grammar, used to say why a digest was refused.
_DIGEST_ALGORITHM_RE = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*", re.ASCII)
_DIGEST_ENCODED_RE = re.compile(r"[a-zA-Z0-9=_-]+", re.ASCII)

# A full ID or an ID prefix; the group is the hex. Lengths 12..64 are all candidates.
_ID_RE = re.compile(rf"(?:sha256:)?([0-9a-f]{{{MIN_ID_PREFIX},64}})", re.ASCII)

# In the first path segment, any of these makes it a registry host rather than a path.
_DOMAIN_HINT_RE = re.compile(r"[.:A-Z]", re.ASCII)

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_FOREIGN_RE = re.compile(r"[^A-Za-z0-9._/:@\[\]+=-]")


class ReferenceError(ValueError):
    """The reference is malformed.

    ``str(e)`` says what is wrong, for example
    ``invalid reference "library/Busybox": repository name must be lowercase``.
    A ``ValueError``; the service answers it with INVALID_ARGUMENT.

    Example::

        >>> try:
        ...     parse("library/Busybox")
        ... except ReferenceError as exc:
        ...     print(exc)
        invalid reference "library/Busybox": repository name must be lowercase
    """


class RefKind(enum.Enum):
    """What a reference designates.

    Example::

        >>> parse("busybox:1.36").kind
        <RefKind.NAME: 'name'>
        >>> parse("sha256:" + "a" * 64).kind
        <RefKind.ID: 'id'>
        >>> parse("a" * 12).kind
        <RefKind.ID_PREFIX: 'id-prefix'>
    """

    ID = "id"
    """A full image ID: the digest of the image config."""
    ID_PREFIX = "id-prefix"
    """The start of an image ID, to be resolved against the known images."""
    NAME = "name"
    """A normalised repository name with a tag, a digest, or both."""


@dataclass(frozen=True, slots=True)
class Reference:
    """A parsed image reference.

    Which fields are set depends on ``kind``:

    * ``NAME``: ``repository`` always; ``tag`` (``"latest"`` when the input gave
      neither tag nor digest) and/or ``digest``.
    * ``ID``: ``digest`` holds the full ID, e.g. ``sha256:<64 hex>``.
    * ``ID_PREFIX``: ``id_prefix`` holds lowercase hex without ``sha256:``, and
      ``also_name`` the NAME reading of the same text when it is a valid name.

    Backends receive one in ``get_image`` (NAME or ID; crishim resolves ID
    prefixes through ``match_id_prefix``) and in ``PullRequest.ref``.

    Example::

        >>> ref = parse("busybox")
        >>> ref.repository, ref.tag, ref.domain, ref.path
        ('docker.io/library/busybox', 'latest', 'docker.io', 'library/busybox')
        >>> ref.tagged()
        'docker.io/library/busybox:latest'
        >>> parse("localhost:5000/app@sha256:" + "a" * 64).digested()[:26]
        'localhost:5000/app@sha256:'
        >>> prefix = parse("deadbeefcafe1234")
        >>> prefix.id_prefix, prefix.also_name.tagged()
        ('deadbeefcafe1234', 'docker.io/library/deadbeefcafe1234:latest')
    """

    raw: str
    kind: RefKind
    repository: str = ""
    tag: str = ""
    digest: str = ""
    id_prefix: str = ""
    also_name: Reference | None = None

    @property
    def domain(self) -> str:
        """The registry part of ``repository`` (``docker.io``); empty unless NAME."""
        return self.repository.partition("/")[0]

    @property
    def path(self) -> str:
        """``repository`` without its registry (``library/busybox``); empty unless NAME."""
        return self.repository.partition("/")[2]

    def tagged(self) -> str:
        """``repository:tag``, or ``""`` when there is no tag."""
        if self.tag and self.repository:
            return f"{self.repository}:{self.tag}"
        return ""

    def digested(self) -> str:
        """``repository@digest``, or ``""`` unless this is a NAME with a digest."""
        if self.digest and self.repository:
            return f"{self.repository}@{self.digest}"
        return ""

    def __str__(self) -> str:
        """The canonical text: ``repository[:tag][@digest]``, the full ID, or the bare prefix."""
        kind = self.kind
        if kind is RefKind.NAME:
            text = self.repository
            if self.tag:
                text = f"{text}:{self.tag}"
            if self.digest:
                text = f"{text}@{self.digest}"
            return text
        if kind is RefKind.ID:
            return self.digest
        return self.id_prefix


# -- public functions -------------------------------------------------------------------------


def parse(text: str) -> Reference:
    """Parse an image reference as sent in a CRI request; raise ReferenceError if malformed.

    Example::

        >>> str(parse("index.docker.io/library/busybox:1.36"))
        'docker.io/library/busybox:1.36'
        >>> parse("example.com/app:1.0").tagged()
        'example.com/app:1.0'
    """
    return _parse_cached(text)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _parse_cached(text: str) -> Reference:
    if len(text) > MAX_REFERENCE_LENGTH:
        raise _too_long(text)
    match = _ID_RE.fullmatch(text)
    if match is not None:
        hex_part = match[1]
        if len(hex_part) == 64:
            digest = text if len(text) > 64 else "sha256:" + text
            return Reference(text, RefKind.ID, digest=digest)
        return Reference(text, RefKind.ID_PREFIX, id_prefix=hex_part, also_name=_parse_name(text))
    if text.startswith(_DIGEST_ALGORITHM_PREFIXES):
        full_id = _as_full_id(text)
        if full_id is not None:
            return Reference(text, RefKind.ID, digest=full_id)
    return _parse_name(text)


def normalize_name(text: str) -> str:
    """The canonical form of an image name from configuration.

    ``busybox`` becomes ``docker.io/library/busybox:latest``; a given tag and/or
    digest is kept (``:latest`` is only added when there is neither). An image
    ID is refused: it is not a name. Raises ReferenceError.

    Example::

        >>> normalize_name("busybox")
        'docker.io/library/busybox:latest'
        >>> normalize_name("quay.io/team/tool:2")
        'quay.io/team/tool:2'
    """
    ref = parse(text)
    if ref.kind is RefKind.NAME:
        return str(ref)
    if ref.also_name is not None:
        return str(ref.also_name)
    _fail(text, "this is an image ID, not a repository name")


def parse_digest(text: str) -> str:
    """Check a digest (``algorithm:encoded``) and return it unchanged; raise ReferenceError.

    Example::

        >>> parse_digest("sha256:" + "0" * 64) == "sha256:" + "0" * 64
        True
        >>> try:
        ...     parse_digest("sha256:abc")
        ... except ReferenceError as exc:
        ...     print(exc)
        invalid digest "sha256:abc": a sha256 digest has 64 hex characters, not 3
    """
    if _GOOD_DIGEST_RE.fullmatch(text) is not None:
        return text
    raise ReferenceError(_digest_problem(text))


def is_valid_digest(text: str) -> bool:
    """Whether ``text`` is a digest this module accepts (sha256 or sha512, lowercase hex).

    Example::

        >>> is_valid_digest("sha256:" + "a" * 64), is_valid_digest("sha256:" + "A" * 64)
        (True, False)
    """
    return _GOOD_DIGEST_RE.fullmatch(text) is not None


def familiar(name: str) -> str:
    """The short form docker prints: ``docker.io/library/busybox:latest`` -> ``busybox:latest``.

    Only the ``docker.io`` domain and the ``library/`` of official images are
    dropped; a tag or digest is kept exactly when the input had one. Raises
    ReferenceError for malformed names and for image IDs.

    Example::

        >>> familiar("docker.io/library/busybox:latest")
        'busybox:latest'
        >>> familiar("docker.io/team/app")
        'team/app'
    """
    normalize_name(name)  # validates, and refuses image IDs
    domain, path, tag, digest = _split_name(name)
    if domain == _DEFAULT_DOMAIN:
        if path.startswith(_OFFICIAL_PREFIX) and path.find("/", len(_OFFICIAL_PREFIX)) < 0:
            path = path[len(_OFFICIAL_PREFIX) :]
        text = path
    else:
        text = f"{domain}/{path}"
    if tag is not None:
        text = f"{text}:{tag}"
    if digest:
        text = f"{text}@{digest}"
    return text


# -- names ------------------------------------------------------------------------------------


def _parse_name(text: str) -> Reference:
    domain, path, tag, digest = _split_name(text)
    if tag is None:
        tag = "" if digest else _DEFAULT_TAG
    return Reference(text, RefKind.NAME, f"{domain}/{path}", tag, digest)


def _split_name(text: str) -> tuple[str, str, str | None, str]:
    """Validate a name reference; return (domain, path, tag or None if absent, digest or "").

    Domain and path come back normalised. Raises ReferenceError.
    """
    at = text.find("@")
    if at < 0:
        rest = text
        digest = ""
    else:
        rest = text[:at]
        digest = text[at + 1 :]
        if _GOOD_DIGEST_RE.fullmatch(digest) is None:
            _fail(text, _digest_problem(digest))

    tag: str | None = None
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        given = rest[colon + 1 :]
        if _TAG_RE.fullmatch(given) is None:
            _fail(text, _tag_problem(given))
        tag = given
        rest = rest[:colon]

    slash = rest.find("/")
    if slash >= 0 and (
        _DOMAIN_HINT_RE.search(rest, 0, slash) is not None or rest.startswith("localhost/")
    ):
        domain = rest[:slash]
        path = rest[slash + 1 :]
        if domain != _DEFAULT_DOMAIN:
            match = _DOMAIN_RE.fullmatch(domain)
            if match is None or (match["ipv6"] is not None and not _is_ipv6(match["ipv6"])):
                _fail(text, f"invalid registry domain {_quote(domain)}")
            if domain == _LEGACY_DEFAULT_DOMAIN:
                domain = _DEFAULT_DOMAIN
    else:
        domain = _DEFAULT_DOMAIN
        path = rest

    if _PATH_RE.fullmatch(path) is None:
        _fail(text, _path_problem(path))
    if domain == _DEFAULT_DOMAIN and "/" not in path:
        path = _OFFICIAL_PREFIX + path

    length = len(domain) + 1 + len(path)
    if length > NAME_TOTAL_LENGTH_MAX:
        _fail(
            text,
            f"repository name is {length} characters long after normalisation; "
            f"the limit is {NAME_TOTAL_LENGTH_MAX}",
        )
    return domain, path, tag, digest


def _as_full_id(text: str) -> str | None:
    """For ``alg:encoded`` with a supported algorithm and an encoding of the digest's length.

    Such text is taken to be meant as a full image ID: return it if it is a valid
    digest, raise if not. Anything else (None) is left to be read as a name, as
    docker reads ``sha256:abc`` as repository ``sha256`` with tag ``abc``.
    """
    algorithm, _, encoded = text.partition(":")
    if len(encoded) != _DIGEST_HEX_LENGTH[algorithm] or not _DIGEST_ENCODED_RE.fullmatch(encoded):
        return None
    if _GOOD_DIGEST_RE.fullmatch(text) is None:
        raise ReferenceError(_digest_problem(text))
    return text


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


# -- diagnosis (only after a rejection) -------------------------------------------------------


def _fail(text: str, problem: str) -> NoReturn:
    """Raise the error for ``text``, preferring a problem with the whole text over ``problem``."""
    if not text or text.isspace():
        raise ReferenceError("empty image reference")
    if text[0].isspace() or text[-1].isspace():
        problem = "leading or trailing whitespace is not allowed"
    else:
        bad = _CONTROL_RE.search(text)
        if bad is not None:
            problem = f"control character U+{ord(bad[0]):04X} at position {bad.start()}"
        else:
            bad = _FOREIGN_RE.search(text)
            if bad is not None:
                problem = (
                    f"invalid character {_quote(bad[0])} (U+{ord(bad[0]):04X}) "
                    f"at position {bad.start()}"
                )
    raise ReferenceError(f"invalid reference {_quote(text)}: {problem}")


def _too_long(text: str) -> ReferenceError:
    return ReferenceError(
        f"image reference is {len(text)} characters long; the limit is {MAX_REFERENCE_LENGTH}"
    )


def _path_problem(path: str) -> str:
    if not path:
        return "repository name is missing"
    if _PATH_RE.fullmatch(path.lower()) is not None:
        return "repository name must be lowercase"
    for component in path.split("/"):
        if not component:
            return "repository name has an empty path component"
        if _PATH_COMPONENT_RE.fullmatch(component) is None:
            return f"invalid repository path component {_quote(component)}"
    return f"invalid repository name {_quote(path)}"  # not reached: some component is bad


def _tag_problem(tag: str) -> str:
    if not tag:
        return "tag is empty"
    if _TAG_CHARS_RE.fullmatch(tag) is not None:
        return f"tag is {len(tag)} characters long; the limit is 128"
    return f"invalid tag {_quote(tag)}"


def _digest_problem(digest: str) -> str:
    """Why ``digest`` is not acceptable (it is known not to be), as a full sentence."""
    why: str
    algorithm, colon, encoded = digest.partition(":")
    if not colon:
        why = 'expected "algorithm:encoded"'
    elif _DIGEST_ALGORITHM_RE.fullmatch(algorithm) is None:
        why = f"malformed algorithm {_quote(algorithm)}"
    elif _DIGEST_ENCODED_RE.fullmatch(encoded) is None:
        why = "malformed encoded part"
    elif algorithm not in _DIGEST_HEX_LENGTH:
        supported = ", ".join(_DIGEST_HEX_LENGTH)
        why = f"unsupported digest algorithm {_quote(algorithm)} (supported: {supported})"
    elif len(encoded) != _DIGEST_HEX_LENGTH[algorithm]:
        why = (
            f"a {algorithm} digest has {_DIGEST_HEX_LENGTH[algorithm]} hex characters,"
            f" not {len(encoded)}"
        )
    else:
        why = f"a {algorithm} digest must be lowercase hex"
    return f"invalid digest {_quote(digest)}: {why}"


def _quote(text: str) -> str:
    """``text`` in double quotes, non-printable characters escaped, long text shortened."""
    shown = text if len(text) <= _MESSAGE_ECHO_LIMIT else text[:_MESSAGE_ECHO_LIMIT] + "..."
    escaped = shown.encode("unicode_escape").decode("ascii").replace('"', '\\"')
    return f'"{escaped}"'
