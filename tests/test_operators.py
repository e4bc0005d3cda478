"""What an operator meets around the server: defaults, check-config, sockets, logs."""

from __future__ import annotations

import grp
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from crishim import hookimpl
from crishim.catalog import Catalog
from crishim.cli import default_config_text, main
from crishim.config import (
    ConfigError,
    LoggingSettings,
    ServerSettings,
    Settings,
    load_settings,
    parse_settings,
)
from crishim.container import check_config
from crishim.live import LiveCatalog
from crishim.model import ImageRecord
from crishim.testing.server import running_server
from crishim.types import FilterType, Verdict

LAYOUT = Path(__file__).resolve().parents[1] / "examples" / "layouts" / "demo"
DEMO = {
    "name": "demo",
    "type": "oci-dir",
    "options": {"path": str(LAYOUT), "repository": "example.com/crishim/hello"},
}


def _crishim(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crishim.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, **env},
    )


# -- defaults ------------------------------------------------------------------------------------


def test_config_default_validates_and_shows_every_server_and_logging_key(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["config", "default"])
    assert result.exit_code == 0
    assert result.output == default_config_text()
    path = tmp_path / "config.yaml"
    path.write_text(result.output)
    settings, _ = check_config(path)  # every check serve makes
    assert settings.backends[0].type == "containerd"
    text = result.output
    for model, section in ((ServerSettings, "server"), (LoggingSettings, "logging")):
        for key in model.model_fields:
            assert f" {key}:" in text, f"{section}.{key} is missing from the default config"
    for key in Settings.model_fields:
        if key not in ("source", "base_dir"):
            assert f"{key}:" in text, f"{key} is missing from the default config"
    # the values shown are the defaults (what a user gets without the file's keys)
    shown = yaml.safe_load(text)
    assert ServerSettings.model_validate(shown["server"]) == ServerSettings()


def test_commands_read_crishim_config_then_etc(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"backends: [{{name: demo, type: oci-dir, options: {{path: '{LAYOUT}'}}}}]\n")
    done = _crishim("check-config", CRISHIM_CONFIG=str(config))
    assert done.returncode == 0, done.stderr
    assert f"config: {config}: OK" in done.stdout
    done = _crishim("images", "-q", CRISHIM_CONFIG=str(config))
    assert done.returncode == 0 and done.stdout.count("sha256:") >= 6
    # without either, /etc/crishim/config.yaml (absent here) is named, with a way out
    env = {k: v for k, v in os.environ.items() if k != "CRISHIM_CONFIG"}
    if not Path("/etc/crishim/config.yaml").exists():
        done = subprocess.run(
            [sys.executable, "-m", "crishim.cli", "serve"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert done.returncode == 2
        assert "/etc/crishim/config.yaml: does not exist" in done.stderr
        assert "crishim config default" in done.stderr


# -- check-config --------------------------------------------------------------------------------


def test_check_config_reports_every_problem_in_one_pass_with_the_value(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    config = tmp_path / "c.yaml"
    config.write_text(
        "server: {grace_period: soon, workers: 0}\n"
        "tracing: {headers: {authorization: 12345}}\n"
        "backends:\n"
        "  - {name: gone, type: oci-dir, options: {path: nowhere}}\n"
        "  - {name: file, type: oci-dir, options: {path: a-file}}\n"
        "  - {name: odd, type: nosuch}\n"
    )
    done = _crishim("check-config", str(config))
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert lines[0] == "crishim: invalid config:"
    expected = [
        f"{config}: server.grace_period: Input should be a valid number, unable to parse "
        "string as a number (got 'soon')",
        f"{config}: server.workers: Input should be greater than or equal to 1 (got 0)",
        f"{config}: backends[0].options.path: {tmp_path}/nowhere does not exist",
        f"{config}: backends[1].options.path: {tmp_path}/a-file is not a directory",
        f"{config}: backends[2].type: unknown backend type 'nosuch'",
    ]
    for line in expected:
        assert any(got.startswith(line) for got in lines), f"{line}\nnot in\n{done.stderr}"
    # a value under a secret-sounding key is never echoed
    header = [line for line in lines if "tracing.headers" in line]
    assert header and "12345" not in done.stderr
    # serve makes the same checks and says the same
    serve = _crishim("serve", "--config", str(config))
    assert serve.returncode == 2
    assert serve.stderr == done.stderr


def test_check_config_checks_tls_files_of_registries(tmp_path: Path) -> None:
    settings = {
        "backends": [
            {
                "name": "cache",
                "type": "registry-cache",
                "options": {
                    "registries": {
                        "x.io": {"endpoints": [{"url": "https://x.io", "ca_file": "ca.pem"}]}
                    }
                },
            }
        ]
    }
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(settings))
    with pytest.raises(ConfigError) as info:
        check_config(config)
    assert info.value.problems == [
        (
            "backends[0].options.registries.x.io.endpoints[0].ca_file",
            f"{tmp_path}/ca.pem does not exist",
        )
    ]
    (tmp_path / "ca.pem").write_text("")
    check_config(config)


def test_socket_path_too_long_is_a_config_error(tmp_path: Path) -> None:
    long = "x" * 120
    with pytest.raises(ConfigError, match=r"server.listen: socket path .* is longer than 107"):
        parse_settings({"server": {"listen": f"unix:///{long}"}, "backends": [DEMO]})


# -- sockets -------------------------------------------------------------------------------------


def test_listen_on_the_command_line_is_relative_to_the_working_directory(
    tmp_path: Path, sockdir: Path
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    config = etc / "c.yaml"
    config.write_text(
        "server: {listen: 'unix://from-config.sock'}\n"
        f"backends: [{{name: demo, type: oci-dir, options: {{path: '{LAYOUT}'}}}}]\n"
    )
    # the config's own key resolves against the file's directory...
    assert load_settings(config).socket_path == etc / "from-config.sock"
    # ...a command-line address against the shell's working directory
    settings = load_settings(config).with_listen("unix://run/x.sock", cwd=sockdir)
    assert settings.socket_path == sockdir / "run" / "x.sock"
    assert settings.with_listen("unix:///abs/x.sock").socket_path == Path("/abs/x.sock")


def _other_group() -> grp.struct_group:
    for name in ("nogroup", "daemon", "users"):
        try:
            group = grp.getgrnam(name)
        except KeyError:
            continue
        if group.gr_gid != os.getgid():
            return group
    pytest.skip("no second group on this host")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file another group needs root")
def test_socket_group_is_given_to_the_socket_and_the_directory_made_for_it() -> None:
    group = _other_group()
    with running_server({"backends": [DEMO], "server": {"socket_group": group.gr_name}}) as shim:
        st = shim.socket_path.stat()
        assert stat.S_ISSOCK(st.st_mode)
        assert st.st_gid == group.gr_gid
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert shim.status("example.com/crishim/hello:1.0").HasField("image")


def test_socket_group_must_exist() -> None:
    with pytest.raises(ConfigError, match=r"server.socket_group: no group named 'no-such-grp'"):
        parse_settings({"server": {"socket_group": "no-such-grp"}, "backends": [DEMO]})
    numeric = parse_settings({"server": {"socket_group": "4242"}, "backends": [DEMO]})
    assert numeric.server.socket_gid == 4242


# -- logs ----------------------------------------------------------------------------------------


class _HideWeb:
    """A filter that hides example.com/crishim/web."""

    def check(self, record: ImageRecord) -> Verdict:
        if any(t.startswith("example.com/crishim/web:") for t in record.repo_tags):
            return Verdict(hidden=True, reason="web images are hidden here")
        return Verdict()


class _HideWebPlugin:
    @hookimpl
    def crishim_filter_types(self) -> list[FilterType]:
        return [FilterType(name="hide-web", factory=lambda c, o: _HideWeb())]


def test_debug_logs_one_line_per_call_and_info_none(caplog: pytest.LogCaptureFixture) -> None:
    config = {"backends": [DEMO], "filters": [{"name": "no-web", "type": "hide-web"}]}
    with running_server(config, extra_plugins=[("hide-web", _HideWebPlugin())]) as shim:
        with caplog.at_level(logging.INFO):
            shim.status("example.com/crishim/hello:1.0")
            shim.list()
        assert [r for r in caplog.records if r.name.startswith("crishim")] == []
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="crishim.live"):
            hello = shim.status("example.com/crishim/hello:1.0").image.id
            shim.status("example.com/crishim/nope:1")
            shim.status("example.com/crishim/web:1.0")
            listed = shim.list()
            shim.fsinfo()
        lines = [r.getMessage() for r in caplog.records if r.name == "crishim.live"]
    assert len(lines) == 5, lines
    assert lines[0].startswith(
        f"ImageStatus example.com/crishim/hello:1.0: hit demo ({hello[7:19]}) ("
    )
    assert lines[1].startswith("ImageStatus example.com/crishim/nope:1: miss (")
    assert lines[2].startswith("ImageStatus example.com/crishim/web:1.0: hidden by no-web (")
    assert lines[3].startswith(f"ListImages: {len(listed)} images (")
    assert lines[4].startswith("ImageFsInfo: ")
    assert all(line.endswith("ms)") for line in lines)


def test_live_catalog_offers_every_call_of_the_catalog() -> None:
    calls = {
        name
        for name in vars(Catalog)
        if not name.startswith("_") and callable(getattr(Catalog, name))
    }
    assert calls - {"start", "close"} <= set(vars(LiveCatalog)), (
        "the servicer talks to a LiveCatalog: give it the catalog's new call"
    )


# -- upgrades ------------------------------------------------------------------------------------


def test_a_snapshot_of_another_format_is_rebuilt_not_misread(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An upgrade that changes the snapshot format re-indexes once, then snapshots anew."""
    import json

    from crishim.oci import snapshot

    state = tmp_path / "state"
    config = {"backends": [{**DEMO, "options": {**DEMO["options"], "path": str(LAYOUT)}}]}
    config["state_dir"] = str(state)  # type: ignore[assignment]
    with running_server(config) as shim:
        before = sorted(i.id for i in shim.list())
    path = state / "backends" / "demo" / "oci-dir-index.snapshot"
    data = path.read_bytes()
    header_end = data.index(b"\n", len(snapshot.MAGIC))
    header = json.loads(data[len(snapshot.MAGIC) : header_end])
    assert header["format"] == snapshot.FORMAT
    header["format"] = snapshot.FORMAT - 1  # as an older crishim wrote it
    path.write_bytes(snapshot.MAGIC + json.dumps(header).encode() + data[header_end:])
    with caplog.at_level(logging.INFO), running_server(config) as shim:
        assert sorted(i.id for i in shim.list()) == before
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"made with format={snapshot.FORMAT - 1}" in m for m in messages), messages
    assert not any("from the snapshot of" in m for m in messages)
    rewritten = path.read_bytes()
    end = rewritten.index(b"\n", len(snapshot.MAGIC))
    assert json.loads(rewritten[len(snapshot.MAGIC) : end])["format"] == snapshot.FORMAT


def test_a_store_of_a_newer_layout_version_is_refused(tmp_path: Path) -> None:
    from crishim.oci.store import ContentStore, StoreError

    store = ContentStore(tmp_path / "store")
    store.open()
    store.close()
    (tmp_path / "store" / "oci-layout").write_text('{"imageLayoutVersion":"2.0.0"}')
    again = ContentStore(tmp_path / "store")
    with pytest.raises(StoreError, match=r"imageLayoutVersion '2.0.0'; this crishim reads 1.x"):
        again.open()
    again.close()
