"""PullImage to a running container: crishim's containerd backend against containerd's pull.

    .venv/bin/python bench/bench_node.py [--rounds 3] [--layer-mb 200] [--json out.json]

Needs root, Debian's containerd, runc, busybox-static and docker-registry
(what ``.ci/run`` installs). It starts, under a temporary directory, a
registry on 127.0.0.1 holding one image of two layers (``--layer-mb`` of
incompressible bytes each, busybox in the first), a containerd with its
CRI plugin, and ``crishim serve`` with the containerd backend in front of
it, as on a node. Each round, in alternating order, the image is pulled

* through crishim (PullImage on crishim's socket), and
* by containerd's CRI (PullImage on containerd's socket),

then a container is created from the returned image reference and started
in a host-network pod through containerd's RuntimeService, and waited for
until it has run. The image, its blobs and its snapshots are removed
between runs (containerd's garbage collector, synchronously). Reported per
path: the median pull time, create+start time and total, and the ratio
crishim/containerd of the totals. containerd unpacks layers inside its pull,
crishim's images are unpacked by containerd at CreateContainer: the totals
are what compares.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# the test harness starts containerd and the registry the same way the tests do
sys.path.insert(0, str(ROOT / "tests"))

from containerd.cri import CriClient  # noqa: E402
from containerd.images import busybox_files, host_platform  # noqa: E402
from containerd.process import ContainerdProcess  # noqa: E402
from registry.process import RegistryProcess  # noqa: E402
from registry.push import Pusher  # noqa: E402

from crishim.cri.runtime.v1 import api_pb2, api_pb2_grpc  # noqa: E402
from crishim.testing.ocibuild import File, LayoutBuilder  # noqa: E402


def build_image(root: Path, layer_mb: int) -> tuple[Path, Any, Any]:
    """The big image (and the pause image) in an OCI layout under ``root``."""
    architecture, variant = host_platform()
    busybox = Path("/bin/busybox").read_bytes()
    size = layer_mb * 1024 * 1024
    b = LayoutBuilder(root)
    pause = b.image(
        name="pause",
        files=busybox_files(busybox),
        cmd=["/bin/sleep", "2147483647"],
        architecture=architecture,
        variant=variant,
    )
    first = dict(busybox_files(busybox))
    first["data/one.bin"] = File(os.urandom(size))
    big = b.image(
        name="big",
        layers=[first, {"data/two.bin": File(os.urandom(size))}],
        cmd=["/bin/echo", "ran"],
        architecture=architecture,
        variant=variant,
    )
    b.write()
    return root, big, pause


def wait_socket(path: Path, timeout: float = 60) -> None:
    channel = grpc.insecure_channel(f"unix:{path}")
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    finally:
        channel.close()


def one_run(
    name: str,
    images: api_pb2_grpc.ImageServiceStub,
    cri: CriClient,
    ctd_images: api_pb2_grpc.ImageServiceStub,
    ref: str,
) -> dict[str, float]:
    pod = cri.run_pod(f"bench-{name}")
    try:
        started = time.perf_counter()
        response = images.PullImage(
            api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref)), timeout=600
        )
        pulled = time.perf_counter()
        container = cri.run_container(pod, "big", response.image_ref, command=["/bin/echo", "ran"])
        cri.wait_exited(container, timeout=300)
        ran = time.perf_counter()
    finally:
        cri.remove_pod(pod)
    # gone again, blobs and snapshots included, before the next run
    ctd_images.RemoveImage(
        api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=response.image_ref)), timeout=120
    )
    return {"pull": pulled - started, "create_start": ran - pulled, "total": ran - started}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layer-mb", type=int, default=200)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="crishim-bench-node-") as tmp:
        work = Path(tmp)
        print(f"building a {2 * args.layer_mb} MB image of two layers ...", flush=True)
        layout, big, pause = build_image(work / "layout", args.layer_mb)
        with RegistryProcess(work / "registry", work / "registry-run") as registry:
            pusher = Pusher(registry.url, layout)
            try:
                pusher.image("bench/big", big, ["1"])
                pusher.image("bench/pause", pause, ["1"])
            finally:
                pusher.client.close()
            ref = f"{registry.host}/bench/big:1"
            with ContainerdProcess(
                sandbox_image=f"{registry.host}/bench/pause:1",
                plain_http_registries=[registry.host],
            ) as containerd:
                channel = containerd.channel()
                ctd_images = api_pb2_grpc.ImageServiceStub(channel)
                ctd_images.PullImage(
                    api_pb2.PullImageRequest(
                        image=api_pb2.ImageSpec(image=f"{registry.host}/bench/pause:1")
                    ),
                    timeout=120,
                )
                sock = Path(tempfile.mkdtemp(prefix="crishim-bn-", dir="/tmp"))
                config = {
                    "server": {"listen": f"unix://{sock}/crishim.sock"},
                    "state_dir": str(work / "state"),
                    "logging": {"level": "warning"},
                    "backends": [
                        {
                            "name": "node",
                            "type": "containerd",
                            "options": {
                                "address": f"unix://{containerd.address}",
                                "trust_env": False,
                                "registries": {
                                    registry.host: {
                                        "endpoints": [{"url": registry.url, "plain_http": True}]
                                    }
                                },
                            },
                        }
                    ],
                }
                config_path = work / "crishim.yaml"
                config_path.write_text(yaml.safe_dump(config))
                server = subprocess.Popen(
                    [sys.executable, "-m", "crishim.cli", "serve", "--config", str(config_path)],
                    stdin=subprocess.DEVNULL,
                )
                try:
                    wait_socket(sock / "crishim.sock")
                    crishim_channel = grpc.insecure_channel(f"unix:{sock}/crishim.sock")
                    crishim_images = api_pb2_grpc.ImageServiceStub(crishim_channel)
                    results: dict[str, list[dict[str, float]]] = {"crishim": [], "containerd": []}
                    with CriClient(channel, work / "pods") as cri:
                        for i in range(args.rounds):
                            order = ["crishim", "containerd"]
                            if i % 2:
                                order.reverse()
                            for who in order:
                                stub = crishim_images if who == "crishim" else ctd_images
                                run = one_run(who, stub, cri, ctd_images, ref)
                                results[who].append(run)
                                print(
                                    f"round {i + 1} {who:<10} pull {run['pull']:.2f}s  "
                                    f"create+start {run['create_start']:.2f}s  "
                                    f"total {run['total']:.2f}s",
                                    flush=True,
                                )
                    crishim_channel.close()
                finally:
                    server.terminate()
                    server.wait(30)
                    for leftover in sock.iterdir():
                        leftover.unlink()
                    sock.rmdir()
    summary: dict[str, Any] = {"image_mb": 2 * args.layer_mb, "rounds": args.rounds}
    for who, runs in results.items():
        summary[who] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    summary["ratio_total"] = summary["crishim"]["total"] / summary["containerd"]["total"]
    print()
    print(f"{'path':<12}{'pull':>8}{'create+start':>14}{'total':>8}   (medians, s)")
    for who in ("crishim", "containerd"):
        m = summary[who]
        print(f"{who:<12}{m['pull']:>8.2f}{m['create_start']:>14.2f}{m['total']:>8.2f}")
    print(f"crishim / containerd, total: {summary['ratio_total']:.2f}")
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
