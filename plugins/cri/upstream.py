"""Between crishim and an upstream CRI image service: references, records, errors.

What the ``cri`` backend sends upstream (references and IDs as the
upstream reads them, the pull request with its auth and pod, the trace
context, a timeout no later than the caller's deadline) and what it makes
of the answers (records, and errors as :mod:`crishim.errors` exceptions
with the pull's secrets blanked out).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterable, Sequence
from types import MappingProxyType
from typing import Any

import grpc
from opentelemetry import propagate

from crishim import reference
from crishim.cri.runtime.v1 import api_pb2
from crishim.cri_messages import auth_config
from crishim.errors import (
    BackendError,
    CrishimError,
    DataLoss,
    DeadlineExceeded,
    ImageNotFound,
    InvalidRequest,
    NotSupported,
    PermissionDenied,
    TooLarge,
    Unauthenticated,
    Unavailable,
)
from crishim.model import NO_ANNOTATIONS, ImageRecord
from crishim.reference import Reference, RefKind
from crishim.types import PullAuth, PullRequest

log = logging.getLogger(__name__)

#: Upstream error messages are passed on up to this many characters.
MAX_DETAILS = 400
#: A caller's deadline further away than this is no deadline: grpcio reports
#: a call without one as ~9.2e18 seconds remaining, which a gRPC timeout
#: cannot carry.
NO_DEADLINE_SECONDS = 365 * 24 * 3600.0

#: Seconds of a pull's deadline kept back for the answer to come back.
ANSWER_MARGIN = 0.02

_HEX64 = re.compile(r"[0-9a-f]{64}")

#: Upstream codes that say what crishim's own errors say.
_DOMAIN_ERRORS: dict[Any, type[CrishimError]] = {
    grpc.StatusCode.NOT_FOUND: ImageNotFound,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.RESOURCE_EXHAUSTED: TooLarge,
    grpc.StatusCode.DATA_LOSS: DataLoss,
    grpc.StatusCode.FAILED_PRECONDITION: NotSupported,
}

#: Words of gRPC's own messages when the call never reached a server (or
#: the connection broke): the upstream is unreachable rather than saying
#: it is unavailable itself.
_TRANSPORT_WORDS = (
    "failed to connect",
    "connection refused",
    "no such file",
    "socket closed",
    "connection reset",
    "broken pipe",
    "connect failed",
    "permission denied",
    "channel closed",
    "not connected",
)


def upstream_reference(ref: Reference) -> str:
    """The reference as the upstream is asked it.

    Names go normalised (``docker.io/library/busybox:latest``). A sha256
    image ID goes as its bare 64 hex characters, which CRI-O (whose IDs are
    bare hex), containerd and crishim all read as an ID.
    """
    if ref.kind is RefKind.ID:
        algorithm, _, encoded = ref.digest.partition(":")
        return encoded if algorithm == "sha256" else ref.digest
    if ref.kind is RefKind.ID_PREFIX:
        return ref.id_prefix
    return str(ref)


def upstream_id(image_id: str) -> str:
    """An image ID as the upstream is given it (bare hex for sha256)."""
    algorithm, _, encoded = image_id.partition(":")
    return encoded if algorithm == "sha256" and _HEX64.fullmatch(encoded) else image_id


def record_id(raw: str) -> str:
    """An upstream image ID as crishim reports it: ``sha256:<hex>`` (CRI-O's are bare hex)."""
    return "sha256:" + raw if _HEX64.fullmatch(raw) else raw


def user_of(image: api_pb2.Image) -> str:
    """``uid``/``username`` back as the config ``User`` that crishim's split_user reads.

    A uid gives its digits (``0`` stays root), a username itself; neither
    gives ``""``. The CRI reports one of the two, never the group.
    """
    if image.HasField("uid") and image.uid.value >= 0:
        return str(image.uid.value)
    return image.username


def names(raw: Iterable[str], kind: str) -> tuple[str, ...]:
    """Upstream repo_tags or repo_digests, normalised; unparsable ones dropped.

    CRI-O lists ``<none>:<none>``-style placeholders for untagged images;
    they name nothing and are left out.
    """
    out: dict[str, None] = {}
    for text in raw:
        try:
            ref = reference.parse(text)
        except reference.ReferenceError:
            log.debug("ignoring upstream %s %r: not a reference", kind, text)
            continue
        if ref.kind is not RefKind.NAME:
            ref = ref.also_name if ref.also_name is not None else ref
        name = ref.tagged() if kind == "tag" else ref.digested()
        if name:
            out[name] = None
    return tuple(out)


def shorten(text: str) -> str:
    """An upstream message on one line, at most :data:`MAX_DETAILS` characters."""
    text = " ".join(text.split())
    return text if len(text) <= MAX_DETAILS else text[: MAX_DETAILS - 3] + "..."


def redact(text: str, secrets: Sequence[str]) -> str:
    """``text`` with each of ``secrets`` replaced by ``<redacted>``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    return text


def secrets_of(auth: PullAuth | None) -> tuple[str, ...]:
    """What of a pull's auth must never be repeated (an upstream may echo it)."""
    if auth is None:
        return ()
    values = (auth.password, auth.auth, auth.identity_token, auth.registry_token)
    return tuple(v for v in values if v)


def upstream_timeout(remaining: float) -> float:
    """The gRPC timeout that makes the upstream's deadline no later than ours.

    gRPC sends a timeout rounded *up* to about three significant digits
    (``grpc-timeout``: 10 ms steps below 10 s, 100 ms below 100 s...), so
    one step is taken off, and :data:`ANSWER_MARGIN` for the way back.
    """
    step = 0.001 if remaining < 1 else 10.0 ** (math.floor(math.log10(remaining)) - 2)
    return remaining - step - ANSWER_MARGIN


def real_deadline(deadline: float | None) -> float | None:
    """A pull's ``time.monotonic()`` deadline, or None when it has none worth the name."""
    if deadline is None or deadline - time.monotonic() > NO_DEADLINE_SECONDS:
        return None
    return deadline


def trace_metadata() -> tuple[tuple[str, str], ...]:
    """The current trace context (``traceparent``, ``tracestate``, ``baggage``) as metadata."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return tuple(carrier.items())


def pull_message(request: PullRequest) -> api_pb2.PullImageRequest:
    """The PullImageRequest the upstream is sent: the caller's image spec, auth and pod."""
    pull = api_pb2.PullImageRequest(
        image=api_pb2.ImageSpec(
            image=str(request.ref),
            annotations=dict(request.annotations),
            runtime_handler=request.runtime_handler,
            user_specified_image=request.user_specified_image,
        )
    )
    if request.auth:
        pull.auth.CopyFrom(auth_config(request.auth))
    if request.pod is not None:
        # the upstream runtime's own policies see the pod kubelet named
        pod = request.pod
        pull.sandbox_config.metadata.name = pod.name
        pull.sandbox_config.metadata.namespace = pod.namespace
        pull.sandbox_config.metadata.uid = pod.uid
        pull.sandbox_config.annotations.update(pod.annotations)
        pull.sandbox_config.labels.update(pod.labels)
    return pull


def record_of(image: api_pb2.Image, endpoint: str) -> ImageRecord:
    """An upstream image as crishim reports it (``source`` and ``upstream``: ``endpoint``)."""
    annotations = dict(image.spec.annotations)
    return ImageRecord(
        id=record_id(image.id),
        repo_tags=names(image.repo_tags, "tag"),
        repo_digests=names(image.repo_digests, "digest"),
        size=image.size,
        user=user_of(image),
        annotations=MappingProxyType(annotations) if annotations else NO_ANNOTATIONS,
        source=endpoint,
        pinned=image.pinned,
        upstream=endpoint,
    )


def error_for(
    exc: grpc.RpcError,
    method: str,
    timeout: float,
    secrets: Sequence[str],
    *,
    backend: str,
    endpoint: str,
) -> CrishimError:
    """The domain error for an upstream status, naming the backend and the endpoint."""
    code = exc.code()
    details = shorten(redact(exc.details() or "", secrets)) or "no details"
    where = f"cri backend {backend}: upstream {endpoint}"
    if code is grpc.StatusCode.UNAVAILABLE:
        lowered = details.lower()
        state = (
            "is unreachable" if any(w in lowered for w in _TRANSPORT_WORDS) else "is unavailable"
        )
        return Unavailable(f"{where} {state}: {details}")
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"{where} did not answer {method} within {timeout:.3g}s")
    if code is grpc.StatusCode.CANCELLED:
        # crishim did not cancel it (pulls handle their own cancellation)
        return Unavailable(f"{where} cancelled {method}: {details}")
    if code is grpc.StatusCode.UNIMPLEMENTED:
        return BackendError(
            backend,
            f"upstream {endpoint} does not serve runtime.v1.ImageService/{method} "
            f"(is it a CRI v1 image endpoint?): {details}",
        )
    kind = _DOMAIN_ERRORS.get(code)
    if kind is not None:
        return kind(f"{where}: {method}: {details}")
    name = getattr(code, "name", str(code))
    return BackendError(backend, f"upstream {endpoint}: {method} failed: {name}: {details}")
