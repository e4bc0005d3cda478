"""The json-catalog backend passes crishim's CRI contract kit.

The store holds images with users of every kind, an image named twice, a
multi-platform index (resolved to linux/arm64/v8), an image named by digest
only, one known by ID only, and an iSulad embedded image that the default
filter chain must keep from the CRI.
"""

from __future__ import annotations

from pathlib import Path

try:
    import crishim_json_catalog  # noqa: F401  (the package under test must be installed)
except ImportError as exc:  # pragma: no cover
    raise ImportError(
        "install the example first: .venv/bin/pip install -e examples/crishim-json-catalog"
    ) from exc

from catalog_store import PLATFORM, options, store, write_catalog

from crishim.testing.conformance import ContractSetup, CriContract, ExpectedImage
from crishim.testing.embedded import add_embedded_image

EMBEDDED = "example.com/embedded/app:1.0"


def write_contract_store(root: Path) -> list[ExpectedImage]:
    """The store and catalogue every contract server serves; what the CRI must report."""
    b = store(root / "store")
    app = b.image(user="1000", name="app", layers=[{"a": "1"}, {"b": "2"}])
    web = b.image(user="www-data:33", name="web")
    named = b.image(user="nobody", name="named")
    pinned = b.image(user="0", name="pinned")
    bare = b.image(name="bare")
    multi = b.index(
        [
            b.image(architecture="amd64", name="multi"),
            b.image(architecture="arm64", variant="v8", user="2000", name="multi"),
        ]
    )
    arm64 = multi.images[1]
    embedded = add_embedded_image(b, EMBEDDED)
    write_catalog(
        root / "catalog.json",
        [
            {
                "names": ["example.com/app:1.0", "example.com/app:stable"],
                "manifest": app.manifest.digest,
            },
            {"names": ["web:1"], "manifest": web.manifest.digest},
            {"names": ["example.com/named:2"], "manifest": named.manifest.digest},
            {
                "names": [f"example.com/pinned@{pinned.manifest.digest}"],
                "manifest": pinned.manifest.digest,
            },
            {"names": [], "manifest": bare.manifest.digest},
            {"names": ["example.com/multi:1"], "manifest": multi.descriptor.digest},
            {"names": [EMBEDDED], "manifest": embedded.digest},
        ],
    )
    app_digest = f"example.com/app@{app.manifest.digest}"
    return [
        ExpectedImage(
            id=app.id,
            repo_tags=["example.com/app:1.0", "example.com/app:stable"],
            repo_digests=[app_digest],
            user="1000",
            size=app.size,
        ),
        ExpectedImage(
            id=web.id,
            repo_tags=["docker.io/library/web:1"],
            repo_digests=[f"docker.io/library/web@{web.manifest.digest}"],
            user="www-data:33",
            size=web.size,
        ),
        ExpectedImage(
            id=named.id,
            repo_tags=["example.com/named:2"],
            repo_digests=[f"example.com/named@{named.manifest.digest}"],
            user="nobody",
            size=named.size,
        ),
        ExpectedImage(
            id=pinned.id,
            repo_digests=[f"example.com/pinned@{pinned.manifest.digest}"],
            user="0",
            size=pinned.size,
        ),
        ExpectedImage(id=bare.id, size=bare.size),
        ExpectedImage(
            id=arm64.id,
            repo_tags=["example.com/multi:1"],
            repo_digests=[f"example.com/multi@{multi.descriptor.digest}"],
            user="2000",
            size=arm64.size,
        ),
    ]


class TestJsonCatalog(CriContract):
    removable = False  # read-only: RemoveImage is FAILED_PRECONDITION

    def cri_setup(self, root: Path) -> ContractSetup:
        images = write_contract_store(root)
        return ContractSetup(
            backends=[{"name": "catalog", "type": "json-catalog", "options": options(root)}],
            images=images,
            hidden=[EMBEDDED],
            config={"platform": PLATFORM},
        )
