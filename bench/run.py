"""The crishim benchmark: one command, a table and a JSON file.

    .venv/bin/python bench/run.py [--sizes 100,10000,100000] [--quick]

For each layout size it measures, against a real ``crishim serve`` process
on a unix socket, from a separate client process:

* index build time (first start, no snapshot) and restart time with a
  snapshot (time from process start to the first ImageStatus answered; the
  page cache is dropped first when the machine allows it);
* ImageStatus hit and miss with 1 and 8 client threads: p50, p99, calls/s;
* ListImages and StreamImages of the whole layout;
* the server's RSS;

and, in the same run, the same ImageStatus load against the *floor*
(bench/floor.py: the same gRPC stack answering one canned reply). Every
ImageStatus figure is also given as a ratio to the floor.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from gen_layout import ensure, tag_of  # noqa: E402

from crishim.cri.runtime.v1 import api_pb2, api_pb2_grpc  # noqa: E402

PY = sys.executable
WORKERS = 4


def _rss_mb(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":", 1)
            out[key] = int(value.split()[0]) / 1024
    return {"rss_mb": out.get("VmRSS", 0.0), "peak_rss_mb": out.get("VmHWM", 0.0)}


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def wait_first_answer(sock: Path, proc: subprocess.Popen[bytes], ref: str, timeout: float) -> float:
    """Seconds until the first ImageStatus for ``ref`` is answered with the image."""
    deadline = time.monotonic() + timeout
    request = api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ref))
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        if sock.exists():
            try:
                with grpc.insecure_channel(f"unix:{sock}") as channel:
                    stub = api_pb2_grpc.ImageServiceStub(channel)
                    if stub.ImageStatus(request, timeout=2).HasField("image"):
                        return time.monotonic()
            except grpc.RpcError:
                pass
        time.sleep(0.01)
    raise RuntimeError("server did not answer in time")


def live_latency(sock: Path, layout: Path) -> dict[str, float]:
    """Seconds from an index.json change to ImageStatus seeing it (add, then remove)."""
    index_path = layout / "index.json"
    original = index_path.read_bytes()
    index = json.loads(original)
    entry = dict(index["manifests"][0])
    entry["annotations"] = {"org.opencontainers.image.ref.name": "bench.example/live:added"}
    request = api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image="bench.example/live:added"))
    out = {}
    with grpc.insecure_channel(f"unix:{sock}") as channel:
        stub = api_pb2_grpc.ImageServiceStub(channel)
        for what, data, want in (
            (
                "add_s",
                json.dumps({**index, "manifests": [*index["manifests"], entry]}).encode(),
                True,
            ),
            ("remove_s", original, False),
        ):
            tmp = layout / ".index.json.bench.tmp"
            tmp.write_bytes(data)
            started = time.monotonic()
            os.replace(tmp, index_path)
            while stub.ImageStatus(request, timeout=10).HasField("image") != want:
                if time.monotonic() - started > 60:
                    raise RuntimeError(f"live {what} not seen in 60 s")
                time.sleep(0.005)
            out[what] = time.monotonic() - started
    return out


def start_crishim(config: Path, sock: Path, ref: str) -> tuple[subprocess.Popen[bytes], float]:
    started = time.monotonic()
    proc = subprocess.Popen(
        [PY, "-m", "crishim.cli", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    ready = wait_first_answer(sock, proc, ref, timeout=600)
    return proc, ready - started


def stop(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return (err or b"").decode(errors="replace")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def client(
    sock: Path, kind: str, threads: int, calls: int, refs: Path, server_pid: int | None = None
) -> dict[str, Any]:
    before = _cpu_s(server_pid) if server_pid else 0.0
    out = subprocess.run(
        [PY, str(HERE / "client.py"), str(sock), kind, str(threads), str(calls), str(refs)],
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    if server_pid and result.get("calls"):
        total = result["calls"] + result.get("warmup_calls", 0)
        result["server_cpu_us_per_call"] = (_cpu_s(server_pid) - before) / total * 1e6
    return result


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-figure medians over interleaved rounds."""
    out: dict[str, Any] = {"rounds": len(runs), "error_count": sum(r["error_count"] for r in runs)}
    for key in ("p50_us", "p99_us", "calls_per_s", "server_cpu_us_per_call"):
        values = sorted(r[key] for r in runs if key in r)
        if values:
            out[key] = values[len(values) // 2]
    return out


def bench_size(size: int, work: Path, quick: bool) -> dict[str, Any]:
    layout = ensure(work / f"layout-{size}", size)
    state = work / f"state-{size}"
    shutil.rmtree(state, ignore_errors=True)
    sockdir = Path(tempfile.mkdtemp(prefix="crishim-bench-", dir="/tmp"))
    sock = sockdir / "crishim.sock"
    config = work / f"config-{size}.yaml"
    config.write_text(
        json.dumps(
            {
                "server": {"listen": f"unix://{sock}", "workers": WORKERS, "grace_period": 5},
                "logging": {"level": "warning"},
                "state_dir": str(state),
                "backends": [
                    {"name": "bench", "type": "oci-dir", "options": {"path": str(layout)}}
                ],
            }
        )
    )
    rng = random.Random(size)
    hits = work / f"hits-{size}.txt"
    hits.write_text("\n".join(tag_of(rng.randrange(size)) for _ in range(1000)) + "\n")
    misses = work / f"misses-{size}.txt"
    misses.write_text("\n".join(f"bench.example/absent{i}:v{i}" for i in range(1000)) + "\n")
    first = tag_of(0)
    calls1, calls8 = (1000, 250) if quick else (3000, 500)
    rounds = 1 if quick else 3
    result: dict[str, Any] = {"images": size}

    proc, result["first_start_s"] = start_crishim(config, sock, first)
    floor_sock = sockdir / "floor.sock"
    floor = subprocess.Popen(
        [PY, str(HERE / "floor.py"), str(floor_sock), str(WORKERS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert floor.stdout is not None
        floor.stdout.readline()
        # Rounds interleave crishim and the floor, so a slow moment of the
        # machine hits both; each figure is the median over the rounds.
        for threads, calls in ((1, calls1), (8, calls8)):
            floor_runs = []
            for kind, refs in (("hit", hits), ("miss", misses)):
                runs = []
                for _ in range(rounds):
                    runs.append(client(sock, "status", threads, calls, refs, proc.pid))
                    if kind == "hit":
                        floor_runs.append(
                            client(floor_sock, "status", threads, calls, hits, floor.pid)
                        )
                result[f"status_{kind}_{threads}"] = _median_run(runs)
            result[f"floor_hit_{threads}"] = _median_run(floor_runs)
        reps = 3 if size <= 10_000 else 2
        result["list"] = client(sock, "list", 1, reps, hits)
        result["stream"] = client(sock, "stream", 1, reps, hits)
        result.update(_rss_mb(proc.pid))
        result["live"] = live_latency(sock, layout)
    finally:
        stop(proc)
        stop(floor)

    result["restart_cold_cache"] = drop_caches()
    proc, result["restart_s"] = start_crishim(config, sock, first)
    stop(proc)
    shutil.rmtree(sockdir, ignore_errors=True)
    for kind in ("hit", "miss"):
        for threads in (1, 8):
            mine = result[f"status_{kind}_{threads}"]
            base = result[f"floor_hit_{threads}"]
            mine["p50_ratio_to_floor"] = mine["p50_us"] / base["p50_us"]
            mine["calls_per_s_ratio_to_floor"] = mine["calls_per_s"] / base["calls_per_s"]
            mine["cpu_ratio_to_floor"] = (
                mine["server_cpu_us_per_call"] / base["server_cpu_us_per_call"]
            )
    return result


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| images | call | threads | p50 µs | p99 µs | calls/s | server CPU µs/call | "
        "p50 / floor | calls/s / floor | CPU / floor |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        for kind in ("hit", "miss"):
            for threads in (1, 8):
                m = r[f"status_{kind}_{threads}"]
                lines.append(
                    f"| {r['images']} | ImageStatus {kind} | {threads} | {m['p50_us']:.0f} | "
                    f"{m['p99_us']:.0f} | {m['calls_per_s']:.0f} | "
                    f"{m['server_cpu_us_per_call']:.0f} | {m['p50_ratio_to_floor']:.3f} | "
                    f"{m['calls_per_s_ratio_to_floor']:.3f} | {m['cpu_ratio_to_floor']:.3f} |"
                )
        for threads in (1, 8):
            f = r[f"floor_hit_{threads}"]
            lines.append(
                f"| {r['images']} | floor (canned) | {threads} | {f['p50_us']:.0f} | "
                f"{f['p99_us']:.0f} | {f['calls_per_s']:.0f} | "
                f"{f['server_cpu_us_per_call']:.0f} | 1 | 1 | 1 |"
            )
    lines += [
        "",
        "| images | first start s | restart s (snapshot) | cold cache | ListImages ms | "
        "StreamImages ms | RSS MB | peak RSS MB | live add s | live remove s |",
        "| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lst, stream = r["list"], r["stream"]
        list_ms = f"{lst['p50_us'] / 1000:.0f}" if "p50_us" in lst else lst["errors"][0][:40]
        lines.append(
            f"| {r['images']} | {r['first_start_s']:.2f} | {r['restart_s']:.2f} | "
            f"{'yes' if r['restart_cold_cache'] else 'no (not permitted)'} | {list_ms} | "
            f"{stream['p50_us'] / 1000:.0f} | {r['rss_mb']:.0f} | {r['peak_rss_mb']:.0f} | "
            f"{r['live']['add_s']:.2f} | {r['live']['remove_s']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,10000,100000")
    parser.add_argument("--quick", action="store_true", help="fewer calls per scenario")
    parser.add_argument("--work", default=str(ROOT / "bench" / "work"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        print(f"== {size} images", file=sys.stderr, flush=True)
        results.append(bench_size(size, work, args.quick))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    payload = {"when": stamp, "workers": WORKERS, "cpus": os.cpu_count(), "results": results}
    (out / f"bench-{stamp}.json").write_text(json.dumps(payload, indent=2))
    (out / "latest.json").write_text(json.dumps(payload, indent=2))
    text = table(results)
    (out / "latest.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
