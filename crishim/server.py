"""The gRPC server: socket lifecycle, health, signals, graceful stop.

The serving model is grpcio's synchronous server on a small thread pool:
ImageStatus is answered from memory, so a call is short and a thread pool
of a few workers keeps the per-call overhead lowest on a 2-core node (see
docs/architecture.md for the measurements).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import threading
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from crishim.config import MAX_SOCKET_PATH
from crishim.cri_messages import IMAGE_SERVICE
from crishim.service import ImageService, add_image_service
from crishim.status import StatusEndpoint

log = logging.getLogger(__name__)


class SocketError(Exception):
    """The socket cannot be created or is owned by a live server."""


def prepare_socket_path(path: Path, gid: int | None = None) -> None:
    """Make the parent directory; replace a stale socket, never a live one.

    A parent directory this creates is ``0750``, of group ``gid`` when one
    is given (so members of the socket's group can reach the socket).
    """
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise SocketError(f"socket path {path} is longer than {MAX_SOCKET_PATH} bytes")
    if not path.parent.is_dir():
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            if gid is not None:
                os.chown(path.parent, -1, gid)
        except OSError as exc:
            raise SocketError(f"cannot create {path.parent}: {exc.strerror or exc}") from exc
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            log.info("removing stale socket %s", path)
            path.unlink(missing_ok=True)
            return
        raise SocketError(f"cannot probe existing socket {path}: {exc.strerror}") from exc
    finally:
        probe.close()
    raise SocketError(f"another server is listening on {path}; not taking it over")


class Server:
    """A started gRPC server bound to one unix socket."""

    def __init__(
        self,
        servicer: ImageService,
        socket_path: Path,
        *,
        workers: int = 4,
        pull_workers: int = 0,
        max_recv_message_size: int = 16 * 1024 * 1024,
        max_send_message_size: int = 16 * 1024 * 1024,
        socket_mode: int = 0o660,
        socket_gid: int | None = None,
        interceptors: Sequence[grpc.ServerInterceptor] = (),
        status: StatusEndpoint | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.socket_mode = socket_mode
        #: The status endpoint, started and stopped with the CRI socket.
        self.status = status
        self.socket_gid = socket_gid
        self.health = health.HealthServicer()
        self._stopped = threading.Event()
        self._socket_inode: int | None = None
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=workers + pull_workers, thread_name_prefix="crishim-rpc"
            ),
            interceptors=list(interceptors),
            options=[
                ("grpc.max_receive_message_length", max_recv_message_size),
                ("grpc.max_send_message_length", max_send_message_size),
                ("grpc.so_reuseport", 0),
            ],
        )
        add_image_service(servicer, self._grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)

    def start(self) -> None:
        prepare_socket_path(self.socket_path, self.socket_gid)
        # bind(2) creates the socket file with the process's umask: make that
        # give socket_mode, so the socket is never, even briefly, more open
        # (the umask is process-wide; meanwhile it only makes new files stricter)
        previous = os.umask(0o777 & ~self.socket_mode)
        try:
            self._grpc.add_insecure_port(f"unix:{self.socket_path}")
        except RuntimeError as exc:
            raise SocketError(f"cannot listen on {self.socket_path}: {exc}") from exc
        finally:
            os.umask(previous)
        self._grpc.start()
        try:
            # the mode and group are set before anyone is told the socket serves
            os.chmod(self.socket_path, self.socket_mode)
            if self.socket_gid is not None:
                os.chown(self.socket_path, -1, self.socket_gid)
        except OSError as exc:
            self._grpc.stop(None)
            self.socket_path.unlink(missing_ok=True)
            raise SocketError(
                f"cannot set the mode or group of {self.socket_path}: {exc.strerror or exc}"
            ) from exc
        self._socket_inode = self.socket_path.stat().st_ino
        if self.status is not None:
            try:
                self.status.start()
            except OSError as exc:
                log.warning("no status endpoint at %s: %s", self.status.path, exc.strerror)
                self.status = None
        for name in ("", IMAGE_SERVICE):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.debug("serving %s on unix://%s", IMAGE_SERVICE, self.socket_path)

    def stop(self, grace: float) -> None:
        """Stop accepting calls, let in-flight ones finish within ``grace`` seconds."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        log.info("stopping: in-flight calls have %.1fs to finish", grace)
        self._grpc.stop(grace).wait()
        if self.status is not None:
            self.status.stop()
        self._remove_socket()
        log.debug("server stopped; socket %s removed", self.socket_path)

    def wait(self, timeout: float | None = None) -> bool:
        return self._grpc.wait_for_termination(timeout)  # type: ignore[no-any-return]

    def _remove_socket(self) -> None:
        # Only remove the file we created: a successor may already own the path.
        try:
            if (
                self._socket_inode is not None
                and self.socket_path.stat().st_ino == self._socket_inode
            ):
                self.socket_path.unlink()
        except FileNotFoundError:
            pass
