"""Span attributes: their names, and the helpers that set them on the current span.

* the attribute names and plugin outcomes crishim's spans carry (docs/tracing.md);
* :func:`note_reference`, :func:`note_answer`, :func:`note_answers`,
  :func:`record_error`: one-line helpers for the servicer; with tracing off
  they return on a module counter (:func:`provider_started`);
* :func:`fail_span`: an exception recorded on the one span where it was raised;
* :func:`safe_url`: a URL without what must never be in telemetry.

Never put credentials, auth headers or URL query strings in an attribute,
an event or a status message; :func:`safe_url` strips them from URLs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

if TYPE_CHECKING:
    from crishim.model import Answer
    from crishim.reference import Reference

# -- attribute names -----------------------------------------------------------------------

#: The image reference exactly as the caller sent it (clipped to 512 characters).
ATTR_REFERENCE = "crishim.image.reference"
#: The reference normalised (``docker.io/library/busybox:latest``, a full ID, an ID prefix).
ATTR_NORMALIZED = "crishim.image.normalized"
#: The image ID (config digest) of the image found.
ATTR_IMAGE_ID = "crishim.image.id"
#: Whether the image was found (ImageStatus, RemoveImage).
ATTR_FOUND = "crishim.image.found"
#: How many images a list answered.
ATTR_IMAGE_COUNT = "crishim.image.count"
#: The configured name of the backend that answered (server span).
ATTR_BACKEND = "crishim.backend.name"
#: The configured name of the backend or filter a plugin span calls.
ATTR_PLUGIN_NAME = "crishim.plugin.name"
#: Its type (``oci-dir``, ``embedded-filter``).
ATTR_PLUGIN_TYPE = "crishim.plugin.type"
#: backend or filter.
ATTR_PLUGIN_KIND = "crishim.plugin.kind"
#: The plugin method called: get_image, match_id_prefix, list_images, pull_image, ...
ATTR_OPERATION = "crishim.plugin.operation"
#: Backends: hit (answered something), miss (nothing) or error (raised).
#: Filters: visible, hidden or error.
ATTR_OUTCOME = "crishim.plugin.outcome"
#: The gRPC status code of the call, as a number (RPC semantic conventions).
ATTR_GRPC_STATUS = "rpc.grpc.status_code"

OUTCOME_HIT = "hit"
OUTCOME_MISS = "miss"
OUTCOME_ERROR = "error"
OUTCOME_VISIBLE = "visible"
OUTCOME_HIDDEN = "hidden"
OUTCOME_ALLOWED = "allowed"
OUTCOME_DENIED = "denied"
OUTCOMES = (
    OUTCOME_HIT,
    OUTCOME_MISS,
    OUTCOME_ERROR,
    OUTCOME_VISIBLE,
    OUTCOME_HIDDEN,
    OUTCOME_ALLOWED,
    OUTCOME_DENIED,
)

_MAX_REFERENCE = 512
#: Set on an exception once a span recorded it, so enclosing spans do not again.
_RECORDED = "_crishim_span_recorded"

#: How many tracer providers are live in this process. While none is, the
#: servicer's helpers return at once: with tracing off they cost a global
#: lookup, not a context lookup.
_live_providers = 0


def provider_started() -> None:
    """A tracer provider is live (the servicer's helpers start looking at spans)."""
    global _live_providers
    _live_providers += 1


def provider_stopped() -> None:
    global _live_providers
    _live_providers -= 1


def _mark_recorded(exc: BaseException) -> None:
    with contextlib.suppress(AttributeError, TypeError):
        setattr(exc, _RECORDED, True)


def _is_recorded(exc: BaseException) -> bool:
    return getattr(exc, _RECORDED, False) or (
        exc.__cause__ is not None and getattr(exc.__cause__, _RECORDED, False)
    )


def fail_span(span: Span, exc: BaseException) -> None:
    """Mark ``span`` failed; the exception itself is recorded on one span only."""
    if not span.is_recording():
        return
    if not _is_recorded(exc):
        span.record_exception(exc)
        _mark_recorded(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


# -- the servicer's helpers (cheap when the span is not recording) ---------------------------


def note_reference(text: str) -> None:
    """The reference as the caller sent it, on the RPC's span."""
    if not _live_providers:
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(ATTR_REFERENCE, text[:_MAX_REFERENCE])


def note_answer(ref: Reference, answer: Answer | None) -> None:
    """The normalised reference, the image ID and the backend that answered."""
    if not _live_providers:
        return
    span = trace.get_current_span()
    if span.is_recording():
        if answer is None:
            span.set_attributes({ATTR_NORMALIZED: str(ref)[:_MAX_REFERENCE], ATTR_FOUND: False})
        else:
            span.set_attributes(
                {
                    ATTR_NORMALIZED: str(ref)[:_MAX_REFERENCE],
                    ATTR_FOUND: True,
                    ATTR_IMAGE_ID: answer.record.id,
                    ATTR_BACKEND: answer.backend,
                }
            )


def note_answers(answers: Sequence[Answer]) -> None:
    """How many images a list answered."""
    if not _live_providers:
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(ATTR_IMAGE_COUNT, len(answers))


def record_error(exc: BaseException) -> None:
    """An error the RPC answers with, recorded on its span (once in the trace).

    The status itself is set by the interceptor from the gRPC code.
    """
    span = trace.get_current_span()
    if span.is_recording() and not _is_recorded(exc):
        span.record_exception(exc)
        _mark_recorded(exc)


def safe_url(url: str) -> str:
    """``url`` without user info, query string or fragment: safe for an attribute."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if port is not None:
        netloc = f"{netloc}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
