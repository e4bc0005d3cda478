"""``crishim pull`` and ``crishim images`` against a real registry, and a
server picking up what ``crishim pull`` stored while it runs."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from registry.helpers import check_store, plain_config
from registry.images import RegistryImages
from registry.process import RegistryProcess

from crishim.testing.server import RunningShim

pytest_plugins = ["registry.fixtures"]

Server = Callable[..., RunningShim]


def _write(tmp_path: Path, config: dict[str, Any]) -> Path:
    config["state_dir"] = str(tmp_path / "state")
    path = tmp_path / "crishim.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def crishim(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crishim.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_pull_then_images(
    tmp_path: Path, registry: RegistryProcess, images: RegistryImages
) -> None:
    store = tmp_path / "store"
    config = _write(tmp_path, plain_config(store, registry))
    small = f"{registry.host}/test/small:1"
    done = crishim("pull", "--config", str(config), small)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == images.small.id
    assert "layer" in done.stderr  # the progress bars
    done = crishim("pull", "-q", "--config", str(config), f"{registry.host}/test/multi:1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == images.multi_arm64.id
    check_store(store)
    listed = crishim("images", "--config", str(config))
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    assert lines[0].split() == ["IMAGE", "ID", "SIZE", "BACKEND", "NAMES"]
    assert any(small in line and images.small.id[7:20] in line for line in lines)
    assert any(f"{registry.host}/test/multi:1" in line for line in lines)
    ids = crishim("images", "-q", "--config", str(config)).stdout.split()
    assert sorted(ids) == sorted([images.small.id, images.multi_arm64.id])


def test_pull_failure_exit_code_and_message(tmp_path: Path, registry: RegistryProcess) -> None:
    config = _write(tmp_path, plain_config(tmp_path / "store", registry))
    ref = f"{registry.host}/test/small:nope"
    done = crishim("pull", "-q", "--config", str(config), ref)
    assert done.returncode == 1
    assert ref in done.stderr and "not found" in done.stderr
    bad = crishim("pull", "--config", str(config), "Not/Valid Ref")
    assert bad.returncode == 2
    assert "invalid reference" in bad.stderr


def test_pull_reads_the_password_from_stdin(
    tmp_path: Path, registry: RegistryProcess, images: RegistryImages
) -> None:
    config = _write(tmp_path, plain_config(tmp_path / "store", registry))
    done = crishim(
        "pull",
        "-q",
        "--config",
        str(config),
        "--username",
        "someone",
        "--password-stdin",
        f"{registry.host}/test/docker:1",
        stdin="not-needed-here\n",
    )
    # the registry wants no auth: the credentials are simply not asked for
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == images.docker.id
    assert "not-needed-here" not in done.stdout + done.stderr


def test_running_server_sees_what_crishim_pull_stored(
    crishim_server: Server,
    tmp_path: Path,
    registry: RegistryProcess,
    images: RegistryImages,
) -> None:
    store = tmp_path / "store"
    config = plain_config(store, registry, rescan_interval=0.1)
    shim = crishim_server(config)
    ref = f"{registry.host}/test/shared-b:1"
    assert shim.status(ref).image.id == ""
    before = shim.fsinfo().image_filesystems[0].used_bytes.value
    done = crishim("pull", "-q", "--config", str(_write(tmp_path, dict(config))), ref)
    assert done.returncode == 0, done.stderr
    end = time.monotonic() + 10
    while shim.status(ref).image.id == "" and time.monotonic() < end:
        time.sleep(0.05)
    assert shim.status(ref).image.id == images.shared_b.id
    while shim.fsinfo().image_filesystems[0].used_bytes.value == before and time.monotonic() < end:
        time.sleep(0.05)
    assert shim.fsinfo().image_filesystems[0].used_bytes.value > before
    # and the server can remove it, with its blobs
    shim.remove(ref)
    assert check_store(store) == {}


@pytest.mark.parametrize("command", ["pull", "images"])
def test_bad_config_is_a_config_error(tmp_path: Path, command: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "backends": [
                    {
                        "name": "cache",
                        "type": "registry-cache",
                        "options": {
                            "registries": {"x.io": {"endpoints": [{"url": "http://x.io"}]}}
                        },
                    }
                ]
            }
        )
    )
    args = [command, "--config", str(config)] + (["x.io/a:1"] if command == "pull" else [])
    done = crishim(*args)
    assert done.returncode == 2
    assert "plain_http" in done.stderr


def test_example_config_is_valid() -> None:
    """All is well but the example's certificates, which only a node has."""
    example = Path(__file__).resolve().parents[1] / "examples" / "registry.yaml"
    done = crishim("check-config", str(example))
    lines = done.stderr.splitlines()[1:]
    assert lines and all(
        " /etc/crishim/certs/" in line and line.endswith(" does not exist") for line in lines
    ), done.stderr
    assert done.returncode == 2
