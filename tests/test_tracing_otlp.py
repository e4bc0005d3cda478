"""The OTLP/gRPC span exporter: crishim's encoder builds the SDK's message, or steps aside.

What the encoder saves is measured by ``bench/bench_tracing.py --sdk-encoder``
(docs/tracing.md, "What it costs").
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc import trace_exporter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    TraceState,
)

from crishim.config import parse_settings
from crishim.telemetry.otlp import SpanEncoder, grpc_span_exporter
from crishim.telemetry.setup import make_resource, make_span_exporter, resolve_tracing
from tests.telemetry_support import DEMO

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"

pytestmark = pytest.mark.usefixtures("no_otel_env")


def _spans() -> Sequence[ReadableSpan]:
    """Spans of two scopes, with every kind of attribute, a remote parent, a link, an error."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=make_resource("encoder-test"))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    remote = SpanContext(
        int(TRACE_ID, 16),
        int(PARENT_ID, 16),
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("vendor", "x")]),
    )
    parent = trace.set_span_in_context(NonRecordingSpan(remote))
    for scope in ("one", "two"):
        tracer = provider.get_tracer(scope, "1.0")
        with tracer.start_as_current_span(
            "server", context=parent, kind=SpanKind.SERVER, attributes={"a": 1, "b": "x"}
        ) as span:
            span.set_attributes({"f": 1.5, "t": True, "seq": ["p", "q"], "ints": [1, 2]})
            with tracer.start_as_current_span("child", links=[Link(remote, {"l": "v"})]):
                pass
            try:
                raise ValueError("boom")
            except ValueError as exc:
                span.record_exception(exc)
                span.set_status(StatusCode.ERROR, "it broke")
    spans = exporter.get_finished_spans()
    assert len(spans) == 4
    return spans


def test_span_encoder_builds_the_sdk_encoders_message() -> None:
    spans = _spans()
    encoder = SpanEncoder()
    for _ in range(2):  # the second time from the caches
        assert encoder.encode(spans) == encode_spans(spans)
    encoder.MAX_CACHED = 3
    assert encoder.encode(spans) == encode_spans(spans)


def test_the_grpc_exporter_uses_the_span_encoder() -> None:
    config = {"backends": [DEMO], "tracing": {"exporter": "otlp-grpc"}}
    setup = resolve_tracing(parse_settings(config).tracing, {})
    exporter = make_span_exporter(setup)
    assert isinstance(exporter, trace_exporter.OTLPSpanExporter)
    assert isinstance(getattr(exporter, "encoder", None), SpanEncoder)
    spans = _spans()
    assert exporter._translate_data(spans) == encode_spans(spans)
    exporter.shutdown()


class _OtherSdkExporter(SpanExporter):
    """An SDK whose OTLP/gRPC exporter has no ``_translate_data`` to replace."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def test_without_the_private_method_the_sdks_exporter_is_used_as_it_is(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(trace_exporter, "OTLPSpanExporter", _OtherSdkExporter)
    with caplog.at_level(logging.INFO, "crishim"):
        exporter = grpc_span_exporter("http://127.0.0.1:4317", {"x-tenant": "t1"}, 3.0)
    assert type(exporter) is _OtherSdkExporter
    assert exporter.kwargs == {
        "endpoint": "http://127.0.0.1:4317",
        "headers": {"x-tenant": "t1"},
        "timeout": 3.0,
    }
    assert "its own encoder is used" in caplog.text


def test_an_encoder_failure_hands_this_and_later_batches_to_the_sdk(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exporter: Any = grpc_span_exporter(None, None, None)

    class Broken(SpanEncoder):
        def encode(self, spans: Sequence[Any]) -> Any:
            raise AttributeError("a ReadableSpan of another shape")

    exporter.encoder = Broken()
    spans = _spans()
    with caplog.at_level(logging.ERROR, "crishim"):
        assert exporter._translate_data(spans) == encode_spans(spans)
    assert exporter.encoder is None
    assert "the span encoder failed" in caplog.text
    assert exporter._translate_data(spans) == encode_spans(spans)
    exporter.shutdown()
