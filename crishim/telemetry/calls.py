"""What the server span and the RPC metrics share: code run around every CRI call.

:class:`CallObserver` is a gRPC server interceptor for the CRI service's
calls with a unary request (every call it has; the health service is left
alone): :meth:`~CallObserver.start` runs before the servicer, in its
thread, and :meth:`~CallObserver.end` after it, with the status code the
call ends with. A streaming answer (StreamImages) ends when its last
message is sent, or when the client goes away (CANCELLED).

The wrapped handler is made once per method, not per call: the servicer's
handlers are registered once, so the one the next interceptor gives back is
the same object call after call.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from crishim.telemetry import CRI_PREFIX

Continuation = Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None]


def call_code(
    context: grpc.ServicerContext, failed: grpc.StatusCode | None
) -> grpc.StatusCode | None:
    """The code a call ends with: as set on its context (``abort``), else ``failed`` (None: OK)."""
    try:
        code: grpc.StatusCode | None = context.code()
    except (AttributeError, RuntimeError):  # a context of another kind (tests)
        code = None
    return code if code is not None else failed


class CallObserver(grpc.ServerInterceptor):  # type: ignore[misc]
    """Runs :meth:`start` and :meth:`end` around every CRI call; subclasses say what."""

    def __init__(self) -> None:
        #: method -> (the handler last wrapped, its wrapper)
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    @abc.abstractmethod
    def start(self, method: str, context: grpc.ServicerContext) -> Any:
        """Before the servicer; what it returns is given to :meth:`end`."""

    @abc.abstractmethod
    def end(
        self, state: Any, method: str, context: grpc.ServicerContext, code: grpc.StatusCode | None
    ) -> None:
        """After the servicer: ``code`` is the call's status code, None for OK."""

    def raised(self, exc: BaseException) -> None:
        """The servicer raised ``exc`` (not ``context.abort()``), before :meth:`end`."""

    def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        method: str = details.method
        if handler is None or handler.request_streaming or not method.startswith(CRI_PREFIX):
            return handler
        wrapped = self._wrapped.get(method)
        if wrapped is None or wrapped[0] is not handler:
            wrapped = self._wrapped[method] = (handler, self._wrap(method, handler))
        return wrapped[1]

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        start, end, raised = self.start, self.end, self.raised

        if handler.response_streaming:
            stream = handler.unary_stream

            def unary_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                state = start(method, context)
                failed: grpc.StatusCode | None = grpc.StatusCode.UNKNOWN
                try:
                    yield from stream(request, context)
                    failed = None
                except GeneratorExit:
                    failed = grpc.StatusCode.CANCELLED  # the client went away mid-stream
                    raise
                except BaseException as exc:
                    if type(exc) is not Exception:  # a bare Exception is context.abort()
                        raised(exc)
                    raise
                finally:
                    end(state, method, context, call_code(context, failed))

            return grpc.unary_stream_rpc_method_handler(
                unary_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )

        unary = handler.unary_unary

        def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
            state = start(method, context)
            failed: grpc.StatusCode | None = grpc.StatusCode.UNKNOWN
            try:
                response = unary(request, context)
                failed = None
                return response
            except BaseException as exc:
                if type(exc) is not Exception:
                    raised(exc)
                raise
            finally:
                end(state, method, context, call_code(context, failed))

        return grpc.unary_unary_rpc_method_handler(
            unary_unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
