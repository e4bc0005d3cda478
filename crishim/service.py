"""protobuf ⇄ domain model, and domain errors ⇄ gRPC status codes.

With :mod:`crishim.cri_messages` (which builds the messages from the domain
model), the only module that knows the CRI messages. It parses references,
asks the catalog, and answers; every error leaves here as a gRPC status
with a message that names the problem, never as a crash.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import replace
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from crishim import errors, reference, tracing
from crishim.cri.runtime.v1 import api_pb2, api_pb2_grpc
from crishim.cri_messages import (
    EMPTY_STATUS,
    IMAGE_SERVICE,
    image_message,
    image_status_bytes,
    pod_of,
    usage_message,
    verbose_info,
)
from crishim.model import Answer, FilesystemUsage
from crishim.pulls import PullBoard, PullState
from crishim.reference import Reference
from crishim.types import PullAuth, PullRequest

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

_STATUS: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (reference.ReferenceError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.InvalidReference, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.AmbiguousReference, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ImageNotFound, grpc.StatusCode.NOT_FOUND),
    (errors.NotSupported, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ReadOnly, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.PreconditionFailed, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.Cancelled, grpc.StatusCode.CANCELLED),
    (errors.DataLoss, grpc.StatusCode.DATA_LOSS),
    (errors.TooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.BackendError, grpc.StatusCode.INTERNAL),
    (errors.CrishimError, grpc.StatusCode.UNKNOWN),
)

#: How often a pull's server thread looks whether its client is still there.
PULL_WATCH_SECONDS = 0.2
#: Pulls waiting for a slot before one more is refused (server.max_queued_pulls).
DEFAULT_MAX_QUEUED_PULLS = 64

#: StreamImages batches stay under this many bytes unless configured otherwise.
DEFAULT_STREAM_BATCH_BYTES = 1024 * 1024


def status_for(exc: Exception) -> grpc.StatusCode:
    for kind, code in _STATUS:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


_logged: set[tuple[str, str]] = set()


def _log_unexpected(method: str, exc: Exception) -> None:
    """Log an unexpected error with its traceback the first time per (call, kind), then
    one line at debug level: a client repeating a bad call cannot grow the log."""
    key = (method, type(exc).__name__)
    if key in _logged:
        log.debug("%s failed again: %r", method, exc)
        return
    if len(_logged) < 1000:
        _logged.add(key)
    log.error("%s failed", method, exc_info=exc)


class Malformed:
    """A request whose bytes are not the message they must be (INVALID_ARGUMENT)."""

    def __init__(self, message: type[Message]) -> None:
        self.message = message

    def __str__(self) -> str:
        return f"the request is not a valid {self.message.DESCRIPTOR.full_name}"


def _parser(message: type[Message]) -> Callable[[bytes], Message | Malformed]:
    """A request deserializer that hands the servicer a Malformed instead of failing
    (grpcio would answer a bad request INTERNAL)."""

    def parse(data: bytes) -> Message | Malformed:
        try:
            return message.FromString(data)
        except (DecodeError, RecursionError, ValueError):
            return Malformed(message)

    return parse


def _rpc(method: F) -> F:
    """Turn domain errors into statuses; an unexpected error is INTERNAL, logged once."""

    @functools.wraps(method)
    def wrapper(self: ImageService, request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, Malformed):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(request))
        try:
            return method(self, request, context)
        except (errors.CrishimError, reference.ReferenceError) as exc:
            tracing.record_error(exc)
            context.abort(status_for(exc), str(exc))
        except Exception as exc:
            tracing.record_error(exc)
            _log_unexpected(method.__name__, exc)
            context.abort(
                grpc.StatusCode.INTERNAL, f"{method.__name__}: internal error (see the server log)"
            )

    return wrapper  # type: ignore[return-value]


def _parse(text: str, what: str = "image reference") -> Reference:
    tracing.note_reference(text)
    if not text:
        raise errors.InvalidReference(f"{what} is empty")
    return reference.parse(text)


def _serialize(message: Any) -> bytes:
    """Response serializer that lets ready answers (bytes) through unchanged."""
    if type(message) is bytes:
        return message
    return message.SerializeToString()  # type: ignore[no-any-return]


def add_image_service(servicer: ImageService, server: grpc.Server) -> None:
    """Register the servicer with serializers that accept ready answers."""
    methods: dict[str, tuple[Callable[..., Any], type[Message]]] = {
        "ListImages": (grpc.unary_unary_rpc_method_handler, api_pb2.ListImagesRequest),
        "StreamImages": (grpc.unary_stream_rpc_method_handler, api_pb2.StreamImagesRequest),
        "ImageStatus": (grpc.unary_unary_rpc_method_handler, api_pb2.ImageStatusRequest),
        "PullImage": (grpc.unary_unary_rpc_method_handler, api_pb2.PullImageRequest),
        "RemoveImage": (grpc.unary_unary_rpc_method_handler, api_pb2.RemoveImageRequest),
        "ImageFsInfo": (grpc.unary_unary_rpc_method_handler, api_pb2.ImageFsInfoRequest),
    }
    handlers = {
        name: make(
            getattr(servicer, name),
            request_deserializer=_parser(request),
            response_serializer=_serialize,
        )
        for name, (make, request) in methods.items()
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(IMAGE_SERVICE, handlers),)
    )
    server.add_registered_method_handlers(IMAGE_SERVICE, handlers)


def _echoed(request_spec: api_pb2.ImageSpec) -> str:
    """The request's ``user_specified_image`` if it is to be echoed (bounded), else ""."""
    text = request_spec.user_specified_image
    return text if len(text) <= reference.MAX_REFERENCE_LENGTH else ""


#: A "time remaining" beyond this means the caller set no deadline: grpcio
#: reports an unbounded call as a huge number of seconds, not None.
_NO_DEADLINE = 365 * 24 * 3600.0


def _gone(context: grpc.ServicerContext, deadline: float | None) -> Callable[[], bool]:
    """True once the caller went away or its deadline passed."""

    def gone() -> bool:
        if deadline is not None and time.monotonic() >= deadline:
            return True
        return not context.is_active()

    return gone


def _deadline(remaining: float | None) -> float | None:
    """The ``time.monotonic()`` value a call must end by, or None for none."""
    if remaining is None or remaining > _NO_DEADLINE:
        return None
    return time.monotonic() + remaining


class RouteCalls(Protocol):
    """The calls of one runtime handler's route."""

    def image_status(self, ref: Reference) -> Answer | None: ...

    def list_images(self, ref: Reference | None = None) -> list[Answer]: ...

    def remove_image(self, ref: Reference) -> Answer | None: ...


class CatalogCalls(Protocol):
    """What the servicer asks of a catalog (a :class:`~crishim.catalog.Catalog`, or
    the :class:`~crishim.live.LiveCatalog` that swaps catalogs on reload)."""

    def route(self, handler: str) -> RouteCalls: ...

    def list_images_every_handler(self) -> list[Answer]: ...

    def pull_image(self, request: PullRequest) -> Answer: ...

    def pulling_backend(self, handler: str = "") -> str: ...

    def filesystems(self) -> tuple[list[FilesystemUsage], list[FilesystemUsage]]: ...


class ImageService(api_pb2_grpc.ImageServiceServicer):
    """The ``runtime.v1.ImageService`` servicer."""

    def __init__(
        self,
        catalog: CatalogCalls,
        *,
        max_send_message_size: int,
        stream_batch_bytes: int = DEFAULT_STREAM_BATCH_BYTES,
        max_concurrent_pulls: int = 4,
        board: PullBoard | None = None,
    ) -> None:
        self.catalog = catalog
        self.max_send_message_size = max_send_message_size
        self.stream_batch_bytes = min(stream_batch_bytes, max_send_message_size // 2)
        self.max_concurrent_pulls = max_concurrent_pulls
        #: Admission and progress of pulls (crishim.pulls).
        self.board = board or PullBoard(max_concurrent_pulls, DEFAULT_MAX_QUEUED_PULLS)
        self._unencodable: set[tuple[str, str]] = set()

    @_rpc
    def ImageStatus(
        self, request: api_pb2.ImageStatusRequest, context: grpc.ServicerContext
    ) -> api_pb2.ImageStatusResponse | bytes:
        ref = _parse(request.image.image)
        answer = self.catalog.route(request.image.runtime_handler).image_status(ref)
        tracing.note_answer(ref, answer)
        if answer is None:
            # the CRI's rule: an absent (or hidden) image is OK with ``image``
            # unset, never NOT_FOUND; RemoveImage of one is OK too
            return EMPTY_STATUS
        user_specified = _echoed(request.image)
        if not request.verbose and not user_specified:
            return image_status_bytes(answer)
        # the CRI: user_specified_image is set when the call's context has it
        response = api_pb2.ImageStatusResponse(image=image_message(answer))
        response.image.spec.user_specified_image = user_specified
        if request.verbose:
            response.info.update(verbose_info(answer))
        return response

    def _answers(self, request: Any) -> list[Answer]:
        spec = request.filter.image if request.HasField("filter") else api_pb2.ImageSpec()
        ref = _parse(spec.image, "filter image reference") if spec.image else None
        if ref is None and not spec.runtime_handler:
            return self.catalog.list_images_every_handler()
        return self.catalog.route(spec.runtime_handler).list_images(ref)

    def _wire(self, answers: list[Answer]) -> Iterator[bytes]:
        """Each answer's ready bytes; an answer that cannot be encoded (a backend's
        record with fields of the wrong type) is left out, not the whole list."""
        for answer in answers:
            try:
                yield image_status_bytes(answer)
            except (TypeError, ValueError) as exc:
                key = (answer.backend, type(exc).__name__)
                if key not in self._unencodable:
                    self._unencodable.add(key)
                    log.error(
                        "backend %s: image %r cannot be answered (%s); left out of lists",
                        answer.backend,
                        getattr(answer.record, "id", "?"),
                        exc,
                    )

    @_rpc
    def ListImages(
        self, request: api_pb2.ListImagesRequest, context: grpc.ServicerContext
    ) -> bytes:
        answers = self._answers(request)
        tracing.note_answers(answers)
        data = b"".join(list(self._wire(answers)))
        if len(data) > self.max_send_message_size:
            raise errors.TooLarge(
                f"ListImages answer of {len(answers)} images is {len(data)} bytes, over the "
                f"{self.max_send_message_size}-byte message limit; use StreamImages"
            )
        return data

    @_rpc
    def StreamImages(
        self, request: api_pb2.StreamImagesRequest, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        answers = self._answers(request)
        tracing.note_answers(answers)
        return self._batches(answers)

    def _batches(self, answers: list[Answer]) -> Iterator[bytes]:
        """StreamImagesResponse messages (serialized) of at most the batch limit.

        Every image is in exactly one batch; an image larger than the limit
        on its own travels alone (still within the message size limit).
        """
        limit = self.stream_batch_bytes
        batch: list[bytes] = []
        size = 0
        for entry in self._wire(answers):
            if batch and size + len(entry) > limit:
                yield b"".join(batch)
                batch, size = [], 0
            batch.append(entry)
            size += len(entry)
        if batch:
            yield b"".join(batch)

    @_rpc
    def PullImage(
        self, request: api_pb2.PullImageRequest, context: grpc.ServicerContext
    ) -> api_pb2.PullImageResponse:
        ref = _parse(request.image.image)
        remaining = context.time_remaining()
        auth = None
        if request.HasField("auth"):
            a = request.auth
            auth = PullAuth(
                username=a.username,
                password=a.password,
                auth=a.auth,
                server_address=a.server_address,
                identity_token=a.identity_token,
                registry_token=a.registry_token,
            )
        pull = PullRequest(
            ref=ref,
            auth=auth,
            deadline=_deadline(remaining),
            cancelled=lambda: not context.is_active(),
            annotations=dict(request.image.annotations),
            runtime_handler=request.image.runtime_handler,
            user_specified_image=_echoed(request.image),
            pod=pod_of(request),
        )
        state = self.board.enter(ref, self.catalog.pulling_backend(pull.runtime_handler))
        outcome = "error"
        try:
            gone = _gone(context, pull.deadline)
            if not self.board.wait(state, gone):
                if pull.deadline is not None and time.monotonic() >= pull.deadline:
                    raise errors.DeadlineExceeded(f"pull {ref}: the deadline ran out in the queue")
                raise errors.Cancelled(f"pull {ref}: the client went away while it was queued")
            pull = replace(pull, progress=state.update)
            answer = self._pull(pull, context, state)
            outcome = "ok"
        except errors.CrishimError as exc:
            outcome = status_for(exc).name
            raise
        finally:
            self.board.finish(state, outcome)
        tracing.note_answer(ref, answer)
        return api_pb2.PullImageResponse(image_ref=answer.record.id)

    def _pull(self, pull: PullRequest, context: grpc.ServicerContext, state: PullState) -> Answer:
        """Run the pull on a thread of its own, holding the pull's slot, until it ends
        or its client goes away: then the slot is free again at once, whatever the
        backend does (it is told through ``pull.cancelled`` and may finish later)."""
        done: Future[Answer] = Future()

        def release() -> None:
            self.board.leave(state)

        def run() -> None:
            try:
                done.set_result(self.catalog.pull_image(pull))
            except BaseException as exc:
                done.set_exception(exc)
            finally:
                release()

        thread = threading.Thread(
            target=contextvars.copy_context().run, args=(run,), name="crishim-pull", daemon=True
        )
        try:
            thread.start()
        except BaseException:
            release()
            raise
        while True:
            try:
                return done.result(timeout=PULL_WATCH_SECONDS)
            except FutureTimeout:
                self.board.check_slow(state)
                if context.is_active():
                    continue
            release()
            log.warning(
                "pull of %s: the client went away; its slot is free, the backend's pull "
                "may still be running",
                pull.ref,
            )
            raise errors.Cancelled(f"pull {pull.ref}: the client went away")

    @_rpc
    def RemoveImage(
        self, request: api_pb2.RemoveImageRequest, context: grpc.ServicerContext
    ) -> api_pb2.RemoveImageResponse:
        ref = _parse(request.image.image)
        removed = self.catalog.route(request.image.runtime_handler).remove_image(ref)
        tracing.note_answer(ref, removed)
        if removed is not None:
            log.info("removed image %s (%s)", removed.record.id, ref.raw)
        return api_pb2.RemoveImageResponse()

    @_rpc
    def ImageFsInfo(
        self, request: api_pb2.ImageFsInfoRequest, context: grpc.ServicerContext
    ) -> api_pb2.ImageFsInfoResponse:
        now = time.time_ns()
        images, containers = self.catalog.filesystems()
        return api_pb2.ImageFsInfoResponse(
            image_filesystems=[usage_message(u, now) for u in images],
            container_filesystems=[usage_message(u, now) for u in containers],
        )
