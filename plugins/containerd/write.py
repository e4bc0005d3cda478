"""containerd's Content.Write stream, pipelined.

The stream's protocol: a STAT opens (or finds) the ingest named by a ref
and says how far it got; WRITE messages at increasing offsets carry the
bytes; a COMMIT with the expected size and digest makes the blob visible
with its labels. containerd answers every message, in order.
"""

from __future__ import annotations

import contextlib
import queue
from typing import TYPE_CHECKING, Any

from .api.services.content.v1 import content_pb2

if TYPE_CHECKING:
    from .client import ContainerdClient

#: What a WRITE message carries at most (containerd accepts 16 MiB messages).
WRITE_CHUNK = 1024 * 1024
_END = object()


class WriteStream:
    """One Content.Write stream, pipelined.

    containerd answers every message, in order. :meth:`push` sends without
    waiting (reading old answers once ``WINDOW`` are unread, so neither
    side's flow-control window fills); :meth:`send` sends and reads every
    answer still due, returning the last. At most ``QUEUED`` messages wait
    to be sent, so a slow containerd holds the producer back.
    """

    WINDOW = 64
    QUEUED = 8

    def __init__(self, client: ContainerdClient, lease: str, timeout: float | None) -> None:
        self.client = client
        self._requests: queue.Queue[Any] = queue.Queue(maxsize=self.QUEUED)
        self._responses: Any = client.content.Write(
            iter(self._requests.get, _END), metadata=client.metadata(lease), timeout=timeout
        )
        self._unread = 0

    def _put(self, item: object) -> None:
        while True:
            try:
                self._requests.put(item, timeout=0.2)
                return
            except queue.Full:
                if self._responses.done():
                    # the call ended (an error): surface it instead of waiting forever
                    self._read()
                    raise StopIteration from None

    def _read(self) -> content_pb2.WriteContentResponse:
        response: content_pb2.WriteContentResponse = next(self._responses)
        self._unread -= 1
        return response

    def push(self, request: content_pb2.WriteContentRequest) -> None:
        """Send one message without waiting for its answer (raises grpc.RpcError)."""
        self._put(request)
        self._unread += 1
        while self._unread > self.WINDOW:
            self._read()

    def send(self, request: content_pb2.WriteContentRequest) -> content_pb2.WriteContentResponse:
        """Send one message and read every answer due; the last one is this message's."""
        self._put(request)
        self._unread += 1
        response = self._read()
        while self._unread > 0:
            response = self._read()
        return response

    def close(self) -> None:
        with contextlib.suppress(queue.Full):
            self._requests.put_nowait(_END)
        with contextlib.suppress(Exception):
            self._responses.cancel()
