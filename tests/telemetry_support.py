"""What the telemetry tests share: the demo backend, a failing backend, ``crishim serve``.

* :data:`DEMO`: the ``oci-dir`` backend over examples/layouts/demo, :data:`HIT`
  an image it has; :class:`FailingPlugin` registers the ``failing`` backend type
  (it raises, plainly or as a domain error); :func:`metric_points` reads an
  in-memory metric reader;
* :func:`serving`: ``crishim serve`` as a child process, for what is only
  seen from outside (what a graceful stop flushes, what goes to stderr): it
  starts the command on a config file with none of the caller's ``OTEL_*``
  variables, waits until the health service answers, and stops it with
  SIGTERM when the block ends, expecting exit status 0.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from crishim import hookimpl
from crishim.cri.runtime.v1 import api_pb2
from crishim.errors import Unavailable
from crishim.model import ImageRecord
from crishim.testing.server import RunningShim
from crishim.types import BackendContext, BackendOptions, BackendType, IndexedBackend

DEMO_LAYOUT = Path(__file__).resolve().parents[1] / "examples" / "layouts" / "demo"
DEMO = {
    "name": "demo",
    "type": "oci-dir",
    "options": {"path": str(DEMO_LAYOUT), "repository": "example.com/crishim/hello"},
}
#: An image of the demo layout.
HIT = "example.com/crishim/web:1.0"
#: The server span of ImageStatus.
STATUS = "runtime.v1.ImageService/ImageStatus"


class FailingOptions(BackendOptions):
    #: "crash": a plain exception (the catalog logs it and asks the next backend);
    #: "unavailable": a domain error, which becomes the call's answer.
    mode: str = "crash"


class FailingBackend(IndexedBackend):
    def __init__(self, context: BackendContext, options: FailingOptions) -> None:
        super().__init__(context)
        self.mode = options.mode

    def get_image(self, ref: Any) -> ImageRecord | None:
        if self.mode == "unavailable":
            raise Unavailable("the failing backend's source is down")
        raise RuntimeError("the failing backend broke")


class FailingPlugin:
    @hookimpl
    def crishim_backend_types(self) -> list[BackendType]:
        return [BackendType(name="failing", factory=FailingBackend, options_model=FailingOptions)]


def metric_points(reader: InMemoryMetricReader, name: str) -> list[tuple[dict[str, Any], Any]]:
    """The data points of metric ``name`` the reader collects now, with their attributes."""
    data = reader.get_metrics_data()
    out = []
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    out.extend((dict(p.attributes or {}), p) for p in metric.data.data_points)
    return out


def status(shim: RunningShim, ref: str, **kwargs: Any) -> api_pb2.ImageStatusResponse:
    """ImageStatus of ``ref`` (``metadata=`` and the like passed on)."""
    request = api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ref))
    return shim.images.ImageStatus(request, timeout=10, **kwargs)


def wait_ready(sock: Path, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    """Until the health service on ``sock`` answers; fail when ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early: {proc.communicate()}")
        if sock.exists():
            with grpc.insecure_channel(f"unix:{sock}") as channel:
                try:
                    health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=1
                    )
                    return
                except grpc.RpcError:
                    pass
        time.sleep(0.05)
    raise AssertionError("server did not come up")


@dataclass
class Served:
    """The process; its output once it has ended."""

    proc: subprocess.Popen[str]
    stdout: str = ""
    stderr: str = field(default="", repr=False)


@contextmanager
def serving(
    config: Path, sock: Path, otel_env: Mapping[str, str] | None = None
) -> Iterator[Served]:
    """``crishim serve --config config`` listening on ``sock``, stopped by SIGTERM."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(otel_env or {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "crishim.cli", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    served = Served(proc)
    try:
        wait_ready(sock, proc)
        yield served
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        served.stdout, served.stderr = proc.communicate()
