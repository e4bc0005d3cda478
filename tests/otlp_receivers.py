"""OTLP receivers on 127.0.0.1 for tests: what a collector would get.

* :class:`GrpcReceiver`: ``TraceService`` and ``MetricsService`` servers
  built on the generated code of ``opentelemetry-proto``;
* :class:`HttpReceiver`: ``POST /v1/traces`` and ``POST /v1/metrics`` with
  ``application/x-protobuf`` bodies (gzip or not).

Both keep every request (decoded, and the raw bytes, so a test can search
them for strings that must not be there) and the request headers.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as a collector sees it, attributes flattened to Python values."""

    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    status_code: int
    status_message: str
    resource: dict[str, Any]
    scope: str


def _value(v: common_pb2.AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind) if kind else None


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


def spans_of(request: trace_service_pb2.ExportTraceServiceRequest) -> list[ReceivedSpan]:
    out = []
    for rs in request.resource_spans:
        resource = _attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(
                    ReceivedSpan(
                        name=s.name,
                        kind=s.kind,
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        attributes=_attrs(s.attributes),
                        events=[(e.name, _attrs(e.attributes)) for e in s.events],
                        status_code=s.status.code,
                        status_message=s.status.message,
                        resource=resource,
                        scope=ss.scope.name,
                    )
                )
    return out


def metric_names_of(request: metrics_service_pb2.ExportMetricsServiceRequest) -> set[str]:
    return {
        m.name for rm in request.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
    }


SPAN_KIND_SERVER = trace_pb2.Span.SPAN_KIND_SERVER
SPAN_KIND_INTERNAL = trace_pb2.Span.SPAN_KIND_INTERNAL
STATUS_ERROR = trace_pb2.Status.STATUS_CODE_ERROR


@dataclass
class _Store:
    traces: list[trace_service_pb2.ExportTraceServiceRequest] = field(default_factory=list)
    metrics: list[metrics_service_pb2.ExportMetricsServiceRequest] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, message: Any, raw: bytes, headers: Mapping[str, str]) -> None:
        with self.lock:
            (self.traces if kind == "traces" else self.metrics).append(message)
            self.raw.append(raw)
            self.headers.append({k.lower(): v for k, v in headers.items()})

    def spans(self) -> list[ReceivedSpan]:
        with self.lock:
            return [s for r in self.traces for s in spans_of(r)]

    def metric_names(self) -> set[str]:
        with self.lock:
            return {n for r in self.metrics for n in metric_names_of(r)}

    def raw_bytes(self) -> bytes:
        with self.lock:
            return b"\n".join(self.raw)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return predicate()


class GrpcReceiver(_Store):
    """An OTLP/gRPC collector stand-in; ``endpoint`` is ``http://127.0.0.1:<port>``."""

    def __init__(self) -> None:
        super().__init__()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        store = self

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(
                self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
            ) -> trace_service_pb2.ExportTraceServiceResponse:
                store.add(
                    "traces",
                    request,
                    request.SerializeToString(),
                    dict(context.invocation_metadata()),
                )
                return trace_service_pb2.ExportTraceServiceResponse()

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(
                self, request: metrics_service_pb2.ExportMetricsServiceRequest, context: Any
            ) -> metrics_service_pb2.ExportMetricsServiceResponse:
                store.add(
                    "metrics",
                    request,
                    request.SerializeToString(),
                    dict(context.invocation_metadata()),
                )
                return metrics_service_pb2.ExportMetricsServiceResponse()

        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), self._server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def start(self) -> GrpcReceiver:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(0).wait()


class HttpReceiver(_Store):
    """An OTLP/HTTP collector stand-in; ``endpoint`` is ``http://127.0.0.1:<port>``."""

    def __init__(self) -> None:
        super().__init__()
        store = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                headers = {k: v for k, v in self.headers.items()}
                if self.path == "/v1/traces":
                    request: Any = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                    store.add("traces", request, body, headers)
                    reply = trace_service_pb2.ExportTraceServiceResponse()
                elif self.path == "/v1/metrics":
                    request = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
                    store.add("metrics", request, body, headers)
                    reply = metrics_service_pb2.ExportMetricsServiceResponse()
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                data = reply.SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def start(self) -> HttpReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def receiving(kind: str) -> Iterator[GrpcReceiver | HttpReceiver]:
    """A started receiver of ``kind`` (grpc or http), stopped afterwards (a fixture body)."""
    receiver: GrpcReceiver | HttpReceiver = GrpcReceiver() if kind == "grpc" else HttpReceiver()
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()
