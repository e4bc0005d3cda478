"""What tracing the config file and the ``OTEL_*`` variables put in effect, and from where.

The rule (crishim.telemetry.setup): the file's values go to the SDK
explicitly, the SDK reads the variables for the rest; ``check-config``
says which is which. Export to real receivers with the environment alone
is in tests/test_tracing_export.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from crishim.cli import main
from crishim.config import ConfigError, parse_settings
from crishim.telemetry.setup import (
    TracingSetup,
    build_tracer_provider,
    make_span_exporter,
    resolve_tracing,
)
from crishim.testing.server import running_server
from tests.telemetry_support import DEMO

pytestmark = pytest.mark.usefixtures("no_otel_env")


def _tracing(config: dict[str, Any] | None, env: dict[str, str]) -> TracingSetup:
    data: dict[str, Any] = {"backends": [DEMO]}
    if config is not None:
        data["tracing"] = config
    return resolve_tracing(parse_settings(data).tracing, env)


def _built(setup: TracingSetup, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Any:
    """The SDK provider for ``setup``, built with ``env`` as the process's environment."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    exporter = make_span_exporter(setup)
    assert exporter is not None
    return build_tracer_provider(setup, exporter)


def test_the_environment_alone_is_left_to_the_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
        "OTEL_EXPORTER_OTLP_HEADERS": "api-key=from-env,x-tenant=t1",
        "OTEL_TRACES_SAMPLER": "traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
        "OTEL_SERVICE_NAME": "node-images",
    }
    setup = _tracing(None, env)
    assert setup.enabled
    assert setup.exporter == "otlp-http"
    # nothing of it is passed to the SDK: it reads the variables itself
    assert (setup.endpoint, dict(setup.headers), setup.timeout) == (None, {}, None)
    assert (setup.sampler, setup.service_name, dict(setup.batch)) == (None, None, {})
    # and check-config says what it will read
    assert setup.shown["endpoint"] == (
        "http://collector:4318/v1/traces",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    )
    assert setup.shown["headers"] == (
        "api-key=<hidden>, x-tenant=<hidden>",
        "OTEL_EXPORTER_OTLP_HEADERS",
    )
    assert setup.shown["sampler"] == ("traceidratio 0.25", "OTEL_TRACES_SAMPLER")
    assert setup.shown["service.name"] == ("node-images", "OTEL_SERVICE_NAME")
    provider = _built(setup, monkeypatch, env)
    assert provider.sampler.get_description() == "TraceIdRatioBased{0.25}"
    assert provider.resource.attributes["service.name"] == "node-images"
    provider.shutdown()


def test_the_config_file_wins_where_both_speak(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://elsewhere:4317",
        "OTEL_EXPORTER_OTLP_HEADERS": "api-key=from-env,x-tenant=t1",
        "OTEL_TRACES_SAMPLER": "always_on",
        "OTEL_SERVICE_NAME": "from-env",
        "OTEL_BSP_MAX_QUEUE_SIZE": "100",
    }
    setup = _tracing(
        {
            "exporter": "otlp-grpc",
            "endpoint": "http://127.0.0.1:4317",
            "headers": {"API-Key": "from-file"},
            "sampler": "parentbased_always_off",
            "service_name": "from-file",
            "batch": {"max_queue_size": 4096},
        },
        env,
    )
    assert (setup.exporter, setup.exporter_from) == ("otlp-grpc", "config")
    assert setup.endpoint == "http://127.0.0.1:4317"
    assert setup.shown["endpoint"] == ("http://127.0.0.1:4317", "config")
    # a key the file states replaces the variable, as the SDK's own arguments do
    assert setup.headers == {"api-key": "from-file"}
    assert setup.shown["headers"] == ("api-key=<hidden>", "config")
    assert setup.sampler == "parentbased_always_off"
    assert setup.service_name == "from-file"
    assert setup.batch == {"max_queue_size": 4096}
    assert setup.shown["max_queue_size"] == ("4096", "config")
    provider = _built(setup, monkeypatch, env)
    assert provider.sampler.get_description().startswith("ParentBased{root:AlwaysOffSampler")
    assert provider.resource.attributes["service.name"] == "from-file"
    provider.shutdown()


def test_batch_settings_the_file_leaves_out_are_the_sdks() -> None:
    """OTEL_BSP_* reach the SDK (the export test sees OTEL_BSP_SCHEDULE_DELAY act)."""
    env = {"OTEL_BSP_SCHEDULE_DELAY": "250", "OTEL_BSP_MAX_QUEUE_SIZE": "64"}
    setup = _tracing({"exporter": "otlp-grpc", "batch": {"export_timeout": 5}}, env)
    # the queue is smaller than the SDK's default batch: a batch is then the queue
    assert setup.batch == {"export_timeout_millis": 5000, "max_export_batch_size": 64}
    assert setup.shown["schedule_delay"] == ("0.25s", "OTEL_BSP_SCHEDULE_DELAY")
    assert setup.shown["max_queue_size"] == ("64", "OTEL_BSP_MAX_QUEUE_SIZE")
    assert setup.shown["max_export_batch_size"] == ("64", "the queue's size")
    assert setup.shown["export_timeout"] == ("5s", "config")
    assert "batch every 0.25s (from OTEL_BSP_SCHEDULE_DELAY)" in setup.describe()


def test_defaults_and_the_kill_switch() -> None:
    off = _tracing(None, {})
    assert not off.enabled and off.exporter == "none"
    on = _tracing({"exporter": "otlp-grpc"}, {})
    assert on.enabled
    assert on.shown["endpoint"] == ("http://localhost:4317", "default")
    assert on.shown["sampler"] == ("parentbased_always_on", "default")
    assert on.shown["service.name"] == ("crishim", "default")
    http = _tracing({"exporter": "otlp-http"}, {})
    assert http.shown["endpoint"] == ("http://localhost:4318/v1/traces", "default")
    killed = _tracing({"exporter": "otlp-grpc"}, {"OTEL_SDK_DISABLED": "TRUE"})
    assert not killed.enabled
    assert "OTEL_SDK_DISABLED" in killed.describe()


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
        ({"OTEL_TRACES_SAMPLER_ARG": "half"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"OTEL_TRACES_SAMPLER_ARG": "2"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
        ({"OTEL_BSP_MAX_QUEUE_SIZE": "lots"}, "OTEL_BSP_MAX_QUEUE_SIZE"),
        ({"OTEL_BSP_SCHEDULE_DELAY": "0"}, "OTEL_BSP_SCHEDULE_DELAY"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TIMEOUT": "soon"},
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ),
    ],
)
def test_bad_environment_is_a_config_error_naming_the_variable(
    env: dict[str, str], key: str
) -> None:
    """What the SDK would only log (and replace by its default) stops crishim."""
    with pytest.raises(ConfigError) as info:
        _tracing(None, env)
    assert info.value.problems[0][0] == key


@pytest.mark.parametrize(
    ("section", "key", "reason"),
    [
        ({"exporter": "jaeger"}, "tracing.exporter", "Input should be"),
        ({"endpoint": "https://u:p@collector:4317"}, "tracing.endpoint", "credentials"),
        ({"endpoint": "http://collector:4318?key=x"}, "tracing.endpoint", "query"),
        ({"endpoint": "collector:4317"}, "tracing.endpoint", "http://"),
        ({"sampler_arg": 1.5}, "tracing.sampler_arg", "less than or equal"),
        ({"headers": {"bad header": "x"}}, "tracing.headers", "header name"),
        ({"batch": {"schedule_delay": 0}}, "tracing.batch.schedule_delay", "greater than"),
        ({"sampling": "always_on"}, "tracing.sampling", "unknown key"),
    ],
)
def test_config_errors_name_the_key(section: dict[str, Any], key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings({"backends": [DEMO], "tracing": section}, source="c.yaml")
    problems = dict(info.value.problems)
    assert key in problems, problems
    assert reason in problems[key]


def test_check_config_shows_the_effective_setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        json.dumps(
            {
                "backends": [DEMO],
                "tracing": {
                    "exporter": "otlp-grpc",
                    "endpoint": "http://127.0.0.1:4317",
                    "headers": {"authorization": "Bearer very-secret-value"},
                },
                "metrics": {"exporter": "otlp-http", "prometheus": {"port": 9464}},
            }
        )
    )
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.5")
    result = CliRunner().invoke(main, ["check-config", str(config)])
    assert result.exit_code == 0, result.output
    lines = {line.split(":", 1)[0]: line for line in result.output.splitlines()}
    assert lines["tracing"].startswith("tracing: on: otlp-grpc to http://127.0.0.1:4317")
    assert "authorization=<hidden>" in lines["tracing"]
    assert "parentbased_traceidratio 0.5 (from OTEL_TRACES_SAMPLER)" in lines["tracing"]
    assert "otlp-http to http://localhost:4318/v1/metrics" in lines["metrics"]
    assert "prometheus scrape endpoint http://127.0.0.1:9464/metrics" in lines["metrics"]
    assert "very-secret-value" not in result.output

    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    result = CliRunner().invoke(main, ["check-config", str(config)])
    assert "tracing: off (OTEL_SDK_DISABLED=true)" in result.output
    assert "metrics: off (OTEL_SDK_DISABLED=true)" in result.output


def test_check_config_reports_bad_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"backends": [DEMO]}))
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "sometimes")
    result = CliRunner().invoke(main, ["check-config", str(config)])
    assert result.exit_code == 2
    assert "environment: OTEL_TRACES_SAMPLER: unknown sampler 'sometimes'" in result.output


def test_an_endpoint_without_an_exporter_exports_nothing_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """crishim exports only when told to (docs/tracing.md), unlike the SDK's ``otlp`` default."""
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"backends": [DEMO]}))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    result = CliRunner().invoke(main, ["check-config", str(config)])
    assert result.exit_code == 0, result.output
    lines = {line.split(":", 1)[0]: line for line in result.output.splitlines()}
    for section, signal in (("tracing", "TRACES"), ("metrics", "METRICS")):
        assert lines[section].startswith(
            f"{section}: off (no exporter named: OTEL_EXPORTER_OTLP_ENDPOINT is set, "
            f"but neither {section}.exporter nor OTEL_{signal}_EXPORTER names one"
        ), lines[section]
    with caplog.at_level(logging.WARNING, "crishim"), running_server({"backends": [DEMO]}) as shim:
        assert shim.app.tracer_provider() is None
    assert "tracing: off (no exporter named" in caplog.text
