"""Pull policies: the built-in ``registry-policy`` and policy plugins, against the
real test registry (through the counting proxy) and a real server socket."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import rpc_error
from cri_helpers import cri_backend, endpoint_of, fake_backend, upstream_server
from crishim_plugins.registry_policy import RegistryPolicy, RegistryPolicyOptions
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from policy_helpers import PLUGINS, SECRET, Recording
from registry.helpers import cache_config, check_store
from registry.images import PLATFORM, RegistryImages
from registry.process import RegistryProcess
from registry.proxy import TamperingProxy

from crishim import hookimpl
from crishim.config import ConfigError
from crishim.cri.runtime.v1 import api_pb2
from crishim.testing.server import RunningShim, running_server
from crishim.types import ALLOW, Decision, PolicyContext, PullPolicyType, PullRequest

pytest_plugins = ["registry.fixtures"]


@pytest.fixture(autouse=True)
def _release_hung_policies() -> Iterator[None]:
    Recording.release.clear()
    yield
    Recording.release.set()
    Recording.instances.clear()


@pytest.fixture
def counting(registry: RegistryProcess) -> Iterator[TamperingProxy]:
    p = TamperingProxy(registry.port).start()
    try:
        yield p
    finally:
        p.stop()


def _config(
    store: Path, registry: RegistryProcess, proxy: TamperingProxy, *policies: Mapping[str, Any]
) -> dict[str, Any]:
    config = cache_config(
        store, {registry.host: {"endpoints": [{"url": proxy.url, "plain_http": True}]}}
    )
    config["pull_policies"] = [dict(p) for p in policies]
    return config


def _registry_policy(**options: Any) -> dict[str, Any]:
    return {"name": "policy", "type": "registry-policy", "options": options}


def _test_policy(kind: str, mode: str = "allow", name: str = "", **more: Any) -> dict[str, Any]:
    return {"name": name or kind, "type": f"test-{kind}", "options": {"mode": mode}, **more}


def _pull(
    shim: RunningShim,
    ref: str,
    *,
    namespace: str | None = None,
    **spec: str,
) -> api_pb2.PullImageResponse:
    request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref, **spec))
    if namespace is not None:
        meta = request.sandbox_config.metadata
        meta.namespace, meta.name, meta.uid = namespace, "web-0", "uid-1234"
        request.sandbox_config.annotations["team"] = "payments"
        request.sandbox_config.labels["app"] = "web"
    response: api_pb2.PullImageResponse = shim.images.PullImage(request, timeout=30)
    return response


def _held(shim: RunningShim, ref: str) -> bool:
    request = api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ref))
    return bool(shim.images.ImageStatus(request, timeout=10).HasField("image"))


def _fetched(proxy: TamperingProxy) -> int:
    return sum(proxy.counts.values())


# -- registry-policy ------------------------------------------------------------------


def test_a_denied_pattern_refuses_the_pull_before_anything_is_fetched(
    tmp_path: Path, registry: RegistryProcess, counting: TamperingProxy, images: RegistryImages
) -> None:
    host = registry.host
    policy = _registry_policy(deny=[f"{host}/test/sm*"])
    with running_server(_config(tmp_path / "store", registry, counting, policy)) as shim:
        err = rpc_error(_pull, shim, f"{host}/test/small:1")
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err.details()
        assert err.details() == (
            f"pull {host}/test/small:1 is denied by pull policy policy: "
            f"{host}/test/small matches denied pattern '{host}/test/sm*'"
        )
        assert _fetched(counting) == 0
        assert not _held(shim, f"{host}/test/small:1")
        assert _pull(shim, f"{host}/test/docker:1").image_ref == images.docker.id
    assert len(check_store(tmp_path / "store")) == 2  # docker:1 by tag and digest


def test_an_allow_list_admits_only_what_it_matches(
    tmp_path: Path, registry: RegistryProcess, counting: TamperingProxy, images: RegistryImages
) -> None:
    host = registry.host
    policy = _registry_policy(allow=[f"{host}/test/{{small,multi}}", "registry.k8s.io/**"])
    with running_server(_config(tmp_path / "store", registry, counting, policy)) as shim:
        err = rpc_error(_pull, shim, f"{host}/test/docker:1")
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert f"{host}/test/docker matches none of the allowed patterns" in (err.details() or "")
        assert _fetched(counting) == 0
        assert _pull(shim, f"{host}/test/small:1").image_ref == images.small.id
        assert _pull(shim, f"{host}/test/multi:1").image_ref == images.multi_arm64.id


def test_namespace_rules_apply_to_that_namespaces_pods_only(
    tmp_path: Path, registry: RegistryProcess, counting: TamperingProxy, images: RegistryImages
) -> None:
    host = registry.host
    small = f"{host}/test/small:1"
    policy = _registry_policy(
        namespaces={
            "restricted": {"deny": ["**"]},
            "prod": {"require_digest": True},
        }
    )
    with running_server(_config(tmp_path / "store", registry, counting, policy)) as shim:
        err = rpc_error(_pull, shim, small, namespace="restricted")
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "matches denied pattern '**' in namespace restricted" in (err.details() or "")
        assert _fetched(counting) == 0
        err = rpc_error(_pull, shim, small, namespace="prod")
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "pulls must name a digest in namespace prod" in (err.details() or "")
        assert _fetched(counting) == 0
        by_digest = f"{host}/test/small@{images.small.manifest.digest}"
        assert _pull(shim, by_digest, namespace="prod").image_ref == images.small.id
        # another namespace, and a pull that names no pod: the top-level rules only
        assert _pull(shim, small, namespace="default").image_ref == images.small.id
        assert _pull(shim, small).image_ref == images.small.id


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("docker.io/library/*", "docker.io/library/busybox", True),
        ("docker.io/library/*", "docker.io/library/a/b", False),
        ("docker.io/**", "docker.io/library/a/b", True),
        ("busybox", "docker.io/library/busybox", True),
        ("busybox", "docker.io/library/busybox2", False),
        ("*.example.com/**", "r.example.com/team/app", True),
        ("*.example.com/**", "example.com/team/app", False),
        ("localhost:5000/{a,b}", "localhost:5000/b", True),
        ("localhost:5000/{a,b}", "localhost:5000/c", False),
    ],
)
def test_patterns_are_path_globs_over_normalised_repositories(
    pattern: str, name: str, matches: bool
) -> None:
    from crishim.reference import parse

    options = RegistryPolicyOptions.model_validate({"deny": [pattern]})
    policy = RegistryPolicy(PolicyContext("p", Path()), options)
    decision = policy.check_request(PullRequest(ref=parse(name)))
    assert decision.allowed is not matches


@pytest.mark.parametrize(
    ("options", "key", "said"),
    [
        ({"deny": ["library/*"]}, "pull_policies[0].options.deny[0]", "start a pattern with"),
        ({"allow": ["busybox:1.36"]}, "pull_policies[0].options.allow[0]", "not tags"),
        ({"allow": ["busybox@sha256:" + "a" * 64]}, "pull_policies[0].options.allow[0]", "digest"),
        ({"deny": [""]}, "pull_policies[0].options.deny[0]", "matches nothing"),
        ({"denied": ["x"]}, "pull_policies[0].options.denied", "unknown key"),
        (
            {"namespaces": {"a": {"require_digest": "sometimes"}}},
            "pull_policies[0].options.namespaces.a.require_digest",
            "boolean",
        ),
    ],
)
def test_bad_policy_options_name_the_key(
    tmp_path: Path, options: dict[str, Any], key: str, said: str
) -> None:
    config = cache_config(tmp_path / "store", {})
    config["pull_policies"] = [_registry_policy(**options)]
    with pytest.raises(ConfigError) as info, running_server(config):
        pass
    keys = {k: why for k, why in info.value.problems}
    assert key in keys, info.value.problems
    assert said in keys[key]


def test_unknown_types_and_twice_used_names_are_config_errors(tmp_path: Path) -> None:
    config = cache_config(tmp_path / "store", {})
    config["pull_policies"] = [{"name": "p", "type": "no-such-policy"}]
    with pytest.raises(ConfigError) as info, running_server(config):
        pass
    assert info.value.problems[0][0] == "pull_policies[0].type"
    assert "unknown pull policy type 'no-such-policy'" in info.value.problems[0][1]
    assert "registry-policy" in info.value.problems[0][1]
    config["pull_policies"] = [_registry_policy(), _registry_policy()]
    with pytest.raises(ConfigError) as info, running_server(config):
        pass
    assert "pull policy name 'policy' is used twice" in str(info.value)


# -- image policies ---------------------------------------------------------------------


def test_an_image_policy_sees_what_the_pull_resolved(
    tmp_path: Path, registry: RegistryProcess, counting: TamperingProxy, images: RegistryImages
) -> None:
    host = registry.host
    config = _config(tmp_path / "store", registry, counting, _test_policy("image", "inspect"))
    with running_server(config, extra_plugins=PLUGINS) as shim:
        _pull(shim, f"{host}/test/multi:1")
        _pull(shim, f"{host}/test/small:1")
    seen = Recording.instances["image"]
    multi, small = seen.images
    # an index: the digest is the index's (what signatures sign), the manifest the platform's
    assert multi.digest == images.multi.descriptor.digest
    assert multi.manifest_digest == images.multi_arm64.manifest.digest
    assert multi.image_id == images.multi_arm64.id
    assert small.digest == small.manifest_digest == images.small.manifest.digest
    assert small.manifest["config"]["digest"] == images.small.config.digest
    assert [c["architecture"] for c in seen.configs] == [
        PLATFORM["architecture"],
        images.small.config_json["architecture"],
    ]
    # the source reads more of the repository with the pull's own session
    assert seen.resolved == [images.multi.descriptor.digest, images.small.manifest.digest]


def test_an_image_policy_denial_fetches_no_layer_and_shows_nothing(
    tmp_path: Path, registry: RegistryProcess, counting: TamperingProxy, images: RegistryImages
) -> None:
    host = registry.host
    config = _config(tmp_path / "store", registry, counting, _test_policy("image", "deny"))
    with running_server(config, extra_plugins=PLUGINS) as shim:
        err = rpc_error(_pull, shim, f"{host}/test/small:1")
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert err.details() == (
            f"pull {host}/test/small:1 is denied by pull policy image: not on this node"
        )
        assert not _held(shim, f"{host}/test/small:1")
    for digest in images.blob_digests(images.small):
        assert counting.blob_gets(digest) == 0, digest
    assert check_store(tmp_path / "store") == {}


def test_a_held_image_pulled_by_digest_is_judged_again_without_a_download(
    tmp_path: Path, registry: RegistryProcess, counting: TamperingProxy, images: RegistryImages
) -> None:
    host = registry.host
    by_digest = f"{host}/test/small@{images.small.manifest.digest}"
    config = _config(tmp_path / "store", registry, counting, _test_policy("image"))
    with running_server(config, extra_plugins=PLUGINS) as shim:
        _pull(shim, by_digest)
        blobs = sum(counting.blob_gets(d) for d in images.blob_digests(images.small))
        _pull(shim, by_digest)
        assert sum(counting.blob_gets(d) for d in images.blob_digests(images.small)) == blobs
    assert [i.digest for i in Recording.instances["image"].images] == [
        images.small.manifest.digest
    ] * 2


def test_a_policy_sees_the_pod_and_the_spec(
    tmp_path: Path, registry: RegistryProcess, counting: TamperingProxy
) -> None:
    host = registry.host
    config = _config(tmp_path / "store", registry, counting, _test_policy("request"))
    with running_server(config, extra_plugins=PLUGINS) as shim:
        _pull(shim, f"{host}/test/small:1", namespace="shop", user_specified_image="small:1")
        _pull(shim, f"{host}/test/small:1")
    with_pod, without = Recording.instances["request"].requests
    assert with_pod.pod is not None
    assert (with_pod.pod.namespace, with_pod.pod.name, with_pod.pod.uid) == (
        "shop",
        "web-0",
        "uid-1234",
    )
    assert dict(with_pod.pod.annotations) == {"team": "payments"}
    assert dict(with_pod.pod.labels) == {"app": "web"}
    assert with_pod.user_specified_image == "small:1"
    assert with_pod.runtime_handler == ""
    assert without.pod is None


@pytest.mark.parametrize(
    ("mode", "code", "said"),
    [
        ("precondition", grpc.StatusCode.FAILED_PRECONDITION, "ask again by digest"),
        ("raise", grpc.StatusCode.UNAVAILABLE, "could not decide (it failed: RuntimeError)"),
        ("hang", grpc.StatusCode.UNAVAILABLE, "could not decide (no answer within 0.5s)"),
        ("wrong", grpc.StatusCode.UNAVAILABLE, "answered str, not a Decision"),
    ],
)
def test_a_policy_that_fails_costs_the_pull_not_the_server(
    tmp_path: Path,
    registry: RegistryProcess,
    counting: TamperingProxy,
    images: RegistryImages,
    mode: str,
    code: grpc.StatusCode,
    said: str,
) -> None:
    host = registry.host
    failing = _test_policy("request", mode, timeout=0.5)
    config = _config(tmp_path / "store", registry, counting, failing)
    with running_server(config, extra_plugins=PLUGINS) as shim:
        err = rpc_error(_pull, shim, f"{host}/test/small:1")
        assert err.code() == code, err.details()
        assert said in (err.details() or "")
        assert SECRET not in (err.details() or "")
        assert _fetched(counting) == 0
        # the server goes on answering
        assert not _held(shim, f"{host}/test/small:1")


def test_policies_are_asked_in_order_until_one_denies(
    tmp_path: Path, registry: RegistryProcess, counting: TamperingProxy
) -> None:
    host = registry.host
    config = _config(
        tmp_path / "store",
        registry,
        counting,
        _test_policy("request", "allow", name="first"),
        _test_policy("request", "deny", name="second"),
        _test_policy("request", "allow", name="third"),
        _test_policy("image", "allow", name="images"),
    )
    with running_server(config, extra_plugins=PLUGINS) as shim:
        err = rpc_error(_pull, shim, f"{host}/test/small:1")
        assert "denied by pull policy second" in (err.details() or "")
    asked = {name: len(p.requests) for name, p in Recording.instances.items()}
    assert asked == {"first": 1, "second": 1, "third": 0, "images": 0}


def test_a_backend_that_pulls_elsewhere_is_judged_from_its_record(tmp_path: Path) -> None:
    """The fake backend's pull never calls request.admit: the catalog judges after it."""
    config = {
        "backends": [fake_backend()],
        "pull_policies": [_test_policy("image", "deny")],
    }
    with running_server(config, extra_plugins=PLUGINS) as shim:
        err = rpc_error(_pull, shim, "example.com/app:1")
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    (image,) = Recording.instances["image"].images
    assert image.source is None
    assert image.image_id.startswith("sha256:")
    assert str(image.ref) == "example.com/app:1"


def test_the_cri_backend_passes_the_pod_upstream() -> None:
    with upstream_server() as (upstream, fake):
        assert fake is not None
        front = {"backends": [cri_backend(endpoint_of(upstream))]}
        with running_server(front, extra_plugins=PLUGINS) as shim:
            _pull(shim, "example.com/app:1", namespace="shop")
        pod = fake.pulls[-1].pod
        assert pod is not None
        assert (pod.namespace, pod.name, pod.uid) == ("shop", "web-0", "uid-1234")
        assert dict(pod.annotations) == {"team": "payments"}


def test_each_policy_check_is_a_span(
    tmp_path: Path, registry: RegistryProcess, counting: TamperingProxy
) -> None:
    host = registry.host
    exporter = InMemorySpanExporter()
    config = _config(
        tmp_path / "store",
        registry,
        counting,
        _test_policy("request", name="gate"),
        _test_policy("image", "deny", name="signatures"),
    )
    config["tracing"] = {"exporter": "otlp-grpc", "endpoint": "http://127.0.0.1:9"}
    with running_server(
        config, extra_plugins=PLUGINS, overrides={"span_exporter": exporter}
    ) as shim:
        rpc_error(_pull, shim, f"{host}/test/small:1")
        provider = shim.app.tracer_provider()
        assert provider is not None
        provider.force_flush()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    gate, signatures = spans["check_request gate"], spans["check_image signatures"]
    assert gate.attributes is not None and signatures.attributes is not None
    assert gate.attributes["crishim.plugin.kind"] == "policy"
    assert gate.attributes["crishim.plugin.outcome"] == "allowed"
    assert signatures.attributes["crishim.plugin.outcome"] == "denied"
    server = spans["runtime.v1.ImageService/PullImage"]
    assert gate.context is not None and server.context is not None
    assert gate.context.trace_id == server.context.trace_id


# -- the hook's documented example, as a plugin module would write it -------------------


class NoLatest:
    def __init__(self, context: PolicyContext, options: object) -> None:
        pass

    def check_request(self, request: PullRequest) -> Decision:
        if request.ref.tag == "latest" and not request.ref.digest:
            return Decision.precondition("pull a version, not latest")
        return ALLOW


class _HookExample:
    @hookimpl
    def crishim_pull_policy_types(self) -> list[PullPolicyType]:
        return [PullPolicyType(name="no-latest", factory=NoLatest)]


def test_the_hooks_example_policy_works(
    tmp_path: Path, registry: RegistryProcess, counting: TamperingProxy, images: RegistryImages
) -> None:
    host = registry.host
    config = _config(
        tmp_path / "store", registry, counting, {"name": "versions", "type": "no-latest"}
    )
    with running_server(config, extra_plugins=[("example", _HookExample())]) as shim:
        err = rpc_error(_pull, shim, f"{host}/test/small")
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.details() == (
            f"pull {host}/test/small:latest is denied by pull policy versions: "
            "pull a version, not latest"
        )
        assert _pull(shim, f"{host}/test/small:1").image_ref == images.small.id
