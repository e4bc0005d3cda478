"""Live layouts: changes under a running server, reload under load,
StreamImages, oversize ListImages, removal and its crash safety, and
index snapshots (issue: 100,000 images at the cost of 100).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from crishim.cri.runtime.v1 import api_pb2
from crishim.oci.atomic import atomic_write
from crishim.testing.ocibuild import BuiltImage, LayoutBuilder
from crishim.testing.server import RunningShim, running_server

SHARED_LAYER = {"usr/share/base": "shared base layer\n"}


def _image(builder: LayoutBuilder, n: int, **kwargs: Any) -> BuiltImage:
    """A small image with its own ID, sharing the base layer with the others."""
    return builder.image(
        layers=[SHARED_LAYER, {f"etc/image-{n}": f"image {n}\n"}],
        labels={"n": str(n)},
        **kwargs,
    )


def _config(path: Path, state: Path | None = None, **options: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "backends": [{"name": "live", "type": "oci-dir", "options": {"path": str(path), **options}}]
    }
    if state is not None:
        config["state_dir"] = str(state)
    return config


def _wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll until ``predicate()`` holds; fail after ``timeout`` (not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout}s")


def _present(shim: RunningShim, ref: str) -> bool:
    return shim.status(ref).HasField("image")


def _drop_entries(layout: Path, names: set[str]) -> None:
    index = json.loads((layout / "index.json").read_bytes())
    index["manifests"] = [
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") not in names
    ]
    atomic_write(layout / "index.json", json.dumps(index).encode())


# -- live changes -----------------------------------------------------------


def test_images_added_and_removed_under_a_running_server(tmp_path: Path) -> None:
    builder = LayoutBuilder(tmp_path / "layout")
    first = _image(builder, 1)
    builder.tag(first, "example.com/live/one:1")
    builder.write()
    with running_server(_config(builder.root, rescan_interval=60)) as shim:
        assert _present(shim, "example.com/live/one:1")
        assert not _present(shim, "example.com/live/two:1")

        second = _image(builder, 2, user="1234")
        builder.tag(second, "example.com/live/two:1")
        builder.write()
        _wait_for(lambda: _present(shim, "example.com/live/two:1"))
        image = shim.status("example.com/live/two:1").image
        assert image.id == second.id
        assert image.uid.value == 1234
        assert {i.id for i in shim.list()} == {first.id, second.id}

        _drop_entries(builder.root, {"example.com/live/one:1"})
        _wait_for(lambda: not _present(shim, "example.com/live/one:1"))
        assert {i.id for i in shim.list()} == {second.id}


def test_safety_net_rescan_without_watcher(tmp_path: Path) -> None:
    builder = LayoutBuilder(tmp_path / "layout")
    builder.tag(_image(builder, 1), "example.com/poll/one:1")
    builder.write()
    with running_server(_config(builder.root, watch=False, rescan_interval=0.2)) as shim:
        builder.tag(_image(builder, 2), "example.com/poll/two:1")
        builder.write()
        _wait_for(lambda: _present(shim, "example.com/poll/two:1"))


def test_reload_under_load_every_answer_old_or_new(tmp_path: Path) -> None:
    builder = LayoutBuilder(tmp_path / "layout")
    stable = [_image(builder, n) for n in range(5)]
    for n, image in enumerate(stable):
        builder.tag(image, f"example.com/stable/s{n}:1")
    churn = _image(builder, 99, user="4242")
    builder.write()
    base_entries = builder.entries

    with running_server(_config(builder.root, rescan_interval=60)) as shim:
        expected_stable = {
            f"example.com/stable/s{n}:1": shim.status(
                f"example.com/stable/s{n}:1"
            ).SerializeToString()
            for n in range(5)
        }
        seen_churn: set[str] = set()
        errors: list[str] = []
        wrong: list[str] = []
        stop = threading.Event()

        def reader(t: int) -> None:
            refs = [*expected_stable, "example.com/churn/c:1"]
            i = t
            while not stop.is_set():
                ref = refs[i % len(refs)]
                i += 1
                try:
                    reply = shim.status(ref)
                except grpc.RpcError as exc:
                    errors.append(f"{exc.code()}: {exc.details()}")
                    continue
                if ref in expected_stable:
                    if reply.SerializeToString() != expected_stable[ref]:
                        wrong.append(f"{ref} changed")
                elif reply.HasField("image"):
                    # new state: exactly the churned image, complete
                    if reply.image.id != churn.id or reply.image.uid.value != 4242:
                        wrong.append(f"churn answered {reply.image.id}")
                    seen_churn.add("present")
                else:
                    seen_churn.add("absent")

        readers = [threading.Thread(target=reader, args=(t,)) for t in range(16)]
        for thread in readers:
            thread.start()
        try:
            for _ in range(6):
                builder.tag(churn, "example.com/churn/c:1")
                builder.write()
                _wait_for(lambda: _present(shim, "example.com/churn/c:1"))
                index = json.loads((builder.root / "index.json").read_bytes())
                index["manifests"] = base_entries
                atomic_write(builder.root / "index.json", json.dumps(index).encode())
                builder = _rebuild(builder, base_entries)
                _wait_for(lambda: not _present(shim, "example.com/churn/c:1"))
        finally:
            stop.set()
            for thread in readers:
                thread.join(timeout=30)
        assert errors == []
        assert wrong == []
        assert seen_churn == {"present", "absent"}


def _rebuild(builder: LayoutBuilder, entries: list[dict[str, object]]) -> LayoutBuilder:
    """A builder on the same root whose index holds just ``entries``."""
    fresh = LayoutBuilder(builder.root)
    for entry in entries:
        fresh.add_raw_entry(entry)
    return fresh


# -- StreamImages and oversize ListImages -------------------------------------


def _many(
    root: Path, count: int, tags_per_image: int = 1
) -> tuple[LayoutBuilder, list[BuiltImage]]:
    builder = LayoutBuilder(root)
    images = []
    for n in range(count):
        image = _image(builder, n)
        images.append(image)
        for t in range(tags_per_image):
            builder.tag(image, f"example.com/many/repository-with-a-long-name-{n}:tag-{t}")
    builder.write()
    return builder, images


def test_stream_images_every_image_once_in_bounded_batches(tmp_path: Path) -> None:
    _, images = _many(tmp_path / "layout", 120, tags_per_image=2)
    limit = 4096
    config = _config(tmp_path / "layout")
    config["server"] = {"stream_batch_bytes": limit}
    with running_server(config) as shim:
        messages = list(shim.images.StreamImages(api_pb2.StreamImagesRequest(), timeout=30))
        assert len(messages) > 3, "a small batch limit gives several messages"
        for message in messages:
            assert 0 < message.ByteSize() <= limit
        streamed = [image.id for message in messages for image in message.images]
        assert sorted(streamed) == sorted(i.id for i in images), "every image exactly once"
        listed = {i.SerializeToString() for i in shim.list()}
        assert {i.SerializeToString() for m in messages for i in m.images} == listed

        request = api_pb2.StreamImagesRequest()
        request.filter.image.image = "example.com/many/repository-with-a-long-name-7:tag-1"
        filtered = [i.id for m in shim.images.StreamImages(request, timeout=30) for i in m.images]
        assert filtered == [images[7].id]


def test_oversize_list_images_is_resource_exhausted_never_truncated(tmp_path: Path) -> None:
    _many(tmp_path / "layout", 120, tags_per_image=6)
    config = _config(tmp_path / "layout")
    config["server"] = {"max_send_message_size": 64 * 1024}
    with running_server(config) as shim:
        with pytest.raises(grpc.RpcError) as info:
            shim.list()
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "StreamImages" in info.value.details()
        streamed = [
            i.id
            for m in shim.images.StreamImages(api_pb2.StreamImagesRequest(), timeout=30)
            for i in m.images
        ]
        assert len(streamed) == 120


# -- RemoveImage ------------------------------------------------------------


def _blobs(root: Path) -> set[str]:
    return {p.name for p in (root / "blobs" / "sha256").iterdir()}


def _removal_layout(root: Path) -> tuple[LayoutBuilder, BuiltImage, BuiltImage]:
    builder = LayoutBuilder(root)
    doomed = _image(builder, 1)
    kept = _image(builder, 2)
    for tag in ("1.0", "1.1", "stable"):
        builder.tag(doomed, f"example.com/rm/doomed:{tag}")
    builder.tag(kept, "example.com/rm/kept:1")
    builder.write()
    return builder, doomed, kept


@pytest.mark.parametrize("how", ["id", "tag", "digest", "id-prefix"])
def test_remove_by_any_name_removes_every_name_and_reclaims_blobs(tmp_path: Path, how: str) -> None:
    builder, doomed, kept = _removal_layout(tmp_path / "layout")
    root = builder.root
    only_doomed = {doomed.manifest.digest, doomed.config.digest, doomed.layers[1].digest}
    shared = doomed.layers[0].digest
    ref = {
        "id": doomed.id,
        "tag": "example.com/rm/doomed:1.1",
        "digest": f"example.com/rm/doomed@{doomed.manifest.digest}",
        "id-prefix": doomed.id.removeprefix("sha256:")[:16],
    }[how]
    with running_server(_config(root)) as shim:
        shim.remove(ref)
        for tag in ("1.0", "1.1", "stable"):
            assert not _present(shim, f"example.com/rm/doomed:{tag}")
        assert not _present(shim, doomed.id)
        assert _present(shim, "example.com/rm/kept:1")
        assert [i.id for i in shim.list()] == [kept.id]
    index = json.loads((root / "index.json").read_bytes())
    names = [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]]
    assert names == ["example.com/rm/kept:1"]
    left = _blobs(root)
    assert not {d.removeprefix("sha256:") for d in only_doomed} & left, (
        "its own blobs are reclaimed"
    )
    assert shared.removeprefix("sha256:") in left, "a layer another image uses stays"
    assert kept.config.digest.removeprefix("sha256:") in left


def test_remove_multi_platform_index_reclaims_every_platform(tmp_path: Path) -> None:
    builder = LayoutBuilder(tmp_path / "layout")
    per_platform = [
        _image(builder, 10, architecture="amd64"),
        _image(builder, 11, architecture="arm64", variant="v8"),
    ]
    index = builder.index(per_platform)
    builder.tag(index, "example.com/rm/multi:1")
    builder.tag(_image(builder, 12), "example.com/rm/other:1")
    builder.write()
    config = _config(builder.root)
    config["platform"] = {"os": "linux", "architecture": "arm64", "variant": "v8"}
    with running_server(config) as shim:
        assert shim.status("example.com/rm/multi:1").image.id == per_platform[1].id
        shim.remove("example.com/rm/multi:1")
        assert not _present(shim, "example.com/rm/multi:1")
    left = _blobs(builder.root)
    for image in per_platform:
        assert image.manifest.digest.removeprefix("sha256:") not in left
        assert image.config.digest.removeprefix("sha256:") not in left
    assert index.descriptor.digest.removeprefix("sha256:") not in left


def test_remove_is_idempotent_and_safe_when_racing(tmp_path: Path) -> None:
    builder, doomed, kept = _removal_layout(tmp_path / "layout")
    with running_server(_config(builder.root)) as shim:
        results: list[object] = []

        def remove() -> None:
            try:
                results.append(shim.remove("example.com/rm/doomed:stable"))
            except grpc.RpcError as exc:
                results.append(exc)

        racers = [threading.Thread(target=remove) for _ in range(5)]
        for thread in racers:
            thread.start()
        for thread in racers:
            thread.join(timeout=30)
        assert len(results) == 5
        assert all(isinstance(r, api_pb2.RemoveImageResponse) for r in results), results
        assert isinstance(shim.remove(doomed.id), api_pb2.RemoveImageResponse)
        assert [i.id for i in shim.list()] == [kept.id]
    json.loads((builder.root / "index.json").read_bytes())


def test_read_only_backend_refuses_removal(tmp_path: Path) -> None:
    builder, doomed, _ = _removal_layout(tmp_path / "layout")
    before = (builder.root / "index.json").read_bytes()
    with running_server(_config(builder.root, read_only=True)) as shim:
        with pytest.raises(grpc.RpcError) as info:
            shim.remove("example.com/rm/doomed:1.0")
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "read-only" in info.value.details()
        assert _present(shim, doomed.id)
    assert (builder.root / "index.json").read_bytes() == before


def _serve_subprocess(
    layout: Path, state: Path, env: dict[str, str], sockdir: Path
) -> tuple[subprocess.Popen[str], Path]:
    sock = sockdir / "crishim.sock"
    config = state.parent / "crash.json"
    config.write_text(
        json.dumps(
            {
                "server": {"listen": f"unix://{sock}"},
                "state_dir": str(state),
                "backends": [
                    {"name": "crash", "type": "oci-dir", "options": {"path": str(layout)}}
                ],
            }
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "crishim.cli", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    deadline = time.monotonic() + 30
    while not sock.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    return proc, sock


@pytest.mark.parametrize(
    ("fault", "state_after"), [("index:before-rename", "old"), ("index:after-rename", "new")]
)
def test_kill_during_removal_leaves_a_valid_index(
    tmp_path: Path, fault: str, state_after: str, sockdir: Path
) -> None:
    builder, doomed, kept = _removal_layout(tmp_path / "layout")
    root = builder.root
    before = json.loads((root / "index.json").read_bytes())
    proc, sock = _serve_subprocess(root, tmp_path / "state", {"CRISHIM_FAULT": fault}, sockdir)
    try:
        with grpc.insecure_channel(f"unix:{sock}") as channel:
            from crishim.cri.runtime.v1 import api_pb2_grpc

            stub = api_pb2_grpc.ImageServiceStub(channel)
            grpc.channel_ready_future(channel).result(timeout=10)
            with pytest.raises(grpc.RpcError) as info:
                stub.RemoveImage(
                    api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=doomed.id)), timeout=10
                )
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert proc.wait(timeout=30) == -9, "the server was killed at the fault point"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
        shutil.rmtree(sock.parent, ignore_errors=True)  # the killed server left its socket
    after = json.loads((root / "index.json").read_bytes())  # valid JSON either way
    if state_after == "old":
        assert after == before
    else:
        assert len(after["manifests"]) == 1
    # a restarted server serves a consistent state and can finish the job
    with running_server(_config(root, state=tmp_path / "state")) as shim:
        assert _present(shim, "example.com/rm/kept:1")
        assert _present(shim, doomed.id) == (state_after == "old")
        shim.remove(doomed.id)
        assert [i.id for i in shim.list()] == [kept.id]
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")], "stale temp files cleaned"


# -- snapshots --------------------------------------------------------------


def _snapshot(state: Path) -> Path:
    return state / "backends" / "live" / "oci-dir-index.snapshot"


def test_valid_snapshot_is_served_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    builder, _doomed, kept = _removal_layout(tmp_path / "layout")
    state = tmp_path / "state"
    with running_server(_config(builder.root, state=state)) as shim:
        first = shim.status("example.com/rm/doomed:1.0").SerializeToString()
    assert _snapshot(state).exists()
    with caplog.at_level(logging.INFO), running_server(_config(builder.root, state=state)) as shim:
        assert shim.status("example.com/rm/doomed:1.0").SerializeToString() == first
        assert shim.status(kept.id).HasField("image")
    assert any("from the snapshot of" in r.getMessage() for r in caplog.records)


def test_stale_snapshot_is_detected_and_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    builder, _, _ = _removal_layout(tmp_path / "layout")
    state = tmp_path / "state"
    with running_server(_config(builder.root, state=state)):
        pass
    added = _image(builder, 3)
    builder.tag(added, "example.com/rm/added:1")
    builder.write()
    with caplog.at_level(logging.INFO), running_server(_config(builder.root, state=state)) as shim:
        assert shim.status("example.com/rm/added:1").image.id == added.id
    messages = [r.getMessage() for r in caplog.records]
    assert any("snapshot is stale" in m for m in messages)
    assert not any("from the snapshot of" in m for m in messages)


@pytest.mark.parametrize("damage", ["flip-byte", "truncate", "garbage", "empty"])
def test_corrupt_snapshot_is_never_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    builder, _doomed, _ = _removal_layout(tmp_path / "layout")
    state = tmp_path / "state"
    with running_server(_config(builder.root, state=state)) as shim:
        expected = shim.status("example.com/rm/doomed:1.0").SerializeToString()
    path = _snapshot(state)
    data = bytearray(path.read_bytes())
    if damage == "flip-byte":
        data[-10] ^= 0xFF
    elif damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = bytearray(b"\x00garbage" * 100)
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.INFO), running_server(_config(builder.root, state=state)) as shim:
        assert shim.status("example.com/rm/doomed:1.0").SerializeToString() == expected
    messages = [r.getMessage() for r in caplog.records]
    assert any("not used" in m for m in messages), messages
    assert not any("from the snapshot of" in m for m in messages)
    # and it was rewritten: the next start serves from it
    caplog.clear()
    with caplog.at_level(logging.INFO), running_server(_config(builder.root, state=state)):
        pass
    assert any("from the snapshot of" in r.getMessage() for r in caplog.records)
