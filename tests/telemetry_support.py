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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conftest import DEMO_BACKEND, wait_serving
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from crishim import hookimpl
from crishim.cri.runtime.v1 import api_pb2
from crishim.errors import Unavailable
from crishim.model import ImageRecord
from crishim.testing.server import RunningShim
from crishim.types import BackendContext, BackendOptions, BackendType, IndexedBackend

#: The ``oci-dir`` backend over examples/layouts/demo.
DEMO = DEMO_BACKEND
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
        wait_serving(sock, proc)
        yield served
        proc.send_signal(signal.SIGTERM)
        # read both pipes while it stops: a full pipe would block its exit
        served.stdout, served.stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, served.stderr
    finally:
        if proc.returncode is None:  # not stopped by the SIGTERM above
            proc.kill()
            served.stdout, served.stderr = proc.communicate()
