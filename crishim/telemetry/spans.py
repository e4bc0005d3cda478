"""Spans: the server span of every CRI call and a child span per plugin call.

* :class:`ServerSpans`: the gRPC server interceptor making the SERVER span
  (``runtime.v1.ImageService/<Method>``, the RPC semantic conventions'
  ``rpc.*`` attributes), its parent taken from the caller's ``traceparent``
  metadata through the configured propagators;
* :class:`PluginTelemetry`: what the catalog wraps each plugin call in (a
  child span saying which plugin, hit/miss/error; a hit/miss/error count).

The attributes and the servicer's helpers are :mod:`crishim.telemetry.attributes`.

The interceptor is crishim's own rather than
``opentelemetry-instrumentation-grpc``'s: the same span (name, kind,
attributes, status rules) at about half the cost per call (docs/tracing.md,
"What it costs"), because it needs no wrapped servicer context: the status
is read from the call's own context once the servicer is done.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from crishim import __version__
from crishim.telemetry import SCOPE
from crishim.telemetry.attributes import (
    ATTR_GRPC_STATUS,
    ATTR_OPERATION,
    ATTR_OUTCOME,
    ATTR_PLUGIN_KIND,
    ATTR_PLUGIN_NAME,
    ATTR_PLUGIN_TYPE,
    OUTCOME_ALLOWED,
    OUTCOME_DENIED,
    OUTCOME_ERROR,
    OUTCOME_HIDDEN,
    OUTCOME_HIT,
    OUTCOME_MISS,
    OUTCOME_VISIBLE,
    OUTCOMES,
    fail_span,
    record_error,
)
from crishim.telemetry.calls import CallObserver

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.context import Context
    from opentelemetry.metrics import Counter

T = TypeVar("T")

# -- the server span -------------------------------------------------------------------------

#: The codes a server is to blame for: the span's status is ERROR for them
#: (the RPC semantic conventions); for the others (NOT_FOUND,
#: INVALID_ARGUMENT...) it stays unset.
SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


class ServerSpans(CallObserver):
    """A SERVER span around every CRI call (not the health service's).

    Named ``runtime.v1.ImageService/<Method>`` with ``rpc.system``,
    ``rpc.service``, ``rpc.method``, ``rpc.grpc.status_code`` and
    ``rpc.user_agent``; a child of the caller's span when its metadata
    carries one (``traceparent``, ``tracestate``, ``baggage``: whatever
    the global propagators read), so the caller's sampling decision holds.
    The span is current while the servicer runs. Its status is ERROR, with
    the message, for :data:`SERVER_ERRORS`; the exception itself is recorded
    by the servicer (:func:`~crishim.telemetry.attributes.record_error`), once.
    """

    def __init__(self, tracer_provider: trace.TracerProvider) -> None:
        super().__init__()
        self._tracer = tracer_provider.get_tracer(SCOPE, __version__)
        self._fields = frozenset(propagate.get_global_textmap().fields)
        #: method -> (span name, its attributes)
        self._methods: dict[str, tuple[str, dict[str, Any]]] = {}

    def _describe(self, method: str) -> tuple[str, dict[str, Any]]:
        found = self._methods.get(method)
        if found is None:
            name = method.lstrip("/")
            service, _, short = name.rpartition("/")
            attributes = {
                "rpc.system": "grpc",
                "rpc.service": service,
                "rpc.method": short,
                ATTR_GRPC_STATUS: 0,
            }
            found = self._methods[method] = (name, attributes)
        return found

    def start(self, method: str, context: grpc.ServicerContext) -> tuple[Span, Token[Context]]:
        name, attributes = self._describe(method)
        carrier: dict[str, str] | None = None
        agent = None
        fields = self._fields
        for key, value in context.invocation_metadata() or ():
            if key == "user-agent":
                agent = value
            elif key in fields:
                if carrier is None:
                    carrier = {}
                carrier[key] = value
        parent = propagate.extract(carrier) if carrier is not None else None
        if agent is not None:
            attributes = {**attributes, "rpc.user_agent": agent}
        span = self._tracer.start_span(name, parent, kind=SpanKind.SERVER, attributes=attributes)
        return span, otel_context.attach(trace.set_span_in_context(span, parent))

    def end(
        self,
        state: tuple[Span, Token[Context]],
        method: str,
        context: grpc.ServicerContext,
        code: grpc.StatusCode | None,
    ) -> None:
        span, token = state
        otel_context.detach(token)
        if code is not None and code is not grpc.StatusCode.OK:
            span.set_attribute(ATTR_GRPC_STATUS, code.value[0])
            if code in SERVER_ERRORS:
                details = context.details()
                if isinstance(details, bytes):
                    details = details.decode(errors="replace")
                span.set_status(Status(StatusCode.ERROR, f"{code}:{details or code.value[1]}"))
        span.end()

    def raised(self, exc: BaseException) -> None:
        record_error(exc)  # the span is still current


def server_interceptors(
    tracer_provider: trace.TracerProvider | None,
    rpc_metrics: grpc.ServerInterceptor | None = None,
) -> list[grpc.ServerInterceptor]:
    """The interceptors for the gRPC server: none at all when telemetry is off.

    The span interceptor is outermost, so the RPC metrics (and everything
    the servicer does) run inside the server span.
    """
    interceptors: list[grpc.ServerInterceptor] = []
    if tracer_provider is not None:
        interceptors.append(ServerSpans(tracer_provider))
    if rpc_metrics is not None:
        interceptors.append(rpc_metrics)
    return interceptors


# -- plugin spans (the catalog) ---------------------------------------------------------------


def _outcome(result: object) -> str:
    hidden = getattr(result, "hidden", None)  # a filter's Verdict
    if hidden is not None:
        return OUTCOME_HIDDEN if hidden else OUTCOME_VISIBLE
    allowed = getattr(result, "allowed", None)  # a pull policy's Decision
    if allowed is not None:
        return OUTCOME_ALLOWED if allowed else OUTCOME_DENIED
    if result is None:
        return OUTCOME_MISS
    if isinstance(result, Sequence) and not isinstance(result, str) and not result:
        return OUTCOME_MISS
    return OUTCOME_HIT


class PluginTelemetry:
    """Spans and counts for every plugin call; the catalog wraps calls in it.

    ``wrap`` returns a function that calls the plugin inside a child span of
    the span current where ``wrap`` was called (so a call moved to another
    thread still lands under its RPC) and counts the outcome.
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        calls: Counter | None = None,
    ) -> None:
        self.tracer = (
            tracer_provider.get_tracer(SCOPE, __version__) if tracer_provider is not None else None
        )
        self.calls = calls
        self._attrs: dict[
            tuple[str, str, str, str], tuple[str, dict[str, str], dict[str, Any]]
        ] = {}

    def _attributes(
        self, kind: str, name: str, type_: str, what: str
    ) -> tuple[str, dict[str, str], dict[str, Any]]:
        """The span name, its attributes, and the count's attributes by outcome (made once)."""
        key = (kind, name, type_, what)
        found = self._attrs.get(key)
        if found is None:
            attrs = {
                ATTR_PLUGIN_KIND: kind,
                ATTR_PLUGIN_NAME: name,
                ATTR_PLUGIN_TYPE: type_,
                ATTR_OPERATION: what,
            }
            by_outcome = {outcome: {**attrs, ATTR_OUTCOME: outcome} for outcome in OUTCOMES}
            found = self._attrs[key] = (f"{what} {name}", attrs, by_outcome)
        return found

    def wrap(
        self,
        name: str,
        type_: str,
        what: str,
        fn: Callable[[Any], T],
        kind: str = "backend",
    ) -> Callable[[Any], T]:
        """``fn`` observed: a span named ``"<what> <name>"``, an outcome count."""
        tracer, calls = self.tracer, self.calls
        span_name, attrs, counted = self._attributes(kind, name, type_, what)
        parent = otel_context.get_current() if tracer is not None else None
        if tracer is not None:
            # a caller (kubelet, or our sampler) decided not to sample this
            # trace: no child span either (the parent-based samplers would
            # drop it anyway, after paying for it)
            caller = trace.get_current_span(parent).get_span_context()
            if caller.is_valid and not caller.trace_flags.sampled:
                tracer = None

        if tracer is None:
            if calls is None:
                return fn

            def counted_call(target: Any) -> T:
                outcome = OUTCOME_ERROR
                try:
                    result = fn(target)
                    outcome = _outcome(result)
                    return result
                finally:
                    calls.add(1, counted[outcome])

            return counted_call

        def observed(target: Any) -> T:
            span = tracer.start_span(span_name, parent, kind=SpanKind.INTERNAL, attributes=attrs)
            token = otel_context.attach(trace.set_span_in_context(span, parent))
            outcome = OUTCOME_ERROR
            try:
                result = fn(target)
                outcome = _outcome(result)
                return result
            except BaseException as exc:
                fail_span(span, exc)
                raise
            finally:
                otel_context.detach(token)
                span.set_attribute(ATTR_OUTCOME, outcome)
                span.end()
                if calls is not None:
                    calls.add(1, counted[outcome])

        return observed


def plugin_telemetry(
    tracer_provider: trace.TracerProvider | None, calls: Counter | None
) -> PluginTelemetry | None:
    """What the catalog gets: None (no wrapping at all) when both signals are off."""
    if tracer_provider is None and calls is None:
        return None
    return PluginTelemetry(tracer_provider, calls)
