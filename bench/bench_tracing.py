"""What tracing costs: ImageStatus calls/s with tracing on against off, in one run.

    .venv/bin/python bench/bench_tracing.py [--calls 2500] [--rounds 3] [--floor]
        [--ratio R] [--sdk-encoder]

Starts ``crishim serve`` on the demo layout twice: tracing off (no
``tracing`` section: no interceptor, no plugin spans) and tracing on
(always-on sampler, batch export over OTLP/gRPC to a receiver on
127.0.0.1 run by this process, which keeps the bytes and decodes them only
after the measurement). A separate client process makes ImageStatus calls
from 8 threads over the unix socket. Rounds alternate off/on so drift hits
both; the best round of each counts. Also reports server CPU per call (from
/proc) and, with ``--floor``, the same load against bench/floor.py (a bare
grpcio server answering a canned reply).

With ``--ratio R`` a third server samples a fraction R of root traces
(``parentbased_traceidratio``), for the cost of sampled tracing. With
``--sdk-encoder`` another server traces as "on" does but exports through the
SDK's own OTLP encoder (bench/sdk_encoder/ on its ``PYTHONPATH``), for what
crishim's encoder (crishim.telemetry.otlp) saves.

Target (issues #5 and #10): tracing on costs at most 10% of calls/s.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
LAYOUT = ROOT / "examples" / "layouts" / "demo"
REFS = [
    "example.com/crishim/hello:1.0",
    "example.com/crishim/hello:1.1",
    "example.com/crishim/web:1.0",
    "example.com/crishim/tools:1.0",
    "example.com/crishim/app:1.0",
    "example.com/crishim/multi:1.0",
]
THREADS = 8
WORKERS = 4
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- the client (run as a separate process) ----------------------------------------------------


def client_main(sock: str, threads: int, calls: int) -> None:
    from crishim.cri.runtime.v1 import api_pb2, api_pb2_grpc

    channel = grpc.insecure_channel(f"unix:{sock}")
    grpc.channel_ready_future(channel).result(timeout=30)
    stub = api_pb2_grpc.ImageServiceStub(channel)
    requests = [api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=r)) for r in REFS]
    for r in requests * 20:  # warm-up: connection, caches
        stub.ImageStatus(r, timeout=30)
    errors: list[str] = []
    misses = [0]

    def run(t: int) -> None:
        try:
            for i in range(calls):
                reply = stub.ImageStatus(requests[(i + t) % len(requests)], timeout=30)
                if not reply.HasField("image"):
                    misses[0] += 1
        except grpc.RpcError as exc:
            errors.append(f"{exc.code().name}: {exc.details()}")

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - started
    print(
        json.dumps(
            {"calls": threads * calls, "wall_s": wall, "errors": errors[:3], "misses": misses[0]}
        )
    )


# -- an OTLP/gRPC receiver that only keeps bytes ------------------------------------------------


class Receiver:
    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))

        def export(request: bytes, context: object) -> bytes:
            with self.lock:
                self.payloads.append(request)
            return b""  # an empty Export*ServiceResponse

        handlers = {
            "Export": grpc.unary_unary_rpc_method_handler(
                export, request_deserializer=None, response_serializer=None
            )
        }
        for service in (
            "opentelemetry.proto.collector.trace.v1.TraceService",
            "opentelemetry.proto.collector.metrics.v1.MetricsService",
        ):
            self.server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(service, handlers),)
            )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def take(self) -> list[bytes]:
        with self.lock:
            out, self.payloads = self.payloads, []
        return out

    @staticmethod
    def count_spans(payloads: list[bytes]) -> int:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        total = 0
        for raw in payloads:
            request = trace_service_pb2.ExportTraceServiceRequest.FromString(raw)
            total += sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        return total


# -- servers -------------------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _wait_ready(sock: Path, proc: subprocess.Popen[bytes]) -> None:
    """Until an ImageStatus call is answered (the floor has no health service)."""
    from crishim.cri.runtime.v1 import api_pb2, api_pb2_grpc

    request = api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=REFS[0]))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.communicate()[1].decode()[-2000:]}")
        if sock.exists():
            with grpc.insecure_channel(f"unix:{sock}") as channel:
                try:
                    api_pb2_grpc.ImageServiceStub(channel).ImageStatus(request, timeout=1)
                    return
                except grpc.RpcError:
                    pass
        time.sleep(0.05)
    raise SystemExit("server did not come up")


def start_server(
    work: Path, name: str, extra: dict[str, Any], pythonpath: str = ""
) -> tuple[subprocess.Popen[bytes], Path]:
    sock = work / f"{name}.sock"
    if name == "floor":
        proc = subprocess.Popen(
            [PY, str(HERE / "floor.py"), str(sock), str(WORKERS)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
    else:
        config = work / f"{name}.yaml"
        config.write_text(
            json.dumps(
                {
                    "server": {"listen": f"unix://{sock}", "workers": WORKERS},
                    "logging": {"level": "warning"},
                    "state_dir": str(work / f"state-{name}"),
                    "backends": [
                        {"name": "demo", "type": "oci-dir", "options": {"path": str(LAYOUT)}}
                    ],
                    **extra,
                }
            )
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        proc = subprocess.Popen(
            [PY, "-m", "crishim.cli", "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
    try:
        _wait_ready(sock, proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, sock


def stop_server(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err.decode(errors="replace")


def measure(proc: subprocess.Popen[bytes], sock: Path, calls: int) -> dict[str, Any]:
    cpu0 = _cpu_seconds(proc.pid)
    out = subprocess.run(
        [PY, __file__, "--client", str(sock), str(THREADS), str(calls)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    cpu1 = _cpu_seconds(proc.pid)
    result: dict[str, Any] = json.loads(out.stdout)
    if result["errors"] or result["misses"]:
        raise SystemExit(f"the benchmark's calls failed: {result}")
    result["calls_per_s"] = result["calls"] / result["wall_s"]
    # includes the warm-up calls: a few hundred of many thousands
    result["server_cpu_us_per_call"] = (cpu1 - cpu0) / result["calls"] * 1e6
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2500, help="calls per client thread a round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--floor", action="store_true", help="also measure bench/floor.py")
    parser.add_argument(
        "--ratio",
        type=float,
        default=None,
        help="also measure tracing on with parentbased_traceidratio at this ratio",
    )
    parser.add_argument(
        "--sdk-encoder",
        action="store_true",
        help="also measure tracing on with the SDK's own OTLP encoder",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    receiver = Receiver()
    tracing_on = {
        "tracing": {
            "exporter": "otlp-grpc",
            "endpoint": f"http://127.0.0.1:{receiver.port}",
            "sampler": "always_on",
        }
    }
    configs: dict[str, dict[str, Any]] = {"off": {}, "on": tracing_on}
    if args.ratio is not None:
        sampled = {**tracing_on["tracing"], "sampler": "parentbased_traceidratio"}
        configs["ratio"] = {"tracing": {**sampled, "sampler_arg": args.ratio}}
    if args.sdk_encoder:
        configs["sdk"] = tracing_on
    if args.floor:
        configs = {"floor": {}, **configs}
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
    spans_exported = 0
    with tempfile.TemporaryDirectory(prefix="crishim-bt-", dir="/tmp") as tmp:
        work = Path(tmp)
        servers: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        try:
            for name, extra in configs.items():
                path = str(HERE / "sdk_encoder") if name == "sdk" else ""
                servers[name] = start_server(work, name, extra, path)
            for r in range(args.rounds):
                for name, (proc, sock) in servers.items():
                    result = measure(proc, sock, args.calls)
                    rounds[name].append(result)
                    print(
                        f"round {r + 1} {name:>5}: {result['calls_per_s']:8.0f} calls/s, "
                        f"server CPU {result['server_cpu_us_per_call']:6.1f} µs/call",
                        file=sys.stderr,
                    )
        finally:
            stderr = {name: stop_server(proc) for name, (proc, _) in servers.items()}
        spans_exported = Receiver.count_spans(receiver.take())
    receiver.server.stop(0)

    best = {name: max(rs, key=lambda x: x["calls_per_s"]) for name, rs in rounds.items()}
    calls_on = sum(x["calls"] for name in ("on", "sdk") for x in rounds.get(name, ()))
    off, on = best["off"]["calls_per_s"], best["on"]["calls_per_s"]
    summary: dict[str, Any] = {
        "calls_per_s": {name: round(b["calls_per_s"]) for name, b in best.items()},
        "server_cpu_us_per_call": {
            name: round(min(x["server_cpu_us_per_call"] for x in rs), 1)
            for name, rs in rounds.items()
        },
        "tracing_cost_pct": round((1 - on / off) * 100, 1),
        "spans_exported": spans_exported,
        "calls_traced": calls_on,
        "queue_full_warnings": sum(stderr.get(n, "").count("Queue full") for n in ("on", "sdk")),
        "rounds": rounds,
    }
    if "floor" in best:
        summary["off_vs_floor"] = round(best["floor"]["calls_per_s"] / off, 3)
    if "sdk" in best:
        summary["sdk_encoder_cost_pct"] = round((1 - best["sdk"]["calls_per_s"] / off) * 100, 1)
    if "ratio" in best:
        summary[f"ratio_{args.ratio:g}_cost_pct"] = round(
            (1 - best["ratio"]["calls_per_s"] / off) * 100, 1
        )
    print(json.dumps({k: v for k, v in summary.items() if k != "rounds"}, indent=2))
    verdict = "within" if summary["tracing_cost_pct"] <= 10 else "OVER"
    print(
        f"tracing on: {on:.0f} calls/s, off: {off:.0f} calls/s: costs "
        f"{summary['tracing_cost_pct']}% ({verdict} the 10% target)"
    )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
