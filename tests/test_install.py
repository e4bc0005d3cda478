"""The node install: the wheel, installed with constraints.txt into a venv of its own.

``.ci/run`` builds the wheel (``python -m build``), installs it into a fresh
venv with ``pip install -c constraints.txt`` and names that venv in
``CRISHIM_NODE_VENV``; the test that runs it is skipped without one, except
under CI, where it must run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from importlib import metadata
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from crishim.cri.runtime.v1 import api_pb2, api_pb2_grpc
from crishim.testing.server import short_tempdir

ROOT = Path(__file__).resolve().parents[1]
LAYOUT = ROOT / "examples" / "layouts" / "demo"


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not name==version"
            pins[canonicalize_name(name)] = version
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


def test_constraints_pin_every_requirement_within_its_range() -> None:
    pins = _constraints()
    for req in _requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in constraints.txt (scripts/lock.sh)"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[name]}, outside {req}"
        )


def test_constraints_are_closed_under_the_dependencies_of_what_they_pin() -> None:
    """Every package a pinned package needs is pinned too (nothing floats)."""
    pins = _constraints()
    env = default_environment()
    for name in pins:
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            pytest.fail(f"{name} is pinned but not installed here: rerun scripts/lock.sh")
        for text in requires:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
                continue
            assert canonicalize_name(req.name) in pins, (
                f"{name} needs {req.name}, which constraints.txt does not pin"
            )


def _node_venv() -> Path:
    venv = os.environ.get("CRISHIM_NODE_VENV")
    if not venv:
        if os.environ.get("CI"):
            pytest.fail("CI must set CRISHIM_NODE_VENV (.ci/run builds the node install)")
        pytest.skip("no node install (CRISHIM_NODE_VENV; .ci/run makes one)")
    return Path(venv)


def test_the_installed_wheel_serves_reloads_and_stops(tmp_path: Path) -> None:
    venv = _node_venv()
    crishim = venv / "bin" / "crishim"
    where = subprocess.run(
        [venv / "bin" / "python", "-c", "import crishim; print(crishim.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout
    assert "site-packages" in where and str(ROOT) not in where, "the wheel, not the source tree"
    subprocess.run([venv / "bin" / "pip", "check"], check=True, capture_output=True)

    default = subprocess.run(
        [crishim, "config", "default"], capture_output=True, text=True, check=True
    ).stdout
    (tmp_path / "default.yaml").write_text(default)
    subprocess.run([crishim, "check-config", tmp_path / "default.yaml"], check=True)

    sockdir = short_tempdir()
    sock = sockdir / "crishim.sock"
    config = tmp_path / "config.yaml"
    backend = f"backends: [{{name: demo, type: oci-dir, options: {{path: '{LAYOUT}'}}}}]\n"
    config.write_text(f"server: {{listen: 'unix://{sock}'}}\n" + backend)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NOTIFY_SOCKET")}
    proc = subprocess.Popen(
        [crishim, "serve"],
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "CRISHIM_CONFIG": str(config)},
        cwd=tmp_path,
    )
    try:
        _wait_serving(sock, proc)
        with grpc.insecure_channel(f"unix:{sock}") as channel:
            images = api_pb2_grpc.ImageServiceStub(channel)
            assert len(images.ListImages(api_pb2.ListImagesRequest(), timeout=30).images) >= 6
        config.write_text(
            f"server: {{listen: 'unix://{sock}'}}\npinned: ['example.com/crishim/*']\n" + backend
        )
        proc.send_signal(signal.SIGHUP)
        _wait_pinned(sock, proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        _, stderr = proc.communicate(timeout=30)
        shutil.rmtree(sockdir, ignore_errors=True)
    assert f"starting: config {config}" in stderr
    assert "reloaded" in stderr and "stopped" in stderr


def _wait_serving(sock: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "crishim serve exited"
        if sock.exists():
            with grpc.insecure_channel(f"unix:{sock}") as channel:
                try:
                    reply = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=2
                    )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
        time.sleep(0.1)
    raise AssertionError("the installed crishim did not come up")


def _wait_pinned(sock: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    request = api_pb2.ImageStatusRequest(
        image=api_pb2.ImageSpec(image="example.com/crishim/hello:1.0")
    )
    with grpc.insecure_channel(f"unix:{sock}") as channel:
        images = api_pb2_grpc.ImageServiceStub(channel)
        while time.monotonic() < deadline:
            assert proc.poll() is None
            if images.ImageStatus(request, timeout=30).image.pinned:
                return
            time.sleep(0.1)
    raise AssertionError("the reload did not apply the new pins")


def test_the_unit_file_is_a_notify_service_ordered_before_kubelet() -> None:
    text = (ROOT / "contrib" / "systemd" / "crishim.service").read_text()
    lines = {
        line.split("=", 1)[0]: line.split("=", 1)[1]
        for line in text.splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert lines["Type"] == "notify"
    assert lines["Restart"] == "always"
    assert "kubelet.service" in lines["Before"]
    assert lines["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert lines["ExecStart"] == "/opt/crishim/bin/crishim serve"
    for key in ("ProtectSystem", "NoNewPrivileges", "ReadWritePaths", "CapabilityBoundingSet"):
        assert key in lines
    assert (
        "/run/crishim" in lines["ReadWritePaths"] and "/var/lib/crishim" in lines["ReadWritePaths"]
    )


def test_the_unit_file_verifies(tmp_path: Path) -> None:
    analyze = Path("/usr/bin/systemd-analyze")
    if not analyze.exists():
        pytest.skip("no systemd-analyze")
    unit = (ROOT / "contrib" / "systemd" / "crishim.service").read_text()
    # verify wants the ExecStart binary to exist: point it at this one
    here = Path(sys.executable).parent / "crishim"
    (tmp_path / "crishim.service").write_text(unit.replace("/opt/crishim/bin/crishim", str(here)))
    done = subprocess.run(
        [analyze, "verify", tmp_path / "crishim.service"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "crishim.service" not in done.stderr, done.stderr
