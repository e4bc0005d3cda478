"""OCI artifacts (KEP-4639 image volumes) through registry-cache, against the real registry.

The session registry holds ORAS-style artifacts built by
``LayoutBuilder.artifact``: ``test/oras:1`` (the empty config, an
``artifactType``, two titled files), ``test/typed:1`` (a config of its own
type and an ``artifactType``) and ``test/untyped:1`` (the empty config, no
``artifactType``); ``test/artifact:1`` has a config of its own type and no
``artifactType``, so it is neither an image nor an artifact.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from crishim_plugins.embedded_filter.filter import EmbeddedFilter, EmbeddedFilterOptions
from registry.helpers import blob_exists, plain_config, pull, pull_error
from registry.images import RegistryImages
from registry.process import RegistryProcess

from crishim.model import ImageRecord
from crishim.oci.spec import OCI_EMPTY, OCI_MANIFEST
from crishim.testing.ocibuild import BuiltArtifact
from crishim.testing.server import RunningShim, running_server
from crishim.types import FilterContext

pytest_plugins = ["registry.fixtures"]

Server = Callable[..., RunningShim]


def artifacts(images: RegistryImages) -> dict[str, BuiltArtifact]:
    return {"oras": images.oras, "typed": images.typed, "untyped": images.untyped}


@pytest.mark.parametrize("name", ["oras", "typed", "untyped"])
def test_an_artifact_is_pulled_and_reported(
    shim: RunningShim, registry: RegistryProcess, images: RegistryImages, store: Path, name: str
) -> None:
    artifact = artifacts(images)[name]
    repository = f"{registry.host}/test/{name}"
    response = pull(shim, f"{repository}:1")
    # its ID is its manifest digest (artifacts with the empty config share a config digest)
    assert response.image_ref == artifact.id == artifact.manifest.digest
    image = shim.status(f"{repository}:1").image
    assert image.id == artifact.id
    assert image.spec.image == artifact.id
    assert list(image.repo_tags) == [f"{repository}:1"]
    assert list(image.repo_digests) == [f"{repository}@{artifact.manifest.digest}"]
    assert image.size == artifact.size > 0
    assert not image.HasField("uid")
    assert image.username == ""
    assert dict(image.spec.annotations) == artifact.manifest_json.get("annotations", {})
    # every blob is stored, and named by every name
    for digest in (artifact.config.digest, *(layer.digest for layer in artifact.layers)):
        assert blob_exists(store, digest)
    for ref in (artifact.id, f"{repository}@{artifact.manifest.digest}"):
        assert shim.status(ref).image == image
    assert [i.id for i in shim.list()] == [artifact.id]


def test_verbose_info_of_an_artifact(
    shim: RunningShim, registry: RegistryProcess, images: RegistryImages
) -> None:
    pull(shim, f"{registry.host}/test/oras:1")
    info = json.loads(shim.status(images.oras.id, verbose=True).info["info"])
    assert info["artifactType"] == "application/vnd.crishim.test.volume.v1"
    assert info["imageSpec"] == {}
    assert info["chainID"] == ""
    assert info["manifestDigest"] == images.oras.manifest.digest
    assert info["manifestMediaType"] == OCI_MANIFEST
    pull(shim, f"{registry.host}/test/untyped:1")
    info = json.loads(shim.status(images.untyped.id, verbose=True).info["info"])
    assert info["artifactType"] == OCI_EMPTY


def test_artifacts_sharing_the_empty_config_are_two_images(
    shim: RunningShim, registry: RegistryProcess, images: RegistryImages
) -> None:
    assert images.oras.config.digest == images.untyped.config.digest
    pull(shim, f"{registry.host}/test/oras:1")
    pull(shim, f"{registry.host}/test/untyped:1")
    pull(shim, f"{registry.host}/test/small:1")
    assert sorted(i.id for i in shim.list()) == sorted(
        [images.oras.id, images.untyped.id, images.small.id]
    )


def test_a_pull_by_digest_and_a_restart(
    crishim_server: Server, registry: RegistryProcess, images: RegistryImages, store: Path
) -> None:
    ref = f"{registry.host}/test/oras@{images.oras.manifest.digest}"
    first = crishim_server(plain_config(store, registry))
    assert pull(first, ref).image_ref == images.oras.id
    again = crishim_server(plain_config(store, registry))  # reads the store back
    image = again.status(ref).image
    assert image.id == images.oras.id
    assert list(image.repo_tags) == []
    assert pull(again, ref).image_ref == images.oras.id  # held: no registry needed


def test_removing_an_artifact(
    shim: RunningShim, registry: RegistryProcess, images: RegistryImages, store: Path
) -> None:
    pull(shim, f"{registry.host}/test/oras:1")
    pull(shim, f"{registry.host}/test/untyped:1")
    shim.remove(f"{registry.host}/test/oras:1")
    assert not shim.status(images.oras.id).HasField("image")
    for layer in images.oras.layers:
        assert not blob_exists(store, layer.digest)
    # the empty config is still the other artifact's
    assert blob_exists(store, images.untyped.config.digest)
    assert shim.status(images.untyped.id).image.id == images.untyped.id
    shim.remove(images.untyped.id)
    assert shim.list() == []
    assert not blob_exists(store, images.untyped.config.digest)


def test_neither_image_nor_artifact_is_still_refused(
    shim: RunningShim, registry: RegistryProcess
) -> None:
    err = pull_error(shim, f"{registry.host}/test/artifact:1")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not a container image" in (err.details() or "")


def test_a_backend_that_refuses_artifacts(
    crishim_server: Server, registry: RegistryProcess, images: RegistryImages, store: Path
) -> None:
    ref = f"{registry.host}/test/oras:1"
    refusing = crishim_server(plain_config(store, registry, artifacts=False))
    err = pull_error(refusing, ref)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = err.details() or ""
    assert "is an OCI artifact (application/vnd.crishim.test.volume.v1)" in details
    assert "options.artifacts: false" in details
    assert not any(blob_exists(store, layer.digest) for layer in images.oras.layers)
    # images still pull
    assert pull(refusing, f"{registry.host}/test/small:1").image_ref == images.small.id
    # an artifact another server put in the store is not served either
    accepting = crishim_server(plain_config(store, registry))
    pull(accepting, ref)
    again = crishim_server(plain_config(store, registry, artifacts=False))
    assert not again.status(ref).HasField("image")
    assert [i.id for i in again.list()] == [images.small.id]


FILTERS: dict[str, list[dict[str, Any]] | None] = {
    "default-chain": None,
    "require-config": [{"name": "oci-only", "type": "embedded-filter"}],
    "no-filters": [],
}


@pytest.mark.parametrize("filters", FILTERS, ids=list(FILTERS))
def test_the_embedded_filter_lets_artifacts_through(
    registry: RegistryProcess, images: RegistryImages, store: Path, filters: str
) -> None:
    config = plain_config(store, registry)
    if FILTERS[filters] is not None:
        config["filters"] = FILTERS[filters]
    with running_server(config) as shim:
        assert pull(shim, f"{registry.host}/test/oras:1").image_ref == images.oras.id
        assert shim.status(images.oras.id).image.id == images.oras.id
        assert [i.id for i in shim.list()] == [images.oras.id]


def _artifact_record(**fields: Any) -> ImageRecord:
    digest = "sha256:" + "a" * 64
    values: dict[str, Any] = {
        "id": digest,
        "manifest_digest": digest,
        "manifest_media_type": OCI_MANIFEST,
        "artifact_type": "application/vnd.example.v1",
        "size": 10,
    }
    return ImageRecord(**{**values, **fields})


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({}, None),
        ({"manifest_media_type": "application/vnd.docker.distribution.manifest.v2+json"}, "OCI"),
        ({"id": "sha256:" + "b" * 64}, "is not its manifest digest"),
        ({"id": "sha256:xyz", "manifest_digest": "sha256:xyz"}, "is not its manifest digest"),
    ],
    ids=["well-formed", "docker-manifest", "id-is-not-the-manifest", "bad-digest"],
)
def test_the_embedded_filters_artifact_rule(fields: dict[str, Any], reason: str | None) -> None:
    embedded = EmbeddedFilter(
        FilterContext("oci-only", Path(".")), EmbeddedFilterOptions(require_config=True)
    )
    verdict = embedded.check(_artifact_record(**fields))
    if reason is None:
        assert not verdict.hidden
    else:
        assert verdict.hidden and reason in verdict.reason
