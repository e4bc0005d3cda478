"""Export over a real connection: OTLP/gRPC and OTLP/HTTP receivers on 127.0.0.1.

The batch processor and the metric reader are set to wait a minute, so
what the receivers get before that came from the flush of a graceful stop.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from crishim.cri.runtime.v1 import api_pb2, api_pb2_grpc
from crishim.testing.server import running_server
from tests.otlp_receivers import (
    SPAN_KIND_INTERNAL,
    SPAN_KIND_SERVER,
    GrpcReceiver,
    HttpReceiver,
    receiving,
)
from tests.telemetry_support import DEMO, HIT, STATUS, serving

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"

pytestmark = pytest.mark.usefixtures("no_otel_env")


@pytest.fixture(params=["grpc", "http"])
def receiver(request: pytest.FixtureRequest) -> Iterator[GrpcReceiver | HttpReceiver]:
    yield from receiving(request.param)


def _telemetry(receiver: GrpcReceiver | HttpReceiver) -> dict[str, Any]:
    exporter = "otlp-grpc" if isinstance(receiver, GrpcReceiver) else "otlp-http"
    return {
        "tracing": {
            "exporter": exporter,
            "endpoint": receiver.endpoint,
            "headers": {"x-test-tenant": "t1"},
            "sampler": "always_on",
            "service_name": "crishim-test",
            "batch": {"schedule_delay": 60},
        },
        "metrics": {
            "exporter": exporter,
            "endpoint": receiver.endpoint,
            "headers": {"x-test-tenant": "t1"},
            "interval": 60,
        },
    }


def test_spans_and_metrics_arrive_after_a_graceful_stop(
    receiver: GrpcReceiver | HttpReceiver,
) -> None:
    config = {"backends": [DEMO], **_telemetry(receiver)}
    with running_server(config) as shim:
        image_id = shim.status(HIT).image.id
        assert not shim.status("busybox").HasField("image")
        time.sleep(0.2)
        assert receiver.spans() == [], "nothing is exported before the batch is due"
    # running_server's exit stopped the server and shut the container's resources down
    spans = receiver.spans()
    servers = [s for s in spans if s.kind == SPAN_KIND_SERVER]
    assert [s.name for s in servers] == [STATUS, STATUS]
    hit = next(s for s in servers if s.attributes.get("crishim.image.found"))
    assert hit.attributes["crishim.image.id"] == image_id
    assert hit.attributes["rpc.method"] == "ImageStatus"
    assert hit.resource["service.name"] == "crishim-test"
    assert hit.scope == "crishim"
    kids = [s for s in spans if s.parent_span_id == hit.span_id]
    assert [(k.name, k.kind) for k in kids if k.name.startswith("get_image")][:1] == [
        ("get_image demo", SPAN_KIND_INTERNAL)
    ]
    assert all(h.get("x-test-tenant") == "t1" for h in receiver.headers)
    assert {"rpc.server.call.duration", "crishim.backend.calls"} <= receiver.metric_names()


def test_the_environment_alone_is_read_by_the_sdk(
    receiver: GrpcReceiver | HttpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No tracing or metrics section: the SDK's own OTEL_* handling, OTEL_BSP_* included."""
    protocol = "grpc" if isinstance(receiver, GrpcReceiver) else "http/protobuf"
    for name, value in {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        # the base URL: the SDK's HTTP exporters add /v1/traces and /v1/metrics
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_HEADERS": "x-test-tenant=from-env",
        "OTEL_TRACES_SAMPLER": "always_on",
        # 5 s unless the SDK reads it; the spans must arrive long before that
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_METRIC_EXPORT_INTERVAL": "100",
        "OTEL_SERVICE_NAME": "from-env",
    }.items():
        monkeypatch.setenv(name, value)
    with running_server({"backends": [DEMO]}) as shim:
        assert shim.status(HIT).HasField("image")
        assert receiver.wait_for(lambda: bool(receiver.spans()), timeout=3)
        assert receiver.wait_for(lambda: "rpc.server.call.duration" in receiver.metric_names())
    (server,) = [s for s in receiver.spans() if s.kind == SPAN_KIND_SERVER]
    assert server.name == STATUS
    assert server.resource["service.name"] == "from-env"
    assert all(h.get("x-test-tenant") == "from-env" for h in receiver.headers)


def test_crishim_serve_flushes_on_sigterm(
    tmp_path: Path, receiver: GrpcReceiver | HttpReceiver, sockdir: Path
) -> None:
    sock = sockdir / "crishim.sock"
    config = tmp_path / "c.yaml"
    config.write_text(
        json.dumps(
            {
                "server": {"listen": f"unix://{sock}"},
                "state_dir": str(tmp_path / "state"),
                "backends": [DEMO],
                **_telemetry(receiver),
            }
        )
    )
    with serving(config, sock) as served, grpc.insecure_channel(f"unix:{sock}") as channel:
        stub = api_pb2_grpc.ImageServiceStub(channel)
        request = api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=HIT))
        metadata = [("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01")]
        assert stub.ImageStatus(request, timeout=10, metadata=metadata).HasField("image")
    stderr = served.stderr
    assert "tracing: on:" in stderr
    servers = [s for s in receiver.spans() if s.kind == SPAN_KIND_SERVER]
    assert len(servers) == 1, stderr
    (server,) = servers
    assert server.trace_id == TRACE_ID
    assert server.parent_span_id == PARENT_ID
    assert server.name == STATUS
    assert "rpc.server.call.duration" in receiver.metric_names()
    (metrics,) = receiver.metrics
    assert {a.key: a.value.string_value for a in metrics.resource_metrics[0].resource.attributes}[
        "service.name"
    ] == "crishim-test"
