"""The package list in pyproject.toml covers every package directory."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _packages_on_disk() -> set[str]:
    found = set()
    for top, name in (("crishim", "crishim"), ("plugins", "crishim_plugins")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top)
            found.add(".".join([name, *rel.parts]))
    return found


def test_every_package_directory_is_listed() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    assert _packages_on_disk() == listed


def test_builtin_plugins_are_not_installed_as_top_level_plugins() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["tool"]["setuptools"]["package-dir"]["crishim_plugins"] == "plugins"
    assert not any(
        p == "plugins" or p.startswith("plugins.") for p in config["tool"]["setuptools"]["packages"]
    )
