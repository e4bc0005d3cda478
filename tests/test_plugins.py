"""Plugin discovery: entry points, broken plugins, misspelt hooks, clashes."""

from __future__ import annotations

import importlib
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from crishim.manager import DISABLE_ENV, PluginError, load_plugins
from tests.plugin_fixtures import (
    BROKEN_PLUGIN,
    CLAIMS_OCI_DIR_PLUGIN,
    MISSPELT_PLUGIN,
    SLOW_PLUGIN,
    make_distribution,
)


def _install(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()


def test_builtin_oci_dir_comes_from_the_entry_point_group() -> None:
    pm = load_plugins()
    types = pm.backend_types()
    assert "oci-dir" in types
    assert types["oci-dir"].package == "crishim"
    info = {i.name: i for i in pm.infos}["oci-dir"]
    assert info.value == "crishim_plugins.oci_dir"
    assert info.loaded


def test_third_party_plugin_found_through_entry_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_distribution(
        tmp_path, "crishim-slow", "1.2.3", {"slowplugin": SLOW_PLUGIN}, {"slow": "slowplugin"}
    )
    _install(monkeypatch, root)
    types = load_plugins().backend_types()
    assert types["slow"].package == "crishim-slow"
    assert types["slow"].version == "1.2.3"
    assert "oci-dir" in types


def test_broken_plugin_is_logged_and_the_rest_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_distribution(
        tmp_path,
        "crishim-mixed",
        "0.1",
        {"brokenplugin": BROKEN_PLUGIN, "slowplugin": SLOW_PLUGIN},
        {"broken": "brokenplugin", "slow": "slowplugin"},
    )
    _install(monkeypatch, root)
    with caplog.at_level(logging.ERROR, logger="crishim.manager"):
        pm = load_plugins()
    assert {"slow", "oci-dir"} <= set(pm.backend_types())
    infos = {i.name: i for i in pm.infos}
    assert not infos["broken"].loaded
    assert "broken on purpose" in infos["broken"].error
    assert any(
        "broken" in r.getMessage() and "failed to load" in r.getMessage() for r in caplog.records
    )


def test_strict_makes_a_broken_plugin_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_distribution(
        tmp_path,
        "crishim-broken",
        "0.1",
        {"brokenplugin": BROKEN_PLUGIN},
        {"broken": "brokenplugin"},
    )
    _install(monkeypatch, root)
    with pytest.raises(PluginError, match=r"broken.*failed to load"):
        load_plugins(strict=True)


def test_misspelt_hook_is_rejected_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_distribution(
        tmp_path, "crishim-typo", "0.1", {"typoplugin": MISSPELT_PLUGIN}, {"typo": "typoplugin"}
    )
    _install(monkeypatch, root)
    with pytest.raises(PluginError, match="crishim_backend_typez"):
        load_plugins()


def test_two_plugins_claiming_one_type_name_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_distribution(
        tmp_path,
        "crishim-clash",
        "0.1",
        {"clashplugin": CLAIMS_OCI_DIR_PLUGIN},
        {"clash": "clashplugin"},
    )
    _install(monkeypatch, root)
    with pytest.raises(PluginError, match="'oci-dir' is claimed by both"):
        load_plugins().backend_types()


def test_plugins_can_be_disabled_by_config_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_distribution(
        tmp_path, "crishim-slow", "0.1", {"slowplugin": SLOW_PLUGIN}, {"slow": "slowplugin"}
    )
    _install(monkeypatch, root)
    assert "slow" not in load_plugins(disabled=["slow"]).backend_types()
    monkeypatch.setenv(DISABLE_ENV, "slow, other")
    pm = load_plugins()
    assert "slow" not in pm.backend_types()
    assert {i.name: i for i in pm.infos}["slow"].disabled


def test_plugins_command_lists_types_with_package_and_version(
    tmp_path: Path,
) -> None:
    root = make_distribution(
        tmp_path, "crishim-slow", "2.0.1", {"slowplugin": SLOW_PLUGIN}, {"slow": "slowplugin"}
    )
    result = subprocess.run(
        [sys.executable, "-m", "crishim.cli", "plugins"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=True,
    )
    assert "oci-dir: crishim 0.1.0" in result.stdout
    assert "slow: crishim-slow 2.0.1" in result.stdout
