"""Table-driven tests for crishim.reference: what parses to what, and what is refused why."""

from __future__ import annotations

import random
import time

import pytest

from crishim.reference import (
    MAX_REFERENCE_LENGTH,
    MIN_ID_PREFIX,
    NAME_TOTAL_LENGTH_MAX,
    Reference,
    ReferenceError,
    RefKind,
    familiar,
    is_valid_digest,
    normalize_name,
    parse,
    parse_digest,
)

HEX = "0123456789abcdef" * 4  # 64 lowercase hex characters
HEX2 = "fedcba9876543210" * 4
D = f"sha256:{HEX}"
D512 = f"sha512:{HEX}{HEX2}"
LIB = "docker.io/library/"

NAME, ID, PREFIX = RefKind.NAME, RefKind.ID, RefKind.ID_PREFIX

# text, kind, repository, tag, digest, id_prefix, str()
VALID = [
    # -- Docker Hub normalisation -------------------------------------------------------------
    pytest.param(
        "busybox",
        NAME,
        LIB + "busybox",
        "latest",
        "",
        "",
        LIB + "busybox:latest",
        id="bare-name",
    ),
    pytest.param(
        "library/busybox",
        NAME,
        LIB + "busybox",
        "latest",
        "",
        "",
        LIB + "busybox:latest",
        id="library-prefix",
    ),
    pytest.param(
        "docker.io/library/busybox",
        NAME,
        LIB + "busybox",
        "latest",
        "",
        "",
        LIB + "busybox:latest",
        id="fully-qualified",
    ),
    pytest.param(
        "docker.io/busybox",
        NAME,
        LIB + "busybox",
        "latest",
        "",
        "",
        LIB + "busybox:latest",
        id="docker-io-single-component",
    ),
    pytest.param(
        "index.docker.io/busybox",
        NAME,
        LIB + "busybox",
        "latest",
        "",
        "",
        LIB + "busybox:latest",
        id="legacy-index-domain",
    ),
    pytest.param(
        "index.docker.io/library/busybox:1.36",
        NAME,
        LIB + "busybox",
        "1.36",
        "",
        "",
        LIB + "busybox:1.36",
        id="legacy-index-domain-tagged",
    ),
    pytest.param(
        "docker.io/library/busybox:latest",
        NAME,
        LIB + "busybox",
        "latest",
        "",
        "",
        LIB + "busybox:latest",
        id="already-canonical",
    ),
    pytest.param(
        "busybox:1.36.1-musl",
        NAME,
        LIB + "busybox",
        "1.36.1-musl",
        "",
        "",
        LIB + "busybox:1.36.1-musl",
        id="tag",
    ),
    pytest.param(
        f"busybox@{D}",
        NAME,
        LIB + "busybox",
        "",
        D,
        "",
        f"{LIB}busybox@{D}",
        id="digest-only-no-latest",
    ),
    pytest.param(
        f"busybox:1.36@{D}",
        NAME,
        LIB + "busybox",
        "1.36",
        D,
        "",
        f"{LIB}busybox:1.36@{D}",
        id="tag-and-digest",
    ),
    pytest.param(
        f"busybox:latest@{D512}",
        NAME,
        LIB + "busybox",
        "latest",
        D512,
        "",
        f"{LIB}busybox:latest@{D512}",
        id="sha512-digest",
    ),
    pytest.param(
        "foo/bar",
        NAME,
        "docker.io/foo/bar",
        "latest",
        "",
        "",
        "docker.io/foo/bar:latest",
        id="hub-user-repo",
    ),
    pytest.param(
        "foo/bar/baz:v1",
        NAME,
        "docker.io/foo/bar/baz",
        "v1",
        "",
        "",
        "docker.io/foo/bar/baz:v1",
        id="hub-nested-path",
    ),
    pytest.param(
        "docker.io/library/foo/bar",
        NAME,
        "docker.io/library/foo/bar",
        "latest",
        "",
        "",
        "docker.io/library/foo/bar:latest",
        id="hub-library-nested",
    ),
    # -- other registries ---------------------------------------------------------------------
    pytest.param(
        "localhost/app",
        NAME,
        "localhost/app",
        "latest",
        "",
        "",
        "localhost/app:latest",
        id="localhost-no-port",
    ),
    pytest.param(
        "localhost:5000/app:v1",
        NAME,
        "localhost:5000/app",
        "v1",
        "",
        "",
        "localhost:5000/app:v1",
        id="localhost-port",
    ),
    pytest.param(
        f"registry.example.com:443/team/app@{D}",
        NAME,
        "registry.example.com:443/team/app",
        "",
        D,
        "",
        f"registry.example.com:443/team/app@{D}",
        id="host-port-digest",
    ),
    pytest.param(
        "[::1]:5000/app",
        NAME,
        "[::1]:5000/app",
        "latest",
        "",
        "",
        "[::1]:5000/app:latest",
        id="ipv6-port",
    ),
    pytest.param(
        "[::1]/app:v2",
        NAME,
        "[::1]/app",
        "v2",
        "",
        "",
        "[::1]/app:v2",
        id="ipv6-no-port",
    ),
    pytest.param(
        "[2001:db8::1]:443/ns/app",
        NAME,
        "[2001:db8::1]:443/ns/app",
        "latest",
        "",
        "",
        "[2001:db8::1]:443/ns/app:latest",
        id="ipv6-long",
    ),
    pytest.param(
        "192.168.1.10:5000/app",
        NAME,
        "192.168.1.10:5000/app",
        "latest",
        "",
        "",
        "192.168.1.10:5000/app:latest",
        id="ipv4-port",
    ),
    pytest.param(
        "gcr.io/project/app:tag",
        NAME,
        "gcr.io/project/app",
        "tag",
        "",
        "",
        "gcr.io/project/app:tag",
        id="gcr",
    ),
    pytest.param(
        "a-b.c/d",
        NAME,
        "a-b.c/d",
        "latest",
        "",
        "",
        "a-b.c/d:latest",
        id="hyphenated-host",
    ),
    pytest.param(
        "Registry.Example.com/app",
        NAME,
        "Registry.Example.com/app",
        "latest",
        "",
        "",
        "Registry.Example.com/app:latest",
        id="uppercase-host-kept",
    ),
    pytest.param(
        "Foo/bar",
        NAME,
        "Foo/bar",
        "latest",
        "",
        "",
        "Foo/bar:latest",
        id="uppercase-first-component-is-host",
    ),
    pytest.param(
        "example.com/a_b/c__d/e-f/g--h/i.j:t",
        NAME,
        "example.com/a_b/c__d/e-f/g--h/i.j",
        "t",
        "",
        "",
        "example.com/a_b/c__d/e-f/g--h/i.j:t",
        id="path-separators",
    ),
    pytest.param(
        "quay.io/x/y:Tag_With.Dots-1",
        NAME,
        "quay.io/x/y",
        "Tag_With.Dots-1",
        "",
        "",
        "quay.io/x/y:Tag_With.Dots-1",
        id="tag-mixed-case",
    ),
    pytest.param(
        "localhost:5000",
        NAME,
        LIB + "localhost",
        "5000",
        "",
        "",
        LIB + "localhost:5000",
        id="host-port-without-slash-is-name-and-tag",
    ),
    # -- limits -------------------------------------------------------------------------------
    pytest.param(
        "busybox:" + "t" * 128,
        NAME,
        LIB + "busybox",
        "t" * 128,
        "",
        "",
        f"{LIB}busybox:{'t' * 128}",
        id="tag-128",
    ),
    pytest.param(
        "a" * (NAME_TOTAL_LENGTH_MAX - len(LIB)),
        NAME,
        LIB + "a" * (NAME_TOTAL_LENGTH_MAX - len(LIB)),
        "latest",
        "",
        "",
        LIB + "a" * (NAME_TOTAL_LENGTH_MAX - len(LIB)) + ":latest",
        id="name-255-after-normalisation",
    ),
    pytest.param(
        "example.com/" + "b" * (NAME_TOTAL_LENGTH_MAX - 12),
        NAME,
        "example.com/" + "b" * (NAME_TOTAL_LENGTH_MAX - 12),
        "latest",
        "",
        "",
        "example.com/" + "b" * (NAME_TOTAL_LENGTH_MAX - 12) + ":latest",
        id="name-255-own-registry",
    ),
    # -- IDs and what only looks like one -----------------------------------------------------
    pytest.param(D, ID, "", "", D, "", D, id="full-id"),
    pytest.param(HEX, ID, "", "", D, "", D, id="bare-64-hex-is-id"),
    pytest.param(D512, ID, "", "", D512, "", D512, id="full-id-sha512"),
    pytest.param(
        HEX[:MIN_ID_PREFIX],
        PREFIX,
        "",
        "",
        "",
        HEX[:MIN_ID_PREFIX],
        HEX[:MIN_ID_PREFIX],
        id="prefix-12",
    ),
    pytest.param(HEX[:63], PREFIX, "", "", "", HEX[:63], HEX[:63], id="prefix-63"),
    pytest.param(
        "sha256:" + HEX[:20], PREFIX, "", "", "", HEX[:20], HEX[:20], id="prefix-with-algorithm"
    ),
    pytest.param(
        HEX[:11],
        NAME,
        LIB + HEX[:11],
        "latest",
        "",
        "",
        f"{LIB}{HEX[:11]}:latest",
        id="hex-11-is-a-name",
    ),
    pytest.param(
        "sha256:abc",
        NAME,
        LIB + "sha256",
        "abc",
        "",
        "",
        LIB + "sha256:abc",
        id="short-sha256-is-name-and-tag",
    ),
    pytest.param(
        "sha256:" + HEX[:40].upper(),
        NAME,
        LIB + "sha256",
        HEX[:40].upper(),
        "",
        "",
        f"{LIB}sha256:{HEX[:40].upper()}",
        id="sha256-uppercase-not-full-length-is-name",
    ),
    pytest.param(
        HEX + "0",
        NAME,
        LIB + HEX + "0",
        "latest",
        "",
        "",
        f"{LIB}{HEX}0:latest",
        id="hex-65-is-a-name",
    ),
    pytest.param(
        f"{HEX}:v1",
        NAME,
        LIB + HEX,
        "v1",
        "",
        "",
        f"{LIB}{HEX}:v1",
        id="hex-64-with-tag-is-a-name",
    ),
]


@pytest.mark.parametrize(
    ("text", "kind", "repository", "tag", "digest", "id_prefix", "canonical"), VALID
)
def test_parse_valid(
    text: str,
    kind: RefKind,
    repository: str,
    tag: str,
    digest: str,
    id_prefix: str,
    canonical: str,
) -> None:
    ref = parse(text)
    assert ref.raw == text
    assert ref.kind is kind
    assert (ref.repository, ref.tag, ref.digest, ref.id_prefix) == (
        repository,
        tag,
        digest,
        id_prefix,
    )
    assert str(ref) == canonical


@pytest.mark.parametrize(
    ("text", "kind", "repository", "tag", "digest", "id_prefix", "canonical"), VALID
)
def test_canonical_form_is_stable(
    text: str,
    kind: RefKind,
    repository: str,
    tag: str,
    digest: str,
    id_prefix: str,
    canonical: str,
) -> None:
    again = parse(canonical)
    assert again.kind is kind
    assert (again.repository, again.tag, again.digest, again.id_prefix) == (
        repository,
        tag,
        digest,
        id_prefix,
    )
    assert str(again) == canonical


# text, a fragment of str(error)
INVALID = [
    pytest.param("", "empty image reference", id="empty"),
    pytest.param("   ", "empty image reference", id="spaces-only"),
    pytest.param("\t\n", "empty image reference", id="whitespace-only"),
    pytest.param(" busybox", "leading or trailing whitespace", id="leading-space"),
    pytest.param("busybox ", "leading or trailing whitespace", id="trailing-space"),
    pytest.param("busybox\n", "leading or trailing whitespace", id="trailing-newline"),
    pytest.param("\u00a0busybox", "leading or trailing whitespace", id="leading-nbsp"),
    pytest.param("busy\x00box", "control character U+0000 at position 4", id="nul"),
    pytest.param("busybox:\x1b[31m", "control character U+001B", id="escape-sequence"),
    pytest.param("busy\x7fbox", "control character U+007F", id="del"),
    pytest.param("busy\u0085box", "control character U+0085", id="c1-control"),
    pytest.param("busy box", 'invalid character " "', id="inner-space"),
    pytest.param("b\u00fcsybox", "invalid character", id="non-ascii"),
    pytest.param("\u200bbusybox", "U+200B", id="zero-width-space"),
    pytest.param(
        "x" * (MAX_REFERENCE_LENGTH + 1),
        f"{MAX_REFERENCE_LENGTH + 1} characters long",
        id="over-long",
    ),
    pytest.param(" " * 5000, "5000 characters long", id="over-long-whitespace"),
    pytest.param("Busybox", "repository name must be lowercase", id="uppercase-name"),
    pytest.param(
        "library/Busybox", "repository name must be lowercase", id="uppercase-path-component"
    ),
    pytest.param(
        "docker.io/Library/busybox:latest",
        "repository name must be lowercase",
        id="uppercase-path-with-domain",
    ),
    pytest.param(HEX.upper(), "repository name must be lowercase", id="uppercase-64-hex"),
    pytest.param(
        "a" * (NAME_TOTAL_LENGTH_MAX - len(LIB) + 1),
        "256 characters long after normalisation",
        id="name-256-after-normalisation",
    ),
    pytest.param(
        "example.com/" + "b" * (NAME_TOTAL_LENGTH_MAX - 11),
        "limit is 255",
        id="name-256-own-registry",
    ),
    pytest.param("busybox:" + "t" * 129, "tag is 129 characters long", id="tag-129"),
    pytest.param("busybox:", "tag is empty", id="empty-tag"),
    pytest.param("busybox:-x", 'invalid tag "-x"', id="tag-leading-dash"),
    pytest.param("busybox:.x", 'invalid tag ".x"', id="tag-leading-dot"),
    pytest.param("busybox@", "invalid digest", id="empty-digest"),
    pytest.param("busybox@sha256:abc", "64 hex characters, not 3", id="short-digest"),
    pytest.param(f"busybox@sha256:{HEX.upper()}", "must be lowercase hex", id="uppercase-digest"),
    pytest.param(
        "busybox@md5:d41d8cd98f00b204e9800998ecf8427e",
        'unsupported digest algorithm "md5"',
        id="md5-digest",
    ),
    pytest.param(
        f"busybox@sha384:{HEX}{HEX[:32]}",
        "unsupported digest algorithm",
        id="sha384-digest",
    ),
    pytest.param("busybox@sha256", 'expected "algorithm:encoded"', id="digest-without-colon"),
    pytest.param(f"busybox@SHA256:{HEX}", "malformed algorithm", id="digest-uppercase-algorithm"),
    pytest.param("busybox@sha256:ab/cd", "malformed encoded part", id="digest-bad-encoding"),
    pytest.param(f"busybox@{D}@{D}", "invalid digest", id="two-digests"),
    pytest.param(f"sha256:{HEX.upper()}", "invalid digest", id="id-uppercase-hex"),
    pytest.param("sha512:" + "g" * 128, "must be lowercase hex", id="id-sha512-not-hex"),
    pytest.param("sha256:" + "z" * 64, "invalid digest", id="id-sha256-not-hex"),
    pytest.param("a//b", "empty path component", id="double-slash"),
    pytest.param("/busybox", "empty path component", id="leading-slash"),
    pytest.param("busybox/", "empty path component", id="trailing-slash"),
    pytest.param(":latest", "repository name is missing", id="tag-without-name"),
    pytest.param(f"@{D}", "repository name is missing", id="digest-without-name"),
    pytest.param("-foo.com/bar", 'invalid registry domain "-foo.com"', id="host-leading-dash"),
    pytest.param("foo.com-/bar", "invalid registry domain", id="host-trailing-dash"),
    pytest.param("[::1::2]/app", "invalid registry domain", id="bad-ipv6"),
    pytest.param("[::1]:http/app", "invalid registry domain", id="non-numeric-port"),
    pytest.param("localhost:/app", "invalid registry domain", id="empty-port"),
    pytest.param("foo__bar.x/baz", "invalid registry domain", id="underscore-in-host"),
    pytest.param("foo_/bar", 'invalid repository path component "foo_"', id="trailing-separator"),
    pytest.param("a..b", 'invalid repository path component "a..b"', id="double-dot"),
    pytest.param(
        "busybox:latest:v1",
        'invalid repository path component "busybox:latest"',
        id="two-tags",
    ),
]


@pytest.mark.parametrize(("text", "fragment"), INVALID)
def test_parse_invalid(text: str, fragment: str) -> None:
    with pytest.raises(ReferenceError) as info:
        parse(text)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_error_message_names_the_reference() -> None:
    with pytest.raises(ReferenceError) as info:
        parse("library/Busybox")
    assert str(info.value) == (
        'invalid reference "library/Busybox": repository name must be lowercase'
    )


def test_error_message_escapes_and_shortens() -> None:
    with pytest.raises(ReferenceError) as info:
        parse("a\x07" + "b" * 1000)
    message = str(info.value)
    assert "\\x07" in message and "\x07" not in message
    assert len(message) < 300


@pytest.mark.parametrize(
    ("text", "prefix", "name"),
    [
        pytest.param(
            "deadbeefcafe1234",
            "deadbeefcafe1234",
            LIB + "deadbeefcafe1234:latest",
            id="bare",
        ),
        pytest.param(HEX[:63], HEX[:63], f"{LIB}{HEX[:63]}:latest", id="bare-63"),
        pytest.param(
            "sha256:" + HEX[:12],
            HEX[:12],
            f"{LIB}sha256:{HEX[:12]}",
            id="with-algorithm",
        ),
    ],
)
def test_hex_ambiguity_keeps_the_name_reading(text: str, prefix: str, name: str) -> None:
    ref = parse(text)
    assert ref.kind is RefKind.ID_PREFIX
    assert ref.id_prefix == prefix
    assert ref.digest == ""
    assert ref.also_name is not None
    assert ref.also_name.kind is RefKind.NAME
    assert ref.also_name.raw == text
    assert str(ref.also_name) == name


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(D, id="full-id"),
        pytest.param(HEX, id="bare-full-id"),
        pytest.param("busybox", id="name"),
        pytest.param(HEX[: MIN_ID_PREFIX - 1], id="too-short-for-prefix"),
    ],
)
def test_no_name_reading_unless_prefix(text: str) -> None:
    assert parse(text).also_name is None


def test_accessors_for_a_name() -> None:
    ref = parse(f"localhost:5000/team/app:v1@{D}")
    assert ref.domain == "localhost:5000"
    assert ref.path == "team/app"
    assert ref.tagged() == "localhost:5000/team/app:v1"
    assert ref.digested() == f"localhost:5000/team/app@{D}"
    assert str(ref) == f"localhost:5000/team/app:v1@{D}"


def test_accessors_for_hub_and_ipv6() -> None:
    hub = parse("busybox")
    assert (hub.domain, hub.path) == ("docker.io", "library/busybox")
    assert hub.tagged() == "docker.io/library/busybox:latest"
    assert hub.digested() == ""
    v6 = parse("[::1]:5000/app")
    assert (v6.domain, v6.path) == ("[::1]:5000", "app")


def test_accessors_for_ids() -> None:
    for ref in (parse(D), parse(HEX[:16])):
        assert (ref.domain, ref.path, ref.tagged(), ref.digested()) == ("", "", "", "")


def test_reference_is_immutable_and_hashable() -> None:
    ref = parse("busybox")
    with pytest.raises(AttributeError):
        ref.tag = "other"  # type: ignore[misc]
    assert parse("busybox") == ref
    assert len({ref, parse("busybox"), parse("docker.io/library/busybox")}) == 2
    assert ref == Reference("busybox", RefKind.NAME, LIB + "busybox", "latest")


def test_errors_are_not_cached() -> None:
    for _ in range(2):
        with pytest.raises(ReferenceError):
            parse("Busybox")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("busybox", LIB + "busybox:latest", id="bare"),
        pytest.param("busybox:1.36", LIB + "busybox:1.36", id="tag"),
        pytest.param(f"x@{D}", f"{LIB}x@{D}", id="digest-no-latest"),
        pytest.param(f"x:1@{D}", f"{LIB}x:1@{D}", id="tag-and-digest"),
        pytest.param("index.docker.io/library/busybox:1", LIB + "busybox:1", id="legacy-domain"),
        pytest.param("localhost:5000/app:v1", "localhost:5000/app:v1", id="registry"),
        pytest.param("[::1]/app", "[::1]/app:latest", id="ipv6"),
        pytest.param("deadbeefcafe1234", LIB + "deadbeefcafe1234:latest", id="hex-is-a-name-here"),
    ],
)
def test_normalize_name(text: str, expected: str) -> None:
    assert normalize_name(text) == expected
    assert normalize_name(expected) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param(D, "image ID, not a repository name", id="full-id"),
        pytest.param(HEX, "image ID, not a repository name", id="bare-full-id"),
        pytest.param("Busybox", "must be lowercase", id="uppercase"),
        pytest.param("", "empty image reference", id="empty"),
        pytest.param("busybox@sha256:abc", "invalid digest", id="bad-digest"),
    ],
)
def test_normalize_name_invalid(text: str, fragment: str) -> None:
    with pytest.raises(ReferenceError, match=fragment):
        normalize_name(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(LIB + "busybox:latest", "busybox:latest", id="official-tagged"),
        pytest.param(LIB + "busybox", "busybox", id="official-untagged"),
        pytest.param("busybox", "busybox", id="already-familiar"),
        pytest.param("docker.io/foo/bar:1", "foo/bar:1", id="hub-user"),
        pytest.param(LIB + "foo/bar", "library/foo/bar", id="library-nested-kept"),
        pytest.param(f"index.docker.io/library/busybox@{D}", f"busybox@{D}", id="digest"),
        pytest.param("localhost:5000/app:v1", "localhost:5000/app:v1", id="other-registry"),
        pytest.param("gcr.io/project/app", "gcr.io/project/app", id="gcr"),
    ],
)
def test_familiar(text: str, expected: str) -> None:
    assert familiar(text) == expected
    assert normalize_name(familiar(text)) == normalize_name(text)


def test_familiar_refuses_ids_and_junk() -> None:
    with pytest.raises(ReferenceError):
        familiar(D)
    with pytest.raises(ReferenceError):
        familiar("Bad Name")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param(D, None, id="sha256"),
        pytest.param(D512, None, id="sha512"),
        pytest.param("sha256:abc", "64 hex characters, not 3", id="short"),
        pytest.param(f"sha256:{HEX.upper()}", "lowercase hex", id="uppercase"),
        pytest.param(f"sha512:{HEX}", "128 hex characters, not 64", id="sha512-short"),
        pytest.param("md5:abc", "unsupported digest algorithm", id="md5"),
        pytest.param(
            f"multihash+base58:{HEX}", "unsupported digest algorithm", id="registered-looking"
        ),
        pytest.param("sha256", 'expected "algorithm:encoded"', id="no-colon"),
        pytest.param(":abc", "malformed algorithm", id="no-algorithm"),
        pytest.param("sha256:", "malformed encoded part", id="no-encoded"),
        pytest.param(f" {D}", "malformed algorithm", id="leading-space"),
        pytest.param(f"{D}\n", "malformed encoded part", id="trailing-newline"),
    ],
)
def test_parse_digest(text: str, fragment: str | None) -> None:
    if fragment is None:
        assert parse_digest(text) == text
        assert is_valid_digest(text)
        return
    assert not is_valid_digest(text)
    with pytest.raises(ReferenceError) as info:
        parse_digest(text)
    assert str(info.value).startswith("invalid digest ")
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("a" + "-" * 4000 + "!", id="dashes"),
        pytest.param("a" * 4000 + "_", id="long-component"),
        pytest.param("a." * 2000 + "-/x", id="many-host-components"),
        pytest.param("[" + ":" * 4000 + "/x", id="colons"),
        pytest.param("a/" * 2000 + "/", id="many-path-components"),
        pytest.param("x:" + "a" * 4000, id="long-tag"),
    ],
)
def test_pathological_input_is_refused_quickly(text: str) -> None:
    started = time.perf_counter()
    with pytest.raises(ReferenceError):
        parse(text)
    assert time.perf_counter() - started < 0.5


_FUZZ_ALPHABET = "abcAB019._-_/:@[]+= \tsha256"


def _check_any(text: str) -> None:
    """Whatever the input, parse either refuses it with ReferenceError or round-trips."""
    try:
        ref = parse(text)
    except ReferenceError:
        return
    again = parse(str(ref))
    assert again.kind is ref.kind
    assert str(again) == str(ref)


def test_fuzz_only_reference_errors() -> None:
    rng = random.Random(20240607)
    for _ in range(3000):
        length = rng.randint(0, 40)
        _check_any("".join(rng.choice(_FUZZ_ALPHABET) for _ in range(length)))


def test_property_with_hypothesis() -> None:
    hypothesis = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")

    component = st.from_regex(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*", fullmatch=True)
    tags = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)

    def properties(parts: list[str], tag: str | None, junk: str) -> None:
        _check_any(junk)
        # A first component with a dot would be read as a registry host.
        hypothesis.assume(len(parts) == 1 or "." not in parts[0])
        path = "/".join(parts)
        hypothesis.assume(len(f"docker.io/library/{path}") <= NAME_TOTAL_LENGTH_MAX)
        ref = parse(path + ("" if tag is None else f":{tag}"))
        if ref.kind is RefKind.ID:  # 64 lowercase hex and no tag: an image ID
            return
        name = ref.also_name if ref.kind is RefKind.ID_PREFIX else ref
        assert name is not None and name.kind is RefKind.NAME
        assert name.tag == (tag or "latest")
        assert name.repository.endswith(path)
        assert str(parse(str(name))) == str(name)

    strategies = (
        st.lists(component, min_size=1, max_size=3),
        st.one_of(st.none(), tags),
        st.text(),
    )
    check = hypothesis.settings(max_examples=300, deadline=None)(
        hypothesis.given(*strategies)(properties)
    )
    check()
