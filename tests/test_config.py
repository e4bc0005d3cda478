"""Config validation: every error names the file, the key and the reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DEMO_LAYOUT as LAYOUT

from crishim.config import ConfigError, load_settings
from crishim.container import check_config, make_application


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "crishim.yaml"
    path.write_text(text)
    return path


GOOD_BACKEND = f"""
backends:
  - name: demo
    type: oci-dir
    options: {{path: {LAYOUT}}}
"""


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("backends: []\n", "backends", "at least 1"),
        ("server: {listen: unix:///tmp/x.sock}\n", "backends", "required key is missing"),
        (GOOD_BACKEND + "servr: {}\n", "servr", "unknown key"),
        (GOOD_BACKEND + "server: {grace_period: soon}\n", "server.grace_period", "valid number"),
        (GOOD_BACKEND + "server: {listen: 'tcp://0.0.0.0:1'}\n", "server.listen", "unix socket"),
        (GOOD_BACKEND + "logging: {format: xml}\n", "logging.format", "'console'"),
        (GOOD_BACKEND + "pinned: ['Busy/Box']\n", "pinned", "lowercase"),
        (
            "backends:\n  - {name: a, type: oci-dir}\n  - {name: a, type: oci-dir}\n",
            "backends",
            "'a' is used twice",
        ),
        ("backends:\n  - {name: 'Bad Name', type: oci-dir}\n", "backends[0].name", "a-z"),
        (
            "backends:\n  - {name: a, type: oci-dir, optoins: {}}\n",
            "backends[0].optoins",
            "unknown key",
        ),
    ],
    ids=[
        "no-backends",
        "missing-backends",
        "unknown-top-key",
        "bad-number",
        "tcp-listen",
        "bad-log-format",
        "bad-pinned",
        "duplicate-name",
        "bad-name",
        "misspelt-options",
    ],
)
def test_schema_errors_name_file_key_and_reason(
    tmp_path: Path, text: str, key: str, reason: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert any(k == key and reason in r for k, r in info.value.problems), message


def test_invalid_yaml_reports_line_and_column(tmp_path: Path) -> None:
    path = _write(tmp_path, "backends:\n  - name: a\n   type: [oci-dir\n")
    with pytest.raises(ConfigError, match=r"not valid YAML: line \d+, column \d+"):
        load_settings(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("backend", "key", "reason"),
    [
        (
            "{name: a, type: nosuch}",
            "backends[0].type",
            "unknown backend type 'nosuch' (installed:",
        ),
        ("{name: a, type: oci-dir}", "backends[0].options.path", "required key is missing"),
        (
            "{name: a, type: oci-dir, options: {path: /x, colour: red}}",
            "backends[0].options.colour",
            "unknown key",
        ),
        (
            "{name: a, type: oci-dir, options: {path: /x, repository: 'Bad:tag'}}",
            "backends[0].options.repository",
            "",
        ),
    ],
    ids=["unknown-type", "missing-path", "unknown-option", "bad-repository"],
)
def test_backend_options_are_validated_by_the_plugin_type(
    tmp_path: Path, backend: str, key: str, reason: str
) -> None:
    settings = load_settings(_write(tmp_path, f"backends:\n  - {backend}\n"))
    with pytest.raises(ConfigError) as info:
        make_application(settings).backends()
    assert any(k == key and reason in r for k, r in info.value.problems), str(info.value)


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    sub = tmp_path / "etc"
    sub.mkdir()
    path = sub / "c.yaml"
    path.write_text("server: {listen: 'unix://run/x.sock'}\n" + GOOD_BACKEND)
    settings = load_settings(path)
    assert settings.socket_path == sub / "run" / "x.sock"


def test_pinned_names_are_normalised(tmp_path: Path) -> None:
    settings = load_settings(
        _write(tmp_path, GOOD_BACKEND + "pinned: [busybox, 'registry.k8s.io/*']\n")
    )
    assert settings.pinned == ["docker.io/library/busybox:latest", "registry.k8s.io/*"]


def test_serve_refuses_to_start_on_a_bad_config(tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    path = _write(
        tmp_path,
        f"server: {{listen: 'unix://{sock}'}}\n"
        "backends:\n  - {name: a, type: oci-dir, options: {}}\n",
    )
    result = subprocess.run(
        [sys.executable, "-m", "crishim.cli", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"{path}: backends[0].options.path: required key is missing" in result.stderr
    assert not sock.exists()


def test_check_config_prints_backends_in_order(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        f"""
backends:
  - {{name: second-first, type: oci-dir, options: {{path: {LAYOUT}}}}}
  - {{name: spare, type: oci-dir, enabled: false, options: {{path: {LAYOUT}}}}}
  - {{name: alpha-last, type: oci-dir, options: {{path: {LAYOUT}}}}}
""",
    )
    result = subprocess.run(
        [sys.executable, "-m", "crishim.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out = result.stdout
    assert "1. second-first: type oci-dir (crishim 0.1.0)" in out
    assert "2. alpha-last: type oci-dir" in out
    assert "spare: type oci-dir (disabled)" in out
    assert "oci-dir = crishim_plugins.oci_dir [crishim 0.1.0] loaded" in out


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


#: Paths the node examples name that exist on a node, not on a build machine.
NODE_PATHS = ("/etc/crishim/", "/var/lib/crishim/")


def node_only_problems(path: Path) -> list[tuple[str, str]]:
    """check_config's problems for an example; fails on any but a missing node path."""
    try:
        check_config(path)
    except ConfigError as exc:
        for key, reason in exc.problems:
            assert reason.startswith(NODE_PATHS) and reason.endswith(" does not exist"), (
                f"{path}: {key}: {reason}"
            )
        return exc.problems
    return []


@pytest.mark.parametrize(
    "name", ["local.yaml", "production.yaml", "registry.yaml", "containerd.yaml"]
)
def test_example_configs_are_valid(name: str) -> None:
    """Every example passes every check, but for node paths absent from this machine."""
    problems = node_only_problems(EXAMPLES / name)
    if name == "local.yaml":
        assert problems == []
    settings = load_settings(EXAMPLES / name)
    if name == "production.yaml":
        assert settings.server.socket_mode == 0o660
        assert [k for k, _ in problems] == ["backends[0].options.path", "backends[1].options.path"]


@pytest.mark.parametrize(("raw", "mode"), [("0o640", 0o640), ("0660", 0o660), (0o600, 0o600)])
def test_socket_mode_accepts_octal_spellings(tmp_path: Path, raw: object, mode: int) -> None:
    value = f"'{raw}'" if isinstance(raw, str) else str(raw)
    settings = load_settings(_write(tmp_path, GOOD_BACKEND + f"server: {{socket_mode: {value}}}\n"))
    assert settings.server.socket_mode == mode


def test_socket_mode_rejects_nonsense(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"server.socket_mode: must be an octal file mode"):
        load_settings(_write(tmp_path, GOOD_BACKEND + "server: {socket_mode: rw-rw----}\n"))
