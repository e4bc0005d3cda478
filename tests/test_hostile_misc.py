"""Hostile conditions that are not a layout's shape (docs/security.md): a full disk,
one image under very many names, a hostile registry's manifest, the socket's
mode, tests' own temporary directories."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from registry.helpers import plain_config, pull_error
from registry.images import RegistryImages
from registry.process import RegistryProcess
from registry.proxy import TamperingProxy

from crishim.testing.hostile import nesting_bomb
from crishim.testing.ocibuild import OCI_MANIFEST, LayoutBuilder
from crishim.testing.server import running_server, short_tempdir

pytest_plugins = ["registry.fixtures"]


# -- a full disk ------------------------------------------------------------------------


def _unavailable(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@contextlib.contextmanager
def small_filesystem(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where`` (root only), unmounted afterwards."""
    where.mkdir(parents=True)
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.mount(b"tmpfs", os.fsencode(where), b"tmpfs", 0, f"size={size}".encode()) != 0:
        _unavailable(f"cannot mount a tmpfs here (errno {ctypes.get_errno()}): needs root")
    try:
        yield where
    finally:
        libc.umount2(os.fsencode(where), 2)  # MNT_DETACH


def _fill(directory: Path) -> None:
    """Write until the filesystem refuses another byte."""
    for name, chunk in (("filler", 64 * 1024), ("filler2", 1)):
        fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * chunk)
        except OSError:
            pass
        finally:
            os.close(fd)


def test_removal_works_on_a_full_disk(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "fs", "2m") as fs:
        b = LayoutBuilder(fs / "layout")
        doomed = b.image(name="doomed", layers=[{"big": os.urandom(64 * 1024)}])
        kept = b.image(name="kept")
        b.tag(doomed, "full.example/doomed:1")
        b.tag(kept, "full.example/kept:1")
        b.write()
        config = {
            "backends": [
                {
                    "name": "full",
                    "type": "oci-dir",
                    "options": {"path": str(b.root), "snapshot": False},
                }
            ]
        }
        with running_server(config) as shim:
            _fill(fs)
            with pytest.raises(OSError):
                (fs / "one-more").write_bytes(b"x" * 4096)
            shim.remove("full.example/doomed:1")
            assert not shim.status(doomed.id).HasField("image")
            assert shim.status("full.example/kept:1").image.id == kept.id
        # the layout is whole: the kept image is all there, the removed one gone
        assert not b.blob_path(doomed.layers[0].digest).exists()
        assert b.blob_path(kept.config.digest).exists()
        assert "full.example/doomed:1" not in (b.root / "index.json").read_text()
        assert not list(b.root.glob(".index.json.*.tmp")), "a temp file was left behind"


def test_registry_cache_removal_works_on_a_full_disk(
    tmp_path: Path, registry: RegistryProcess, images: RegistryImages
) -> None:
    with small_filesystem(tmp_path / "fs", "8m") as fs:
        store = fs / "store"
        with running_server(plain_config(store, registry)) as shim:
            ref = f"{registry.host}/test/big:1"
            request = _pull_request(ref)
            assert shim.images.PullImage(request, timeout=60).image_ref == images.big.id
            _fill(fs)
            shim.remove(ref)
            assert not shim.status(images.big.id).HasField("image")
        big_layer = images.big.layers[0].digest.removeprefix("sha256:")
        assert not (store / "blobs" / "sha256" / big_layer).exists()


def _pull_request(ref: str) -> object:
    from crishim.cri.runtime.v1 import api_pb2

    return api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref))


# -- one image under very many names ----------------------------------------------------


@pytest.mark.timeout(60)
def test_one_image_under_100000_names_starts_in_linear_time(tmp_path: Path) -> None:
    b = LayoutBuilder(tmp_path / "layout")
    image = b.image(name="many")
    for i in range(100_000):
        b.tag(image, f"many.example/app:{i}")
    b.write()
    config = {"backends": [{"name": "many", "type": "oci-dir", "options": {"path": str(b.root)}}]}
    with running_server(config) as shim:
        answer = shim.status("many.example/app:99999").image
        assert answer.id == image.id
        assert len(answer.repo_tags) == 100_000


# -- a hostile registry ----------------------------------------------------------------


def test_a_manifest_nesting_bomb_from_a_registry_is_data_loss(
    tmp_path: Path, registry: RegistryProcess
) -> None:
    proxy = TamperingProxy(registry.port).start()
    try:
        bomb = nesting_bomb()
        proxy.override["manifests/1"] = (200, {"Content-Type": OCI_MANIFEST}, bomb)
        config = plain_config(tmp_path / "store", registry)
        mirror = {"endpoints": [{"url": proxy.url, "plain_http": True}]}
        config["backends"][0]["options"]["registries"] = {registry.host: mirror}
        with running_server(config) as shim:
            err = pull_error(shim, f"{registry.host}/test/small:1")
            assert err.code() == grpc.StatusCode.DATA_LOSS, err.details()
            assert "nested too deep" in (err.details() or "")
            # and a later pull of a good image is not poisoned
            del proxy.override["manifests/1"]
            request = _pull_request(f"{registry.host}/test/small:1")
            assert shim.images.PullImage(request, timeout=60).image_ref.startswith("sha256:")
    finally:
        proxy.stop()


# -- the socket and the tests' own directories ----------------------------------------


def test_the_socket_is_created_with_its_mode_and_the_umask_is_restored(tmp_path: Path) -> None:
    b = LayoutBuilder(tmp_path / "layout")
    b.write()
    before = os.umask(0o022)
    try:
        config = {
            "server": {"socket_mode": 0o600},
            "backends": [{"name": "l", "type": "oci-dir", "options": {"path": str(b.root)}}],
        }
        with running_server(config) as shim:
            assert stat.S_IMODE(shim.socket_path.stat().st_mode) == 0o600
            assert os.umask(0o022) == 0o022, "the process umask changed"
    finally:
        os.umask(before)


def test_short_tempdir_honours_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    short = Path(tempfile.mkdtemp(prefix="t", dir="/tmp"))
    try:
        monkeypatch.setenv("TMPDIR", str(short))
        monkeypatch.setattr(tempfile, "tempdir", None)
        made = short_tempdir()
        assert made.parent == short
        made.rmdir()
        # a TMPDIR too long for a socket path falls back to /tmp
        deep = short / ("d" * 90)
        deep.mkdir()
        monkeypatch.setenv("TMPDIR", str(deep))
        monkeypatch.setattr(tempfile, "tempdir", None)
        made = short_tempdir()
        assert made.parent == Path("/tmp")
        made.rmdir()
    finally:
        subprocess.run(["rm", "-rf", str(short)], check=True)
