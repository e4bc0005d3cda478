"""containerd 1.6, started by the tests, with all of its state in temporary directories.

:class:`ContainerdProcess` runs Debian's ``/usr/bin/containerd`` with a
generated config (``version = 2``): root, state, the gRPC, ttrpc and debug
sockets, the ``opt`` directory, the CRI plugin's state (its sandboxes'
``/dev/shm``, network namespaces if any), runc's state (``Root`` of the
``io.containerd.runc.v2`` runtime), the CNI directories (empty: host-network
pods need no CNI), the registry ``config_path`` and the daemon's log all live
under two temporary directories: a short one under ``/tmp`` for the sockets (a
unix socket path must stay under 107 bytes) and one under ``$TMPDIR`` for the
data. The CRI plugin runs with ``restrict_oom_score_adj = true`` (this
machine refuses a negative ``oom_score_adj``; without it runc fails every
sandbox) and the overlayfs snapshotter, or ``native`` when an overlay mount
fails here (:func:`overlay_works`). It takes about 0.1 s to serve.

What containerd 1.6, its runc shim and runc write *outside* those
directories, found by comparing the host before and after a pod ran, and
what :meth:`ContainerdProcess.close` does about each:

* the shims' sockets, ``/run/containerd/s/<sha256 of address/namespace/id>``:
  a fixed directory in 1.6, whatever the config says. A shim removes its
  socket when its task is deleted; close() deletes those of our shims that
  are left (named by the task bundles' ``address`` files), and removes
  ``/run/containerd/s`` and ``/run/containerd`` if it created them and they
  are empty. (``ctr run`` would also use ``/run/containerd/fifo``; the
  harness never runs tasks through ctr.)
* the shim processes (``containerd-shim-runc-v2 ... -address <our socket>``)
  outlive containerd by design, and so do the containers under them: close()
  stops and removes every pod and container through the CRI and ``ctr``
  while containerd runs, then ``runc delete --force``s whatever runc still
  knows, then kills the shims whose ``-address`` is ours. This also works
  after containerd was killed.
* cgroups (v1 here): runc puts every sandbox and container in
  ``/sys/fs/cgroup/<controller>/k8s.io/<id>`` (no cgroup parent is given) and
  removes it with the container; close() removes those of our containers
  that are left, then each ``<controller>/k8s.io`` that did not exist before
  the first start and is empty.
* mounts (overlay rootfs, the sandbox's ``/dev/shm``) are all under our data
  directory; close() unmounts anything still mounted there, deepest first,
  lazily as a last resort.

What remains, unavoidably: an empty ``/run/containerd``, ``/run/containerd/s``
or cgroup parent ``k8s.io`` that existed before, or that another containerd
uses meanwhile, is left alone (removing it could race with that containerd);
zombie shims are reaped by init, not by us; and state that is no file
(page cache, kernel logs) stays. :meth:`ContainerdProcess.leftovers` lists
anything close() should have removed and did not.

Binary discovery follows tests/registry/process.py: a missing binary (or
not running as root) fails the test under CI (``CI`` set) and skips it
elsewhere, with an install hint.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from crishim_plugins.containerd.api.services.version.v1 import version_pb2, version_pb2_grpc
from google.protobuf import empty_pb2

from crishim.cri.runtime.v1 import runtime_service_pb2, runtime_service_pb2_grpc

#: Where Debian's containerd package installs the daemon (override for other layouts).
CONTAINERD_BIN = os.environ.get("CRISHIM_CONTAINERD_BIN", "/usr/bin/containerd")
INSTALL_HINT = (
    "install them with: apt-get update && DEBIAN_FRONTEND=noninteractive "
    "apt-get install -y --no-install-recommends containerd runc (.ci/run does this)"
)
#: The namespace containerd's CRI plugin keeps its images, pods and containers in.
CRI_NAMESPACE = "k8s.io"
#: gRPC metadata selecting the CRI namespace for containerd's own services.
CRI_METADATA = (("containerd-namespace", CRI_NAMESPACE),)
#: The sandbox (pause) image name configured by default.
DEFAULT_SANDBOX_IMAGE = "crishim.test/pause:1"
#: The directory containerd 1.6 puts shim sockets in, whatever its config says.
SHIM_SOCKET_DIR = Path("/run/containerd/s")
CGROUP_ROOT = Path("/sys/fs/cgroup")

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
CALL_TIMEOUT = 30.0

#: Reconnect quickly after a restart (gRPC's default backoff starts at 1 s).
RECONNECT_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 500),
)

_MNT_DETACH = 2


@dataclass(frozen=True)
class Binaries:
    containerd: str
    ctr: str
    shim: str
    runc: str


def unavailable(message: str) -> None:
    """Fail the test under CI (``CI`` set), skip it elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def containerd_binaries() -> Binaries:
    """containerd, ctr, the runc shim and runc; fails under CI, skips elsewhere, when missing.

    ctr and the shim are looked for next to containerd first, runc on the
    usual system paths.
    """
    search = os.pathsep.join(
        [str(Path(CONTAINERD_BIN).parent), "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
    )
    found: dict[str, str] = {}
    for key, name in (
        ("containerd", CONTAINERD_BIN),
        ("ctr", "ctr"),
        ("shim", "containerd-shim-runc-v2"),
        ("runc", "runc"),
    ):
        path = shutil.which(name, path=search)
        if path is None:
            unavailable(f"{name} is missing; {INSTALL_HINT}")
            raise AssertionError("unreachable")
        found[key] = path
    if os.geteuid() != 0:
        unavailable("the containerd tests need root (containerd mounts and runs containers)")
    return Binaries(**found)


# --------------------------------------------------------------------------- mounts


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def mount(source: str, target: Path, fstype: str, data: str) -> int:
    """mount(2); 0 or the errno."""
    rc = _libc().mount(source.encode(), str(target).encode(), fstype.encode(), 0, data.encode())
    return 0 if rc == 0 else ctypes.get_errno()


def umount(target: Path, lazy: bool = False) -> int:
    """umount2(2); 0 or the errno."""
    rc = _libc().umount2(str(target).encode(), _MNT_DETACH if lazy else 0)
    return 0 if rc == 0 else ctypes.get_errno()


def _unescape_mount_path(raw: str) -> str:
    """/proc/self/mountinfo writes space, tab, newline and backslash as ``\\ooo``."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), raw)


def mounts_under(*roots: Path) -> list[Path]:
    """Mount points at or below any of ``roots``, deepest first."""
    found: list[Path] = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            point = Path(_unescape_mount_path(line.split()[4]))
            if any(point == r or r in point.parents for r in roots):
                found.append(point)
    return sorted(set(found), key=lambda p: (len(p.parts), str(p)), reverse=True)


def unmount_all(*roots: Path) -> list[Path]:
    """Unmount everything below ``roots`` (lazily when a plain unmount fails); return what was."""
    done: list[Path] = []
    for _round in range(5):
        points = mounts_under(*roots)
        if not points:
            break
        for point in points:
            if umount(point) not in (0, errno.EINVAL, errno.ENOENT):
                umount(point, lazy=True)
            done.append(point)
    return done


def overlay_works(scratch: Path) -> bool:
    """True when an overlay mount works on the filesystem holding ``scratch``."""
    probe = Path(tempfile.mkdtemp(prefix="overlay-probe-", dir=scratch))
    try:
        lower, upper, work, merged = (probe / n for n in ("lower", "upper", "work", "merged"))
        for d in (lower, upper, work, merged):
            d.mkdir()
        (lower / "probe").write_text("lower\n")
        options = f"lowerdir={lower},upperdir={upper},workdir={work}"
        if mount("overlay", merged, "overlay", options) != 0:
            return False
        try:
            (merged / "upper").write_text("upper\n")
            return (merged / "probe").read_text() == "lower\n" and (upper / "upper").is_file()
        finally:
            if umount(merged) != 0:
                umount(merged, lazy=True)
    finally:
        unmount_all(probe)
        shutil.rmtree(probe, ignore_errors=True)


# --------------------------------------------------------------------------- processes


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def shim_pids(address: str) -> list[int]:
    """containerd shims started for the containerd listening on ``address``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        argv = _cmdline(int(entry.name))
        if not argv or not Path(argv[0]).name.startswith("containerd-shim"):
            continue
        with contextlib.suppress(ValueError, IndexError):
            if argv[argv.index("-address") + 1] == address:
                pids.append(int(entry.name))
    return sorted(pids)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def kill_and_wait(pids: Sequence[int], timeout: float = 5.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    end = time.monotonic() + timeout
    while time.monotonic() < end and any(_alive(p) for p in pids):
        time.sleep(0.02)


# --------------------------------------------------------------------------- config


def _toml(value: object) -> str:
    """A TOML value for a str, bool, int or list of str (JSON strings are TOML strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def _table(name: str, values: Mapping[str, object]) -> str:
    lines = [f"[{name}]"]
    lines += [f"  {key} = {_toml(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


CRI = 'plugins."io.containerd.grpc.v1.cri"'


@dataclass
class ContainerdProcess:
    """One containerd daemon with its own root, state and sockets.

    ``start()`` may be called again after ``stop()`` (a restart on the same
    root); ``close()`` stops it and removes everything it left. Use it as a
    context manager for both.
    """

    sandbox_image: str = DEFAULT_SANDBOX_IMAGE
    #: "overlayfs", "native", or None for overlayfs when it works here.
    snapshotter: str | None = None
    #: Registry hosts ("127.0.0.1:5000") the CRI plugin pulls from over plain HTTP.
    plain_http_registries: Sequence[str] = ()
    #: Extra TOML appended to the generated config.
    extra_config: str = ""
    binaries: Binaries | None = None
    process: subprocess.Popen[bytes] | None = None
    sock_dir: Path | None = None
    data_dir: Path | None = None
    _created_run_dirs: list[Path] = field(default_factory=list)
    #: Cgroup parents (``<controller>/k8s.io``) that existed before our first start.
    _cgroup_parents_before: set[Path] | None = None
    _known_containers: set[tuple[str, str]] = field(default_factory=set)
    _shim_sockets_seen: set[Path] = field(default_factory=set)
    _closed: bool = False
    _channel: grpc.Channel | None = None

    # ------------------------------------------------------------------ paths

    def _require(self, path: Path | None) -> Path:
        if path is None:
            raise RuntimeError("the containerd process was never started")
        return path

    @property
    def address(self) -> str:
        """The gRPC socket path (what ``ctr -a`` and the shims' ``-address`` take)."""
        return str(self._require(self.sock_dir) / "c.sock")

    @property
    def target(self) -> str:
        """The gRPC target for grpc.insecure_channel."""
        return f"unix:{self.address}"

    @property
    def root(self) -> Path:
        return self._require(self.data_dir) / "root"

    @property
    def state(self) -> Path:
        return self._require(self.data_dir) / "state"

    @property
    def runc_root(self) -> Path:
        return self._require(self.data_dir) / "runc"

    @property
    def log_path(self) -> Path:
        return self._require(self.data_dir) / "containerd.log"

    @property
    def config_path(self) -> Path:
        return self._require(self.data_dir) / "config.toml"

    @property
    def scratch(self) -> Path:
        """A directory for the test's own files (pod logs, image tars), removed by close()."""
        return self._require(self.data_dir) / "scratch"

    # ------------------------------------------------------------------ config

    def config(self) -> str:
        data = self._require(self.data_dir)
        sock = self._require(self.sock_dir)
        snapshotter = self.snapshotter or "overlayfs"
        text = f"version = 2\nroot = {_toml(str(self.root))}\nstate = {_toml(str(self.state))}\n"
        # containerd's own oom_score_adj: 0 (the default would be fine, this is explicit)
        text += "oom_score = 0\n"
        text += "disabled_plugins = " + _toml(
            [
                "io.containerd.snapshotter.v1.aufs",
                "io.containerd.snapshotter.v1.btrfs",
                "io.containerd.snapshotter.v1.devmapper",
                "io.containerd.snapshotter.v1.zfs",
                "io.containerd.tracing.processor.v1.otlp",
                "io.containerd.internal.v1.tracing",
            ]
        )
        text += "\n\n"
        text += _table("grpc", {"address": str(sock / "c.sock")})
        text += _table("ttrpc", {"address": str(sock / "c.sock.ttrpc")})
        text += _table("debug", {"address": str(sock / "debug.sock"), "level": "info"})
        text += _table("metrics", {"address": ""})
        text += _table('plugins."io.containerd.internal.v1.opt"', {"path": str(data / "opt")})
        text += _table(
            CRI,
            {
                "sandbox_image": self.sandbox_image,
                "restrict_oom_score_adj": True,
                "disable_apparmor": True,
                "enable_selinux": False,
                "netns_mounts_under_state_dir": True,
                "stream_server_address": "127.0.0.1",
                "stream_server_port": "0",
            },
        )
        text += _table(
            f"{CRI}.containerd",
            {"snapshotter": snapshotter, "default_runtime_name": "runc"},
        )
        text += _table(f"{CRI}.containerd.runtimes.runc", {"runtime_type": "io.containerd.runc.v2"})
        text += _table(
            f"{CRI}.containerd.runtimes.runc.options",
            {
                "Root": str(self.runc_root),
                "BinaryName": self._require_binaries().runc,
                "SystemdCgroup": False,
            },
        )
        text += _table(
            f"{CRI}.cni",
            {"bin_dir": str(data / "cni" / "bin"), "conf_dir": str(data / "cni" / "conf")},
        )
        text += _table(f"{CRI}.registry", {"config_path": str(data / "certs.d")})
        if self.extra_config:
            text += "\n" + self.extra_config.strip() + "\n"
        return text

    def _require_binaries(self) -> Binaries:
        if self.binaries is None:
            self.binaries = containerd_binaries()
        return self.binaries

    def _write_registry_hosts(self) -> None:
        certs = self._require(self.data_dir) / "certs.d"
        certs.mkdir(parents=True, exist_ok=True)
        for host in self.plain_http_registries:
            host_dir = certs / host
            host_dir.mkdir(parents=True, exist_ok=True)
            (host_dir / "hosts.toml").write_text(
                f'server = "http://{host}"\n\n'
                f'[host."http://{host}"]\n  capabilities = ["pull", "resolve"]\n'
            )

    # ------------------------------------------------------------------ lifecycle

    def _make_dirs(self) -> None:
        if self.sock_dir is None:
            self.sock_dir = Path(tempfile.mkdtemp(prefix="crishim-ctd-", dir="/tmp"))
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="crishim-ctd-data-"))
        for d in (
            self.root,
            self.state,
            self.runc_root,
            self.scratch,
            self.data_dir / "opt",
            self.data_dir / "cni" / "bin",
            self.data_dir / "cni" / "conf",
        ):
            d.mkdir(parents=True, exist_ok=True)
        for run_dir in (SHIM_SOCKET_DIR.parent, SHIM_SOCKET_DIR):
            if not run_dir.exists() and run_dir not in self._created_run_dirs:
                # containerd creates these on demand; note that we made them
                run_dir.mkdir(mode=0o711, exist_ok=True)
                self._created_run_dirs.append(run_dir)

    def _cgroup_parents(self) -> set[Path]:
        return {c / CRI_NAMESPACE for c in self._dirs(CGROUP_ROOT) if (c / CRI_NAMESPACE).is_dir()}

    def start(self) -> ContainerdProcess:
        """Start containerd (again, after stop()); return when it and its CRI plugin serve."""
        if self._closed:
            raise RuntimeError("a closed ContainerdProcess cannot start again")
        binaries = self._require_binaries()
        if self._cgroup_parents_before is None:
            self._cgroup_parents_before = self._cgroup_parents()
        self._make_dirs()
        if self.snapshotter is None:
            self.snapshotter = (
                "overlayfs" if overlay_works(self._require(self.data_dir)) else "native"
            )
        self._write_registry_hosts()
        self.config_path.write_text(self.config())
        for stale in ("c.sock", "c.sock.ttrpc", "debug.sock"):
            (self._require(self.sock_dir) / stale).unlink(missing_ok=True)
        env = {
            "PATH": os.pathsep.join(
                [
                    str(Path(binaries.shim).parent),
                    str(Path(binaries.runc).parent),
                    "/usr/sbin",
                    "/usr/bin",
                    "/sbin",
                    "/bin",
                ]
            ),
            "HOME": str(self._require(self.data_dir)),
            "TMPDIR": str(self._require(self.data_dir)),
        }
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [binaries.containerd, "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self._require(self.data_dir),
                start_new_session=True,
            )
        try:
            self._wait_serving(START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_serving(self, timeout: float) -> None:
        """Until containerd answers Version and its CRI plugin answers Version (bounded)."""
        end = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < end:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"containerd exited at start-up:\n{self.log_tail()}")
            if Path(self.address).exists():
                try:
                    version_pb2_grpc.VersionStub(self.channel()).Version(
                        empty_pb2.Empty(), timeout=1, wait_for_ready=True
                    )
                    runtime_service_pb2_grpc.RuntimeServiceStub(self.channel()).Version(
                        runtime_service_pb2.VersionRequest(), timeout=1, wait_for_ready=True
                    )
                    return
                except grpc.RpcError as exc:
                    last = exc
            time.sleep(0.05)
        raise RuntimeError(
            f"containerd did not serve within {timeout}s ({last}); log:\n{self.log_tail()}"
        )

    def log_tail(self, size: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return "(no log)"

    def channel(self) -> grpc.Channel:
        """A channel to containerd's socket, shared by callers until close().

        It outlives restarts: gRPC reconnects (quickly: the reconnect backoff is
        short) once containerd serves again, and start() returns only when this
        channel works.
        """
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.target, options=RECONNECT_OPTIONS)
        return self._channel

    def version(self) -> version_pb2.VersionResponse:
        return version_pb2_grpc.VersionStub(self.channel()).Version(
            empty_pb2.Empty(), timeout=CALL_TIMEOUT
        )

    def stop(self) -> None:
        """Stop the daemon (SIGTERM, then SIGKILL, bounded); shims and containers stay."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT)

    def restart(self) -> ContainerdProcess:
        """Stop and start again on the same root, state and sockets."""
        self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # ------------------------------------------------------------------ ctr

    def ctr(self, *args: str, namespace: str = CRI_NAMESPACE, timeout: float = 60.0) -> str:
        """Run ``ctr -a <socket> -n <namespace> ARGS``; return stdout (raise on failure)."""
        cmd = [self._require_binaries().ctr, "-a", self.address, "-n", namespace, *args]
        result = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr or result.stdout}"
            )
        return result.stdout

    # ------------------------------------------------------------------ cleanup

    def _remember_containers(self) -> None:
        """(namespace, id) of every container runc and the shims know, for the cgroup sweep."""
        if self.data_dir is None:
            return
        for ns_dir in self._dirs(self.runc_root):
            for c in self._dirs(ns_dir):
                self._known_containers.add((ns_dir.name, c.name))
        tasks = self.state / "io.containerd.runtime.v2.task"
        for ns_dir in self._dirs(tasks):
            for c in self._dirs(ns_dir):
                self._known_containers.add((ns_dir.name, c.name))

    @staticmethod
    def _dirs(path: Path) -> list[Path]:
        try:
            return sorted(p for p in path.iterdir() if p.is_dir())
        except OSError:
            return []

    def _remove_workloads(self) -> None:
        """Stop and remove pods and containers through the CRI and ctr (best effort)."""
        if not self.running:
            return
        runtime = runtime_service_pb2_grpc.RuntimeServiceStub(self.channel())
        with contextlib.suppress(grpc.RpcError):
            pods = runtime.ListPodSandbox(runtime_service_pb2.ListPodSandboxRequest(), timeout=10)
            for pod in pods.items:
                with contextlib.suppress(grpc.RpcError):
                    runtime.StopPodSandbox(
                        runtime_service_pb2.StopPodSandboxRequest(pod_sandbox_id=pod.id),
                        timeout=CALL_TIMEOUT,
                    )
                with contextlib.suppress(grpc.RpcError):
                    runtime.RemovePodSandbox(
                        runtime_service_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod.id),
                        timeout=CALL_TIMEOUT,
                    )
        try:
            namespaces = self.ctr("namespaces", "list", "-q", timeout=10).split()
        except (RuntimeError, subprocess.TimeoutExpired):
            return
        for ns in namespaces:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                for task in self.ctr("tasks", "list", "-q", namespace=ns, timeout=10).split():
                    with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                        self.ctr("tasks", "kill", "-s", "SIGKILL", task, namespace=ns, timeout=10)
                    with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                        self.ctr("tasks", "delete", "-f", task, namespace=ns, timeout=10)
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                for c in self.ctr("containers", "list", "-q", namespace=ns, timeout=10).split():
                    with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                        self.ctr("containers", "delete", c, namespace=ns, timeout=10)

    def _shim_sockets(self) -> set[Path]:
        """Shim sockets named by our task bundles' ``address`` files."""
        found: set[Path] = set()
        if self.data_dir is None:
            return found
        tasks = self.state / "io.containerd.runtime.v2.task"
        for ns_dir in self._dirs(tasks):
            for bundle in self._dirs(ns_dir):
                with contextlib.suppress(OSError):
                    address = (bundle / "address").read_text().strip()
                    if address.startswith("unix://"):
                        found.add(Path(address.removeprefix("unix://")))
                # containerd 1.6 derives the name from our address, namespace and id
                digest = hashlib.sha256(
                    os.path.join(self.address, ns_dir.name, bundle.name).encode()
                ).hexdigest()
                found.add(SHIM_SOCKET_DIR / digest)
        return found

    def _force_remove_runc_containers(self) -> None:
        binaries = self._require_binaries()
        for ns_dir in self._dirs(self.runc_root):
            for c in self._dirs(ns_dir):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    subprocess.run(
                        [binaries.runc, "--root", str(ns_dir), "delete", "--force", c.name],
                        capture_output=True,
                        timeout=15,
                        check=False,
                    )

    def _remove_cgroups(self) -> None:
        """Cgroups of our containers that runc left, then the empty parents we caused."""
        if not CGROUP_ROOT.is_dir():
            return
        ids = {cid for _ns, cid in self._known_containers}
        for controller in self._dirs(CGROUP_ROOT):
            for parent in (controller, *self._dirs(controller)):
                for cid in ids:
                    leftover = parent / cid
                    if leftover.is_dir():
                        with contextlib.suppress(OSError):
                            leftover.rmdir()
        for parent in self._cgroup_parents() - (self._cgroup_parents_before or set()):
            with contextlib.suppress(OSError):
                parent.rmdir()  # only when empty: another containerd may share it

    def leftovers(self) -> list[str]:
        """What close() should have removed and is still there (empty when clean)."""
        out: list[str] = []
        if self.sock_dir is not None:
            out += [f"shim pid {p}" for p in shim_pids(self.address)]
        for d in (self.sock_dir, self.data_dir):
            if d is not None:
                if d.exists():
                    out.append(f"directory {d}")
                out += [f"mount {m}" for m in mounts_under(d)]
        out += [f"shim socket {s}" for s in sorted(self._shim_sockets_seen) if s.exists()]
        if CGROUP_ROOT.is_dir():
            for controller in self._dirs(CGROUP_ROOT):
                for parent in (controller, *self._dirs(controller)):
                    for _ns, cid in sorted(self._known_containers):
                        if (parent / cid).exists():
                            out.append(f"cgroup {parent / cid}")
        # an empty directory we made (with content, another containerd uses it)
        out += [
            f"run dir {d}" for d in self._created_run_dirs if d.is_dir() and not any(d.iterdir())
        ]
        if self._cgroup_parents_before is not None:
            out += [
                f"cgroup {p}"
                for p in sorted(self._cgroup_parents() - self._cgroup_parents_before)
                if not self._dirs(p)
            ]
        return out

    def close(self) -> None:
        """Stop containerd and remove everything it and its shims left behind (idempotent)."""
        self._closed = True
        try:
            self._remember_containers()
            self._remove_workloads()
            self._remember_containers()
            self._shim_sockets_seen |= self._shim_sockets()
        finally:
            self.stop()
            if self.sock_dir is not None:
                address = self.address
                if self.data_dir is not None:
                    self._force_remove_runc_containers()
                kill_and_wait(shim_pids(address))
            for sock in self._shim_sockets_seen:
                with contextlib.suppress(OSError):
                    if sock.is_socket() or sock.exists():
                        sock.unlink()
            dirs = [d for d in (self.data_dir, self.sock_dir) if d is not None]
            unmount_all(*dirs)
            self._remove_cgroups()
            for d in dirs:
                shutil.rmtree(d, ignore_errors=True)
                if d.exists():
                    # a busy mount that only now went away, or a read-only file
                    unmount_all(d)
                    shutil.rmtree(d, ignore_errors=True)
            if self._channel is not None:
                self._channel.close()
                self._channel = None
            for run_dir in reversed(self._created_run_dirs):
                with contextlib.suppress(OSError):
                    run_dir.rmdir()  # only when empty: another containerd may use it

    def __enter__(self) -> ContainerdProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def running_containerd(**options: Any) -> Iterator[ContainerdProcess]:
    """A started :class:`ContainerdProcess`, closed (and cleaned up) on exit."""
    process = ContainerdProcess(**options)
    try:
        yield process.start()
    finally:
        process.close()
