"""Faults: a plugin that raises, hangs, fails to import, or is disabled.

* a backend that raises costs its own answer (logged with its name, the
  next backend asked); ``fail_on_backend_error`` fails the call instead;
* a backend that hangs is cut off by its ``timeout``; its bounded pool,
  once every worker is stuck, fails fast instead of holding server threads;
  a backend without ``timeout`` is called directly on the serving thread;
* a plugin package that fails to import is logged and the rest load
  (``--strict-plugins`` / ``plugins.strict`` make it fatal);
* plugins can be disabled by config and by ``CRISHIM_DISABLE_PLUGINS``.
"""

from __future__ import annotations

import importlib
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import grpc
import pytest
from conftest import backend, make_config, rpc_error
from pydantic import Field

from crishim import errors, hookimpl, reference
from crishim.catalog import BackendBusy, BackendHandle, BackendTimeout, Catalog, TimedCaller
from crishim.config import ConfigError, parse_settings
from crishim.cri.runtime.v1 import api_pb2
from crishim.manager import DISABLE_ENV, PluginError
from crishim.model import ImageRecord, Platform
from crishim.reference import Reference
from crishim.testing.ocibuild import LayoutBuilder
from crishim.testing.server import running_server
from crishim.types import BackendContext, BackendOptions, BackendType, IndexedBackend, PullRequest
from tests.plugin_fixtures import BROKEN_PLUGIN, SLOW_PLUGIN, make_distribution

NAME = "example.com/app:1"


class FaultyOptions(BackendOptions):
    mode: Literal["raise", "hang", "unavailable", "str", "ints", "object", "bad-record", "fine"] = (
        "raise"
    )
    #: Key of the gate (a threading.Event) a hanging call waits on.
    gate: str = "default"
    hang_limit: float = Field(default=30.0, gt=0)


class FaultyBackend(IndexedBackend):
    """Fails every lookup the way its options say; records where it ran."""

    gates: ClassVar[dict[str, threading.Event]] = {}
    #: (backend name, thread name) of every call
    threads: ClassVar[list[tuple[str, str]]] = []

    def __init__(self, context: BackendContext, options: FaultyOptions) -> None:
        super().__init__(context)
        self.options = options

    def _fail(self) -> None:
        FaultyBackend.threads.append((self.name, threading.current_thread().name))
        if self.options.mode == "raise":
            raise RuntimeError("backend bug")
        if self.options.mode == "unavailable":
            raise errors.Unavailable("source down")
        gate = FaultyBackend.gates.setdefault(self.options.gate, threading.Event())
        gate.wait(self.options.hang_limit)

    #: What each wrong-answer mode answers every call with.
    WRONG: ClassVar[dict[str, Any]] = {
        "str": "sha256:" + "f" * 64,
        "ints": [1, 2, 3],
        "object": object(),
    }

    def _wrong(self) -> Any:
        if self.options.mode == "bad-record":
            # the right class, with fields of the wrong types
            return ImageRecord(id="sha256:" + "e" * 64, repo_tags="oops", size="big")  # type: ignore[arg-type]
        return FaultyBackend.WRONG[self.options.mode]

    def get_image(self, ref: Reference) -> ImageRecord | None:
        if self.options.mode == "fine":
            return super().get_image(ref)
        if self.options.mode in self.WRONG or self.options.mode == "bad-record":
            return self._wrong()  # type: ignore[no-any-return]
        self._fail()
        return None

    def list_images(self) -> list[ImageRecord]:
        if self.options.mode == "bad-record":
            return [self._wrong()]
        if self.options.mode in self.WRONG:
            return self._wrong()  # type: ignore[no-any-return]
        self._fail()
        return []

    def match_id_prefix(self, prefix: str) -> list[str]:
        if self.options.mode in self.WRONG:
            return self._wrong()  # type: ignore[no-any-return]
        return super().match_id_prefix(prefix)

    def filesystem_usage(self) -> Any:
        if self.options.mode in self.WRONG:
            return [self._wrong()]
        return super().filesystem_usage()

    def pull_image(self, request: PullRequest) -> ImageRecord:
        """``*/hang`` hangs, deaf to cancellation, until its gate opens; the rest pull."""
        if request.ref.repository.endswith("/hang"):
            gate = FaultyBackend.gates.setdefault(self.options.gate, threading.Event())
            gate.wait(self.options.hang_limit)
        record = ImageRecord(id="sha256:" + "c" * 64, repo_tags=(request.ref.tagged(),))
        self.publish([record])
        return record


class FaultyPlugin:
    @hookimpl
    def crishim_backend_types(self) -> list[BackendType]:
        return [BackendType("faulty", FaultyBackend, FaultyOptions)]


PLUGINS = [("faulty", FaultyPlugin())]


@pytest.fixture(autouse=True)
def _release_gates() -> Iterator[None]:
    FaultyBackend.threads.clear()
    yield
    for gate in FaultyBackend.gates.values():
        gate.set()
    FaultyBackend.gates.clear()


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> LayoutBuilder:
    b = LayoutBuilder(tmp_path_factory.mktemp("faults") / "layout")
    image = b.image(name="app")
    b.tag(image, NAME)
    b.write()
    return b


def faulty(name: str = "faulty", timeout: float | None = None, **options: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "type": "faulty", "options": options}
    if timeout is not None:
        entry["timeout"] = timeout
    return entry


def serve(*backends: dict[str, Any], **config: Any) -> Any:
    return running_server({**make_config(*backends), **config}, extra_plugins=PLUGINS)


def _exc_texts(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.exc_text or "" for r in caplog.records)


# --------------------------------------------------------------------------- raising


def test_a_raising_backend_costs_its_own_answer(
    layout: LayoutBuilder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="crishim.catalog")
    with serve(faulty("broken"), backend("good", layout.root)) as shim:
        assert shim.status(NAME).image.repo_tags == [NAME]
        assert [list(i.repo_tags) for i in shim.list()] == [[NAME]]
    messages = [r.getMessage() for r in caplog.records]
    assert any("backend broken: get_image failed" in m for m in messages), messages
    assert any("backend broken: list_images failed" in m for m in messages), messages
    assert "backend bug" in _exc_texts(caplog)


@pytest.mark.parametrize("mode", ["str", "ints", "object"])
def test_a_backend_answering_the_wrong_type_costs_its_own_answer(
    mode: str, layout: LayoutBuilder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="crishim.catalog")
    with serve(faulty("wrong", mode=mode), backend("good", layout.root)) as shim:
        image = shim.status(NAME).image
        assert image.repo_tags == [NAME]
        for _ in range(20):
            assert shim.status(image.id).image.id == image.id
        assert shim.status(image.id.removeprefix("sha256:")[:12]).image.id == image.id
        assert [i.id for i in shim.list()] == [image.id]
        assert len(shim.fsinfo().image_filesystems) == 1
        shim.remove("example.com/absent:1")
    # said once per kind of call, not once per call
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and "wrong" in r.getMessage()]
    assert errors and len(errors) <= 4, [r.getMessage() for r in errors]


def test_a_record_with_fields_of_the_wrong_types_costs_that_record(
    layout: LayoutBuilder,
) -> None:
    with serve(faulty("wrong", mode="bad-record"), backend("good", layout.root)) as shim:
        listed = shim.list()
        assert [list(i.repo_tags) for i in listed] == [[NAME]]
        streamed = [
            image
            for response in shim.images.StreamImages(api_pb2.StreamImagesRequest(), timeout=30)
            for image in response.images
        ]
        assert [i.id for i in streamed] == [i.id for i in listed]


def test_a_pull_whose_client_left_frees_its_slot_though_the_backend_hangs() -> None:
    with serve(faulty("puller", mode="fine"), server={"max_concurrent_pulls": 1}) as shim:

        def pull(ref: str, timeout: float) -> api_pb2.PullImageResponse:
            request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref))
            response: api_pb2.PullImageResponse = shim.images.PullImage(request, timeout=timeout)
            return response

        err = rpc_error(pull, "example.com/team/hang:1", 1.0)
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # the backend is still stuck in that pull; the next pull gets the slot
        end = time.monotonic() + 10
        while True:
            try:
                assert pull("example.com/team/ok:1", 10).image_ref == "sha256:" + "c" * 64
                break
            except grpc.RpcError as exc:
                # the server notices the client left within a moment
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                assert time.monotonic() < end, "the slot was never freed"
                time.sleep(0.1)


def test_fail_on_backend_error_fails_the_call(layout: LayoutBuilder) -> None:
    with serve(faulty("broken"), backend("good", layout.root), fail_on_backend_error=True) as shim:
        err = rpc_error(shim.status, NAME)
        assert err.code() == grpc.StatusCode.INTERNAL
        assert "backend 'broken'" in err.details()
        assert "backend bug" in err.details()


def test_a_domain_error_of_a_backend_is_its_status() -> None:
    """Errors a backend means (crishim.errors) are answers, not faults."""
    with serve(faulty("down", mode="unavailable", timeout=5)) as shim:
        assert rpc_error(shim.status, NAME).code() == grpc.StatusCode.UNAVAILABLE


# --------------------------------------------------------------------------- hanging


def test_a_hanging_backend_is_cut_off_by_its_timeout(
    layout: LayoutBuilder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="crishim.catalog")
    with serve(faulty("stuck", mode="hang", timeout=0.3), backend("good", layout.root)) as shim:
        started = time.monotonic()
        assert shim.status(NAME).image.repo_tags == [NAME]
        elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 3, elapsed
    messages = [r.getMessage() for r in caplog.records]
    assert any("backend stuck: get_image failed" in m for m in messages), messages
    assert "no answer within 0.3s" in _exc_texts(caplog)


def test_a_hung_backend_fails_fast_once_its_workers_are_stuck(
    layout: LayoutBuilder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="crishim.catalog")
    stuck = faulty("stuck", mode="hang", timeout=1.0)
    with serve(stuck, backend("good", layout.root), server={"workers": 2}) as shim:
        # the first call leaves both workers stuck (the lookup, then the
        # completion of the answer by ID); the next ones must not wait
        assert shim.status(NAME).HasField("image")
        assert len({t for _, t in FaultyBackend.threads}) == 2, FaultyBackend.threads
        started = time.monotonic()
        for _ in range(5):
            assert shim.status(NAME).HasField("image")
        fast = time.monotonic() - started
        # waiting for the stuck backend would cost at least 5 x 1s
        assert fast < 2.5, f"5 calls took {fast:.2f}s: they waited for the stuck backend"
        assert len(FaultyBackend.threads) == 2, "a saturated backend was still called"
        # once it recovers, its workers are free again and it is asked again
        FaultyBackend.gates["default"].set()
        deadline = time.monotonic() + 5
        while len(FaultyBackend.threads) == 2 and time.monotonic() < deadline:
            shim.status(NAME)
            time.sleep(0.05)
        assert len(FaultyBackend.threads) > 2, "the backend was never asked again"
    assert "workers are held" in _exc_texts(caplog)


def test_backends_without_timeout_are_called_on_the_serving_thread(layout: LayoutBuilder) -> None:
    with serve(faulty("d"), faulty("p", timeout=5), backend("good", layout.root)) as shim:
        assert shim.status(NAME).HasField("image")
    threads = {name: {t for b, t in FaultyBackend.threads if b == name} for name in ("d", "p")}
    assert threads["d"], threads
    assert not any(t.startswith("backend-") for t in threads["d"]), threads
    assert threads["p"], threads
    assert all(t.startswith("backend-p-") for t in threads["p"]), threads


def test_timeout_with_fail_on_backend_error_fails_the_call(layout: LayoutBuilder) -> None:
    stuck = faulty("stuck", mode="hang", timeout=0.2)
    with serve(stuck, backend("good", layout.root), fail_on_backend_error=True) as shim:
        err = rpc_error(shim.status, NAME)
        assert err.code() == grpc.StatusCode.INTERNAL
        assert "no answer within 0.2s" in err.details()


def _raise(exc: Exception) -> Any:
    raise exc


def test_timed_caller_directly() -> None:
    gate = threading.Event()
    caller = TimedCaller("b", timeout=1.0, workers=1)
    target: Any = object()
    assert caller.call(lambda b: b is target, target) is True
    with pytest.raises(ValueError, match="own error"):
        caller.call(lambda b: _raise(ValueError("own error")), target)
    with pytest.raises(TimeoutError, match="its own"):
        caller.call(lambda b: _raise(TimeoutError("its own")), target)
    with pytest.raises(BackendTimeout):
        caller.call(lambda b: gate.wait(10), target)
    with pytest.raises(BackendBusy):
        caller.call(lambda b: True, target)
    gate.set()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            assert caller.call(lambda b: 42, target) == 42
            break
        except BackendBusy:
            time.sleep(0.01)
    else:
        pytest.fail("the worker never came back")
    caller.close()


def test_timeout_config_is_validated() -> None:
    for bad in (0, -1, 601):
        with pytest.raises(ConfigError, match=r"backends\[0\]\.timeout"):
            parse_settings({"backends": [{"name": "a", "type": "oci-dir", "timeout": bad}]})


def test_catalog_close_releases_idle_workers() -> None:
    backend_ = IndexedBackend(BackendContext("t", Platform("linux", "amd64"), Path("/")))
    catalog = Catalog([BackendHandle("t", "indexed", backend_, timeout=1)])
    assert catalog.image_status(reference.parse(NAME)) is None
    workers = [t for t in threading.enumerate() if t.name.startswith("backend-t-")]
    assert len(workers) == 4
    catalog.close()
    for thread in workers:
        thread.join(timeout=5)
        assert not thread.is_alive()


# --------------------------------------------------------------------------- loading


def _broken(tmp_path: Path) -> Path:
    """A distribution whose plugin module raises on import."""
    return make_distribution(
        tmp_path / "dist",
        "crishim-broken",
        "0.1",
        {"faults_broken": BROKEN_PLUGIN},
        {"broken": "faults_broken"},
    )


def _install(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()


def test_a_plugin_that_fails_to_import_is_logged_and_the_server_serves(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    layout: LayoutBuilder,
) -> None:
    _install(monkeypatch, _broken(tmp_path))
    caplog.set_level(logging.ERROR, logger="crishim.manager")
    with running_server(make_config(backend("good", layout.root))) as shim:
        assert shim.status(NAME).HasField("image")
    messages = [r.getMessage() for r in caplog.records]
    assert any("'broken'" in m and "failed to load" in m for m in messages), messages


def test_strict_plugins_makes_an_import_failure_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: LayoutBuilder
) -> None:
    _install(monkeypatch, _broken(tmp_path))
    config = {**make_config(backend("good", layout.root)), "plugins": {"strict": True}}
    with pytest.raises(PluginError, match=r"broken.*failed to load"), running_server(config):
        pass


def test_serve_strict_plugins_flag_exits_with_the_plugin_named(
    tmp_path: Path, layout: LayoutBuilder
) -> None:
    config = tmp_path / "crishim.yaml"
    config.write_text(
        f"server: {{listen: 'unix://{tmp_path}/s.sock'}}\nstate_dir: {tmp_path}/state\n"
        f"backends: [{{name: good, type: oci-dir, options: {{path: '{layout.root}'}}}}]\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "crishim.cli", "serve", "--config", str(config), "--strict-plugins"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(_broken(tmp_path)), "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "broken" in result.stderr
    assert "failed to load" in result.stderr


@pytest.mark.parametrize("how", ["config", "environment"])
def test_a_disabled_plugin_is_not_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    root = make_distribution(
        tmp_path / "dist",
        "crishim-slow",
        "0.1",
        {"faults_slow": SLOW_PLUGIN},
        {"slow": "faults_slow"},
    )
    _install(monkeypatch, root)
    config: dict[str, Any] = make_config({"name": "s", "type": "slow", "options": {}})
    with running_server(config) as shim:
        assert not shim.status(NAME).HasField("image")
    if how == "config":
        config["plugins"] = {"disabled": ["slow"]}
    else:
        monkeypatch.setenv(DISABLE_ENV, "slow")
    unknown = r"backends\[0\]\.type: unknown backend type 'slow'"
    with pytest.raises(ConfigError, match=unknown), running_server(config):
        pass
