"""Helpers for tests/test_cri_backend.py: an upstream crishim with a scriptable backend.

The ``cri`` backend is tested through real sockets: a front crishim whose
backend is ``cri`` forwards to an upstream crishim (another server in this
process), whose backends are ``oci-dir`` and/or :class:`FakeUpstream`, a
test backend that records what it is asked (lookups, the PullRequest it
received) and pulls, hangs or fails as its options say. Both servers run in
one process, so ``time.monotonic()`` deadlines compare directly.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from crishim import errors, hookimpl, reference
from crishim.model import ImageRecord
from crishim.reference import Reference, RefKind
from crishim.testing.server import RunningShim, running_server
from crishim.types import (
    BackendContext,
    BackendOptions,
    BackendType,
    IndexedBackend,
    PullRequest,
)

FAKE_TYPE = "fake-upstream"


def cri_backend(endpoint: str | Path, name: str = "up", **options: Any) -> dict[str, Any]:
    """One ``cri`` entry of a ``backends`` list; a path becomes ``unix://<path>``."""
    text = str(endpoint)
    if not text.startswith("unix:"):
        text = f"unix://{text}"
    return {"name": name, "type": "cri", "options": {"endpoint": text, **options}}


def endpoint_of(shim: RunningShim) -> str:
    return f"unix://{shim.socket_path}"


#: The ID of the crio_style fake's dangling image, as crishim reports it.
DANGLING_ID = "sha256:" + "d" * 64


def image_id_for(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


class FakeOptions(BackendOptions):
    #: ok: the pull adds an image named after the reference; hang: it waits
    #: until the caller goes away or its deadline passes; error: it raises.
    pull: Literal["ok", "hang", "error"] = "ok"
    #: With ``pull: error``: the crishim.errors class raised.
    error: str = "PermissionDenied"
    #: With ``pull: error``: its message; ``{password}`` is the pull's password.
    message: str = "the fake upstream refuses"
    #: Lookups of names ending in ``/slow`` sleep this long.
    slow_lookups: float = Field(default=0.0, ge=0)
    #: Images there from the start: (name, User) pairs.
    images: list[tuple[str, str]] = Field(default_factory=list)
    #: Names of the start-up images the fake's own store reports pinned.
    pinned: list[str] = Field(default_factory=list)
    #: Answer as CRI-O does: image IDs as bare 64 hex characters, and one
    #: dangling image named ``<none>:<none>`` / ``<none>@<none>``.
    crio_style: bool = False


class FakeUpstream(IndexedBackend):
    """An upstream backend that records what it is asked; the latest instance by name."""

    instances: ClassVar[dict[str, FakeUpstream]] = {}

    def __init__(self, context: BackendContext, options: FakeOptions) -> None:
        super().__init__(context)
        self.options = options
        self.pulls: list[PullRequest] = []
        #: How each pull ended: ok, cancelled, deadline, limit, error.
        self.outcomes: list[str] = []
        self.received = threading.Event()
        self.lookups = 0
        self._lock = threading.Lock()
        FakeUpstream.instances[context.name] = self

    def start(self) -> None:
        pinned = {reference.normalize_name(n) for n in self.options.pinned}
        for name, user in self.options.images:
            self.add(name, user=user, pinned=reference.normalize_name(name) in pinned)
        if self.options.crio_style:
            dangling = ImageRecord(
                id=DANGLING_ID.removeprefix("sha256:"),
                repo_tags=("<none>:<none>",),
                repo_digests=("<none>@<none>",),
            )
            with self._lock:
                self.publish([*self.index, dangling])

    def add(self, name: str, *, user: str = "", pinned: bool = False) -> ImageRecord:
        """Put an image named ``name`` in the store, at once."""
        ref = reference.parse(name)
        image_id = image_id_for(str(ref))
        record = ImageRecord(
            id=image_id.removeprefix("sha256:") if self.options.crio_style else image_id,
            repo_tags=(ref.tagged(),) if ref.tag else (),
            repo_digests=(ref.digested(),) if ref.digest else (),
            size=1234,
            user=user,
            annotations={"org.example/from": "fake"},
            source="fake",
            pinned=pinned,
        )
        with self._lock:
            self.publish([*(r for r in self.index if r.id != record.id), record])
        return record

    def drop(self, image_id: str) -> None:
        with self._lock:
            self.publish([r for r in self.index if r.id != image_id])

    def get_image(self, ref: Reference) -> ImageRecord | None:
        with self._lock:
            self.lookups += 1
        if self.options.slow_lookups and ref.repository.endswith("/slow"):
            time.sleep(self.options.slow_lookups)
        if self.options.crio_style and ref.kind is RefKind.ID:
            bare = ref.digest.removeprefix("sha256:")
            return next((r for r in self.index if r.id == bare), None)
        return super().get_image(ref)

    def remove_image(self, record: ImageRecord) -> None:
        self.drop(record.id)

    def pull_image(self, request: PullRequest) -> ImageRecord:
        self.pulls.append(request)
        self.received.set()
        mode = self.options.pull
        if mode == "hang":
            limit = time.monotonic() + 30
            while time.monotonic() < limit:
                if request.cancelled():
                    self.outcomes.append("cancelled")
                    raise errors.Cancelled("the fake's caller went away")
                if request.deadline is not None and time.monotonic() >= request.deadline:
                    self.outcomes.append("deadline")
                    raise errors.DeadlineExceeded("the fake's deadline ran out")
                time.sleep(0.01)
            self.outcomes.append("limit")
            raise errors.Unavailable("the fake hung for 30s")
        if mode == "error":
            self.outcomes.append("error")
            password = request.auth.password if request.auth else ""
            message = self.options.message.format(password=password)
            kind = getattr(errors, self.options.error)
            if kind is errors.BackendError:
                raise errors.BackendError(self.name, message)
            raise kind(message)
        self.outcomes.append("ok")
        return self.add(str(request.ref))


class FakePlugin:
    @hookimpl
    def crishim_backend_types(self) -> list[BackendType]:
        return [BackendType(FAKE_TYPE, FakeUpstream, FakeOptions)]


FAKE_PLUGINS = [("fake-upstream", FakePlugin())]


def fake_backend(name: str = "fake", **options: Any) -> dict[str, Any]:
    return {"name": name, "type": FAKE_TYPE, "options": options}


@contextlib.contextmanager
def upstream_server(
    *backends: Mapping[str, Any],
    overrides: Mapping[str, object] | None = None,
    **config: Any,
) -> Iterator[tuple[RunningShim, FakeUpstream | None]]:
    """An upstream crishim over ``backends`` (the fake by default), and its fake if any."""
    entries = [dict(b) for b in backends] or [fake_backend()]
    with running_server(
        {**config, "backends": entries}, extra_plugins=FAKE_PLUGINS, overrides=overrides
    ) as shim:
        fakes = [e["name"] for e in entries if e["type"] == FAKE_TYPE]
        yield shim, FakeUpstream.instances[fakes[0]] if fakes else None


def wait_for(predicate: Any, timeout: float = 5.0, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; its last verdict."""
    end = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(interval)
