"""The OTLP/gRPC span exporter, with an encoder about three times quicker than the SDK's.

The SDK's exporter turns each batch into an ``ExportTraceServiceRequest``
in ``OTLPSpanExporter._translate_data``, a private method; at two spans
per CRI call that encoding is most of what exporting costs, and it runs on
the batch thread, under the GIL the serving threads want
(docs/tracing.md, "What it costs", has the figures with and without).
:func:`grpc_span_exporter` gives the SDK's exporter with that one method
replaced by :class:`SpanEncoder`, and the SDK's exporter as it is when
the method is not there (another SDK version). Should the encoder fail on
a batch, that batch and every later one go through the SDK's own encoding.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import SpanKind

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)


class SpanEncoder:
    """SDK ``ReadableSpan`` objects to the ``ExportTraceServiceRequest`` the SDK would build.

    The message is the one ``encode_spans`` of ``opentelemetry-exporter-otlp-
    proto-common`` builds (tests/test_tracing_otlp.py compares them). Where
    the SDK's time goes is building one ``KeyValue`` message per attribute
    per span and copying it in; most attributes repeat on every span (the
    RPC's, the plugin's, the image's), so each distinct attribute is encoded
    once, to the bytes of a span holding only it, and a span's attributes
    are merged in from those bytes in one call (up to :attr:`MAX_CACHED`
    distinct ones, then the cache starts over). Resources and scopes are
    encoded once. One encoder serves one export thread (the batch processor's).
    """

    MAX_CACHED = 4096

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
        from opentelemetry.proto.common.v1 import common_pb2
        from opentelemetry.proto.resource.v1 import resource_pb2
        from opentelemetry.proto.trace.v1 import trace_pb2

        self._pb_request: Any = trace_service_pb2.ExportTraceServiceRequest
        self._pb_span: Any = trace_pb2.Span
        self._pb_status: Any = trace_pb2.Status
        self._pb_kv: Any = common_pb2.KeyValue
        self._pb_any: Any = common_pb2.AnyValue
        self._pb_array: Any = common_pb2.ArrayValue
        self._pb_kvlist: Any = common_pb2.KeyValueList
        self._pb_scope: Any = common_pb2.InstrumentationScope
        self._pb_resource: Any = resource_pb2.Resource
        self._kinds = {kind: kind.value + 1 for kind in SpanKind}
        #: (key, type, value) -> the bytes of a Span holding that one attribute
        self._encoded: dict[tuple[str, type, Any], bytes] = {}
        #: the bytes of a Span holding an unset status (the SDK always sets one)
        self._unset = self._pb_span(status=self._pb_status()).SerializeToString()
        self._resources: dict[int, tuple[Any, Any]] = {}
        self._scopes: dict[int, tuple[Any, Any]] = {}

    def _value(self, value: Any) -> Any:
        any_value = self._pb_any
        if value is None:
            return any_value()
        if isinstance(value, bool):
            return any_value(bool_value=value)
        if isinstance(value, str):
            return any_value(string_value=value)
        if isinstance(value, int):
            return any_value(int_value=value)
        if isinstance(value, float):
            return any_value(double_value=value)
        if isinstance(value, bytes):
            return any_value(bytes_value=value)
        if isinstance(value, Sequence):
            return any_value(array_value=self._pb_array(values=[self._value(v) for v in value]))
        if isinstance(value, Mapping):
            return any_value(kvlist_value=self._pb_kvlist(values=self._messages(value)))
        raise TypeError(f"attribute value of type {type(value).__name__}")

    def _messages(self, attributes: Mapping[str, Any] | None) -> list[Any]:
        """``KeyValue`` messages (for resources, scopes, events, links: not per span)."""
        out = []
        for key, value in (attributes or {}).items():
            try:
                out.append(self._pb_kv(key=str(key), value=self._value(value)))
            except TypeError:
                log.debug("attribute %s not exported: unsupported value type", key)
        return out

    def _attribute_bytes(self, attributes: Mapping[str, Any]) -> bytes:
        cache = self._encoded
        out = []
        for key in attributes:
            value = attributes[key]
            ident = (key, value.__class__, value)
            try:
                out.append(cache[ident])
                continue
            except KeyError:
                pass
            except TypeError:  # an unhashable value (a list): encoded, not kept
                ident = None  # type: ignore[assignment]
            encoded = self._pb_span(attributes=self._messages({key: value})).SerializeToString()
            if ident is not None:
                if len(cache) >= self.MAX_CACHED:
                    cache.clear()
                cache[ident] = encoded
            out.append(encoded)
        return b"".join(out)

    def _resource(self, resource: Any) -> Any:
        found = self._resources.get(id(resource))
        if found is None or found[0] is not resource:
            found = (resource, self._pb_resource(attributes=self._messages(resource.attributes)))
            self._resources[id(resource)] = found
        return found[1]

    def _scope(self, scope: Any) -> Any:
        found = self._scopes.get(id(scope))
        if found is None or found[0] is not scope:
            encoded = (
                self._pb_scope(
                    name=scope.name,
                    version=scope.version,
                    attributes=self._messages(scope.attributes),
                )
                if scope is not None
                else self._pb_scope()
            )
            found = (scope, encoded)
            self._scopes[id(scope)] = found
        return found[1]

    def _span(self, add: Any, span: Any) -> None:
        """Build ``span`` in place in a ``ScopeSpans.spans`` (``add``): no copies."""
        ctx = span.context
        parent = span.parent
        flags = 0x100  # SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
        if parent is not None and parent.is_remote:
            flags |= 0x200  # SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
        trace_state = ctx.trace_state
        pb = add(
            trace_id=ctx.trace_id.to_bytes(16, "big"),
            span_id=ctx.span_id.to_bytes(8, "big"),
            trace_state=(
                ",".join(f"{k}={v}" for k, v in trace_state.items())
                if trace_state is not None
                else None
            ),
            parent_span_id=parent.span_id.to_bytes(8, "big") if parent else None,
            name=span.name,
            kind=self._kinds[span.kind],
            start_time_unix_nano=span.start_time,
            end_time_unix_nano=span.end_time,
            dropped_attributes_count=span.dropped_attributes,
            dropped_events_count=span.dropped_events,
            dropped_links_count=span.dropped_links,
            flags=flags,
        )
        status = span.status
        if status.status_code.value or status.description:
            encoded_status = self._pb_span(
                status=self._pb_status(code=status.status_code.value, message=status.description)
            ).SerializeToString()
        else:
            encoded_status = self._unset
        attributes = span.attributes
        pb.MergeFromString(
            (self._attribute_bytes(attributes) if attributes else b"") + encoded_status
        )
        for e in span.events:
            event = pb.events.add(
                name=e.name,
                time_unix_nano=e.timestamp,
                dropped_attributes_count=e.dropped_attributes,
            )
            event.attributes.extend(self._messages(e.attributes))
        for link in span.links:
            lctx = link.context
            pb_link = pb.links.add(
                trace_id=lctx.trace_id.to_bytes(16, "big"),
                span_id=lctx.span_id.to_bytes(8, "big"),
                dropped_attributes_count=link.dropped_attributes,
                flags=0x100 | (0x200 if lctx.is_remote else 0),
            )
            pb_link.attributes.extend(self._messages(link.attributes))

    def encode(self, spans: Sequence[Any]) -> Any:
        """The ``ExportTraceServiceRequest`` for SDK ``ReadableSpan`` objects."""
        # resource -> scope -> spans, in order of first appearance (as the SDK's)
        groups: dict[int, tuple[Any, dict[int, tuple[Any, list[Any]]]]] = {}
        for span in spans:
            resource, scope = span.resource, span.instrumentation_scope or None
            by_scope = groups.get(id(resource))
            if by_scope is None:
                by_scope = groups[id(resource)] = (resource, {})
            group = by_scope[1].get(id(scope))
            if group is None:
                group = by_scope[1][id(scope)] = (scope, [])
            group[1].append(span)
        request = self._pb_request()
        for resource, scopes in groups.values():
            resource_spans = request.resource_spans.add(schema_url=resource.schema_url)
            resource_spans.resource.CopyFrom(self._resource(resource))
            for scope, members in scopes.values():
                scope_spans = resource_spans.scope_spans.add(
                    schema_url=scope.schema_url if scope is not None else None
                )
                scope_spans.scope.CopyFrom(self._scope(scope))
                add = scope_spans.spans.add
                for span in members:
                    self._span(add, span)
        return request


#: The SDK method the quicker exporter replaces.
_TRANSLATE = "_translate_data"


def grpc_span_exporter(
    endpoint: str | None, headers: Mapping[str, str] | None, timeout: float | None
) -> SpanExporter:
    """The SDK's OTLP/gRPC span exporter; with :class:`SpanEncoder` when the SDK allows.

    Arguments left None are the SDK's to take from ``OTEL_EXPORTER_OTLP_*``.
    """
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    kwargs: dict[str, Any] = {
        "endpoint": endpoint,
        "headers": dict(headers) if headers else None,
        "timeout": timeout,
    }
    if not callable(getattr(OTLPSpanExporter, _TRANSLATE, None)):
        log.info("tracing: this SDK's OTLP exporter has no %s: its own encoder is used", _TRANSLATE)
        return OTLPSpanExporter(**kwargs)
    stock = getattr(OTLPSpanExporter, _TRANSLATE)

    class QuickSpanExporter(OTLPSpanExporter):
        encoder: SpanEncoder | None = SpanEncoder()

        def _translate_data(self, data: Sequence[Any]) -> Any:
            encoder = self.encoder
            if encoder is not None:
                try:
                    return encoder.encode(data)
                except Exception:
                    log.exception("tracing: the span encoder failed; the SDK's encodes from now on")
                    self.encoder = None
            return stock(self, data)

    return QuickSpanExporter(**kwargs)
