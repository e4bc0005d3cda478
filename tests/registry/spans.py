"""A span-recording tracer provider written against the OpenTelemetry API only.

Enough for tests to see which spans a plugin makes, their attributes and
parents, without the SDK.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
from opentelemetry.util.types import Attributes

_ids = itertools.count(1)


@dataclass
class Recorded:
    name: str
    span_id: int
    parent_id: int | None
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    ended: bool = False


class RecordingSpan(trace.NonRecordingSpan):
    def __init__(self, record: Recorded, context: SpanContext, sink: list[Recorded]) -> None:
        super().__init__(context)
        self.record = record
        self._sink = sink

    def is_recording(self) -> bool:
        return True

    def set_attribute(self, key: str, value: Any) -> None:
        self.record.attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        self.record.attributes.update(attributes)

    def add_event(
        self, name: str, attributes: Attributes = None, timestamp: int | None = None
    ) -> None:
        self.record.events.append(name)

    def record_exception(self, exception: BaseException, *args: Any, **kwargs: Any) -> None:
        self.record.events.append(f"exception: {exception}")

    def end(self, end_time: int | None = None) -> None:
        self.record.ended = True
        self._sink.append(self.record)


class RecordingTracer(trace.Tracer):
    def __init__(self, sink: list[Recorded]) -> None:
        self.sink = sink

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[trace.Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        parent = trace.get_current_span(context).get_span_context()
        span_id = next(_ids)
        trace_id = parent.trace_id if parent.is_valid else span_id
        record = Recorded(
            name, span_id, parent.span_id if parent.is_valid else None, dict(attributes or {})
        )
        span_context = SpanContext(trace_id, span_id, False, TraceFlags(TraceFlags.SAMPLED))
        return RecordingSpan(record, span_context, self.sink)

    @contextlib.contextmanager
    def start_as_current_span(  # type: ignore[override]
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[trace.Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[trace.Span]:
        span = self.start_span(name, context, kind, attributes, links, start_time)
        with trace.use_span(span, end_on_exit=end_on_exit, record_exception=record_exception):
            yield span


class RecordingTracerProvider(trace.TracerProvider):
    def __init__(self) -> None:
        self.spans: list[Recorded] = []
        self._lock = threading.Lock()

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return RecordingTracer(self.spans)

    def named(self, name: str) -> list[Recorded]:
        return [s for s in self.spans if s.name == name]
