"""pytest fixtures shipped with crishim (entry point ``pytest11: crishim``).

* ``crishim_server``: a factory; ``crishim_server(config)`` starts a real
  server on a temporary unix socket and returns a
  :class:`~crishim.testing.server.RunningShim`; it is stopped after the test.
* ``oci_layout``: a factory; ``oci_layout("name")`` returns a
  :class:`~crishim.testing.ocibuild.LayoutBuilder` rooted in ``tmp_path``.

The CRI contract checks for a backend: subclass
:class:`crishim.testing.conformance.CriContract` (docs/plugins.md, "Test it").
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from crishim.testing.ocibuild import LayoutBuilder
from crishim.testing.server import RunningShim, running_server

__all__ = ["crishim_server", "oci_layout"]


@pytest.fixture
def crishim_server() -> Iterator[Callable[..., RunningShim]]:
    """A factory of servers stopped after the test: ``crishim_server(config, **kwargs)``.

    Takes what :func:`crishim.testing.server.running_server` takes
    (``base_dir``, ``extra_plugins``, ``grace``, ``overrides``) and returns
    its :class:`~crishim.testing.server.RunningShim`; raises what it raises.

    Example::

        def test_my_backend_serves_its_image(crishim_server, tmp_path):
            write_my_data(tmp_path)
            shim = crishim_server(
                {"backends": [{"name": "b", "type": "my-type", "options": {"path": "."}}]},
                base_dir=tmp_path,
            )
            assert shim.status("example.com/app:1.0").image.uid.value == 1000
    """
    with contextlib.ExitStack() as stack:

        def start(config: Mapping[str, Any], **kwargs: Any) -> RunningShim:
            return stack.enter_context(running_server(config, **kwargs))

        yield start


@pytest.fixture
def oci_layout(tmp_path: Path) -> Callable[..., LayoutBuilder]:
    """A factory of layout builders in ``tmp_path``: ``oci_layout(name="layout", **kwargs)``.

    The keyword arguments are :class:`~crishim.testing.ocibuild.LayoutBuilder`'s
    (``docker_media_types``).

    Example::

        def test_a_layout(oci_layout):
            builder = oci_layout("images")
            builder.tag(builder.image(user="1000"), "example.com/app:1.0")
            root = builder.write()  # tmp_path / "images"
    """

    def make(name: str = "layout", **kwargs: Any) -> LayoutBuilder:
        return LayoutBuilder(tmp_path / name, **kwargs)

    return make
