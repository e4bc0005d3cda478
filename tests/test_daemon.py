"""The serving process as an operator meets it: reloads, stops, systemd notify.

Every test runs ``crishim serve`` as a real process on a temporary socket
and talks gRPC to it; the misbehaving backends are a plugin installed for
the test (a dist-info on PYTHONPATH, found through the entry-point group
like any other). Bounds on waits only keep a broken build from hanging
the suite: nothing here measures time.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import DEMO_LAYOUT as LAYOUT
from grpc_health.v1 import health_pb2, health_pb2_grpc

from crishim.cri.runtime.v1 import api_pb2, api_pb2_grpc
from crishim.notify import Notifier
from tests.plugin_fixtures import make_distribution

HELLO = "example.com/crishim/hello:1.0"

#: A backend type "misbehave": lookups of ``*/hang`` block forever (or for
#: ``lookup_delay`` seconds), pulls block forever, ``close`` may block
#: forever, ``start`` may sleep or fail. Each blocking point first creates
#: ``<marker>/<what>`` so a test knows the call is inside. A lookup of
#: ``*/sigterm`` sends SIGTERM to the gRPC worker thread making it, as Linux
#: may deliver a signal meant for the process to any of its threads.
MISBEHAVING_PLUGIN = """
    import os
    import signal
    import threading
    import time
    from pathlib import Path
    from crishim import hookimpl
    from crishim.errors import BackendError
    from crishim.types import BackendOptions, BackendType, IndexedBackend

    FOREVER = threading.Event()

    class Options(BackendOptions):
        marker: str
        lookup_delay: float | None = None
        hang_close: bool = False
        start_delay: float = 0
        fail_start: str = ""

    class Misbehaving(IndexedBackend):
        def __init__(self, context, options):
            super().__init__(context)
            self.options = options

        def _mark(self, what):
            Path(self.options.marker, what).touch()

        def start(self):
            if self.options.start_delay:
                self._mark("start")
                time.sleep(self.options.start_delay)
            if self.options.fail_start:
                raise BackendError(self.name, self.options.fail_start)

        def get_image(self, ref):
            if ref.repository.endswith("/sigterm"):
                signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
            if ref.repository.endswith("/hang"):
                self._mark("lookup")
                if self.options.lookup_delay is None:
                    FOREVER.wait()
                time.sleep(self.options.lookup_delay)
            return None

        def pull_image(self, request):
            self._mark("pull")
            FOREVER.wait()

        def close(self):
            if self.options.hang_close:
                self._mark("close")
                FOREVER.wait()

    @hookimpl
    def crishim_backend_types():
        return [BackendType(name="misbehave", factory=Misbehaving, options_model=Options)]
"""


#: Every Serve of the running test: killed at its end if still running (a
#: failed assertion must not leave a server behind).
_STARTED: list[Serve] = []


@pytest.fixture(autouse=True)
def _no_server_left() -> Iterator[None]:
    yield
    while _STARTED:
        serve = _STARTED.pop()
        if serve.proc.poll() is None:
            serve.proc.kill()
            serve.proc.wait()


class Serve:
    """A ``crishim serve`` process and what it has logged so far."""

    def __init__(self, config: Path, env: dict[str, str], *args: str) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "crishim.cli", "serve", "--config", str(config), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        _STARTED.append(self)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = 60, after: int = 0) -> str:
        """The first line (from index ``after``) matching ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[after:]:
                    if regex.search(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no log line matching {pattern!r}:\n" + self.log)
                self._changed.wait(min(left, 0.5))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def finish(self, timeout: float = 60) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=10)
        return code


@contextlib.contextmanager
def serving(config: Path, env: dict[str, str]) -> Iterator[Serve]:
    """A Serve that is stopped at the end and must then exit 0."""
    serve = Serve(config, env)
    try:
        yield serve
    finally:
        serve.signal(signal.SIGTERM)
        assert serve.finish() == 0, serve.log


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    root = make_distribution(
        tmp_path / "site",
        "crishim-misbehave",
        "0.1",
        {"misbehave": MISBEHAVING_PLUGIN},
        {"misbehave": "misbehave"},
    )
    environ = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    return {**environ, "PYTHONPATH": str(root)}


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    path = tmp_path / "marker"
    path.mkdir()
    return path


def _wait_file(path: Path, serve: Serve, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if serve.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared:\n{serve.log}")
        time.sleep(0.05)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _misbehaving(
    tmp_path: Path,
    sock: Path,
    marker: Path,
    *,
    name: str = "bad",
    grace_period: float | None = None,
    then: Sequence[dict[str, Any]] = (),
    **options: Any,
) -> Path:
    """A config serving a ``misbehave`` backend ``name`` (with ``options``) on
    ``sock``, followed by the backends ``then``."""
    server: dict[str, Any] = {"listen": f"unix://{sock}"}
    if grace_period is not None:
        server["grace_period"] = grace_period
    bad = {"name": name, "type": "misbehave", "options": {"marker": str(marker), **options}}
    return _write(tmp_path / "c.yaml", json.dumps({"server": server, "backends": [bad, *then]}))


def _demo(pinned: str = "[]", level: str = "info") -> str:
    return (
        f"logging: {{level: {level}}}\n"
        f"pinned: {pinned}\n"
        "  \n"
        "backends:\n"
        "  - name: demo\n"
        "    type: oci-dir\n"
        f"    options: {{path: '{LAYOUT}', repository: example.com/crishim/hello}}\n"
    )


def _stub(sock: Path) -> tuple[grpc.Channel, api_pb2_grpc.ImageServiceStub]:
    channel = grpc.insecure_channel(f"unix:{sock}")
    return channel, api_pb2_grpc.ImageServiceStub(channel)


def _status(sock: Path, ref: str) -> api_pb2.ImageStatusResponse:
    channel, stub = _stub(sock)
    with channel:
        return stub.ImageStatus(
            api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ref)), timeout=30
        )


# -- stops ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("hung", ["lookup", "pull"])
def test_a_stop_ends_the_process_whatever_a_backend_is_doing(
    sockdir: Path, tmp_path: Path, env: dict[str, str], marker: Path, hung: str
) -> None:
    """A call stuck for ever in a plugin without a timeout, and a close() that
    never returns, still let SIGTERM end the process and remove the socket."""
    sock = sockdir / "crishim.sock"
    demo = {"name": "demo", "type": "oci-dir", "options": {"path": str(LAYOUT)}}
    config = _misbehaving(tmp_path, sock, marker, grace_period=1, hang_close=True, then=[demo])
    serve = Serve(config, env)
    serve.wait_for("ready in")
    channel, stub = _stub(sock)
    if hung == "lookup":
        call = stub.ImageStatus.future(
            api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image="team/hang:1")), timeout=300
        )
    else:
        call = stub.PullImage.future(
            api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image="team/app:1")), timeout=300
        )
    try:
        _wait_file(marker / hung, serve)
        serve.signal(signal.SIGTERM)
        code = serve.finish(timeout=90)
        with pytest.raises(grpc.RpcError) as info:
            call.result(timeout=30)  # the stuck call was ended, not left hanging
        assert info.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    finally:
        channel.close()
    assert code == 0, serve.log
    assert (marker / "close").exists(), "close() was called, and did not hold the stop"
    assert "closing the backends did not finish" in serve.log
    assert "exiting with 1 calls still stuck in backends" in serve.log, serve.log
    assert serve.lines[-1].endswith("stopped")
    assert not sock.exists()


def test_a_second_signal_exits_at_once(
    sockdir: Path, tmp_path: Path, env: dict[str, str], marker: Path
) -> None:
    sock = sockdir / "crishim.sock"
    config = _misbehaving(tmp_path, sock, marker, grace_period=600)
    serve = Serve(config, env)
    serve.wait_for("ready in")
    channel, stub = _stub(sock)
    with channel:
        call = stub.ImageStatus.future(
            api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image="team/hang:1")), timeout=300
        )
        _wait_file(marker / "lookup", serve)
        serve.signal(signal.SIGINT)
        serve.wait_for("in-flight calls have 600.0s")
        serve.signal(signal.SIGINT)
        assert serve.finish(timeout=60) == 3, serve.log
        call.cancel()
    assert "received SIGINT again: exiting now" in serve.log


def test_a_signal_caught_by_another_thread_still_stops_the_server(
    sockdir: Path, tmp_path: Path, env: dict[str, str], marker: Path
) -> None:
    """The main thread runs Python's signal handlers; it must not sleep through one
    that arrived on a gRPC worker thread."""
    sock = sockdir / "crishim.sock"
    config = _misbehaving(tmp_path, sock, marker, grace_period=5)
    serve = Serve(config, env)
    serve.wait_for("ready in")
    channel, stub = _stub(sock)
    with channel:
        request = api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image="team/sigterm:1"))
        assert not stub.ImageStatus(request, timeout=30).HasField("image")
        serve.wait_for("received SIGTERM: stopping", timeout=30)
    assert serve.finish(timeout=60) == 0, serve.log


# -- reloads -------------------------------------------------------------------------------------


def test_sighup_reloads_without_dropping_the_socket_or_calls_in_flight(
    sockdir: Path, tmp_path: Path, env: dict[str, str], marker: Path
) -> None:
    sock = sockdir / "crishim.sock"
    other = sockdir / "other.sock"
    slow = (
        f"  - {{name: slow, type: misbehave, options: {{marker: '{marker}', lookup_delay: 2}}}}\n"
    )
    config = _write(
        tmp_path / "c.yaml",
        f"server: {{listen: 'unix://{sock}', grace_period: 30}}\n" + _demo() + slow,
    )
    with serving(config, env) as serve:
        serve.wait_for("ready in")
        inode = sock.stat().st_ino
        assert not _status(sock, HELLO).image.pinned

        # a call in flight on the running backends when the reload comes
        results: list[object] = []
        in_flight = threading.Thread(target=lambda: results.append(_status(sock, "team/hang:1")))
        in_flight.start()
        _wait_file(marker / "lookup", serve)

        _write(
            config,
            f"server: {{listen: 'unix://{other}', grace_period: 30}}\n"
            + _demo(pinned=f"['{HELLO}']", level="debug")
            + slow,
        )
        mark = len(serve.lines)
        serve.signal(signal.SIGHUP)
        serve.wait_for(r"reloaded .*c\.yaml in", after=mark)
        in_flight.join(timeout=60)
        assert len(results) == 1 and not results[0].HasField("image")  # type: ignore[attr-defined]

        reply = _status(sock, HELLO)
        assert reply.image.pinned, "the new config's pins apply"
        assert sock.stat().st_ino == inode, "the socket was never replaced"
        assert not other.exists()
        warning = serve.wait_for("server.listen changed", after=mark)
        assert "needs a restart" in warning and str(sock) in warning
        # the new logging level: one debug line per call, naming the backend
        serve.wait_for(rf"ImageStatus {re.escape(HELLO)}: hit demo \(", after=mark)
        serve.wait_for("the previous backends are closed", after=mark)
    assert "Traceback" not in serve.log


def test_an_invalid_config_on_reload_is_logged_and_the_running_one_stays(
    sockdir: Path, tmp_path: Path, env: dict[str, str], marker: Path
) -> None:
    sock = sockdir / "crishim.sock"
    config = _write(
        tmp_path / "c.yaml", f"server: {{listen: 'unix://{sock}'}}\n" + _demo(pinned=f"['{HELLO}']")
    )
    with serving(config, env) as serve:
        serve.wait_for("ready in")
        # two mistakes at once: both are named, with the file and the key
        _write(
            config,
            f"server: {{listen: 'unix://{sock}', workers: many}}\n"
            "backends:\n"
            f"  - {{name: demo, type: oci-dir, options: {{path: '{tmp_path}/gone'}}}}\n",
        )
        mark = len(serve.lines)
        serve.signal(signal.SIGHUP)
        serve.wait_for("reload failed: still serving the previous config", after=mark)
        logged = "\n".join(serve.lines[mark:])
        assert f"reload: {config}: server.workers: " in logged and "(got 'many')" in logged
        assert f"reload: {config}: backends[0].options.path: {tmp_path}/gone does not exist" in (
            logged
        )
        assert _status(sock, HELLO).image.pinned, "the running config still answers"

        # a config whose backend cannot start is refused the same way
        _write(
            config,
            f"server: {{listen: 'unix://{sock}'}}\n"
            "backends:\n"
            f"  - {{name: x, type: misbehave, "
            f"options: {{marker: '{marker}', fail_start: boom}}}}\n",
        )
        mark = len(serve.lines)
        serve.signal(signal.SIGHUP)
        serve.wait_for("reload failed", after=mark)
        assert f"{config}: backends[0] (x, type misbehave): cannot start: boom" in serve.log
        assert _status(sock, HELLO).image.pinned


def test_sighup_during_start_up_does_not_kill(
    sockdir: Path, tmp_path: Path, env: dict[str, str], marker: Path
) -> None:
    sock = sockdir / "crishim.sock"
    config = _misbehaving(tmp_path, sock, marker, name="s", start_delay=1)
    with serving(config, env) as serve:
        _wait_file(marker / "start", serve)
        serve.signal(signal.SIGHUP)
        serve.wait_for("ready in")
        serve.wait_for("reloaded")  # the reload asked for during start-up follows it
        assert serve.proc.poll() is None
        assert not _status(sock, "team/app:1").HasField("image")


def test_a_backend_that_cannot_start_names_file_and_key(
    sockdir: Path, tmp_path: Path, env: dict[str, str], marker: Path
) -> None:
    sock = sockdir / "crishim.sock"
    config = _write(
        tmp_path / "c.yaml",
        f"server: {{listen: 'unix://{sock}'}}\n"
        "backends:\n"
        f"  - {{name: demo, type: oci-dir, options: {{path: '{LAYOUT}'}}}}\n"
        f"  - {{name: x, type: misbehave, "
        f"options: {{marker: '{marker}', fail_start: 'no disk'}}}}\n",
    )
    # the broken backend costs its own images (docs/security.md): the rest serve,
    # and the log names it by file and key
    with serving(config, env) as serve:
        serve.wait_for(
            rf"{re.escape(str(config))}: backends\[1\] \(x, type misbehave\): cannot start: "
            r"no disk; serving without it"
        )
        serve.wait_for("serving runtime.v1.ImageService")
    assert not sock.exists()


def test_every_backend_failing_to_start_names_file_and_key(
    sockdir: Path, tmp_path: Path, env: dict[str, str], marker: Path
) -> None:
    sock = sockdir / "crishim.sock"
    config = _misbehaving(tmp_path, sock, marker, name="x", fail_start="no disk")
    serve = Serve(config, env)
    assert serve.finish() == 2
    assert f"crishim: {config}: backends[0] (x, type misbehave): cannot start: no disk" in (
        serve.log
    )
    assert not sock.exists()


# -- systemd notify ------------------------------------------------------------------------------


def _receiver(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(60)
    return sock


def _messages(receiver: socket.socket, until: str) -> list[dict[str, str]]:
    """Notifications received until one holds ``until`` (KEY=VALUE)."""
    got = []
    while True:
        data = receiver.recv(4096).decode()
        fields = dict(line.split("=", 1) for line in data.split("\n"))
        got.append(fields)
        key, _, value = until.partition("=")
        if fields.get(key) == value:
            return got


def test_serve_tells_systemd_ready_reloading_and_stopping(
    sockdir: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    sock = sockdir / "crishim.sock"
    config = _write(tmp_path / "c.yaml", f"server: {{listen: 'unix://{sock}'}}\n" + _demo())
    receiver = _receiver(sockdir / "notify")
    serve = Serve(config, {**env, "NOTIFY_SOCKET": str(sockdir / "notify")})
    try:
        ready = _messages(receiver, "READY=1")[-1]
        # READY comes once the socket serves
        assert ready["STATUS"] == f"serving 1 backends on unix://{sock}"
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"unix:{sock}"))
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == 1
        # the probe command operators use (relative --listen: the working directory)
        probe = subprocess.run(
            [sys.executable, "-m", "crishim.cli", "health", "--listen", f"unix://{sock.name}"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=sock.parent,
            env=env,
        )
        assert probe.returncode == 0 and probe.stdout == f"unix://{sock}: SERVING\n", probe

        serve.signal(signal.SIGHUP)
        reloading = _messages(receiver, "RELOADING=1")[-1]
        assert int(reloading["MONOTONIC_USEC"]) > 0
        assert "reloading" in reloading["STATUS"]
        assert _messages(receiver, "READY=1")[-1]["STATUS"].startswith("serving")

        serve.signal(signal.SIGTERM)
        assert _messages(receiver, "STOPPING=1")
        assert serve.finish() == 0
        gone = subprocess.run(
            [sys.executable, "-m", "crishim.cli", "health", "--listen", f"unix://{sock}"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert gone.returncode == 1 and "UNAVAILABLE" in gone.stdout
    finally:
        receiver.close()
        if serve.proc.poll() is None:
            serve.proc.kill()
            serve.finish()


def test_notifier_speaks_the_datagram_protocol_to_an_abstract_socket() -> None:
    name = f"crishim-test-{os.getpid()}-{time.monotonic_ns()}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(b"\0" + name.encode())
    receiver.settimeout(10)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.enabled
        assert notifier.ready("serving\nnow")
        assert receiver.recv(4096) == b"READY=1\nSTATUS=serving now"
        assert notifier.stopping("bye")
        assert receiver.recv(4096) == b"STOPPING=1\nSTATUS=bye"
    finally:
        receiver.close()
    # the receiver is gone: sending fails quietly
    assert not notifier.status("anyone?")


def test_notifier_without_a_socket_does_nothing() -> None:
    assert not Notifier({}).enabled
    assert not Notifier({}).ready("x")
    assert not Notifier({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled
