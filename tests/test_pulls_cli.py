"""``crishim pulls``: the running server's pulls, read from its status endpoint.

The command runs as a real process (``python -m crishim.cli``) against a
real server pulling from the test registry through the fault-injecting
proxy, which holds a layer half sent so the pull stays in view; ``--watch``
runs in a pseudo-terminal, read with a deadline. Also the status endpoint
itself: read-only, and not taken over by a second server.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from registry.helpers import (
    board,
    cache_config,
    get_status,
    plain_endpoint,
    pull_future,
    wait_until,
)
from registry.process import RegistryProcess
from registry.proxy import TamperingProxy
from registry.push import Pusher

from crishim.testing.ocibuild import BuiltImage, LayoutBuilder
from crishim.testing.server import RunningShim, running_server

pytest_plugins = ["registry.fixtures"]

#: What rich draws a progress bar with.
BAR = "━"


@dataclass(frozen=True)
class Pulled:
    ref: str
    image: BuiltImage

    @property
    def layer(self) -> str:
        return self.image.layers[0].digest

    @property
    def half(self) -> int:
        return self.image.layers[0].size // 2


@pytest.fixture(scope="module")
def watched(registry: RegistryProcess, tmp_path_factory: pytest.TempPathFactory) -> Pulled:
    """An image with a layer of some size (held half sent at the proxy)."""
    root = tmp_path_factory.mktemp("pulls-cli-image") / "layout"
    builder = LayoutBuilder(root)
    image = builder.image(
        name="watched", layers=[{"data/noise": os.urandom(256 * 1024)}, {"etc/x": "x\n"}]
    )
    builder.write()
    pusher = Pusher(registry.url, root)
    try:
        pusher.image("test/watched", image, ["1"])
    finally:
        pusher.client.close()
    return Pulled(f"{registry.host}/test/watched:1", image)


def config_for(store: Path, registry: RegistryProcess, proxy: TamperingProxy) -> dict[str, Any]:
    return cache_config(store, {registry.host: {"endpoints": [plain_endpoint(proxy.url)]}})


@dataclass
class Scene:
    shim: RunningShim
    status_socket: Path
    pulled: Pulled


@contextlib.contextmanager
def pull_in_view(
    tmp_path: Path, registry: RegistryProcess, proxy: TamperingProxy, pulled: Pulled
) -> Iterator[Scene]:
    """A server with one pull in flight, its big layer held half sent, until the block ends."""
    proxy.hold[pulled.layer] = pulled.half
    proxy.released.clear()
    with running_server(config_for(tmp_path / "store", registry, proxy)) as shim:
        future = pull_future(shim, pulled.ref)
        try:
            wait_until(
                lambda: any(
                    b["done"] == pulled.half for p in board(shim)["pulls"] for b in p["blobs"]
                ),
                "the layer half pulled",
            )
            assert shim.server.status is not None
            yield Scene(shim, shim.server.status.path, pulled)
        finally:
            proxy.released.set()
            future.result(timeout=30)


def crishim(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crishim.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=None if env is None else {**os.environ, **env},
    )


# -- once: --json and the table --------------------------------------------------------------------


def test_pulls_json_shows_a_slowed_pull_per_blob(
    tmp_path: Path, registry: RegistryProcess, clean_proxy: TamperingProxy, watched: Pulled
) -> None:
    with pull_in_view(tmp_path, registry, clean_proxy, watched) as scene:
        result = crishim("pulls", "--json", "--socket", str(scene.status_socket))
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert (status["running"], status["queued"], status["max_running"]) == (1, 0, 4)
    (pull,) = status["pulls"]
    assert pull["reference"] == watched.ref
    assert pull["backend"] == "cache"
    assert pull["state"] == "downloading"
    blobs = {b["digest"]: b for b in pull["blobs"]}
    image = watched.image
    assert set(blobs) == {image.config.digest, *(layer.digest for layer in image.layers)}
    for descriptor in (image.config, *image.layers):
        assert blobs[descriptor.digest]["total"] == descriptor.size
    assert (blobs[watched.layer]["state"], blobs[watched.layer]["done"]) == (
        "downloading",
        watched.half,
    )
    assert pull["done"] == sum(b["done"] for b in pull["blobs"])
    assert pull["total"] == sum(b["total"] for b in pull["blobs"])


def test_pulls_table_through_the_servers_config_file(
    tmp_path: Path, registry: RegistryProcess, clean_proxy: TamperingProxy, watched: Pulled
) -> None:
    with pull_in_view(tmp_path, registry, clean_proxy, watched) as scene:
        # the server's own config file, naming its socket: the status socket is beside it
        config = config_for(tmp_path / "store", registry, clean_proxy)
        config["server"] = {"listen": f"unix://{scene.shim.socket_path}"}
        path = tmp_path / "crishim.yaml"
        path.write_text(yaml.safe_dump(config))
        result = crishim("pulls", "--config", str(path))
        # as every command does, without --config: $CRISHIM_CONFIG
        from_env = crishim("pulls", env={"CRISHIM_CONFIG": str(path)})
    for done in (result, from_env):
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0] == "1 running (of 4), 0 queued (of 64)"
        (row,) = [line for line in lines if watched.ref in line]
        assert row.split()[1] == "downloading"


# -- no server -------------------------------------------------------------------------------------


def test_pulls_without_a_server_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "crishim-status.sock"
    result = crishim("pulls", "--socket", str(missing))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"crishim: cannot read the status endpoint at {missing}")
    # --watch and --json say the same, before drawing anything
    for flag in ("--watch", "--json"):
        again = crishim("pulls", flag, "--socket", str(missing))
        assert (again.returncode, again.stderr) == (1, result.stderr)


def test_pulls_with_the_endpoint_turned_off_says_so(
    tmp_path: Path, registry: RegistryProcess, clean_proxy: TamperingProxy
) -> None:
    config = config_for(tmp_path / "store", registry, clean_proxy)
    config["server"] = {"status_listen": ""}
    path = tmp_path / "crishim.yaml"
    path.write_text(yaml.safe_dump(config))
    result = crishim("pulls", "--config", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "server.status_listen" in result.stderr


# -- --watch in a terminal -----------------------------------------------------------------------


class Terminal:
    """``crishim pulls --watch`` on a pseudo-terminal of 40 rows, 120 columns."""

    def __init__(self, *args: str) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
        env["TERM"] = "xterm-256color"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "crishim.cli", "pulls", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        self.master = master
        self.output = b""

    def read_until(self, wanted: bytes, timeout: float = 15) -> bytes:
        """Read the terminal until ``wanted`` appears (fail after ``timeout`` seconds)."""
        end = time.monotonic() + timeout
        while wanted not in self.output:
            left = end - time.monotonic()
            if left <= 0:
                pytest.fail(f"{wanted!r} never appeared on the terminal; it shows {self.output!r}")
            if select.select([self.master], [], [], left)[0] and not self._read():
                pytest.fail(f"the terminal closed before {wanted!r}; it showed {self.output!r}")
        return self.output

    def _read(self) -> bool:
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the process and its terminal are gone
            return False
        self.output += data
        return bool(data)

    def finish(self, timeout: float = 15) -> int:
        """Read to the end of the output (the terminal closes when the process is gone);
        the exit status."""
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            if select.select([self.master], [], [], left)[0] and not self._read():
                break
        return self.proc.wait(timeout=1)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self.master)

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")


@contextlib.contextmanager
def terminal(*args: str) -> Iterator[Terminal]:
    term = Terminal(*args)
    try:
        yield term
    finally:
        term.close()


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_pulls_watch_draws_progress_bars_and_stops_when_told(
    how: signal.Signals,
    tmp_path: Path,
    registry: RegistryProcess,
    clean_proxy: TamperingProxy,
    watched: Pulled,
) -> None:
    with (
        pull_in_view(tmp_path, registry, clean_proxy, watched) as scene,
        # refreshes far apart: the stop must not wait for the next one
        terminal("--watch", "--interval", "60", "--socket", str(scene.status_socket)) as term,
    ):
        term.read_until(watched.ref.encode())
        term.read_until(BAR.encode())
        shown = term.text
        assert "1 running (of 4), 0 queued (of 64)" in shown
        assert "downloading" in shown
        term.proc.send_signal(how)
        code = term.finish()
    assert code == 0, term.text
    assert "Traceback" not in term.text
    # the terminal is left as found: the cursor rich hid is shown again
    assert term.output.rstrip().endswith(b"\x1b[?25h") or b"\x1b[?25h" in term.output[-200:]


def test_pulls_watch_says_so_when_the_server_goes_away(
    tmp_path: Path, registry: RegistryProcess, clean_proxy: TamperingProxy, watched: Pulled
) -> None:
    with running_server(config_for(tmp_path / "store", registry, clean_proxy)) as shim:
        assert shim.server.status is not None
        status_socket = shim.server.status.path
        term = Terminal("--watch", "--interval", "0.2", "--socket", str(status_socket))
        try:
            term.read_until(b"0 running (of 4), 0 queued (of 64)")
            shim.server.stop(0)
            code = term.finish()
        finally:
            term.close()
    assert code == 1, term.text
    assert "Traceback" not in term.text
    assert f"cannot read the status endpoint at {status_socket}" in term.text


# -- the endpoint ------------------------------------------------------------------------------


def test_the_status_endpoint_is_read_only_json(
    tmp_path: Path, registry: RegistryProcess, clean_proxy: TamperingProxy
) -> None:
    with running_server(config_for(tmp_path / "store", registry, clean_proxy)) as shim:
        assert shim.server.status is not None
        path = shim.server.status.path
        assert path == shim.socket_path.parent / "crishim-status.sock"
        assert (path.stat().st_mode & 0o777) == 0o660
        assert get_status(path) == (
            200,
            {"running": 0, "queued": 0, "max_running": 4, "max_queued": 64, "pulls": []},
        )
        code, body = get_status(path, "/nothing")
        assert code == 404 and "error" in body
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(path))
        connection = http.client.HTTPConnection("crishim")
        connection.sock = sock
        connection.request("DELETE", "/pulls")
        assert connection.getresponse().status == 501
        connection.close()
    # stopped with the server, its socket removed
    assert not path.exists()


def test_a_second_server_does_not_take_over_a_live_status_socket(
    tmp_path: Path, registry: RegistryProcess, clean_proxy: TamperingProxy
) -> None:
    shared = tmp_path / "status.sock"
    config = config_for(tmp_path / "store", registry, clean_proxy)
    first_config = {**config, "server": {"status_listen": f"unix://{shared}"}}
    second_config = {
        **config_for(tmp_path / "store2", registry, clean_proxy),
        "server": {"status_listen": f"unix://{shared}", "max_concurrent_pulls": 2},
    }
    with running_server(first_config):
        assert get_status(shared)[1]["max_running"] == 4
        with running_server(second_config) as second:
            # the second server serves without a status endpoint of its own
            assert second.server.status is None
            assert get_status(shared)[1]["max_running"] == 4
        # nor does it remove the first one's socket when it stops
        assert get_status(shared)[1]["max_running"] == 4
    assert not shared.exists()


def test_a_status_listen_that_names_a_file_leaves_the_file_alone(
    tmp_path: Path,
    registry: RegistryProcess,
    clean_proxy: TamperingProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    precious = tmp_path / "notes.txt"
    precious.write_text("not a socket\n")
    config = {
        **config_for(tmp_path / "store", registry, clean_proxy),
        "server": {"status_listen": f"unix://{precious}"},
    }
    with running_server(config) as shim:
        # the server serves, without a status endpoint, and says why
        assert shim.server.status is None
        assert not shim.status("example.com/absent:1").HasField("image")
    assert precious.read_text() == "not a socket\n"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(f"no status endpoint at {precious}" in w and "not a socket" in w for w in warnings)
