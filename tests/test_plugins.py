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
    BAD_SIGNATURE_PLUGIN,
    BROKEN_PLUGIN,
    CLAIMS_OCI_DIR_PLUGIN,
    MISSPELT_PLUGIN,
    MISSPELT_WITH_TYPES_PLUGIN,
    RAISING_HOOK_PLUGIN,
    SLOW_PLUGIN,
    WRONG_TYPE_PLUGIN,
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


def test_a_misspelt_hook_is_reported_once_and_the_plugin_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_distribution(
        tmp_path,
        "crishim-typo",
        "0.1",
        {"typoplugin": MISSPELT_PLUGIN, "slowplugin": SLOW_PLUGIN},
        {"typo": "typoplugin", "slow": "slowplugin"},
    )
    _install(monkeypatch, root)
    with caplog.at_level(logging.ERROR, logger="crishim.manager"):
        pm = load_plugins()
    assert {"slow", "oci-dir"} <= set(pm.backend_types())  # the rest load
    info = {i.name: i for i in pm.infos}["typo"]
    assert not info.loaded and not info.disabled
    assert "did you mean crishim_backend_types?" in info.error
    reports = [r.getMessage() for r in caplog.records if "typo" in r.getMessage()]
    assert len(reports) == 1, reports
    (report,) = reports
    assert "crishim-typo 0.1" in report  # the distribution and its version
    assert "crishim_backend_typez" in report  # the hook as written
    assert "did you mean crishim_backend_types?" in report
    assert report.count("typoplugin") == 1  # the module is named once
    assert "left out" in report


def test_strict_makes_a_misspelt_hook_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_distribution(
        tmp_path, "crishim-typo", "0.1", {"typoplugin": MISSPELT_PLUGIN}, {"typo": "typoplugin"}
    )
    _install(monkeypatch, root)
    with pytest.raises(PluginError, match=r"crishim-typo 0\.1.*did you mean crishim_backend_types"):
        load_plugins(strict=True)


@pytest.mark.parametrize(
    ("module", "source", "reason"),
    [
        ("raising", RAISING_HOOK_PLUGIN, "crishim_backend_types raised RuntimeError('registering"),
        (
            "wrongtype",
            WRONG_TYPE_PLUGIN,
            "crishim_backend_types returned str, expected BackendType",
        ),
        ("badsignature", BAD_SIGNATURE_PLUGIN, "asks for context, which the hook does not pass"),
    ],
    ids=["hook-raises", "wrong-type", "bad-signature"],
)
def test_a_plugin_whose_hooks_fail_is_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, source: str, reason: str
) -> None:
    root = make_distribution(tmp_path, "crishim-bad", "0.2", {module: source}, {"bad": module})
    _install(monkeypatch, root)
    pm = load_plugins()
    assert "oci-dir" in pm.backend_types()
    info = {i.name: i for i in pm.infos}["bad"]
    assert not info.loaded
    assert reason in info.error
    with pytest.raises(PluginError, match=r"crishim-bad 0\.2"):
        load_plugins(strict=True)


def _check_config(
    tmp_path: Path, root: Path, backend_type: str
) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "crishim.yaml"
    config.write_text(f"backends: [{{name: b, type: {backend_type}}}]\n")
    return subprocess.run(
        [sys.executable, "-m", "crishim.cli", "check-config", str(config)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )


def test_check_config_ties_an_unknown_type_to_the_plugin_left_out_that_offers_it(
    tmp_path: Path,
) -> None:
    root = make_distribution(
        tmp_path / "dist",
        "crishim-typo",
        "0.3",
        {"typoplugin": MISSPELT_WITH_TYPES_PLUGIN},
        {"typo": "typoplugin"},
    )
    result = _check_config(tmp_path, root, "typo-type")
    assert result.returncode == 2, result.stdout + result.stderr
    err = result.stderr
    assert "backends[0].type: unknown backend type 'typo-type'" in err
    assert "plugin 'typo' (crishim-typo 0.3) offers it but failed to load" in err
    assert "crishim_filter_typs matches no crishim hook (did you mean crishim_filter_types?)" in err
    assert err.count("crishim_filter_typs") == 1, err  # reported once


def test_check_config_points_at_a_plugin_named_like_the_type_that_failed_to_import(
    tmp_path: Path,
) -> None:
    root = make_distribution(
        tmp_path / "dist",
        "crishim-json-things",
        "1.0",
        {"brokenplugin": BROKEN_PLUGIN},
        {"json-things": "brokenplugin"},
    )
    result = _check_config(tmp_path, root, "json-things")
    assert result.returncode == 2
    assert "plugin 'json-things' (crishim-json-things 1.0) may offer it" in result.stderr
    assert "broken on purpose" in result.stderr
    # a type no failed plugin is named like: the failures are still listed
    other = _check_config(tmp_path, root, "elsewhere")
    assert "plugins that failed to load: json-things" in other.stderr


def test_plugins_command_survives_a_misspelt_plugin(tmp_path: Path) -> None:
    root = make_distribution(
        tmp_path, "crishim-typo", "0.1", {"typoplugin": MISSPELT_PLUGIN}, {"typo": "typoplugin"}
    )
    result = subprocess.run(
        [sys.executable, "-m", "crishim.cli", "plugins"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    assert "typo = typoplugin [crishim-typo 0.1] FAILED:" in result.stdout
    assert out.count("did you mean crishim_backend_types?") == 1, out
    assert "oci-dir: crishim 0.1.0" in result.stdout


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
