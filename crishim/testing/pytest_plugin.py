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


@pytest.fixture
def crishim_server() -> Iterator[Callable[..., RunningShim]]:
    with contextlib.ExitStack() as stack:

        def start(config: Mapping[str, Any], **kwargs: Any) -> RunningShim:
            return stack.enter_context(running_server(config, **kwargs))

        yield start


@pytest.fixture
def oci_layout(tmp_path: Path) -> Callable[..., LayoutBuilder]:
    def make(name: str = "layout", **kwargs: Any) -> LayoutBuilder:
        return LayoutBuilder(tmp_path / name, **kwargs)

    return make
