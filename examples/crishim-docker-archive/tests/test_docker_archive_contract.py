"""The docker-archive backend passes crishim's CRI contract kit.

Three archives: a legacy one, a gzip-compressed one, and one in Docker 25's
OCI shape (whose index.json gives the images repo digests), holding users
of every kind and an untagged image (served by ID only).
"""

from __future__ import annotations

from pathlib import Path

try:
    import crishim_docker_archive  # noqa: F401  (the package under test must be installed)
except ImportError as exc:  # pragma: no cover
    raise ImportError(
        "install the example first: .venv/bin/pip install -e examples/crishim-docker-archive"
    ) from exc

from docker_save import SavedImage, save

from crishim.testing.conformance import ContractSetup, CriContract, ExpectedImage


def write_archives(root: Path) -> list[SavedImage]:
    """The archives every test here serves; returns the images with their IDs."""
    busybox = SavedImage(tags=["busybox:1.36", "busybox:latest"], layers=[{"bin/sh": "sh\n"}])
    app = SavedImage(
        tags=["example.com/team/app:2.0"], user="1000", layers=[{"a": "1"}, {"b": "2"}]
    )
    web = SavedImage(tags=["example.com/web:1"], user="www-data:33", layers=[{"w": "w"}])
    untagged = SavedImage(tags=[], user="nobody", layers=[{"u": "u"}])
    save(root / "base.tar", [busybox, untagged])
    save(root / "app.tar.gz", [app], compress=True)
    save(root / "web.tar", [web], shape="oci")
    return [busybox, app, web, untagged]


def expected(image: SavedImage) -> ExpectedImage:
    tags = []
    for tag in image.tags:
        repository, _, name = tag.rpartition(":")
        if "/" not in repository:
            repository = f"docker.io/library/{repository}"
        tags.append(f"{repository}:{name}")
    return ExpectedImage(
        id=image.id, repo_tags=tags, repo_digests=image.digests, user=image.user, size=image.size
    )


class TestDockerArchive(CriContract):
    removable = False  # read-only: RemoveImage is FAILED_PRECONDITION

    def cri_setup(self, root: Path) -> ContractSetup:
        images = write_archives(root / "archives")
        return ContractSetup(
            backends=[{"name": "saved", "type": "docker-archive", "options": {"path": "archives"}}],
            images=[expected(i) for i in images],
            base_dir=root,
        )
