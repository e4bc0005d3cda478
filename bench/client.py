"""Load generator: one process, N threads, each making C unary calls.

    python bench/client.py SOCKET KIND THREADS CALLS REFS_FILE

KIND is status, list or stream. Prints a JSON object: per-call latencies
(µs) summarised, calls/s over the wall time of the whole run.
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time

import grpc

from crishim.cri.runtime.v1 import api_pb2, api_pb2_grpc


def main() -> None:
    sock, kind, threads, calls, refs_file = sys.argv[1:6]
    n_threads, n_calls = int(threads), int(calls)
    with open(refs_file) as f:
        refs = [line.strip() for line in f if line.strip()]
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    channel = grpc.insecure_channel(f"unix:{sock}", options=options)
    grpc.channel_ready_future(channel).result(timeout=30)
    stub = api_pb2_grpc.ImageServiceStub(channel)
    requests = [api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=r)) for r in refs]
    latencies: list[list[int]] = [[] for _ in range(n_threads)]
    errors: list[str] = []
    counted: list[int] = [0] * n_threads

    def run(t: int) -> None:
        out = latencies[t]
        clock = time.perf_counter_ns
        try:
            for i in range(n_calls):
                start = clock()
                if kind == "status":
                    stub.ImageStatus(requests[(i * n_threads + t) % len(requests)], timeout=30)
                elif kind == "list":
                    counted[t] = len(
                        stub.ListImages(api_pb2.ListImagesRequest(), timeout=120).images
                    )
                else:
                    counted[t] = sum(
                        len(m.images)
                        for m in stub.StreamImages(api_pb2.StreamImagesRequest(), timeout=120)
                    )
                out.append(clock() - start)
        except grpc.RpcError as exc:
            errors.append(f"{exc.code().name}: {exc.details()}")

    # warm-up: connection, caches
    warmup = requests[: min(len(requests), 200)] if kind == "status" else []
    for r in warmup:
        stub.ImageStatus(r, timeout=30)
    workers = [threading.Thread(target=run, args=(t,)) for t in range(n_threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - started
    flat = sorted(x for lat in latencies for x in lat)
    result: dict[str, object] = {
        "errors": errors[:3],
        "error_count": len(errors),
        "warmup_calls": len(warmup),
    }
    if flat:
        result.update(
            calls=len(flat),
            wall_s=wall,
            calls_per_s=len(flat) / wall,
            p50_us=flat[len(flat) // 2] / 1000,
            p99_us=flat[min(len(flat) - 1, int(len(flat) * 0.99))] / 1000,
            mean_us=statistics.fmean(flat) / 1000,
            images=max(counted),
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
