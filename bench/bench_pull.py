"""Pulls: crishim against containerd, skopeo and sha256; ImageStatus while pulls run.

    .venv/bin/python bench/bench_pull.py [--rounds 3] [--size-mb 400] [--json out.json]

Needs Debian's docker-registry; containerd, runc and root for the
containerd variants, skopeo and curl for theirs (a missing one is reported
and its variants skipped). Everything lives under one short temporary
directory (containerd's root, state and sockets included), removed at the
end, on Ctrl-C and on SIGTERM. Three to four minutes at the defaults.

Set-up: four images of two uncompressed layers (``--size-mb`` MiB in all,
``application/vnd.oci.image.layer.v1.tar``, each one file of bytes from
os.urandom: incompressible, and no layer shared), plus one small image,
pushed to a registry on 127.0.0.1; a containerd with its CRI plugin; and
two ``crishim serve`` processes, one with the ``registry-cache`` backend,
one with the ``containerd`` backend (a namespace of its own, ``unpack:
false``: what is timed is the fetch, as for ``ctr content fetch``).

Each round, in an order that rotates from round to round, after waiting (up
to ``--settle-s``) for the shared machine to be nearly idle:

Pulls of the first big image, each into fresh content (the image removed
and its blobs checked gone from disk before every run):

* ``crishim registry-cache``: PullImage on crishim's unix socket;
* ``crishim containerd``: PullImage on the other crishim;
* ``skopeo copy``: ``docker://`` to a new ``oci:`` layout;
* ``ctr content fetch``: ``--plain-http``, into containerd;
* ``python floor``: the least a Python puller does (httpx streaming,
  hashlib, a file, fsync; a thread per layer), in this process;
* ``curl > /dev/null``: both layers at once, what the registry serves;
* ``sha256``: hashlib over the same number of bytes, in memory, in this
  process, one thread (the hashing limit).

Wall time of each, and the CPU seconds the fetching process, containerd, the
registry and the rest of the machine spent meanwhile (/proc, rusage).

ImageStatus under load: a separate probe process calls ImageStatus on the
small image (held by every server probed) every ``--interval-ms``, first idle
for ``--idle-s``, then while four PullImage calls of the four big images run
at once; latencies are pooled over the rounds, and the four images removed
again afterwards. Probed, with the server the pulls run on:

* crishim registry-cache and crishim containerd, under their own pulls;
* containerd's CRI under four CRI PullImage (which also unpack);
* controls under crishim registry-cache's pulls: containerd's CRI, and
  bench/floor.py (the same grpcio stack as crishim answering a canned
  reply, in a process of its own).

Targets (issue 12): crishim's pull at most 0.5x containerd's fetch and 2x
the hashing limit; crishim's loaded ImageStatus p99 at most 3x its idle p99
and no worse than containerd's.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024
#: Big images pulled at once in the ImageStatus-under-load part.
LOAD_PULLS = 4
CHUNK = MIB


# -- the probe (run as a separate process) -------------------------------------------------------


def probe_main(target: str, ref: str, interval_ms: float) -> None:
    """ImageStatus every ``interval_ms`` between "start" and "stop" lines on stdin.

    Prints "ready" once warmed up, "started" when recording, and on "stop"
    one JSON line: the latencies recorded (µs) and the errors. Exits at EOF.
    """
    from crishim.cri.runtime.v1 import api_pb2, api_pb2_grpc

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the bench ends us (EOF)
    channel = grpc.insecure_channel(target)
    grpc.channel_ready_future(channel).result(timeout=30)
    stub = api_pb2_grpc.ImageServiceStub(channel)
    request = api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ref))
    for _ in range(100):  # warm-up: connection, caches
        if not stub.ImageStatus(request, timeout=10).HasField("image"):
            raise SystemExit(f"probe: {ref} is not held by {target}")
    recording = threading.Event()
    stopped = threading.Event()
    latencies: list[int] = []
    errors: list[str] = []
    interval_ns = int(interval_ms * 1e6)

    def run() -> None:
        clock = time.perf_counter_ns
        while recording.wait():
            next_at = clock()
            while recording.is_set():
                start = clock()
                try:
                    reply = stub.ImageStatus(request, timeout=10)
                    if not reply.HasField("image"):
                        errors.append("image not found")
                except grpc.RpcError as exc:
                    errors.append(f"{exc.code().name}: {exc.details()}")
                latencies.append(clock() - start)
                next_at += interval_ns
                now = clock()
                if next_at > now:
                    time.sleep((next_at - now) / 1e9)
                else:
                    next_at = now  # behind: no burst to catch up
            stopped.set()

    threading.Thread(target=run, daemon=True).start()
    print("ready", flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "start":
            latencies.clear()
            errors.clear()
            stopped.clear()
            recording.set()
            print("started", flush=True)
        elif command == "stop":
            recording.clear()
            stopped.wait()
            out = {"latencies_us": [round(x / 1000, 1) for x in latencies], "errors": errors[:5]}
            out["error_count"] = len(errors)
            print(json.dumps(out), flush=True)
    channel.close()


class Probe:
    """A probe process against one gRPC target."""

    def __init__(self, target: str, ref: str, interval_ms: float) -> None:
        self.proc = subprocess.Popen(
            [PY, __file__, "--probe", target, ref, "--interval-ms", str(interval_ms)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._expect("ready")

    def _send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def _expect(self, word: str) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the probe exited ({self.proc.wait()}) before {word!r}")
        if word and line.strip() != word:
            raise RuntimeError(f"the probe said {line.strip()!r}, not {word!r}")
        return line

    def start(self) -> None:
        self._send("start")
        self._expect("started")

    def stop(self) -> dict[str, Any]:
        self._send("stop")
        result: dict[str, Any] = json.loads(self._expect(""))
        return result

    def close(self) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- the images ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    repository: str
    manifest: Any  # crishim.testing.ocibuild.Descriptor
    config: Any
    layers: tuple[Any, ...]

    @property
    def blobs(self) -> list[str]:
        """Hex digests of the config and layers (the blob file names)."""
        return [d.digest.split(":", 1)[1] for d in (self.config, *self.layers)]

    @property
    def size(self) -> int:
        return int(self.manifest.size + self.config.size + sum(d.size for d in self.layers))


def write_layer(builder: Any, name: str, size: int) -> Any:
    """An uncompressed tar layer of one file of ``size`` random bytes, streamed to a blob."""
    from crishim.testing.ocibuild import OCI_LAYER, Descriptor

    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    header = info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")
    padding = (-size) % tarfile.BLOCKSIZE
    digest = hashlib.sha256()
    total = 0
    builder.blobs_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=builder.blobs_dir, prefix=".layer-")
    with os.fdopen(fd, "wb") as f:

        def put(data: bytes) -> None:
            nonlocal total
            f.write(data)
            digest.update(data)
            total += len(data)

        put(header)
        left = size
        while left:
            n = min(CHUNK, left)
            put(os.urandom(n))
            left -= n
        put(b"\0" * (padding + 2 * tarfile.BLOCKSIZE))
    hexpart = digest.hexdigest()
    os.replace(tmp, builder.blobs_dir / hexpart)
    return Descriptor(OCI_LAYER, f"sha256:{hexpart}", total)


def host_platform() -> tuple[str, str | None]:
    machines = {"x86_64": ("amd64", None), "aarch64": ("arm64", "v8"), "armv7l": ("arm", "v7")}
    return machines.get(platform.machine(), (platform.machine(), None))


def build_image(builder: Any, repository: str, layer_sizes: list[int]) -> Image:
    from crishim.testing.ocibuild import OCI_CONFIG, OCI_MANIFEST, write_json_blob

    architecture, variant = host_platform()
    layers = tuple(
        write_layer(builder, f"{repository.replace('/', '-')}-{i}.bin", size)
        for i, size in enumerate(layer_sizes)
    )
    config_json: dict[str, Any] = {
        "architecture": architecture,
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {"Cmd": ["/none"]},
        # uncompressed layers: the diff IDs are the layer digests
        "rootfs": {"type": "layers", "diff_ids": [d.digest for d in layers]},
    }
    if variant:
        config_json["variant"] = variant
    config = write_json_blob(builder, config_json, OCI_CONFIG)
    manifest = write_json_blob(
        builder,
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.to_json(),
            "layers": [d.to_json() for d in layers],
        },
        OCI_MANIFEST,
    )
    return Image(repository, manifest, config, layers)


def push(pusher: Any, image: Image, tag: str) -> None:
    for descriptor in (*image.layers, image.config):
        pusher.blob(image.repository, descriptor)
    pusher.manifest(image.repository, image.manifest, tag)


# -- processes -----------------------------------------------------------------------------------


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu_s() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far (all processes, all cores)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Crishim:
    """One ``crishim serve`` process and a channel to it."""

    def __init__(self, name: str, work: Path, backend: dict[str, Any]) -> None:
        from crishim.cri.runtime.v1 import api_pb2_grpc

        self.name = name
        self.socket = work / f"{name}.sock"
        config = {
            "server": {
                "listen": f"unix://{self.socket}",
                "status_listen": "",
                "max_concurrent_pulls": LOAD_PULLS,
            },
            "state_dir": str(work / f"{name}-state"),
            "logging": {"level": "warning"},
            "backends": [backend],
        }
        path = work / f"{name}.json"
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        self.log = open(work / f"{name}.log", "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [PY, "-m", "crishim.cli", "serve", "--config", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.channel = grpc.insecure_channel(f"unix:{self.socket}")
        try:
            grpc.channel_ready_future(self.channel).result(timeout=60)
        except grpc.FutureTimeoutError:
            self.stop()
            raise RuntimeError(f"crishim {name} did not serve; see {self.log.name}") from None
        self.images = api_pb2_grpc.ImageServiceStub(self.channel)

    @property
    def target(self) -> str:
        return f"unix:{self.socket}"

    def cpu(self) -> float:
        return cpu_s(self.proc.pid)

    def stop(self) -> None:
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# -- the bench -----------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


@dataclass
class Bench:
    args: argparse.Namespace
    work: Path
    stack: contextlib.ExitStack
    host: str = ""
    registry_url: str = ""
    #: What the hashing limit hashes: as many incompressible bytes as a pull.
    sha_data: bytes = b""
    registry_pid: int = 0
    images: list[Image] = field(default_factory=list)
    small: Image | None = None
    containerd: Any = None
    servers: dict[str, Crishim] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    pulls: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    load: dict[str, dict[str, list[Any]]] = field(default_factory=dict)

    # -- set-up ----------------------------------------------------------------------------------

    def ref(self, image: Image, tag: str = "1") -> str:
        return f"{self.host}/{image.repository}:{tag}"

    def setup(self) -> None:
        sys.path.insert(0, str(ROOT / "tests"))
        from registry.process import REGISTRY_BIN, RegistryProcess
        from registry.push import Pusher

        from crishim.testing.ocibuild import LayoutBuilder

        if shutil.which(REGISTRY_BIN) is None:
            raise SystemExit(f"{REGISTRY_BIN} is missing (apt-get install docker-registry)")
        count = LOAD_PULLS if self.args.load else 1
        half = self.args.size_mb * MIB // 2
        print(
            f"building {count} image(s) of two uncompressed layers of {half / MIB:g} MiB ...",
            flush=True,
        )
        builder = LayoutBuilder(self.work / "layout")
        self.images = [
            build_image(builder, f"bench/big{i}", [half, self.args.size_mb * MIB - half])
            for i in range(count)
        ]
        self.small = build_image(builder, "bench/small", [4096])
        self.sha_data = os.urandom(self.args.size_mb * MIB)
        registry = self.stack.enter_context(
            RegistryProcess(self.work / "registry", self.work / "registry-run")
        )
        assert registry.process is not None
        self.registry_pid = registry.process.pid
        self.host = registry.host
        self.registry_url = registry.url
        pusher = Pusher(registry.url, builder.root)
        pusher.client.timeout = 300  # type: ignore[assignment]
        try:
            for image in [*self.images, self.small]:
                push(pusher, image, "1")
        finally:
            pusher.client.close()
        shutil.rmtree(builder.root)  # the registry has its own copy
        registries = {self.host: {"endpoints": [{"url": registry.url, "plain_http": True}]}}
        self.start_containerd()
        rc = Crishim(
            "rc",
            self.work,
            {
                "name": "registry",
                "type": "registry-cache",
                "options": {
                    "path": str(self.work / "rc-store"),
                    "trust_env": False,
                    "registries": registries,
                },
            },
        )
        self.stack.callback(rc.stop)
        self.servers["crishim registry-cache"] = rc
        if self.containerd is not None:
            ctd = Crishim(
                "ctd",
                self.work,
                {
                    "name": "node",
                    "type": "containerd",
                    "options": {
                        "address": f"unix://{self.containerd.address}",
                        "namespace": "crishim-bench",
                        "unpack": False,
                        "trust_env": False,
                        "registries": registries,
                    },
                },
            )
            self.stack.callback(ctd.stop)
            self.servers["crishim containerd"] = ctd

    def start_containerd(self) -> None:
        missing = [
            b for b in ("containerd", "ctr", "runc", "containerd-shim-runc-v2") if not which(b)
        ]
        if os.geteuid() != 0:
            missing.append("root")
        if missing:
            for name in ("crishim containerd", "ctr content fetch", "containerd CRI"):
                self.skipped[name] = "missing: " + ", ".join(missing)
            return
        from containerd.process import ContainerdProcess

        # all of its files under our directory: nothing to find elsewhere afterwards
        (self.work / "ctd").mkdir()
        self.containerd = ContainerdProcess(
            plain_http_registries=[self.host],
            data_dir=self.work / "containerd",
            sock_dir=self.work / "ctd",
        )
        self.stack.callback(self.containerd.close)
        self.containerd.start()

    # -- fresh content -----------------------------------------------------------------------------

    def content_dir(self, variant: str) -> Path:
        if variant == "crishim registry-cache":
            return self.work / "rc-store" / "blobs" / "sha256"
        return self.containerd.root / "io.containerd.content.v1.content" / "blobs" / "sha256"

    def wait_gone(self, variant: str, image: Image, timeout: float = 30) -> None:
        """Until none of ``image``'s blobs is on disk where ``variant`` keeps them."""
        where = self.content_dir(variant)
        end = time.monotonic() + timeout
        while True:
            left = [h for h in image.blobs if (where / h).exists()]
            if not left:
                return
            if time.monotonic() > end:
                raise RuntimeError(f"{variant}: blobs {left} still in {where} after removal")
            time.sleep(0.05)

    def remove_crishim(self, variant: str, image: Image) -> None:
        from crishim.cri.runtime.v1 import api_pb2

        self.servers[variant].images.RemoveImage(
            api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=self.ref(image))), timeout=120
        )
        self.wait_gone(variant, image)

    def remove_ctr(self, namespace: str, image: Image) -> None:
        """The image ``ctr content fetch`` named, removed; the collector run and waited for."""
        self.containerd.ctr("images", "rm", "--sync", self.ref(image), namespace=namespace)
        self.wait_gone("ctr content fetch", image)

    def remove_cri(self, image: Image) -> None:
        from crishim.cri.runtime.v1 import api_pb2, api_pb2_grpc

        stub = api_pb2_grpc.ImageServiceStub(self.containerd.channel())
        stub.RemoveImage(
            api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=self.ref(image))), timeout=120
        )
        self.wait_gone("containerd CRI", image)

    # -- pulls -----------------------------------------------------------------------------------

    def variants(self) -> list[str]:
        out = ["crishim registry-cache"]
        if self.containerd is not None:
            out += ["crishim containerd"]
        if which("skopeo"):
            out += ["skopeo copy"]
        else:
            self.skipped["skopeo copy"] = "skopeo is not installed"
        if self.containerd is not None:
            out += ["ctr content fetch"]
        out += [PY_FLOOR]
        if which("curl"):
            out += [CURL]
        return [*out, "sha256 (hashlib)"]

    def run_pull(self, variant: str) -> dict[str, float]:
        image = self.images[0]
        ctd_pid = self.containerd.process.pid if self.containerd is not None else None
        fetcher: Callable[[], float]
        if variant.startswith("crishim"):
            self.wait_gone(variant, image, timeout=0)
            fetcher = self.servers[variant].cpu
        elif variant == "ctr content fetch":
            self.wait_gone(variant, image, timeout=0)
            fetcher = children_cpu_s
        elif variant in ("skopeo copy", CURL):
            fetcher = children_cpu_s
        else:
            fetcher = self_cpu_s
        self.settle()
        before = (
            fetcher(),
            cpu_s(ctd_pid) if ctd_pid else 0.0,
            cpu_s(self.registry_pid),
            *machine_cpu_s(),
        )
        started = time.perf_counter()
        if variant.startswith("crishim"):
            from crishim.cri.runtime.v1 import api_pb2

            self.servers[variant].images.PullImage(
                api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=self.ref(image))),
                timeout=600,
            )
        elif variant == "skopeo copy":
            dest = self.work / "skopeo-oci"
            shutil.rmtree(dest, ignore_errors=True)
            run(
                [
                    "skopeo",
                    "--insecure-policy",
                    "copy",
                    "--quiet",
                    "--src-tls-verify=false",
                    f"docker://{self.ref(image)}",
                    f"oci:{dest}:bench",
                ]
            )
        elif variant == "ctr content fetch":
            run(
                [
                    self.containerd.binaries.ctr,
                    "-a",
                    self.containerd.address,
                    "-n",
                    "ctr-bench",
                    "content",
                    "fetch",
                    "--plain-http",
                    self.ref(image),
                ]
            )
        elif variant == PY_FLOOR:
            python_floor(self.registry_url, image, self.work / "py-floor")
        elif variant == CURL:
            curls = [
                subprocess.Popen(
                    ["curl", "-sSf", "-o", "/dev/null", blob_url(self.registry_url, image, d)],
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
                for d in image.layers
            ]
            try:
                if any(c.wait(timeout=600) for c in curls):
                    raise RuntimeError("curl failed")
            finally:
                for c in curls:
                    if c.poll() is None:
                        c.kill()
                        c.wait()
        else:
            sha256_pass(self.sha_data)
        elapsed = time.perf_counter() - started
        after = (
            fetcher(),
            cpu_s(ctd_pid) if ctd_pid else 0.0,
            cpu_s(self.registry_pid),
            *machine_cpu_s(),
        )
        # clean for the next run (not timed)
        if variant.startswith("crishim"):
            self.remove_crishim(variant, image)
        elif variant == "skopeo copy":
            shutil.rmtree(self.work / "skopeo-oci")
        elif variant == "ctr content fetch":
            self.remove_ctr("ctr-bench", image)
        elif variant == PY_FLOOR:
            shutil.rmtree(self.work / "py-floor")
        result = {"s": elapsed, "fetcher_cpu_s": after[0] - before[0]}
        if variant != "sha256 (hashlib)":
            result["containerd_cpu_s"] = after[1] - before[1]
            result["registry_cpu_s"] = after[2] - before[2]
        # everything the machine did meanwhile, other users' work included (noise)
        result["machine_cpu_s"] = after[3] - before[3]
        ours = sum(v for k, v in result.items() if k.endswith("_cpu_s") and k != "machine_cpu_s")
        result["others_cpu_s"] = max(0.0, result["machine_cpu_s"] - ours)
        result["steal_s"] = after[4] - before[4]
        return result

    def settle(self) -> None:
        """Wait (up to ``--settle-s``) until the machine is nearly idle: other users' work
        on this shared machine would otherwise land in the figures."""
        end = time.monotonic() + self.args.settle_s
        while True:
            busy0 = machine_cpu_s()[0]
            time.sleep(0.3)
            if (machine_cpu_s()[0] - busy0) / 0.3 < 0.15 or time.monotonic() > end:
                return

    # -- ImageStatus under load --------------------------------------------------------------------

    #: Controls, probed while crishim registry-cache pulls: bench/floor.py (a bare
    #: grpcio server answering a canned reply, in a process of its own), and
    #: containerd's CRI (idle itself).
    FLOOR = "floor, rc pulls"
    CRI_RC = "containerd CRI, rc pulls"

    def load_targets(self) -> dict[str, str]:
        """Probed server -> the server the four pulls run on."""
        out = {"crishim registry-cache": "crishim registry-cache"}
        if self.containerd is not None:
            out["crishim containerd"] = "crishim containerd"
            out["containerd CRI"] = "containerd CRI"
            out[self.CRI_RC] = "crishim registry-cache"
        out[self.FLOOR] = "crishim registry-cache"
        return out

    def image_stub(self, server: str) -> Any:
        from crishim.cri.runtime.v1 import api_pb2_grpc

        if server == "containerd CRI":
            return api_pb2_grpc.ImageServiceStub(self.containerd.channel())
        return self.servers[server].images

    def prepare_load(self) -> dict[str, Probe]:
        """The small image in every probed server, and a probe on each."""
        from crishim.cri.runtime.v1 import api_pb2

        assert self.small is not None
        request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=self.ref(self.small)))
        probes: dict[str, Probe] = {}
        for target in self.load_targets():
            if target == self.FLOOR:
                address = self.start_floor()
            elif target in ("containerd CRI", self.CRI_RC):
                self.image_stub("containerd CRI").PullImage(request, timeout=120)
                address = self.containerd.target
            else:
                self.image_stub(target).PullImage(request, timeout=120)
                address = self.servers[target].target
            probe = Probe(address, self.ref(self.small), self.args.interval_ms)
            self.stack.callback(probe.close)
            probes[target] = probe
            self.load[target] = {"idle": [], "loaded": [], "errors": [], "pulls_s": []}
        return probes

    def start_floor(self) -> str:
        sock = self.work / "floor.sock"
        floor = subprocess.Popen(
            [PY, str(HERE / "floor.py"), str(sock), "4"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )

        def stop() -> None:
            floor.terminate()
            try:
                floor.wait(timeout=10)
            except subprocess.TimeoutExpired:
                floor.kill()
                floor.wait()

        self.stack.callback(stop)
        assert floor.stdout is not None
        if floor.stdout.readline().strip() != b"ready":
            raise RuntimeError("bench/floor.py did not start")
        return f"unix:{sock}"

    def run_load(self, target: str, probe: Probe) -> dict[str, float]:
        from crishim.cri.runtime.v1 import api_pb2

        server = self.load_targets()[target]
        record = self.load[target]
        self.settle()
        probe.start()
        time.sleep(self.args.idle_s)
        idle = probe.stop()
        stub = self.image_stub(server)
        probe.start()
        started = time.perf_counter()
        calls = [
            stub.PullImage.future(
                api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=self.ref(image))),
                timeout=600,
            )
            for image in self.images
        ]
        try:
            for call in calls:
                call.result()
        except BaseException:
            for call in calls:
                call.cancel()
            raise
        wall = time.perf_counter() - started
        loaded = probe.stop()
        for image in self.images:
            if server == "containerd CRI":
                self.remove_cri(image)
            else:
                self.remove_crishim(server, image)
        record["idle"] += idle["latencies_us"]
        record["loaded"] += loaded["latencies_us"]
        record["errors"] += idle["errors"] + loaded["errors"]
        record["pulls_s"].append(wall)
        return {
            "idle_p99_ms": percentile(idle["latencies_us"], 0.99) / 1000,
            "loaded_p99_ms": percentile(loaded["latencies_us"], 0.99) / 1000,
            "loaded_calls": len(loaded["latencies_us"]),
            "pulls_s": wall,
            "errors": idle["error_count"] + loaded["error_count"],
        }

    # -- rounds ----------------------------------------------------------------------------------

    def run(self) -> None:
        variants = self.variants()
        self.pulls = {v: [] for v in variants}
        probes = self.prepare_load() if self.args.load else {}
        for i in range(self.args.rounds):
            shift = i % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                result = self.run_pull(variant)
                self.pulls[variant].append(result)
                extra = "".join(
                    f"  {k.removesuffix('_cpu_s')} {v:.2f}"
                    for k, v in result.items()
                    if k.endswith("_cpu_s") and k != "machine_cpu_s"
                )
                print(
                    f"round {i + 1}  {variant:<24} {result['s']:6.2f} s   cpu s:{extra}",
                    flush=True,
                )
            targets = list(probes)
            if targets:
                shift = i % len(targets)
                for target in targets[shift:] + targets[:shift]:
                    r = self.run_load(target, probes[target])
                    print(
                        f"round {i + 1}  ImageStatus {target:<22} idle p99 "
                        f"{r['idle_p99_ms']:.2f} ms  loaded p99 {r['loaded_p99_ms']:.2f} ms "
                        f"({r['loaded_calls']} calls, {LOAD_PULLS} pulls in "
                        f"{r['pulls_s']:.2f} s, {r['errors']} errors)",
                        flush=True,
                    )

    # -- report ----------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "image_mb": self.args.size_mb,
            "layers": "2, uncompressed (application/vnd.oci.image.layer.v1.tar), os.urandom",
            "rounds": self.args.rounds,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "skipped": self.skipped,
            "pulls": {},
            "image_status": {},
        }
        for variant, runs in self.pulls.items():
            times = [r["s"] for r in runs]
            entry: dict[str, Any] = {
                "median_s": statistics.median(times),
                "min_s": min(times),
                "runs_s": times,
                "mb_per_s": self.args.size_mb * MIB / 1e6 / statistics.median(times),
            }
            for key in runs[0]:
                if key != "s":
                    entry[key] = statistics.median(r[key] for r in runs)
            out["pulls"][variant] = entry
        pulls = out["pulls"]
        ratios: dict[str, float] = {}
        for name in ("crishim registry-cache", "crishim containerd"):
            if name not in pulls:
                continue
            if "ctr content fetch" in pulls:
                ratios[f"{name} / ctr content fetch"] = (
                    pulls[name]["median_s"] / pulls["ctr content fetch"]["median_s"]
                )
            ratios[f"{name} / sha256"] = (
                pulls[name]["median_s"] / pulls["sha256 (hashlib)"]["median_s"]
            )
        out["pull_ratios"] = ratios
        for target, record in self.load.items():
            idle, loaded = record["idle"], record["loaded"]
            out["image_status"][target] = {
                "idle_p50_ms": percentile(idle, 0.5) / 1000,
                "idle_p99_ms": percentile(idle, 0.99) / 1000,
                "loaded_p50_ms": percentile(loaded, 0.5) / 1000,
                "loaded_p99_ms": percentile(loaded, 0.99) / 1000,
                "idle_p90_ms": percentile(idle, 0.9) / 1000,
                "loaded_p90_ms": percentile(loaded, 0.9) / 1000,
                "idle_max_ms": max(idle) / 1000,
                "loaded_max_ms": max(loaded) / 1000,
                "loaded_over_idle_p99": percentile(loaded, 0.99) / percentile(idle, 0.99),
                "idle_calls": len(idle),
                "loaded_calls": len(loaded),
                "errors": len(record["errors"]),
                "pulls_wall_s_median": statistics.median(record["pulls_s"]),
            }
        return out


def print_summary(s: dict[str, Any]) -> None:
    print()
    print(f"Pulls of a {s['image_mb']} MiB image ({s['layers']}), {s['rounds']} rounds")
    print(
        f"{'variant':<26}{'median s':>9}{'min s':>8}{'MB/s':>7}"
        f"{'fetcher CPU s':>15}{'containerd CPU s':>18}{'registry CPU s':>16}"
        f"{'others CPU s':>14}"
    )
    for variant, p in s["pulls"].items():
        cells = [
            f"{p[k]:.2f}" if k in p else "-"
            for k in ("fetcher_cpu_s", "containerd_cpu_s", "registry_cpu_s", "others_cpu_s")
        ]
        print(
            f"{variant:<26}{p['median_s']:>9.2f}{p['min_s']:>8.2f}{p['mb_per_s']:>7.0f}"
            f"{cells[0]:>15}{cells[1]:>18}{cells[2]:>16}{cells[3]:>14}"
        )
    print(
        "  (CPU: medians, all cores; fetcher: crishim, skopeo, ctr or this process;\n"
        "   others: the rest of the machine meanwhile, other users' work included)"
    )
    targets = {"/ ctr content fetch": 0.5, "/ sha256": 2.0}
    for name, ratio in s["pull_ratios"].items():
        limit = next(v for k, v in targets.items() if name.endswith(k))
        verdict = "met" if ratio <= limit else "MISSED"
        print(f"  {name}: {ratio:.2f}x (target <= {limit:g}x: {verdict})")
    if s["image_status"]:
        print()
        print(f"ImageStatus latency, idle and while {LOAD_PULLS} such pulls run (pooled rounds)")
        print(
            f"{'server':<26}{'idle p50':>9}{'idle p99':>9}{'load p50':>9}{'load p99':>9}"
            f"{'p99 x':>7}{'calls':>7}{'4 pulls s':>10}{'errors':>7}"
        )
        for target, r in s["image_status"].items():
            print(
                f"{target:<26}{r['idle_p50_ms']:>9.2f}{r['idle_p99_ms']:>9.2f}"
                f"{r['loaded_p50_ms']:>9.2f}{r['loaded_p99_ms']:>9.2f}"
                f"{r['loaded_over_idle_p99']:>7.1f}{r['loaded_calls']:>7}"
                f"{r['pulls_wall_s_median']:>10.2f}{r['errors']:>7}"
            )
        print(
            "  (ms; p99 x: loaded p99 / idle p99; 4 pulls s: median wall time of the four;\n"
            "   rc pulls: probed while crishim registry-cache pulls; floor: bench/floor.py)"
        )
        status = s["image_status"]
        for name in ("crishim registry-cache", "crishim containerd"):
            if name not in status:
                continue
            x = status[name]["loaded_over_idle_p99"]
            print(f"  {name}: loaded p99 {x:.1f}x idle (target <= 3x: {verdict_of(x <= 3)})")
            for cri, under in (("containerd CRI", "its own pulls"), (Bench.CRI_RC, "rc pulls")):
                # under the same pulls: only the registry-cache backend's have a control
                if cri in status and (cri != Bench.CRI_RC or name == "crishim registry-cache"):
                    y = status[name]["loaded_p99_ms"] / status[cri]["loaded_p99_ms"]
                    print(
                        f"  {name}: loaded p99 {y:.2f}x containerd's under {under} "
                        f"(target <= 1x: {verdict_of(y <= 1)})"
                    )
    for name, why in s["skipped"].items():
        print(f"skipped {name}: {why}")


def verdict_of(ok: bool) -> str:
    return "met" if ok else "MISSED"


#: Variant: the least a Python puller does (see python_floor).
PY_FLOOR = "python floor"
#: Variant: what the registry serves on loopback when nothing is done with the bytes.
CURL = "curl > /dev/null"


def blob_url(base: str, image: Image, descriptor: Any) -> str:
    return f"{base}/v2/{image.repository}/blobs/{descriptor.digest}"


def python_floor(base: str, image: Image, dest: Path) -> None:
    """crishim's inner loop and nothing else: each layer in a thread of its own, streamed
    with httpx (``iter_raw``, as crishim's registry client reads), hashed with hashlib,
    written to a file and fsynced."""
    import concurrent.futures

    import httpx

    dest.mkdir()

    def one(client: httpx.Client, descriptor: Any) -> None:
        h = hashlib.sha256()
        path = dest / descriptor.digest.split(":", 1)[1]
        with client.stream("GET", blob_url(base, image, descriptor)) as r, open(path, "wb") as f:
            r.raise_for_status()
            for chunk in r.iter_raw():
                h.update(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        if f"sha256:{h.hexdigest()}" != descriptor.digest:
            raise RuntimeError(f"python floor: {descriptor.digest} does not match")

    with (
        httpx.Client(trust_env=False, timeout=60) as client,
        concurrent.futures.ThreadPoolExecutor(len(image.layers)) as pool,
    ):
        for future in [pool.submit(one, client, d) for d in image.layers]:
            future.result()


def sha256_pass(data: bytes) -> None:
    """Hash ``data`` (in memory) 1 MiB at a time, as a pull's writer is fed."""
    view = memoryview(data)
    h = hashlib.sha256()
    for i in range(0, len(view), CHUNK):
        h.update(view[i : i + CHUNK])
    h.hexdigest()


def which(name: str) -> str | None:
    search = os.pathsep.join(["/usr/sbin", "/usr/bin", "/sbin", "/bin", os.environ.get("PATH", "")])
    return shutil.which(name, path=search)


def run(cmd: list[str]) -> None:
    result = subprocess.run(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=600,
        check=False,
        start_new_session=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({result.returncode}): {result.stderr.decode()}")


@contextlib.contextmanager
def terminated_as_interrupt() -> Iterator[None]:
    """SIGTERM as Ctrl-C: the same cleanup runs."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size-mb", type=int, default=400, help="image size, MiB, two layers")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--no-load", dest="load", action="store_false", help="skip ImageStatus under load"
    )
    parser.add_argument("--idle-s", type=float, default=2.0, help="idle probing per round")
    parser.add_argument("--interval-ms", type=float, default=5.0, help="probe call interval")
    parser.add_argument(
        "--settle-s",
        type=float,
        default=10.0,
        help="longest wait for a nearly idle machine before each measurement",
    )
    parser.add_argument("--probe", nargs=2, metavar=("TARGET", "REF"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probe_main(args.probe[0], args.probe[1], args.interval_ms)
        return 0
    from crishim.testing.server import short_tempdir

    with terminated_as_interrupt(), contextlib.ExitStack() as stack:
        work = short_tempdir("crishim-bp-")
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        bench = Bench(args, work, stack)
        try:
            bench.setup()
            bench.run()
        except KeyboardInterrupt:
            print("\ninterrupted: cleaning up", file=sys.stderr, flush=True)
            return 130
        summary = bench.summary()
    print_summary(summary)
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
