#!/usr/bin/env python3
"""(Re)create the demo OCI image layout used by crishim's examples and tests.

Usage: python examples/make_example_layout.py [OUTDIR]

OUTDIR defaults to examples/layouts/demo in the repository.  The layout is
built from scratch in a temporary directory beside OUTDIR and then renamed
into place, so an interrupted run never leaves a half-written layout.  The
output is byte-for-byte reproducible: running the script twice gives
identical trees.  Nothing is downloaded; every image is a few tiny files.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from crishim.testing.embedded import add_embedded_image  # noqa: E402
from crishim.testing.ocibuild import (  # noqa: E402
    CONTAINERD_NAME,
    BuiltImage,
    BuiltIndex,
    Descriptor,
    LayoutBuilder,
)

DEFAULT_OUT = REPO_ROOT / "examples" / "layouts" / "demo"
REPO = "example.com/crishim"
#: An iSulad embedded image: in the layout, never served (the default
#: filter chain hides it; docs/plugins.md, "The embedded-filter").
EMBEDDED = f"{REPO}/embedded:1.0"

#: What one index.json entry names.
Target = BuiltImage | BuiltIndex | Descriptor

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n"
    "hello:x:1002:1002:hello:/home/hello:/usr/sbin/nologin\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
)
GROUP = "root:x:0:\nwww-data:x:33:\nhello:x:1002:\ntools:x:1004:\nnogroup:x:65534:\n"

# A base layer shared by several images: stored once in blobs/.
BASE_LAYER: dict[str, bytes | str] = {
    "etc/os-release": 'NAME="crishim demo"\nID=crishim-demo\nVERSION_ID=1\n',
    "etc/passwd": PASSWD,
    "etc/group": GROUP,
    "tmp/": "",
}


def build(root: Path) -> list[tuple[str, Target]]:
    """Write the demo layout into ``root``; return (name, target) per index.json entry."""
    b = LayoutBuilder(root)
    entries: list[tuple[str, Target]] = []

    def tag(target: BuiltImage | BuiltIndex, name: str, key: str | None = None) -> None:
        if key is None:
            b.tag(target, name)
        else:
            b.tag(target, name, key=key)
        entries.append((name, target))

    hello = b.image(
        layers=[BASE_LAYER, {"usr/share/hello/greeting.txt": "hello from crishim\n"}],
        user="1002",
        cmd=["/usr/bin/hello"],
        labels={"org.opencontainers.image.source": "https://example.com/crishim"},
        annotations={
            "org.opencontainers.image.title": "hello",
            "org.opencontainers.image.version": "1.0",
        },
    )
    for t in ("1.0", "1.1", "stable"):
        tag(hello, f"{REPO}/hello:{t}")

    web = b.image(
        layers=[BASE_LAYER, {"var/www/index.html": "<h1>crishim web demo</h1>\n"}],
        user="www-data",
        cmd=["/usr/sbin/httpd", "-f"],
        annotations={"org.opencontainers.image.title": "web"},
    )
    tag(web, f"{REPO}/web:1.0")

    tools = b.image(
        layers=[BASE_LAYER, {"usr/local/bin/tool.sh": "#!/bin/sh\necho tools\n"}],
        user="1003:1004",
        env=["PATH=/usr/local/bin:/usr/bin:/bin", "TOOLS_MODE=demo"],
        annotations={"org.opencontainers.image.title": "tools"},
    )
    tag(tools, f"{REPO}/tools:1.0")

    app = b.image(
        layers=[BASE_LAYER, {"srv/app/app.conf": "listen = 8080\n"}],
        user="www-data:1004",
        cmd=["/srv/app/run"],
        docker=True,
    )
    tag(app, f"{REPO}/app:1.0")

    platforms = [("amd64", None), ("arm64", "v8"), ("arm", "v7")]
    multi_images = [
        b.image(
            files={"etc/crishim-arch": f"multi demo for linux/{arch}{'/' + var if var else ''}\n"},
            user="",
            architecture=arch,
            variant=var,
            annotations={"org.opencontainers.image.title": "multi"},
        )
        for arch, var in platforms
    ]
    multi = b.index(multi_images, annotations={"org.opencontainers.image.title": "multi"})
    tag(multi, f"{REPO}/multi:1.0")

    pause = b.image(
        files={"pause": "not really a pause binary\n"},
        user="65535",
        cmd=["/pause"],
        name="pause-demo",
    )
    tag(pause, "docker.io/library/pause-demo:3.9", key=CONTAINERD_NAME)

    # A bare tag: crishim resolves it against the repository configured for the
    # layout (the example config sets repository: example.com/crishim/hello).
    tag(hello, "latest")

    # Held by the layout, hidden from the CRI: ImageStatus answers nil, lists
    # leave it out, and at logging.level debug the log says which filter hid
    # it and why.
    entries.append((EMBEDDED, add_embedded_image(b, EMBEDDED)))

    b.write()
    return entries


def _short(digest: str) -> str:
    return digest.split(":", 1)[1][:12]


def summary_lines(entries: list[tuple[str, Target]]) -> list[str]:
    lines = []
    width = max(len(name) for name, _ in entries)
    for name, target in entries:
        if isinstance(target, Descriptor):
            desc = f"embedded manifest {_short(target.digest)} (hidden by the embedded-filter)"
        elif isinstance(target, BuiltImage):
            user = target.config_json["config"]
            assert isinstance(user, dict)
            desc = f"id {_short(target.id)}  size {target.size:>5}  user {user['User']!r}"
        else:
            plats = []
            for img in target.images:
                plat = img.manifest.platform or {}
                label = "/".join(plat[k] for k in ("os", "architecture", "variant") if k in plat)
                plats.append(f"{label} id {_short(img.id)} size {img.size}")
            desc = f"index {_short(target.descriptor.digest)}: " + "; ".join(plats)
        lines.append(f"{name:<{width}}  {desc}")
    return lines


def main(argv: list[str]) -> int:
    if len(argv) > 2 or (len(argv) == 2 and argv[1] in ("-h", "--help")):
        print(__doc__.strip() if __doc__ else "", file=sys.stderr)
        return 2
    out = Path(argv[1]).resolve() if len(argv) == 2 else DEFAULT_OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        entries = build(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote {out}")
    for line in summary_lines(entries):
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
