"""Moved to :mod:`crishim.telemetry.metrics`: its public names are kept here for one release."""

from __future__ import annotations

from crishim.telemetry.metrics import *  # noqa: F403
