"""Server lifecycle: the socket, health, limits, signals and graceful stop."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from conftest import DEMO_BACKEND, DEMO_LAYOUT, wait_serving
from grpc_health.v1 import health_pb2

from crishim.config import parse_settings
from crishim.container import make_application
from crishim.cri.runtime.v1 import api_pb2, api_pb2_grpc
from crishim.server import SocketError, prepare_socket_path
from crishim.testing.server import running_server
from tests.plugin_fixtures import SLOW_PLUGIN, make_distribution

BACKENDS = [DEMO_BACKEND]


def _start(sock: Path) -> tuple[object, object]:
    settings = parse_settings(
        {
            "server": {"listen": f"unix://{sock}"},
            "state_dir": str(sock.parent / "state"),
            "backends": BACKENDS,
        }
    )
    app = make_application(settings)
    catalog = app.catalog()
    catalog.start()
    server = app.server()
    server.start()
    return server, catalog


def _status(sock: Path, ref: str) -> api_pb2.ImageStatusResponse:
    with grpc.insecure_channel(f"unix:{sock}") as channel:
        stub = api_pb2_grpc.ImageServiceStub(channel)
        return stub.ImageStatus(
            api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ref)), timeout=10
        )


def test_socket_dir_created_and_socket_mode_0660(sockdir: Path) -> None:
    sock = sockdir / "nested" / "dir" / "crishim.sock"
    server, catalog = _start(sock)
    try:
        mode = sock.stat().st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o660
        assert _status(sock, "example.com/crishim/web:1.0").image.id.startswith("sha256:")
    finally:
        server.stop(1)  # type: ignore[attr-defined]
        catalog.close()  # type: ignore[attr-defined]
    assert not sock.exists(), "the socket is removed on stop"


def test_stale_socket_is_replaced(sockdir: Path) -> None:
    sock = sockdir / "crishim.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))
    stale.close()  # the file stays behind, nobody listens
    assert sock.exists()
    server, catalog = _start(sock)
    try:
        assert _status(sock, "example.com/crishim/web:1.0").HasField("image")
    finally:
        server.stop(1)  # type: ignore[attr-defined]
        catalog.close()  # type: ignore[attr-defined]


def test_live_server_is_never_stolen(sockdir: Path) -> None:
    sock = sockdir / "crishim.sock"
    first, catalog = _start(sock)
    try:
        with pytest.raises(SocketError, match="another server is listening"):
            prepare_socket_path(sock)
        # and through the CLI: exit 1, the first server still answers
        config = sockdir / "c.yaml"
        config.write_text(
            f"server: {{listen: 'unix://{sock}'}}\n"
            f"backends: [{{name: d, type: oci-dir, options: {{path: '{DEMO_LAYOUT}'}}}}]\n"
        )
        result = subprocess.run(
            [sys.executable, "-m", "crishim.cli", "serve", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1
        assert "another server is listening" in result.stderr
        assert _status(sock, "example.com/crishim/web:1.0").HasField("image")
    finally:
        first.stop(1)  # type: ignore[attr-defined]
        catalog.close()  # type: ignore[attr-defined]


def test_a_regular_file_in_the_way_is_left_alone(sockdir: Path) -> None:
    path = sockdir / "crishim.sock"
    path.write_text("precious")
    with pytest.raises(SocketError, match="not a socket"):
        prepare_socket_path(path)
    assert path.read_text() == "precious"


def test_health_reports_serving_then_not_serving_on_stop() -> None:
    with running_server({"backends": BACKENDS}) as shim:
        for service in ("", "runtime.v1.ImageService"):
            reply = shim.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        shim.server.health.enter_graceful_shutdown()
        reply = shim.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_receive_limit_is_configurable() -> None:
    config = {"backends": BACKENDS, "server": {"max_recv_message_size": 64 * 1024}}
    with running_server(config) as shim:
        with pytest.raises(grpc.RpcError) as info:
            shim.status("a" * (80 * 1024))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert shim.status("example.com/crishim/web:1.0").HasField("image")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_lets_in_flight_calls_finish_then_removes_the_socket(
    tmp_path: Path, sockdir: Path, signum: int
) -> None:
    plugin_root = make_distribution(
        tmp_path / "site",
        "crishim-slow",
        "0.1",
        {"slowplugin": SLOW_PLUGIN},
        {"slow": "slowplugin"},
    )
    sock = sockdir / "crishim.sock"
    config = tmp_path / "c.yaml"
    config.write_text(
        f"server: {{listen: 'unix://{sock}', grace_period: 10}}\n"
        "backends:\n"
        "  - {name: slow, type: slow, options: {delay: 1.5}}\n"
        f"  - {{name: demo, type: oci-dir, options: {{path: '{DEMO_LAYOUT}'}}}}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(plugin_root)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "crishim.cli", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        wait_serving(sock, proc)
        results: list[object] = []
        in_flight = threading.Thread(target=lambda: results.append(_status(sock, "team/slow:1")))
        in_flight.start()
        time.sleep(0.5)  # the call is now inside the slow backend
        proc.send_signal(signum)
        in_flight.join(timeout=30)
        assert len(results) == 1, "the in-flight call was answered"
        assert not results[0].HasField("image")  # type: ignore[attr-defined]
        # drain both pipes while it stops: a full pipe would block its exit
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0, stderr
    finally:
        if proc.poll() is None or (proc.stderr is not None and not proc.stderr.closed):
            proc.kill()
            _, stderr = proc.communicate()
    assert not sock.exists()
    assert "stopped" in stderr
    with pytest.raises(grpc.RpcError) as info:
        _status(sock, "example.com/crishim/web:1.0")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


class _BlockingPuller:
    """A backend type whose pulls wait until the test releases them."""

    release = threading.Event()
    started = threading.Event()

    @staticmethod
    def hookimpl_module() -> object:
        from crishim import hookimpl
        from crishim.model import ImageRecord
        from crishim.types import BackendType, IndexedBackend

        class Backend(IndexedBackend):
            def pull_image(self, request: object) -> ImageRecord:
                _BlockingPuller.started.set()
                assert _BlockingPuller.release.wait(30)
                return ImageRecord(id="sha256:" + "ab" * 32, repo_tags=("x/y:1",), size=1)

        class Plugin:
            @hookimpl
            def crishim_backend_types(self) -> list[BackendType]:
                return [BackendType(name="blocking-puller", factory=lambda c, o: Backend(c))]

        return Plugin()


def test_pulls_have_their_own_threads_and_a_limit() -> None:
    config = {
        # no queue: the one pull running is the limit
        "server": {"workers": 1, "max_concurrent_pulls": 1, "max_queued_pulls": 0},
        "backends": [{"name": "puller", "type": "blocking-puller"}, *BACKENDS],
    }
    plugin = _BlockingPuller.hookimpl_module()
    _BlockingPuller.release.clear()
    _BlockingPuller.started.clear()
    with running_server(config, extra_plugins=[("blocking-puller", plugin)]) as shim:
        request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image="x/y:1"))
        first = shim.images.PullImage.future(request, timeout=30)
        assert _BlockingPuller.started.wait(10)
        # the running pull holds its own thread: the one worker still answers
        assert shim.status("example.com/crishim/web:1.0").HasField("image")
        with pytest.raises(grpc.RpcError) as info:
            shim.images.PullImage(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_concurrent_pulls" in info.value.details()
        _BlockingPuller.release.set()
        assert first.result().image_ref == "sha256:" + "ab" * 32
