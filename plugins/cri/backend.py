"""The ``cri`` backend: crishim in front of another CRI image service.

Every call is forwarded, as it comes, to the upstream's
``runtime.v1.ImageService`` (CRI-O, containerd's CRI plugin, another
crishim) over one gRPC channel, and its answer mapped to the domain model.
Nothing is cached: the upstream's store is the truth, so an image pulled or
removed there is seen at once, and every ImageStatus costs one upstream
call. crishim's tracing, filters and pins apply as for any backend.

* **Deadlines.** Every upstream call has one: ``call_timeout`` for lookups,
  lists, usage and removal; for a pull, what is left of the caller's
  deadline (``pull_timeout`` when the caller gave none). A pull whose
  caller goes away is cancelled upstream.
* **Trace context.** The current OpenTelemetry context (the catalog's span
  for this backend) is injected into the call's metadata with
  ``opentelemetry.propagate.inject`` (API only), so the upstream's server
  span joins the caller's trace.
* **Errors.** Upstream status codes become :mod:`crishim.errors`
  exceptions naming this backend and the endpoint. They are domain errors
  on purpose: the catalog then fails the call with them instead of asking
  the next backend. An unreachable upstream makes ImageStatus UNAVAILABLE,
  never "absent", because "absent" makes kubelet pull. Upstream messages are
  passed on, shortened, with the pull's secrets blanked out.
* **Availability.** ``start()`` does not fail when the upstream is down: it
  waits ``connect_timeout`` for it, logs a warning, and calls are
  UNAVAILABLE until the upstream is up. The channel reconnects as calls
  need it, retrying at most a second apart, so an upstream that starts or
  restarts later is used without restarting crishim.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import grpc

from crishim.cri.runtime.v1 import api_pb2, api_pb2_grpc
from crishim.cri_messages import image_fs_info
from crishim.errors import (
    BackendError,
    Cancelled,
    CrishimError,
    DeadlineExceeded,
    ImageNotFound,
    Unavailable,
)
from crishim.model import FilesystemUsage, ImageRecord
from crishim.reference import Reference, RefKind
from crishim.types import Backend, BackendContext, PullRequest

from .options import MAX_SOCKET_PATH, SCHEME, CriOptions
from .upstream import (
    error_for,
    pull_message,
    real_deadline,
    record_of,
    secrets_of,
    shorten,
    trace_metadata,
    upstream_id,
    upstream_reference,
    upstream_timeout,
)

log = logging.getLogger(__name__)

#: How often a forwarded pull checks whether its caller went away.
CANCEL_POLL_SECONDS = 0.1
#: While the upstream is away the channel retries after 100 ms, backing off
#: to 1 s at most (gRPC's default grows to 2 minutes): an upstream that
#: restarts is used again within about a second. A unix socket connect is cheap.
INITIAL_RECONNECT_BACKOFF_MS = 100
MAX_RECONNECT_BACKOFF_MS = 1000


class CriBackend:
    """Forwards the Backend and Puller protocols to an upstream CRI image service."""

    def __init__(self, context: BackendContext, options: CriOptions) -> None:
        self.context = context
        self.name = context.name
        self.options = options
        path = context.resolve_path(options.endpoint[len(SCHEME) :])
        if len(str(path).encode()) > MAX_SOCKET_PATH:
            raise ValueError(
                f"cri backend {self.name}: the socket path {path} is "
                f"{len(str(path).encode())} bytes long; unix sockets allow at most "
                f"{MAX_SOCKET_PATH}"
            )
        self.path = path
        #: ``unix:///abs/path``: named in every message, the record's source.
        self.endpoint = f"{SCHEME}{path}"
        self._channel: Any = None
        self._stub: Any = None
        self._reachable = False
        self._state_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        """Open the channel; wait up to ``connect_timeout`` for the upstream, never fail."""
        max_size = self.options.max_message_size
        connect_ms = max(int(self.options.connect_timeout * 1000), 1000)
        channel = grpc.insecure_channel(
            self.endpoint,
            options=[
                ("grpc.max_receive_message_length", max_size),
                ("grpc.max_send_message_length", max_size),
                ("grpc.initial_reconnect_backoff_ms", INITIAL_RECONNECT_BACKOFF_MS),
                ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
                # the longest one connection attempt may take
                ("grpc.min_reconnect_backoff_ms", connect_ms),
                ("grpc.enable_http_proxy", 0),
            ],
        )
        self._channel = channel
        self._stub = api_pb2_grpc.ImageServiceStub(channel)
        ready = grpc.channel_ready_future(channel)
        try:
            ready.result(timeout=self.options.connect_timeout)
        except grpc.FutureTimeoutError:
            ready.cancel()
            log.warning(
                "cri backend %s: upstream %s is not reachable (yet); calls fail with "
                "UNAVAILABLE until it is",
                self.name,
                self.endpoint,
            )
        else:
            self._reachable = True
            log.info("cri backend %s: forwarding to upstream %s", self.name, self.endpoint)
        channel.subscribe(self._on_connectivity)

    def close(self) -> None:
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            channel.unsubscribe(self._on_connectivity)
            channel.close()

    def _on_connectivity(self, state: Any) -> None:
        """Say once when the upstream is found gone and once when it is back.

        A dropped connection leaves the channel IDLE; the next call's
        connection attempt fails (TRANSIENT_FAILURE), which is when the
        loss is logged.
        """
        with self._state_lock:
            if state is grpc.ChannelConnectivity.READY and not self._reachable:
                self._reachable = True
                log.info("cri backend %s: upstream %s is reachable", self.name, self.endpoint)
            elif state is grpc.ChannelConnectivity.TRANSIENT_FAILURE and self._reachable:
                self._reachable = False
                log.warning(
                    "cri backend %s: lost upstream %s; calls fail with UNAVAILABLE until it "
                    "is back",
                    self.name,
                    self.endpoint,
                )

    # -- the Backend protocol --------------------------------------------

    def get_image(self, ref: Reference, runtime_handler: str = "") -> ImageRecord | None:
        """ImageStatus upstream; absent there is None, unreachable is UNAVAILABLE."""
        timeout = self.options.call_timeout
        return self._status(upstream_reference(ref), timeout, ref, runtime_handler)

    def for_runtime_handler(self, handler: str) -> Backend:
        """The backend as it answers for ``handler``: the handler goes upstream (HandlerAware)."""
        return HandlerView(self, handler)

    def match_id_prefix(self, prefix: str) -> Sequence[str]:
        """IDs from the upstream's list (the rare path: a reference that is a short ID)."""
        found: list[str] = []
        for record in self.list_images():
            if record.id.partition(":")[2].startswith(prefix):
                found.append(record.id)
                if len(found) == 2:
                    break
        return found

    def list_images(self) -> list[ImageRecord]:
        response: api_pb2.ListImagesResponse = self._call(
            "ListImages", api_pb2.ListImagesRequest(), self.options.call_timeout
        )
        return [record_of(image, self.endpoint) for image in response.images]

    def filesystem_usage(self) -> Sequence[FilesystemUsage]:
        """The upstream's ``image_filesystems``, then its ``container_filesystems``."""
        response: api_pb2.ImageFsInfoResponse = self._call(
            "ImageFsInfo", api_pb2.ImageFsInfoRequest(), self.options.call_timeout
        )
        return image_fs_info(response)

    def remove_image(self, record: ImageRecord, runtime_handler: str = "") -> None:
        """RemoveImage upstream by ID; an image already gone there is removed."""
        request = api_pb2.RemoveImageRequest(
            image=api_pb2.ImageSpec(image=upstream_id(record.id), runtime_handler=runtime_handler)
        )
        try:
            self._call("RemoveImage", request, self.options.call_timeout)
        except ImageNotFound:
            log.debug("cri backend %s: %s was already gone upstream", self.name, record.id)

    # -- the Puller protocol ---------------------------------------------

    def pull_image(self, request: PullRequest) -> ImageRecord:
        """PullImage upstream with the caller's auth, annotations, pod and deadline."""
        ref = request.ref
        pull = pull_message(request)
        deadline = real_deadline(request.deadline)
        if deadline is None:
            timeout, bound = self.options.pull_timeout, "pull_timeout"
        else:
            timeout, bound = upstream_timeout(deadline - time.monotonic()), "the caller's deadline"
            if timeout <= 0:
                raise DeadlineExceeded(
                    f"cri backend {self.name}: the caller's deadline ran out before the pull "
                    f"of {ref} was forwarded to upstream {self.endpoint}"
                )
        log.debug(
            "cri backend %s: forwarding PullImage of %s to %s (auth: %r, timeout %.3gs)",
            self.name,
            ref,
            self.endpoint,
            request.auth,
            timeout,
        )
        secrets = secrets_of(request.auth)
        stub = self._stub_or_unavailable()
        try:
            future = stub.PullImage.future(pull, timeout=timeout, metadata=trace_metadata())
        except ValueError as exc:  # the channel was closed under us
            raise self._closed(exc) from None
        response = self._wait_for_pull(future, request, timeout, bound, secrets)
        image_ref = response.image_ref
        if not image_ref:
            raise BackendError(
                self.name, f"upstream {self.endpoint} pulled {ref} but answered no image_ref"
            )
        status_timeout = self.options.call_timeout
        if deadline is not None:
            status_timeout = min(status_timeout, max(deadline - time.monotonic(), 0.001))
        record = self._status(image_ref, status_timeout, None, request.runtime_handler)
        if record is None:
            raise BackendError(
                self.name,
                f"upstream {self.endpoint} pulled {ref} as {shorten(image_ref)!r} "
                "but does not know that image",
            )
        return record

    def _wait_for_pull(
        self,
        future: Any,
        request: PullRequest,
        timeout: float,
        bound: str,
        secrets: Sequence[str],
    ) -> api_pb2.PullImageResponse:
        """The pull's answer; cancels it upstream as soon as the caller goes away."""
        while True:
            try:
                response: api_pb2.PullImageResponse = future.result(timeout=CANCEL_POLL_SECONDS)
                return response
            except grpc.FutureTimeoutError:
                if request.cancelled():
                    future.cancel()
                    raise Cancelled(
                        f"cri backend {self.name}: the caller went away; the pull of "
                        f"{request.ref} by upstream {self.endpoint} was cancelled"
                    ) from None
            except grpc.FutureCancelledError:
                raise Cancelled(
                    f"cri backend {self.name}: the pull of {request.ref} by upstream "
                    f"{self.endpoint} was cancelled"
                ) from None
            except grpc.RpcError as exc:
                if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise DeadlineExceeded(
                        f"cri backend {self.name}: upstream {self.endpoint} did not finish "
                        f"the pull of {request.ref} within {bound} ({timeout:.3g}s)"
                    ) from None
                raise self._error(exc, "PullImage", timeout, secrets) from None

    # -- calls -----------------------------------------------------------

    def _status(
        self, text: str, timeout: float, asked: Reference | None, runtime_handler: str = ""
    ) -> ImageRecord | None:
        request = api_pb2.ImageStatusRequest(
            image=api_pb2.ImageSpec(image=text, runtime_handler=runtime_handler)
        )
        try:
            response: api_pb2.ImageStatusResponse = self._call("ImageStatus", request, timeout)
        except ImageNotFound:  # a runtime that says NOT_FOUND instead of "image unset"
            return None
        if not response.HasField("image"):
            return None
        record = record_of(response.image, self.endpoint)
        if asked is not None and asked.kind is RefKind.ID and record.id != asked.digest:
            log.debug(
                "cri backend %s: upstream answered %s for ID %s; taken as absent",
                self.name,
                record.id,
                asked.digest,
            )
            return None
        return record

    def _call(self, method: str, request: Any, timeout: float) -> Any:
        """One unary call upstream, with a deadline and the trace context."""
        stub = self._stub_or_unavailable()
        try:
            return getattr(stub, method)(request, timeout=timeout, metadata=trace_metadata())
        except grpc.RpcError as exc:
            raise self._error(exc, method, timeout, ()) from None
        except ValueError as exc:  # the channel was closed under us
            raise self._closed(exc) from None

    def _stub_or_unavailable(self) -> Any:
        stub = self._stub
        if stub is None:
            raise Unavailable(
                f"cri backend {self.name}: upstream {self.endpoint} is unreachable: "
                "the backend is not started"
            )
        return stub

    def _error(
        self, exc: grpc.RpcError, method: str, timeout: float, secrets: Sequence[str]
    ) -> CrishimError:
        return error_for(exc, method, timeout, secrets, backend=self.name, endpoint=self.endpoint)

    def _closed(self, exc: Exception) -> Unavailable:
        return Unavailable(
            f"cri backend {self.name}: upstream {self.endpoint} is unreachable: {exc}"
        )


class HandlerView:
    """A ``cri`` backend as it answers for one runtime handler.

    ImageStatus, RemoveImage (and, through the request, PullImage) carry the
    handler upstream, which decides what it means; lists and usage are the
    upstream's, whatever the handler. The backend itself is started and
    closed by the catalog; a view shares its channel.
    """

    def __init__(self, backend: CriBackend, handler: str) -> None:
        self.backend = backend
        self.handler = handler
        self.name = backend.name

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def get_image(self, ref: Reference) -> ImageRecord | None:
        return self.backend.get_image(ref, self.handler)

    def match_id_prefix(self, prefix: str) -> Sequence[str]:
        return self.backend.match_id_prefix(prefix)

    def list_images(self) -> list[ImageRecord]:
        return self.backend.list_images()

    def filesystem_usage(self) -> Sequence[FilesystemUsage]:
        return self.backend.filesystem_usage()

    def remove_image(self, record: ImageRecord) -> None:
        self.backend.remove_image(record, self.handler)

    def pull_image(self, request: PullRequest) -> ImageRecord:
        return self.backend.pull_image(request)
