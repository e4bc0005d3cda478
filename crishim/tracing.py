"""Moved to :mod:`crishim.telemetry` (setup, spans, attributes, otlp): kept for one release.

Every public name of those modules is still importable from here.
"""

from __future__ import annotations

from crishim.telemetry import *  # noqa: F403
from crishim.telemetry.attributes import *  # noqa: F403
from crishim.telemetry.otlp import *  # noqa: F403
from crishim.telemetry.setup import *  # noqa: F403
from crishim.telemetry.spans import *  # noqa: F403
