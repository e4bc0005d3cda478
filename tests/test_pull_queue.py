"""Pulls queue instead of being refused, and show their progress while they run.

Against the real test registry behind the fault-injecting proxy, over a real
server on a unix socket: at most ``server.max_concurrent_pulls`` run, more
wait in a bounded queue (only a full one is RESOURCE_EXHAUSTED), a queued
pull whose client gives up leaves it, identical pulls share one download;
what the board shows (the status endpoint, ``GET /pulls``), the pull's span
events, the pull metrics and the slow-pull log line. The fairness of the
queue across registries is a unit test of :class:`crishim.pulls.PullBoard`.

The proxy's ``hold`` pauses blob bodies until ``released`` is set, so a
test sees pulls running and queued for as long as it needs: no timing is
asserted, waits poll with a bound.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from registry.helpers import (
    board,
    cache_config,
    plain_endpoint,
    pull,
    pull_error,
    pull_future,
    wait_until,
)
from registry.process import RegistryProcess
from registry.proxy import TamperingProxy
from registry.push import Pusher

from crishim import pulls
from crishim.errors import TooLarge
from crishim.reference import parse
from crishim.telemetry import attributes as tracing
from crishim.telemetry.metrics import RPC_DURATION
from crishim.testing.ocibuild import BuiltImage, LayoutBuilder
from crishim.testing.server import RunningShim, running_server
from tests.telemetry_support import metric_points

pytest_plugins = ["registry.fixtures"]

#: Images pushed for these tests: ``test/queue-00:1`` ... ``test/queue-23:1``.
QUEUE_IMAGES = 24


@dataclass(frozen=True)
class QueueImages:
    host: str
    images: tuple[BuiltImage, ...]

    def ref(self, i: int) -> str:
        return f"{self.host}/test/queue-{i:02d}:1"

    def blobs(self, i: int) -> dict[str, int]:
        """Digest -> size of every blob image ``i`` fetches (config and layers)."""
        image = self.images[i]
        return {d.digest: d.size for d in (image.config, *image.layers)}


@pytest.fixture(scope="module")
def queue_images(
    registry: RegistryProcess, tmp_path_factory: pytest.TempPathFactory
) -> QueueImages:
    """Small images of their own, each with a layer no other image has."""
    root = tmp_path_factory.mktemp("queue-images") / "layout"
    builder = LayoutBuilder(root)
    built = tuple(
        builder.image(
            name=f"queue-{i:02d}",
            layers=[{f"queue/{i}": f"image {i} of the queue\n" * (i + 1)}],
        )
        for i in range(QUEUE_IMAGES)
    )
    builder.write()
    pusher = Pusher(registry.url, root)
    try:
        for i, image in enumerate(built):
            pusher.image(f"test/queue-{i:02d}", image, ["1"])
    finally:
        pusher.client.close()
    return QueueImages(registry.host, built)


def config_for(
    store: Path, registry: RegistryProcess, proxy: TamperingProxy, **server: Any
) -> dict[str, Any]:
    """The registry cache pulling the session registry's name through ``proxy``."""
    config = cache_config(store, {registry.host: {"endpoints": [plain_endpoint(proxy.url)]}})
    config["server"] = dict(server)
    return config


@contextlib.contextmanager
def holding(proxy: TamperingProxy) -> Iterator[TamperingProxy]:
    """Every blob body pauses before its first byte until ``proxy.released`` is set
    (at the latest when the block ends, so no pull is left hanging)."""
    proxy.hold["*"] = 0
    proxy.released.clear()
    try:
        yield proxy
    finally:
        proxy.released.set()


def running(status: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in status["pulls"] if p["state"] != "queued"]


def queued(status: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in status["pulls"] if p["state"] == "queued"]


def when(shim: RunningShim, what: str, check: Any) -> dict[str, Any]:
    """The first board ``check`` accepts (polled, bounded)."""

    def probe() -> dict[str, Any] | None:
        status = board(shim)
        return status if check(status) else None

    return wait_until(probe, what)


def listed(status: dict[str, Any], ref: str) -> list[dict[str, Any]]:
    return [p for p in status["pulls"] if p["reference"] == ref]


# -- queue, don't refuse ------------------------------------------------------------------


def test_24_parallel_pulls_run_4_at_a_time_and_all_succeed(
    tmp_path: Path,
    registry: RegistryProcess,
    queue_images: QueueImages,
    clean_proxy: TamperingProxy,
) -> None:
    refs = [queue_images.ref(i) for i in range(QUEUE_IMAGES)]
    config = config_for(tmp_path / "store", registry, clean_proxy, max_concurrent_pulls=4)
    seen: list[dict[str, Any]] = []
    stop = threading.Event()

    def watch(shim: RunningShim) -> None:
        while not stop.is_set():
            seen.append(board(shim))

    with running_server(config) as shim, holding(clean_proxy):
        futures = [pull_future(shim, ref) for ref in refs]
        # four pulls hold their slots (their blobs held at the proxy), twenty wait
        full = when(shim, "4 running and 20 queued", lambda s: s["queued"] == 20)
        assert full["running"] == 4 and full["max_running"] == 4
        assert len(running(full)) == 4 and len(queued(full)) == 20
        assert sorted(p["reference"] for p in full["pulls"]) == sorted(refs)
        watcher = threading.Thread(target=watch, args=(shim,))
        watcher.start()
        try:
            clean_proxy.released.set()
            ids = [f.result(timeout=60).image_ref for f in futures]
        finally:
            stop.set()
            watcher.join(10)
        after = board(shim)
    assert ids == [image.id for image in queue_images.images]
    assert seen, "the watcher never read the board"
    for status in seen:
        assert status["running"] <= 4, status
        assert len(running(status)) <= 4, status
        assert len(running(status)) == status["running"], status
        assert len(queued(status)) == status["queued"], status
    assert (after["running"], after["queued"], after["pulls"]) == (0, 0, [])


def test_a_full_queue_refuses_the_third_pull_only(
    tmp_path: Path,
    registry: RegistryProcess,
    queue_images: QueueImages,
    clean_proxy: TamperingProxy,
) -> None:
    config = config_for(
        tmp_path / "store", registry, clean_proxy, max_concurrent_pulls=1, max_queued_pulls=1
    )
    first, second, third = (queue_images.ref(i) for i in range(3))
    with running_server(config) as shim, holding(clean_proxy):
        one = pull_future(shim, first)
        when(shim, "the first pull running", lambda s: s["running"] == 1)
        two = pull_future(shim, second)
        when(shim, "the second pull queued", lambda s: s["queued"] == 1)
        err = pull_error(shim, third, timeout=10)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
        assert err.details() == (
            f"cannot pull {third}: the pull queue is full, 1 running "
            "(server.max_concurrent_pulls: 1) and 1 waiting (server.max_queued_pulls: 1); "
            "retry later"
        )
        # the refused pull never reached the board; the other two are still there
        status = board(shim)
        assert [(p["reference"], p["state"] == "queued") for p in status["pulls"]] == [
            (first, False),
            (second, True),
        ]
        clean_proxy.released.set()
        assert one.result(timeout=30).image_ref == queue_images.images[0].id
        assert two.result(timeout=30).image_ref == queue_images.images[1].id
        # with the queue empty again the third pull goes through
        assert pull(shim, third).image_ref == queue_images.images[2].id


@pytest.mark.parametrize("how", ["cancel", "deadline"])
def test_a_queued_pull_whose_client_gives_up_leaves_the_queue(
    how: str,
    tmp_path: Path,
    registry: RegistryProcess,
    queue_images: QueueImages,
    clean_proxy: TamperingProxy,
) -> None:
    config = config_for(tmp_path / "store", registry, clean_proxy, max_concurrent_pulls=1)
    first, leaving, later = (queue_images.ref(i) for i in range(3))
    with running_server(config) as shim, holding(clean_proxy):
        one = pull_future(shim, first)
        when(
            shim,
            "the first pull at its blobs",
            lambda s: [p["state"] for p in s["pulls"]] == ["downloading"],
        )
        gone = pull_future(shim, leaving, timeout=60 if how == "cancel" else 2)
        when(shim, "the second pull queued", lambda s: listed(s, leaving) and s["queued"] == 1)
        if how == "cancel":
            assert gone.cancel()
        else:
            assert gone.exception(timeout=30).code() == grpc.StatusCode.DEADLINE_EXCEEDED
        status = when(shim, "the pull gone from the queue", lambda s: not listed(s, leaving))
        assert (status["running"], status["queued"]) == (1, 0)
        assert [(p["reference"], p["state"]) for p in status["pulls"]] == [(first, "downloading")]
        # the slot count is right: one more pull waits for the one slot, then gets it
        three = pull_future(shim, later)
        when(shim, "the third pull queued", lambda s: s["queued"] == 1)
        clean_proxy.released.set()
        assert one.result(timeout=30).image_ref == queue_images.images[0].id
        assert three.result(timeout=30).image_ref == queue_images.images[2].id
        assert (board(shim)["running"], board(shim)["queued"]) == (0, 0)
        # the pull that left was never run
        assert not shim.status(leaving).HasField("image")
    assert clean_proxy.blob_gets(queue_images.images[1].layers[0].digest) == 0


def test_a_running_pull_whose_client_leaves_gives_its_slot_to_the_next(
    tmp_path: Path,
    registry: RegistryProcess,
    queue_images: QueueImages,
    clean_proxy: TamperingProxy,
) -> None:
    config = config_for(tmp_path / "store", registry, clean_proxy, max_concurrent_pulls=1)
    leaving, waiting = queue_images.ref(3), queue_images.ref(4)
    with running_server(config) as shim, holding(clean_proxy):
        gone = pull_future(shim, leaving)
        when(shim, "the first pull running", lambda s: s["running"] == 1)
        two = pull_future(shim, waiting)
        when(shim, "the second pull queued", lambda s: s["queued"] == 1)
        assert gone.cancel()
        status = when(
            shim,
            "the second pull admitted",
            lambda s: (
                [(p["reference"], p["state"] != "queued") for p in s["pulls"]] == [(waiting, True)]
            ),
        )
        assert (status["running"], status["queued"]) == (1, 0)
        clean_proxy.released.set()
        assert two.result(timeout=30).image_ref == queue_images.images[4].id


@pytest.mark.parametrize("slots", [1, 3], ids=["queued-behind", "side-by-side"])
def test_identical_concurrent_pulls_join_one_download(
    slots: int,
    tmp_path: Path,
    registry: RegistryProcess,
    queue_images: QueueImages,
    clean_proxy: TamperingProxy,
) -> None:
    ref = queue_images.ref(5)
    blobs = queue_images.blobs(5)
    config = config_for(tmp_path / "store", registry, clean_proxy, max_concurrent_pulls=slots)
    with running_server(config) as shim, holding(clean_proxy):
        futures = [pull_future(shim, ref) for _ in range(3)]

        def in_the_blobs(status: dict[str, Any]) -> bool:
            # every pull holding a slot has reached the blobs (one fetches, the others wait)
            active = running(status)
            return (
                len(status["pulls"]) == 3
                and len(active) == slots
                and all(
                    {b["digest"] for b in p["blobs"] if b["state"] in ("downloading", "waiting")}
                    == set(blobs)
                    for p in active
                )
            )

        status = when(shim, "the pulls at their blobs", in_the_blobs)
        assert {p["reference"] for p in status["pulls"]} == {ref}
        # each blob has one pull fetching it; the others wait for that download
        fetching = {
            digest: sum(
                b["state"] == "downloading"
                for p in running(status)
                for b in p["blobs"]
                if b["digest"] == digest
            )
            for digest in blobs
        }
        assert fetching == dict.fromkeys(blobs, 1)
        clean_proxy.released.set()
        ids = {f.result(timeout=30).image_ref for f in futures}
    assert ids == {queue_images.images[5].id}
    assert {digest: clean_proxy.blob_gets(digest) for digest in blobs} == dict.fromkeys(blobs, 1)


# -- fairness: a unit test of the board ---------------------------------------------------------


def _admitted(states: list[pulls.PullState]) -> list[str]:
    return [s.reference for s in states if s.admitted is not None]


def test_the_board_takes_registries_in_turn_and_each_first_in_first_out() -> None:
    board = pulls.PullBoard(running=1, queued=10)
    a = [board.enter(parse(f"a.example/app:{i}"), "cache") for i in range(5)]
    b = board.enter(parse("b.example/tool:1"), "cache")
    assert [s.state for s in a] == ["resolving"] + ["queued"] * 4
    assert b.state == "queued"
    # each admitted pull ends in turn; note who gets the slot next
    order: list[str] = []
    current = a[0]
    while True:
        order.append(current.reference)
        board.leave(current)
        following = [s for s in [*a, b] if s.admitted is not None and s.reference not in order]
        if not following:
            break
        (current,) = following
    # b.example waited behind one pull of a.example, not behind all four
    assert order == [
        "a.example/app:0",
        "a.example/app:1",
        "b.example/tool:1",
        "a.example/app:2",
        "a.example/app:3",
        "a.example/app:4",
    ]
    assert board.snapshot()["pulls"] == []


def test_the_board_refuses_only_beyond_its_queue_and_forgets_who_left() -> None:
    board = pulls.PullBoard(running=2, queued=2)
    states = [board.enter(parse(f"r.example/x:{i}"), "cache") for i in range(4)]
    assert _admitted(states) == ["r.example/x:0", "r.example/x:1"]
    with pytest.raises(TooLarge, match=r"server\.max_queued_pulls"):
        board.enter(parse("r.example/x:4"), "cache")
    snapshot = board.snapshot()
    assert (snapshot["running"], snapshot["queued"], len(snapshot["pulls"])) == (2, 2, 4)
    # the first queued pull's caller left: it leaves the queue and the board
    assert board.wait(states[2], gone=lambda: True) is False
    board.finish(states[2], "CANCELLED")
    snapshot = board.snapshot()
    assert (snapshot["running"], snapshot["queued"]) == (2, 1)
    assert [p["reference"] for p in snapshot["pulls"]] == [f"r.example/x:{i}" for i in (0, 1, 3)]
    # a freed slot goes to the one still waiting, and there is room to queue again
    board.finish(states[0], "ok")
    assert states[3].admitted is not None
    assert board.wait(states[3], gone=lambda: True) is True
    board.enter(parse("r.example/x:5"), "cache")
    board.enter(parse("r.example/x:6"), "cache")
    with pytest.raises(TooLarge):
        board.enter(parse("r.example/x:7"), "cache")


def test_a_pull_that_leaves_its_slot_leaves_the_board_with_it() -> None:
    # what a watcher of the board sees matches the counts: a pull whose slot was
    # given to the next one is not still listed as running
    board = pulls.PullBoard(running=1, queued=1)
    first = board.enter(parse("r.example/x:1"), "cache")
    second = board.enter(parse("r.example/x:2"), "cache")
    board.leave(first)  # the backend's pull ended; the call has not answered yet
    snapshot = board.snapshot()
    assert snapshot["running"] == 1
    assert [(p["reference"], p["state"]) for p in snapshot["pulls"]] == [
        ("r.example/x:2", "resolving")
    ]
    board.finish(first, "ok")
    board.finish(second, "ok")
    assert board.snapshot()["pulls"] == []


# -- progress: what the board shows, span events, metrics, the log --------------------------------


def test_the_board_shows_a_pull_mid_blob_with_its_progress(
    tmp_path: Path,
    registry: RegistryProcess,
    queue_images: QueueImages,
    clean_proxy: TamperingProxy,
) -> None:
    image = queue_images.images[7]
    layer = image.layers[0]
    ref = queue_images.ref(7)
    config = config_for(tmp_path / "store", registry, clean_proxy)
    clean_proxy.hold[layer.digest] = layer.size // 2
    clean_proxy.released.clear()
    with running_server(config) as shim:
        try:
            future = pull_future(shim, ref)
            status = when(
                shim,
                "the config done and the layer half done",
                lambda s: (
                    s["pulls"]
                    and {b["digest"]: (b["state"], b["done"]) for b in s["pulls"][0]["blobs"]}
                    == {
                        image.config.digest: ("done", image.config.size),
                        layer.digest: ("downloading", layer.size // 2),
                    }
                ),
            )
        finally:
            clean_proxy.released.set()
        assert future.result(timeout=30).image_ref == image.id
    (shown,) = status["pulls"]
    assert shown["reference"] == ref
    assert shown["backend"] == "cache"
    assert shown["registry"] == queue_images.host
    assert shown["state"] == "downloading"
    blobs = {b["digest"]: b for b in shown["blobs"]}
    assert {d: (b["kind"], b["total"]) for d, b in blobs.items()} == {
        image.config.digest: ("config", image.config.size),
        layer.digest: ("layer", layer.size),
    }
    assert (blobs[layer.digest]["state"], blobs[layer.digest]["done"]) == (
        "downloading",
        layer.size // 2,
    )
    assert blobs[image.config.digest]["state"] == "done"
    assert shown["done"] == image.config.size + layer.size // 2
    assert shown["total"] == image.config.size + layer.size
    assert shown["elapsed"] >= 0 and shown["rate"] >= 0


def test_the_board_names_the_backend_of_the_pulls_runtime_handler(
    tmp_path: Path,
    registry: RegistryProcess,
    queue_images: QueueImages,
    clean_proxy: TamperingProxy,
) -> None:
    config = config_for(tmp_path / "store", registry, clean_proxy)
    vm = dict(config["backends"][0])
    vm["name"] = "vm"
    vm["runtime_handlers"] = ["kata"]
    vm["options"] = {**vm["options"], "path": str(tmp_path / "vm-store")}
    config["backends"].append(vm)
    ref = queue_images.ref(8)
    with running_server(config) as shim, holding(clean_proxy):
        future = pull_future(shim, ref, runtime_handler="kata")
        status = when(shim, "the pull on the board", lambda s: listed(s, ref))
        clean_proxy.released.set()
        assert future.result(timeout=30).image_ref == queue_images.images[8].id
    assert [p["backend"] for p in listed(status, ref)] == ["vm"]


def _events(span: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(e.name, dict(e.attributes or {})) for e in span.events]


def test_a_pulls_span_has_its_queue_admission_and_blob_events(
    tmp_path: Path,
    registry: RegistryProcess,
    queue_images: QueueImages,
    clean_proxy: TamperingProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("OTEL_SDK_DISABLED", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_EXPORTER"):
        monkeypatch.delenv(name, raising=False)
    exporter = InMemorySpanExporter()
    config = config_for(tmp_path / "store", registry, clean_proxy, max_concurrent_pulls=1)
    config["tracing"] = {"exporter": "otlp-grpc", "endpoint": "http://127.0.0.1:9"}
    first, second = queue_images.ref(8), queue_images.ref(9)
    with running_server(config, overrides={"span_exporter": exporter}) as shim:
        with holding(clean_proxy):
            one = pull_future(shim, first)
            when(shim, "the first pull running", lambda s: s["running"] == 1)
            two = pull_future(shim, second)
            when(shim, "the second pull queued", lambda s: s["queued"] == 1)
            clean_proxy.released.set()
            one.result(timeout=30)
            two.result(timeout=30)
        provider = shim.app.tracer_provider()
        assert provider is not None
        provider.force_flush()
        spans = [
            s
            for s in exporter.get_finished_spans()
            if s.kind is SpanKind.SERVER and s.name.endswith("/PullImage")
        ]
    by_ref = {dict(s.attributes or {})[tracing.ATTR_REFERENCE]: s for s in spans}
    assert set(by_ref) == {first, second}
    for ref, i, waited in ((first, 8, False), (second, 9, True)):
        events = _events(by_ref[ref])
        names = [name for name, _ in events]
        expected = ["crishim.pull.queued"] if waited else []
        assert [n for n in names if n != "crishim.pull.blob"] == [
            *expected,
            "crishim.pull.admitted",
        ], names
        if waited:
            assert dict(events)["crishim.pull.queued"]["crishim.pull.queue"] == 1
        assert dict(events)["crishim.pull.admitted"]["crishim.pull.queued_for"] >= 0
        blobs = {a["oci.digest"]: a["oci.size"] for n, a in events if n == "crishim.pull.blob"}
        assert blobs == queue_images.blobs(i)
        # the blob events come after the admission
        assert names.index("crishim.pull.admitted") < names.index("crishim.pull.blob")


def test_pull_metrics_bytes_durations_and_the_queue(
    tmp_path: Path,
    registry: RegistryProcess,
    queue_images: QueueImages,
    clean_proxy: TamperingProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("OTEL_SDK_DISABLED", "OTEL_METRICS_EXPORTER"):
        monkeypatch.delenv(name, raising=False)
    reader = InMemoryMetricReader()
    config = config_for(
        tmp_path / "store", registry, clean_proxy, max_concurrent_pulls=1, max_queued_pulls=1
    )
    config["metrics"] = {"exporter": "otlp-grpc", "endpoint": "http://127.0.0.1:9"}
    ref = queue_images.ref(10)
    with running_server(config, overrides={"metric_readers": [reader]}) as shim:
        with holding(clean_proxy):
            one = pull_future(shim, ref)
            when(shim, "the first pull running", lambda s: s["running"] == 1)
            two = pull_future(shim, ref)  # the same image: it joins, fetching nothing
            when(shim, "the second pull queued", lambda s: s["queued"] == 1)
            assert [p.value for _, p in metric_points(reader, pulls.PULL_QUEUE)] == [1]
            refused = pull_error(shim, queue_images.ref(11), timeout=10)
            assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            clean_proxy.released.set()
            one.result(timeout=30)
            two.result(timeout=30)
        missing = pull_error(shim, f"{queue_images.host}/test/queue-00:absent", timeout=10)
        assert missing.code() == grpc.StatusCode.NOT_FOUND
        assert [p.value for _, p in metric_points(reader, pulls.PULL_QUEUE)] == [0]
        durations = {
            (a["crishim.backend"], a["crishim.pull.outcome"]): p.count
            for a, p in metric_points(reader, pulls.PULL_DURATION)
        }
        pulled = {a["crishim.backend"]: p.value for a, p in metric_points(reader, pulls.PULL_BYTES)}
        calls = {
            a["rpc.response.status_code"]: p.count
            for a, p in metric_points(reader, RPC_DURATION)
            if a["rpc.method"] == "PullImage"
        }
    assert durations == {("cache", "ok"): 2, ("cache", "NOT_FOUND"): 1}
    # the refusal is a PullImage call's outcome, counted with the calls
    assert calls == {"OK": 2, "RESOURCE_EXHAUSTED": 1, "NOT_FOUND": 1}
    # the image's blobs, once: the second pull found them stored
    assert pulled == {"cache": sum(queue_images.blobs(10).values())}


def slow_pull_lines(caplog: pytest.LogCaptureFixture, ref: str = "") -> list[logging.LogRecord]:
    """The slow-pull log lines captured so far (of ``ref``'s pull, when given)."""
    return [
        r
        for r in caplog.records
        if r.name == "crishim.pulls" and "taking long" in r.getMessage() and ref in r.getMessage()
    ]


def test_a_slow_pull_is_logged_once_at_info(
    tmp_path: Path,
    registry: RegistryProcess,
    queue_images: QueueImages,
    clean_proxy: TamperingProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="crishim.pulls")
    config = config_for(tmp_path / "store", registry, clean_proxy, slow_pull_seconds=0.3)
    ref = queue_images.ref(12)

    with running_server(config) as shim, holding(clean_proxy):
        future = pull_future(shim, ref)
        (line,) = wait_until(lambda: slow_pull_lines(caplog), "the slow-pull line")
        # let the pull run on well past the threshold: still one line
        when(shim, "the pull running a while", lambda s: s["pulls"][0]["elapsed"] > 1.0)
        clean_proxy.released.set()
        assert future.result(timeout=30).image_ref == queue_images.images[12].id
    assert slow_pull_lines(caplog) == [line]
    assert line.levelno == logging.INFO
    # its progress as it stood: held before any blob byte, so nothing done yet
    assert re.fullmatch(
        rf"pull of {re.escape(ref)} is taking long: \d+ s so far "
        rf"\(0 of \d+ bytes, 0\.00 MB/s, (resolving|downloading)\)",
        line.getMessage(),
    ), line.getMessage()


def test_a_pull_slow_in_the_queue_is_logged_too(
    tmp_path: Path,
    registry: RegistryProcess,
    queue_images: QueueImages,
    clean_proxy: TamperingProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="crishim.pulls")
    config = config_for(
        tmp_path / "store", registry, clean_proxy, max_concurrent_pulls=1, slow_pull_seconds=0.3
    )
    first, waiting = queue_images.ref(13), queue_images.ref(14)

    with running_server(config) as shim, holding(clean_proxy):
        one = pull_future(shim, first)
        when(shim, "the first pull running", lambda s: s["running"] == 1)
        two = pull_future(shim, waiting)
        (line,) = wait_until(lambda: slow_pull_lines(caplog, waiting), "the queued pull's line")
        assert "queued" in line.getMessage()
        clean_proxy.released.set()
        one.result(timeout=30)
        two.result(timeout=30)
    assert len(slow_pull_lines(caplog, waiting)) == 1
