"""Packaging: the package list, the src/ links, and types for plugin projects."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p.parent for p in (ROOT / "examples").glob("*/pyproject.toml"))


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


def test_src_holds_only_the_links_to_the_code() -> None:
    """src/ is a plain src layout whose two entries link to crishim/ and plugins/."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["tool"]["setuptools"]["package-dir"] == {"": "src"}
    tracked = subprocess.run(
        ["git", "ls-files", "src"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if tracked.returncode == 0 and tracked.stdout:
        assert tracked.stdout.split() == ["src/crishim", "src/crishim_plugins"]
    for link, target in (("crishim", "crishim"), ("crishim_plugins", "plugins")):
        path = ROOT / "src" / link
        assert path.is_symlink(), f"src/{link} must be a link to ../{target}"
        assert os.readlink(path) == f"../{target}"
    # so the built-ins never install as the generic top-level name "plugins"
    assert not any(
        p == "plugins" or p.startswith("plugins.") for p in config["tool"]["setuptools"]["packages"]
    )


def test_crishim_is_imported_from_a_path_entry() -> None:
    """The install is a directory on sys.path (what mypy searches), not an import hook."""
    code = "import crishim, sys; print(crishim.__file__)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    found = Path(result.stdout.strip())
    assert found == ROOT / "src" / "crishim" / "__init__.py", (
        f"crishim comes from {found}: reinstall with the README's first command "
        "(an editable install made before src/ existed uses an import hook mypy cannot see)"
    )


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_mypy_strict_passes_on_an_example_plugin_from_elsewhere(
    example: Path, tmp_path: Path
) -> None:
    """A plugin project type-checks against the installed crishim (py.typed), not a checkout.

    mypy runs from an empty directory, so only the installed packages can
    answer ``import crishim``.
    """
    config = tomllib.loads((example / "pyproject.toml").read_text())
    packages = config["tool"]["setuptools"]["packages"]
    paths = [str(example / package.replace(".", "/")) for package in packages]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / "mypy-cache"),
            *paths,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout
