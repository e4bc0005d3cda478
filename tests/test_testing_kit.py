"""The kit's own promises: running_server cleans up after a failed start; the fixtures work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from crishim import hookimpl
from crishim.config import ConfigError
from crishim.errors import BackendError
from crishim.testing import server as server_module
from crishim.testing.ocibuild import LayoutBuilder
from crishim.testing.server import RunningShim, running_server
from crishim.types import BackendContext, BackendType, IndexedBackend

CLOSED: list[str] = []


class FailsToStart(IndexedBackend):
    def __init__(self, context: BackendContext, options: Any) -> None:
        super().__init__(context)

    def start(self) -> None:
        raise BackendError(self.name, "cannot start on purpose")

    def close(self) -> None:
        CLOSED.append(self.name)


class FailingPlugin:
    @hookimpl
    def crishim_backend_types(self) -> list[BackendType]:
        return [BackendType("fails-to-start", FailsToStart)]


@pytest.fixture
def socket_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The temporary directories running_server makes, made under tmp_path."""
    made: list[Path] = []

    def short_tempdir(prefix: str = "crishim-") -> Path:
        path = tmp_path / f"{prefix}{len(made)}"
        path.mkdir()
        made.append(path)
        return path

    monkeypatch.setattr(server_module, "short_tempdir", short_tempdir)
    return made


def test_a_backend_that_fails_to_start_is_closed_and_nothing_is_left(
    socket_dirs: list[Path],
) -> None:
    CLOSED.clear()
    config = {"backends": [{"name": "broken", "type": "fails-to-start"}]}
    with (
        pytest.raises(BackendError, match="backend 'broken': cannot start on purpose"),
        running_server(config, extra_plugins=[("failing", FailingPlugin())]),
    ):
        pass
    assert CLOSED == ["broken"]
    assert len(socket_dirs) == 1 and not socket_dirs[0].exists()


def test_an_invalid_config_leaves_nothing_either(socket_dirs: list[Path]) -> None:
    config = {"backends": [{"name": "b", "type": "oci-dir", "options": {"colour": "red"}}]}
    with (
        pytest.raises(ConfigError, match=r"backends\[0\]\.options\.colour: unknown key"),
        running_server(config),
    ):
        pass
    assert len(socket_dirs) == 1 and not socket_dirs[0].exists()


def test_the_fixtures_serve_a_layout_the_builder_wrote(
    crishim_server: Any, oci_layout: Any, tmp_path: Path
) -> None:
    builder: LayoutBuilder = oci_layout("images")
    assert builder.root == tmp_path / "images"
    image = builder.image(user="1000", name="fixture")
    builder.tag(image, "example.com/fixture:1")
    builder.write()
    shim: RunningShim = crishim_server(
        {
            "backends": [{"name": "b", "type": "oci-dir", "options": {"path": str(builder.root)}}],
            "platform": {"os": "linux", "architecture": "amd64"},
        }
    )
    answered = shim.status("example.com/fixture:1").image
    assert (answered.id, answered.uid.value, answered.size) == (image.id, 1000, image.size)
