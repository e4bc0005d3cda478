"""The floor: a minimal gRPC server on the same stack answering one canned reply.

Same grpcio sync server, same thread pool size, same unix socket kind as
crishim; every ImageStatus call deserializes its request (as any server
must) and returns the same pre-serialized ImageStatusResponse. Nothing a
real server does can cost less on this stack.

    python bench/floor.py SOCKET WORKERS
"""

from __future__ import annotations

import signal
import sys
import threading
from concurrent import futures

import grpc

from crishim.cri.runtime.v1 import api_pb2

CANNED = api_pb2.ImageStatusResponse(
    image=api_pb2.Image(
        id="sha256:" + "ab" * 32,
        repo_tags=["bench.example/app1:v1"],
        repo_digests=["bench.example/app1@sha256:" + "cd" * 32],
        size=12345,
        uid=api_pb2.Int64Value(value=1001),
        spec=api_pb2.ImageSpec(image="sha256:" + "ab" * 32),
    )
).SerializeToString()


def main() -> None:
    sock, workers = sys.argv[1], int(sys.argv[2])

    def image_status(request: api_pb2.ImageStatusRequest, context: object) -> bytes:
        return CANNED

    handler = grpc.method_handlers_generic_handler(
        "runtime.v1.ImageService",
        {
            "ImageStatus": grpc.unary_unary_rpc_method_handler(
                image_status,
                request_deserializer=api_pb2.ImageStatusRequest.FromString,
                response_serializer=lambda b: b,
            )
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"unix:{sock}")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    server.stop(1).wait()


if __name__ == "__main__":
    main()
