"""Small runnable images for containerd, built with LayoutBuilder, and ways to load them.

* a busybox image: the host's statically linked ``/bin/busybox`` (Debian's
  busybox-static) as an executable, with ``sh``, ``echo``, ``sleep`` and
  ``cat`` symlinks to it under ``/bin``;
* a pause image for pod sandboxes: the same layer, its command
  ``/bin/sleep 2147483647`` (the CRI plugin kills sandboxes with SIGKILL);

both for the host's platform, so containerd unpacks and runs them. They go
into containerd with ``ctr images import`` from an OCI layout tar written
here (:func:`write_oci_tar`, :func:`import_images`), or to a registry with
tests/registry/push.py's :class:`~registry.push.Pusher` (:func:`push_images`).
"""

from __future__ import annotations

import io
import platform
import tarfile
from dataclasses import dataclass
from pathlib import Path

from registry.push import Pusher

from crishim.testing.ocibuild import (
    CONTAINERD_NAME,
    REF_NAME,
    BuiltImage,
    File,
    LayerFiles,
    LayoutBuilder,
    Symlink,
)

from .process import DEFAULT_SANDBOX_IMAGE, ContainerdProcess, unavailable

BUSYBOX_BINARY = Path("/bin/busybox")
BUSYBOX_INSTALL_HINT = (
    "install it with: apt-get update && DEBIAN_FRONTEND=noninteractive "
    "apt-get install -y --no-install-recommends busybox-static (.ci/run does this)"
)
BUSYBOX_REF = "crishim.test/busybox:1"
PAUSE_REF = DEFAULT_SANDBOX_IMAGE
#: The applets linked into the busybox image's /bin.
APPLETS = ("sh", "echo", "sleep", "cat")

_MACHINES = {
    "x86_64": ("amd64", None),
    "aarch64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}


def host_platform() -> tuple[str, str | None]:
    """(architecture, variant) of this machine in OCI terms."""
    machine = platform.machine()
    if machine not in _MACHINES:
        raise RuntimeError(f"no OCI platform known for machine {machine!r}")
    return _MACHINES[machine]


def busybox_binary() -> bytes:
    """The host's static busybox; fails under CI, skips elsewhere, when it is missing."""
    if not BUSYBOX_BINARY.is_file():
        unavailable(f"{BUSYBOX_BINARY} is missing; {BUSYBOX_INSTALL_HINT}")
    return BUSYBOX_BINARY.read_bytes()


@dataclass(frozen=True)
class ContainerdImages:
    """What :func:`build_images` wrote."""

    layout: Path
    #: An OCI layout tar of both images, for ``ctr images import``.
    tar: Path
    busybox: BuiltImage
    pause: BuiltImage
    busybox_ref: str = BUSYBOX_REF
    pause_ref: str = PAUSE_REF


def busybox_files(binary: bytes) -> LayerFiles:
    files: dict[str, bytes | str | File | Symlink] = {"bin/busybox": File(binary, mode=0o755)}
    for applet in APPLETS:
        files[f"bin/{applet}"] = Symlink("busybox")
    files["tmp/"] = ""
    return files


def build_images(
    root: Path, *, busybox_ref: str = BUSYBOX_REF, pause_ref: str = PAUSE_REF
) -> ContainerdImages:
    """Build the busybox and pause images under ``root`` (a layout and its tar)."""
    architecture, variant = host_platform()
    layer = busybox_files(busybox_binary())
    b = LayoutBuilder(root / "layout")
    busybox = b.image(
        name="busybox",
        files=layer,
        cmd=["/bin/sh"],
        architecture=architecture,
        variant=variant,
    )
    pause = b.image(
        name="pause",
        files=layer,
        cmd=["/bin/sleep", "2147483647"],
        architecture=architecture,
        variant=variant,
    )
    for image, ref in ((busybox, busybox_ref), (pause, pause_ref)):
        # ctr import names images by io.containerd.image.name; ref.name is the tag
        b.tag(image, ref, key=CONTAINERD_NAME, extra_annotations={REF_NAME: ref.rsplit(":", 1)[1]})
    layout = b.write()
    tar = write_oci_tar(layout, root / "images.tar")
    return ContainerdImages(
        layout=layout,
        tar=tar,
        busybox=busybox,
        pause=pause,
        busybox_ref=busybox_ref,
        pause_ref=pause_ref,
    )


def write_oci_tar(layout: Path, dest: Path) -> Path:
    """Write the OCI layout at ``layout`` as a deterministic tar (what ``ctr import`` reads)."""
    members = [layout / "oci-layout", layout / "index.json"]
    members += sorted((layout / "blobs").rglob("*"))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in members:
            info = tarfile.TarInfo(path.relative_to(layout).as_posix())
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if path.is_dir():
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                data = path.read_bytes()
                info.mode = 0o644
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    dest.write_bytes(buf.getvalue())
    return dest


def import_images(
    containerd: ContainerdProcess, tar: Path, *, namespace: str = "k8s.io"
) -> list[str]:
    """``ctr -a <socket> -n <namespace> images import`` the tar; return the names ctr printed.

    Unpacks into the snapshotter the CRI plugin uses, so pods can run them.
    """
    snapshotter = containerd.snapshotter or "overlayfs"
    out = containerd.ctr(
        "images", "import", "--snapshotter", snapshotter, str(tar), namespace=namespace
    )
    names = []
    for line in out.splitlines():
        # "unpacking <name> (sha256:...)...done"
        if line.startswith("unpacking "):
            names.append(line.split()[1])
    return names


def push_images(
    images: ContainerdImages, base_url: str, repository_prefix: str = "crishim"
) -> None:
    """Push both images to the registry at ``base_url`` as ``<prefix>/busybox:1``, ``/pause:1``."""
    pusher = Pusher(base_url, images.layout)
    try:
        pusher.image(f"{repository_prefix}/busybox", images.busybox, ["1"])
        pusher.image(f"{repository_prefix}/pause", images.pause, ["1"])
    finally:
        pusher.client.close()
