"""Generate a large synthetic OCI image layout for benchmarks.

Every image has its own config (so its own ID) and manifest; layers are
shared from a small pool, as on real nodes. Image ``i`` is tagged
``bench.example/app<i % 1000>:v<i>``; every tenth image gets a second tag.
Blobs are written without fsync (this is test data, not a store).

    python bench/gen_layout.py OUTDIR COUNT
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import sys
import tarfile
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
LAYER_POOL = 8


def _blob(blobs: Path, data: bytes) -> tuple[str, int]:
    hexd = hashlib.sha256(data).hexdigest()
    path = blobs / hexd
    if not path.exists():
        path.write_bytes(data)
    return "sha256:" + hexd, len(data)


def _layer(i: int) -> tuple[bytes, str]:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        content = f"layer {i}\n".encode() * 64
        info = tarfile.TarInfo(f"usr/share/bench/layer{i}")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    diff_id = "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())
    return out.getvalue(), diff_id


def tag_of(i: int) -> str:
    return f"bench.example/app{i % 1000}:v{i}"


def generate(root: Path, count: int) -> None:
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    layers = []
    for i in range(LAYER_POOL):
        data, diff_id = _layer(i)
        digest, size = _blob(blobs, data)
        layers.append(({"mediaType": OCI_LAYER, "digest": digest, "size": size}, diff_id))
    entries = []
    for i in range(count):
        chosen = [layers[i % LAYER_POOL], layers[(i // LAYER_POOL) % LAYER_POOL]]
        if chosen[0] is chosen[1]:
            chosen = chosen[:1]
        config = {
            "architecture": "amd64",
            "os": "linux",
            "created": "2024-01-01T00:00:00Z",
            "config": {"User": str(1000 + i % 50), "Labels": {"bench.index": str(i)}},
            "rootfs": {"type": "layers", "diff_ids": [d for _, d in chosen]},
        }
        cdigest, csize = _blob(blobs, json.dumps(config, separators=(",", ":")).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": cdigest, "size": csize},
            "layers": [desc for desc, _ in chosen],
        }
        mdigest, msize = _blob(blobs, json.dumps(manifest, separators=(",", ":")).encode())
        names = [tag_of(i)] + ([f"bench.example/extra:t{i}"] if i % 10 == 0 else [])
        for name in names:
            entries.append(
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": mdigest,
                    "size": msize,
                    "annotations": {REF_NAME: name},
                }
            )
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json"}
    index["manifests"] = entries  # type: ignore[assignment]
    tmp = root / ".index.json.tmp"
    tmp.write_bytes(json.dumps(index, separators=(",", ":")).encode())
    os.replace(tmp, root / "index.json")
    (root / ".complete").write_text(str(count))


def ensure(root: Path, count: int) -> Path:
    """The layout for ``count`` images, generated once and reused."""
    marker = root / ".complete"
    if marker.exists() and marker.read_text() == str(count):
        return root
    if root.exists():
        import shutil

        shutil.rmtree(root)
    generate(root, count)
    return root


if __name__ == "__main__":
    ensure(Path(sys.argv[1]), int(sys.argv[2]))
