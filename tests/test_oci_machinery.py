"""The machinery the layout backends share: coalesced background work, removal plans,
the full-disk retry of an index.json rewrite.

The backends' behaviour through it is tested end to end (test_oci_dir.py,
test_live_layout.py, test_registry_remove.py, test_containerd_backend.py);
these pin down the pieces' own promises.
"""

from __future__ import annotations

import errno
import threading
import time

import pytest

from crishim.model import ImageRecord
from crishim.oci.coalesce import Coalesced
from crishim.oci.indexing import Removal, rewrite_making_room
from crishim.oci.resolve import EntryResult


def _wait(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_requests_made_during_a_run_coalesce_into_one_more_run() -> None:
    started, release = threading.Event(), threading.Event()
    runs: list[int] = []

    def work(value: int) -> None:
        runs.append(value)
        started.set()
        release.wait(5)

    worker: Coalesced[int] = Coalesced("test-worker", work)
    worker.request(1)
    assert started.wait(5)
    for value in (2, 3, 4):  # while the first run runs: the latest wins
        worker.request(value)
    release.set()
    _wait(lambda: len(runs) == 2 and worker._thread is None)
    assert runs == [1, 4]


def test_merge_combines_what_was_asked() -> None:
    release = threading.Event()
    runs: list[frozenset[str]] = []

    def work(value: frozenset[str]) -> None:
        release.wait(5)
        runs.append(value)

    worker: Coalesced[frozenset[str]] = Coalesced(
        "test-merge", work, merge=frozenset.union, delay=0.5
    )
    for name in ("a", "b", "c"):
        worker.request(frozenset({name}))
    release.set()
    _wait(lambda: runs and worker._thread is None)
    assert runs == [frozenset({"a", "b", "c"})]


def test_nothing_runs_once_stopped_but_flush_runs_what_is_pending() -> None:
    stop = threading.Event()
    runs: list[str] = []
    worker: Coalesced[str] = Coalesced("test-stop", runs.append, delay=10.0, stop=stop)
    worker.request("pending")
    stop.set()  # the run waiting out its delay wakes and runs nothing
    worker.join(5)
    assert runs == []
    worker.flush()
    assert runs == ["pending"]
    worker.flush()
    assert runs == ["pending"]


def test_a_run_that_raises_is_logged_and_the_next_request_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[int] = []

    def work(value: int) -> None:
        runs.append(value)
        if value == 1:
            raise RuntimeError("boom")

    worker: Coalesced[int] = Coalesced("test-raise", work)
    worker.request(1)
    _wait(lambda: worker._thread is None and runs == [1])
    worker.request(2)
    _wait(lambda: worker._thread is None and runs == [1, 2])
    assert any("test-raise failed" in r.getMessage() for r in caplog.records)


def _result(digest: str, image_id: str | None, closure: tuple[str, ...], complete: bool = True):
    record = None if image_id is None else ImageRecord(id=image_id)
    return EntryResult((digest, "", ""), record, "" if record else "broken", closure, complete)


def test_a_removal_frees_only_what_no_remaining_entry_reaches() -> None:
    doomed = (_result("m1", "i1", ("m1", "c1", "l1", "shared")),)
    remaining = (
        _result("m2", "i2", ("m2", "c2", "shared")),
        _result("m3", None, ("m3",), complete=False),
    )
    removal = Removal("i1", frozenset({("m1", "", "")}), doomed, remaining)
    assert removal.garbage() == {"m1", "c1", "l1"}
    assert [r.key[0] for r in removal.incomplete()] == ["m3"]


def test_a_full_disk_makes_room_then_rewrites_again(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    def rewrite() -> None:
        calls.append("rewrite")
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")

    def make_room() -> int:
        calls.append("make room")
        return 3

    assert rewrite_making_room("b", "sha256:x", rewrite, make_room) == 3
    assert calls == ["rewrite", "make room", "rewrite"]
    assert any("the disk is full: deleted the 3 blobs" in r.getMessage() for r in caplog.records)


def test_other_write_errors_are_raised_as_they_are() -> None:
    def rewrite() -> None:
        raise OSError(errno.EACCES, "Permission denied")

    with pytest.raises(OSError) as info:
        rewrite_making_room("b", "x", rewrite, lambda: pytest.fail("no room to make"))
    assert info.value.errno == errno.EACCES
