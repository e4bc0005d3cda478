"""Thin helpers over the CRI RuntimeService stubs, for tests that run pods.

A :class:`CriClient` runs host-network pod sandboxes (no CNI needed) whose
logs go under a directory the test owns, creates and starts containers from
an image reference, waits (bounded) for them to exit, reads their log lines,
and removes every pod it started::

    cri = CriClient(containerd.channel(), log_root=tmp_path / "pods")
    pod = cri.run_pod("echo")
    cid = cri.run_container(pod, "hello", "crishim.test/busybox:1",
                            command=["/bin/echo", "hello"])
    cri.wait_exited(cid)
    assert cri.log_lines(pod, cid) == ["hello"]
    cri.close()
"""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import grpc

from crishim.cri.runtime.v1 import (
    api_pb2,
    api_pb2_grpc,
    runtime_service_pb2,
    runtime_service_pb2_grpc,
)

CALL_TIMEOUT = 60.0
EXIT_TIMEOUT = 30.0

rs = runtime_service_pb2


@dataclass
class Pod:
    id: str
    name: str
    config: api_pb2.PodSandboxConfig
    log_dir: Path
    containers: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LogLine:
    """One line of a CRI container log: ``<time> <stream> <P|F> <text>``."""

    time: str
    stream: str
    partial: bool
    text: str


def parse_log(text: str) -> list[LogLine]:
    lines = []
    for raw in text.splitlines():
        when, stream, tag, *rest = raw.split(" ", 3)
        lines.append(LogLine(when, stream, tag == "P", rest[0] if rest else ""))
    return lines


class CriClient:
    """RuntimeService and ImageService stubs on one channel, plus pod bookkeeping."""

    def __init__(self, channel: grpc.Channel, log_root: Path) -> None:
        self.runtime = runtime_service_pb2_grpc.RuntimeServiceStub(channel)
        self.images = api_pb2_grpc.ImageServiceStub(channel)
        self.log_root = log_root
        self.pods: list[Pod] = []

    # ------------------------------------------------------------------ pods

    def pod_config(self, name: str) -> api_pb2.PodSandboxConfig:
        uid = uuid.uuid4().hex
        log_dir = self.log_root / f"default_{name}_{uid}"
        log_dir.mkdir(parents=True, exist_ok=True)
        return api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=name, uid=uid, namespace="default"),
            log_directory=str(log_dir),
            linux=api_pb2.LinuxPodSandboxConfig(
                security_context=api_pb2.LinuxSandboxSecurityContext(
                    namespace_options=api_pb2.NamespaceOption(network=api_pb2.NODE)
                )
            ),
        )

    def run_pod(self, name: str) -> Pod:
        """Run a host-network pod sandbox (its pause image must be in containerd)."""
        config = self.pod_config(name)
        response = self.runtime.RunPodSandbox(
            rs.RunPodSandboxRequest(config=config), timeout=CALL_TIMEOUT
        )
        pod = Pod(response.pod_sandbox_id, name, config, Path(config.log_directory))
        self.pods.append(pod)
        return pod

    def pod_status(self, pod: Pod) -> rs.PodSandboxStatus:
        response = self.runtime.PodSandboxStatus(
            rs.PodSandboxStatusRequest(pod_sandbox_id=pod.id), timeout=CALL_TIMEOUT
        )
        return cast(rs.PodSandboxStatus, response.status)

    def remove_pod(self, pod: Pod) -> None:
        """Stop and remove the pod and its containers (both calls are idempotent)."""
        self.runtime.StopPodSandbox(
            rs.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=CALL_TIMEOUT
        )
        self.runtime.RemovePodSandbox(
            rs.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=CALL_TIMEOUT
        )
        if pod in self.pods:
            self.pods.remove(pod)

    # ------------------------------------------------------------------ containers

    def create_container(
        self,
        pod: Pod,
        name: str,
        image: str,
        *,
        command: list[str] | None = None,
        args: list[str] | None = None,
    ) -> str:
        config = rs.ContainerConfig(
            metadata=rs.ContainerMetadata(name=name),
            image=api_pb2.ImageSpec(image=image),
            command=command or [],
            args=args or [],
            log_path=f"{name}.log",
        )
        response = self.runtime.CreateContainer(
            rs.CreateContainerRequest(
                pod_sandbox_id=pod.id, config=config, sandbox_config=pod.config
            ),
            timeout=CALL_TIMEOUT,
        )
        pod.containers.append(response.container_id)
        return cast(str, response.container_id)

    def start_container(self, container_id: str) -> None:
        self.runtime.StartContainer(
            rs.StartContainerRequest(container_id=container_id), timeout=CALL_TIMEOUT
        )

    def run_container(
        self,
        pod: Pod,
        name: str,
        image: str,
        *,
        command: list[str] | None = None,
        args: list[str] | None = None,
    ) -> str:
        """Create and start a container; return its ID."""
        container_id = self.create_container(pod, name, image, command=command, args=args)
        self.start_container(container_id)
        return container_id

    def container_status(self, container_id: str) -> rs.ContainerStatus:
        response = self.runtime.ContainerStatus(
            rs.ContainerStatusRequest(container_id=container_id), timeout=CALL_TIMEOUT
        )
        return cast(rs.ContainerStatus, response.status)

    def wait_exited(self, container_id: str, timeout: float = EXIT_TIMEOUT) -> rs.ContainerStatus:
        """The container's status once it has exited (AssertionError after ``timeout``)."""
        end = time.monotonic() + timeout
        while True:
            status = self.container_status(container_id)
            if status.state == rs.CONTAINER_EXITED:
                return status
            if time.monotonic() > end:
                raise AssertionError(
                    f"container {container_id} did not exit within {timeout}s "
                    f"(state {rs.ContainerState.Name(status.state)})"
                )
            time.sleep(0.05)

    def log_path(self, pod: Pod, container_id: str) -> Path:
        status = self.container_status(container_id)
        return Path(status.log_path) if status.log_path else pod.log_dir / status.metadata.name

    def log(self, pod: Pod, container_id: str) -> list[LogLine]:
        return parse_log(self.log_path(pod, container_id).read_text())

    def log_lines(self, pod: Pod, container_id: str, stream: str | None = None) -> list[str]:
        """The text of each complete log line (of one stream, or both)."""
        return [
            line.text
            for line in self.log(pod, container_id)
            if not line.partial and (stream is None or line.stream == stream)
        ]

    def stop_container(self, container_id: str, timeout: int = 0) -> None:
        self.runtime.StopContainer(
            rs.StopContainerRequest(container_id=container_id, timeout=timeout),
            timeout=CALL_TIMEOUT,
        )

    def remove_container(self, container_id: str) -> None:
        self.runtime.RemoveContainer(
            rs.RemoveContainerRequest(container_id=container_id), timeout=CALL_TIMEOUT
        )
        for pod in self.pods:
            if container_id in pod.containers:
                pod.containers.remove(container_id)

    # ------------------------------------------------------------------ cleanup

    def close(self) -> None:
        """Remove every pod this client started (best effort: containerd may be gone)."""
        for pod in list(self.pods):
            with contextlib.suppress(grpc.RpcError):
                self.remove_pod(pod)
        self.pods.clear()

    def __enter__(self) -> CriClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
