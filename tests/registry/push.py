"""Pushing images built by LayoutBuilder to a registry through the distribution API.

Blobs go up as monolithic uploads (``POST /v2/<name>/blobs/uploads/`` then
``PUT <location>?digest=``), manifests with ``PUT /v2/<name>/manifests/<ref>``
and their exact bytes, so digests stay those LayoutBuilder computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urljoin

import httpx

from crishim.testing.ocibuild import BuiltArtifact, BuiltImage, BuiltIndex, Descriptor


class Pusher:
    """Pushes the blobs of one LayoutBuilder layout to a registry."""

    def __init__(self, base_url: str, layout_root: Path, client: httpx.Client | None = None):
        self.base = base_url.rstrip("/")
        self.root = layout_root
        self.client = client or httpx.Client(timeout=30, trust_env=False)

    def _blob_bytes(self, digest: str) -> bytes:
        algorithm, _, hexpart = digest.partition(":")
        return (self.root / "blobs" / algorithm / hexpart).read_bytes()

    def blob(self, repository: str, descriptor: Descriptor) -> None:
        url = f"{self.base}/v2/{repository}/blobs/{descriptor.digest}"
        if self.client.head(url).status_code == 200:
            return
        started = self.client.post(f"{self.base}/v2/{repository}/blobs/uploads/")
        assert started.status_code == 202, (started.status_code, started.text)
        location = urljoin(self.base + "/", started.headers["Location"])
        # the upload location carries state in its query: add the digest to it
        separator = "&" if "?" in location else "?"
        done = self.client.put(
            f"{location}{separator}digest={descriptor.digest}",
            content=self._blob_bytes(descriptor.digest),
            headers={"Content-Type": "application/octet-stream"},
        )
        assert done.status_code == 201, (done.status_code, done.text)

    def manifest(self, repository: str, descriptor: Descriptor, reference: str) -> None:
        response = self.client.put(
            f"{self.base}/v2/{repository}/manifests/{reference}",
            content=self._blob_bytes(descriptor.digest),
            headers={"Content-Type": descriptor.media_type},
        )
        assert response.status_code == 201, (response.status_code, response.text)
        assert response.headers.get("Docker-Content-Digest") == descriptor.digest

    def image(
        self, repository: str, image: BuiltImage | BuiltArtifact, tags: Sequence[str] = ()
    ) -> None:
        """Push an image (or an artifact: the same shape) under its digest and ``tags``."""
        for layer in image.layers:
            self.blob(repository, layer)
        self.blob(repository, image.config)
        self.manifest(repository, image.manifest, image.manifest.digest)
        for tag in tags:
            self.manifest(repository, image.manifest, tag)

    def index(self, repository: str, index: BuiltIndex, tags: Sequence[str]) -> None:
        for image in index.images:
            self.image(repository, image)
        self.manifest(repository, index.descriptor, index.descriptor.digest)
        for tag in tags:
            self.manifest(repository, index.descriptor, tag)
