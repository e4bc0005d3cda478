"""crishim.oci.store.ContentStore on its own: verified writes, temp files,
running usage totals, index.json updates."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from crishim.oci.layout import measure
from crishim.oci.store import BlobMismatch, ContentStore


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ContentStore]:
    s = ContentStore(tmp_path / "store")
    s.open()
    yield s
    s.close()


def totals(store: ContentStore) -> tuple[int, int]:
    usage = store.usage()
    return usage.used_bytes, usage.inodes_used


def walked(store: ContentStore) -> tuple[int, int]:
    usage = measure(store.root)
    return usage.used_bytes, usage.inodes_used


def test_open_makes_an_empty_oci_layout(store: ContentStore) -> None:
    assert json.loads((store.root / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    assert store.read_index()["manifests"] == []
    assert totals(store) == walked(store)


def test_put_has_delete_keep_running_totals(store: ContentStore) -> None:
    data = os.urandom(70_000)
    digest = digest_of(data)
    assert store.put(digest, data) is True
    assert store.put(digest, data) is False
    assert store.has(digest, len(data)) and not store.has(digest, 1)
    assert store.blob_path(digest).read_bytes() == data
    assert oct(store.blob_path(digest).stat().st_mode & 0o777) == oct(0o444)
    assert totals(store) == walked(store)
    assert store.delete([digest, digest_of(b"absent")]) == 1
    assert not store.has(digest)
    assert totals(store) == walked(store)


@pytest.mark.parametrize(
    ("written", "size", "problem"),
    [
        (b"abc", 3, "content has digest"),
        (b"abcd", 3, "more than the 3 bytes"),
        (b"ab", 3, "got 2 bytes"),
    ],
)
def test_a_mismatch_is_refused_and_leaves_nothing(
    store: ContentStore, written: bytes, size: int, problem: str
) -> None:
    digest = digest_of(b"xyz")
    before = totals(store)
    with pytest.raises(BlobMismatch, match=problem), store.writer(digest, size) as writer:
        writer.write(written)
        writer.commit()
    assert not store.has(digest)
    assert list(store.ingest.iterdir()) == []
    assert totals(store) == before


def test_invalid_digests_never_name_a_path(store: ContentStore) -> None:
    for bad in ("sha256:../../etc/passwd", "md5:" + "a" * 32, "sha256:" + "A" * 64):
        with pytest.raises(ValueError):
            store.blob_path(bad)


def test_open_removes_temp_files_of_dead_processes_only(tmp_path: Path) -> None:
    root = tmp_path / "store"
    first = ContentStore(root)
    first.open()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    (first.ingest / f"{'a' * 64}.{dead_pid}.xyz").write_bytes(b"partial")
    (root / ".index.json.abc.tmp").write_bytes(b"{")
    live = first.ingest / f"{'b' * 64}.{os.getpid()}.xyz"
    live.write_bytes(b"in progress")
    first.close()
    second = ContentStore(root)
    second.open()
    try:
        assert [p.name for p in second.ingest.iterdir()] == [live.name]
        assert not (root / ".index.json.abc.tmp").exists()
        # a file still being written is counted when it is committed, not before
        used, inodes = walked(second)
        assert totals(second) == (used - live.stat().st_blocks * 512, inodes - 1)
    finally:
        second.close()


def test_update_index_is_atomic_and_skips_no_ops(store: ContentStore) -> None:
    entry = {"mediaType": "x", "digest": digest_of(b"m"), "size": 1}
    assert store.update_index(lambda entries: [*entries, entry]) is True
    assert store.read_index()["manifests"] == [entry]
    identity = store.index_path.stat().st_ino
    assert store.update_index(lambda entries: entries) is False
    assert store.index_path.stat().st_ino == identity
    assert totals(store) == walked(store)
    assert not list(store.root.glob(".index.json.*"))


def test_a_damaged_blob_is_replaced_by_a_verified_copy(store: ContentStore) -> None:
    data = b"the real content" * 100
    digest = digest_of(data)
    store.put(digest, data)
    path = store.blob_path(digest)
    path.chmod(0o644)
    path.write_bytes(b"short")
    assert not store.has(digest, len(data))
    store.put(digest, data)
    assert path.read_bytes() == data
    assert totals(store) == walked(store)
