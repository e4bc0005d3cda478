"""Wire contract of runtime.v1.ImageService, checked against the generated descriptors.

The tables below were compiled by hand from upstream kubernetes/cri-api
``pkg/apis/runtime/v1/api.proto`` (kubernetes/kubernetes staging copy, commit
0268656aec06fe837312d7ec3051e6b7f3dc6cde). A client built from upstream relies on
exactly these names, numbers, types and streaming flags; if a test here fails, the
proto drifted from upstream (or upstream moved and the table needs a deliberate update).
"""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from crishim.cri.runtime.v1 import api_pb2, api_pb2_grpc

PKG = "runtime.v1"

# -- service ---------------------------------------------------------------------------

SERVICE = f"{PKG}.ImageService"

# method -> (input type, output type, server streaming)
METHODS: dict[str, tuple[str, str, bool]] = {
    "ListImages": ("ListImagesRequest", "ListImagesResponse", False),
    "StreamImages": ("StreamImagesRequest", "StreamImagesResponse", True),
    "ImageStatus": ("ImageStatusRequest", "ImageStatusResponse", False),
    "PullImage": ("PullImageRequest", "PullImageResponse", False),
    "RemoveImage": ("RemoveImageRequest", "RemoveImageResponse", False),
    "ImageFsInfo": ("ImageFsInfoRequest", "ImageFsInfoResponse", False),
}

# -- messages --------------------------------------------------------------------------

ONE = "singular"
REP = "repeated"
MAP = "map"
STR_MAP = "map<string,string>"

# message -> field -> (number, type, cardinality, message/enum type or None)
FIELDS: dict[str, dict[str, tuple[int, str, str, str | None]]] = {
    "Image": {
        "id": (1, "string", ONE, None),
        "repo_tags": (2, "string", REP, None),
        "repo_digests": (3, "string", REP, None),
        "size": (4, "uint64", ONE, None),
        "uid": (5, "message", ONE, "Int64Value"),
        "username": (6, "string", ONE, None),
        "spec": (7, "message", ONE, "ImageSpec"),
        "pinned": (8, "bool", ONE, None),
    },
    "ImageSpec": {
        "image": (1, "string", ONE, None),
        "annotations": (2, STR_MAP, MAP, None),
        "user_specified_image": (18, "string", ONE, None),
        "runtime_handler": (19, "string", ONE, None),
        "image_ref": (20, "string", ONE, None),
    },
    "ImageFilter": {
        "image": (1, "message", ONE, "ImageSpec"),
    },
    "ImageStatusRequest": {
        "image": (1, "message", ONE, "ImageSpec"),
        "verbose": (2, "bool", ONE, None),
    },
    "ImageStatusResponse": {
        "image": (1, "message", ONE, "Image"),
        "info": (2, STR_MAP, MAP, None),
    },
    "ListImagesRequest": {
        "filter": (1, "message", ONE, "ImageFilter"),
    },
    "ListImagesResponse": {
        "images": (1, "message", REP, "Image"),
    },
    "StreamImagesRequest": {
        "filter": (1, "message", ONE, "ImageFilter"),
    },
    "StreamImagesResponse": {
        "images": (1, "message", REP, "Image"),
    },
    "PullImageRequest": {
        "image": (1, "message", ONE, "ImageSpec"),
        "auth": (2, "message", ONE, "AuthConfig"),
        "sandbox_config": (3, "message", ONE, "PodSandboxConfig"),
    },
    "PullImageResponse": {
        "image_ref": (1, "string", ONE, None),
    },
    "RemoveImageRequest": {
        "image": (1, "message", ONE, "ImageSpec"),
    },
    "RemoveImageResponse": {},
    "ImageFsInfoRequest": {},
    "ImageFsInfoResponse": {
        "image_filesystems": (1, "message", REP, "FilesystemUsage"),
        "container_filesystems": (2, "message", REP, "FilesystemUsage"),
    },
    "FilesystemUsage": {
        "timestamp": (1, "int64", ONE, None),
        "fs_id": (2, "message", ONE, "FilesystemIdentifier"),
        "used_bytes": (3, "message", ONE, "UInt64Value"),
        "inodes_used": (4, "message", ONE, "UInt64Value"),
    },
    "FilesystemIdentifier": {
        "mountpoint": (1, "string", ONE, None),
    },
    "AuthConfig": {
        "username": (1, "string", ONE, None),
        "password": (2, "string", ONE, None),
        "auth": (3, "string", ONE, None),
        "server_address": (4, "string", ONE, None),
        "identity_token": (5, "string", ONE, None),
        "registry_token": (6, "string", ONE, None),
    },
    "UInt64Value": {
        "value": (1, "uint64", ONE, None),
    },
    "Int64Value": {
        "value": (1, "int64", ONE, None),
    },
}

# The rest of the closure (reached through PullImageRequest.sandbox_config):
# message -> field -> number. Together with FIELDS this is every message in the file.
CLOSURE_FIELD_NUMBERS: dict[str, dict[str, int]] = {
    "PodSandboxConfig": {
        "metadata": 1,
        "hostname": 2,
        "log_directory": 3,
        "dns_config": 4,
        "port_mappings": 5,
        "labels": 6,
        "annotations": 7,
        "linux": 8,
        "windows": 9,
    },
    "PodSandboxMetadata": {"name": 1, "uid": 2, "namespace": 3, "attempt": 4},
    "DNSConfig": {"servers": 1, "searches": 2, "options": 3},
    "PortMapping": {"protocol": 1, "container_port": 2, "host_port": 3, "host_ip": 4},
    "LinuxPodSandboxConfig": {
        "cgroup_parent": 1,
        "security_context": 2,
        "sysctls": 3,
        "overhead": 4,
        "resources": 5,
    },
    "LinuxSandboxSecurityContext": {
        "namespace_options": 1,
        "selinux_options": 2,
        "run_as_user": 3,
        "readonly_rootfs": 4,
        "supplemental_groups": 5,
        "privileged": 6,
        "seccomp_profile_path": 7,
        "run_as_group": 8,
        "seccomp": 9,
        "apparmor": 10,
        "supplemental_groups_policy": 11,
    },
    "NamespaceOption": {"network": 1, "pid": 2, "ipc": 3, "target_id": 4, "userns_options": 5},
    "UserNamespace": {"mode": 1, "uids": 2, "gids": 3},
    "IDMapping": {"host_id": 1, "container_id": 2, "length": 3},
    "SELinuxOption": {"user": 1, "role": 2, "type": 3, "level": 4},
    "SecurityProfile": {"profile_type": 1, "localhost_ref": 2},
    "LinuxContainerResources": {
        "cpu_period": 1,
        "cpu_quota": 2,
        "cpu_shares": 3,
        "memory_limit_in_bytes": 4,
        "oom_score_adj": 5,
        "cpuset_cpus": 6,
        "cpuset_mems": 7,
        "hugepage_limits": 8,
        "unified": 9,
        "memory_swap_limit_in_bytes": 10,
    },
    "HugepageLimit": {"page_size": 1, "limit": 2},
    "WindowsPodSandboxConfig": {"security_context": 1},
    "WindowsSandboxSecurityContext": {
        "run_as_username": 1,
        "credential_spec": 2,
        "host_process": 3,
        "namespace_options": 4,
    },
    "WindowsNamespaceOption": {"network": 1},
}

# enum full name (relative to the package) -> value name -> number
ENUMS: dict[str, dict[str, int]] = {
    "Protocol": {"TCP": 0, "UDP": 1, "SCTP": 2},
    "NamespaceMode": {"POD": 0, "CONTAINER": 1, "NODE": 2, "TARGET": 3},
    "SupplementalGroupsPolicy": {"Merge": 0, "Strict": 1},
    "SecurityProfile.ProfileType": {"RuntimeDefault": 0, "Unconfined": 1, "Localhost": 2},
}

# AuthConfig secrets carry [debug_redact = true] upstream (not wire-visible, but kept).
REDACTED_AUTH_FIELDS = {"password", "auth", "identity_token", "registry_token"}

_TYPE_NAMES = {
    getattr(FieldDescriptor, attr): attr.removeprefix("TYPE_").lower()
    for attr in dir(FieldDescriptor)
    if attr.startswith("TYPE_")
}


def _message(name: str) -> Descriptor:
    desc: Descriptor = api_pb2.DESCRIPTOR.message_types_by_name[name]
    return desc


def _is_map(field: FieldDescriptor) -> bool:
    mt = field.message_type
    return mt is not None and mt.GetOptions().map_entry


def _describe(field: FieldDescriptor) -> tuple[int, str, str, str | None]:
    """Reduce a field descriptor to the (number, type, cardinality, type name) table shape."""
    if _is_map(field):
        key = _TYPE_NAMES[field.message_type.fields_by_name["key"].type]
        value = _TYPE_NAMES[field.message_type.fields_by_name["value"].type]
        return (field.number, f"map<{key},{value}>", MAP, None)
    kind = _TYPE_NAMES[field.type]
    cardinality = REP if field.is_repeated else ONE
    ref: Any = field.message_type or field.enum_type
    ref_name = ref.full_name.removeprefix(f"{PKG}.") if ref is not None else None
    return (field.number, kind, cardinality, ref_name)


# -- tests -----------------------------------------------------------------------------


def test_file_package_and_go_package() -> None:
    assert api_pb2.DESCRIPTOR.package == PKG
    assert api_pb2.DESCRIPTOR.GetOptions().go_package == "k8s.io/cri-api/pkg/apis/runtime/v1"


def test_only_image_service_is_declared() -> None:
    assert [s.full_name for s in api_pb2.DESCRIPTOR.services_by_name.values()] == [SERVICE]


def test_service_methods_are_exactly_the_table() -> None:
    service = api_pb2.DESCRIPTOR.services_by_name["ImageService"]
    assert service.full_name == SERVICE
    assert {m.name for m in service.methods} == set(METHODS)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_shape(method: str) -> None:
    request, response, server_streaming = METHODS[method]
    m = api_pb2.DESCRIPTOR.services_by_name["ImageService"].methods_by_name[method]
    assert m.full_name == f"{SERVICE}.{method}"
    assert m.input_type.full_name == f"{PKG}.{request}"
    assert m.output_type.full_name == f"{PKG}.{response}"
    assert m.server_streaming is server_streaming
    assert m.client_streaming is False


@pytest.mark.parametrize("message", sorted(FIELDS))
def test_message_fields(message: str) -> None:
    desc = _message(message)
    assert desc.full_name == f"{PKG}.{message}"
    actual = {f.name: _describe(f) for f in desc.fields}
    assert actual == FIELDS[message]
    assert not desc.oneofs, "no CRI image message uses oneof"


@pytest.mark.parametrize("message", sorted(CLOSURE_FIELD_NUMBERS))
def test_closure_field_numbers(message: str) -> None:
    desc = _message(message)
    assert {f.name: f.number for f in desc.fields} == CLOSURE_FIELD_NUMBERS[message]


def test_file_declares_exactly_the_closure() -> None:
    declared = set(api_pb2.DESCRIPTOR.message_types_by_name)
    assert declared == set(FIELDS) | set(CLOSURE_FIELD_NUMBERS)


def test_closure_is_self_contained() -> None:
    """Every message/enum a field refers to lives in runtime.v1 and is in our tables."""
    known_messages = {f"{PKG}.{n}" for n in (*FIELDS, *CLOSURE_FIELD_NUMBERS)}
    known_enums = {f"{PKG}.{n}" for n in ENUMS}
    for desc in api_pb2.DESCRIPTOR.message_types_by_name.values():
        for field in desc.fields:
            if _is_map(field):
                continue
            if field.message_type is not None:
                assert field.message_type.full_name in known_messages, field.full_name
            if field.enum_type is not None:
                assert field.enum_type.full_name in known_enums, field.full_name


@pytest.mark.parametrize("enum", sorted(ENUMS))
def test_enum_values(enum: str) -> None:
    outer, _, nested = enum.partition(".")
    if nested:
        desc = _message(outer).enum_types_by_name[nested]
    else:
        desc = api_pb2.DESCRIPTOR.enum_types_by_name[outer]
    assert desc.full_name == f"{PKG}.{enum}"
    assert {v.name: v.number for v in desc.values} == ENUMS[enum]


def test_top_level_enums_are_exactly_the_table() -> None:
    top_level = {n for n in ENUMS if "." not in n}
    assert set(api_pb2.DESCRIPTOR.enum_types_by_name) == top_level


def test_selected_field_types_in_sandbox_closure() -> None:
    """Spot-check field types that are easy to get wrong when transcribing."""
    ctx = _message("LinuxSandboxSecurityContext").fields_by_name
    assert _describe(ctx["run_as_user"]) == (3, "message", ONE, "Int64Value")
    assert _describe(ctx["run_as_group"]) == (8, "message", ONE, "Int64Value")
    assert _describe(ctx["supplemental_groups"]) == (5, "int64", REP, None)
    assert _describe(ctx["supplemental_groups_policy"]) == (
        11,
        "enum",
        ONE,
        "SupplementalGroupsPolicy",
    )
    assert ctx["seccomp_profile_path"].GetOptions().deprecated
    assert _describe(_message("PodSandboxMetadata").fields_by_name["attempt"])[1] == "uint32"
    assert _describe(_message("PortMapping").fields_by_name["host_port"])[1] == "int32"
    assert _describe(_message("HugepageLimit").fields_by_name["limit"])[1] == "uint64"
    assert _describe(_message("LinuxPodSandboxConfig").fields_by_name["sysctls"])[1] == STR_MAP
    assert _describe(_message("PodSandboxConfig").fields_by_name["labels"])[1] == STR_MAP


def test_auth_secrets_are_debug_redacted() -> None:
    fields = _message("AuthConfig").fields_by_name
    redacted = {name for name, f in fields.items() if f.GetOptions().debug_redact}
    assert redacted == REDACTED_AUTH_FIELDS


def test_grpc_module_exposes_the_service() -> None:
    servicer = api_pb2_grpc.ImageServiceServicer
    for method in METHODS:
        assert callable(getattr(servicer, method))
    assert callable(api_pb2_grpc.add_ImageServiceServicer_to_server)
    assert api_pb2_grpc.ImageServiceStub is not None


# -- wire behaviour --------------------------------------------------------------------


def _full_image() -> Any:
    return api_pb2.Image(
        id="sha256:" + "ab" * 32,
        repo_tags=["docker.io/library/busybox:latest", "busybox:1.36"],
        repo_digests=["docker.io/library/busybox@sha256:" + "cd" * 32],
        size=2**40 + 7,
        uid=api_pb2.Int64Value(value=-1),
        username="nobody",
        spec=api_pb2.ImageSpec(
            image="docker.io/library/busybox:latest",
            annotations={"io.kubernetes.cri.image-platform": "linux/amd64", "k": "v"},
            user_specified_image="busybox",
            runtime_handler="runc",
            image_ref="sha256:" + "ab" * 32,
        ),
        pinned=True,
    )


def test_image_round_trip_with_every_field_set() -> None:
    image = _full_image()
    # Every field really is set (guards against the helper silently missing one).
    assert {f.name for f, _ in image.ListFields()} == set(FIELDS["Image"])
    assert {f.name for f, _ in image.spec.ListFields()} == set(FIELDS["ImageSpec"])

    parsed = api_pb2.Image.FromString(image.SerializeToString())
    assert parsed == image
    assert parsed.uid.value == -1
    assert parsed.size == 2**40 + 7
    assert dict(parsed.spec.annotations) == {
        "io.kubernetes.cri.image-platform": "linux/amd64",
        "k": "v",
    }


def test_image_status_response_info_map_round_trip() -> None:
    response = api_pb2.ImageStatusResponse(image=_full_image())
    response.info["info"] = '{"imageSpec": {}}'
    response.info["chainID"] = "sha256:00"
    parsed = api_pb2.ImageStatusResponse.FromString(response.SerializeToString())
    assert parsed == response
    assert dict(parsed.info) == {"info": '{"imageSpec": {}}', "chainID": "sha256:00"}
    assert parsed.image.spec.annotations["k"] == "v"
    # Map fields behave like mappings; an unset message field reads as "absent".
    assert "missing" not in parsed.info
    assert not api_pb2.ImageStatusResponse().HasField("image")


def test_field_numbers_on_the_wire() -> None:
    """Hand-encoded bytes: proves the numbers, not just the descriptor metadata."""
    # ImageSpec.image (1, len-delimited) -> tag 0x0a; user_specified_image (18) -> 0x92 0x01.
    spec = api_pb2.ImageSpec(image="a", user_specified_image="b")
    assert spec.SerializeToString() == b"\x0a\x01a\x92\x01\x01b"
    # Image.size (4, varint) -> tag 0x20; Image.pinned (8, varint) -> tag 0x40.
    assert api_pb2.Image(size=5, pinned=True).SerializeToString() == b"\x20\x05\x40\x01"
    # PullImageResponse.image_ref (1) and the CRI wrappers (value = 1, varint).
    assert api_pb2.PullImageResponse(image_ref="x").SerializeToString() == b"\x0a\x01x"
    assert api_pb2.UInt64Value(value=3).SerializeToString() == b"\x08\x03"
    assert api_pb2.Int64Value(value=3).SerializeToString() == b"\x08\x03"
    # A StreamImagesResponse batch is wire-compatible with ListImagesResponse.
    batch = api_pb2.StreamImagesResponse(images=[_full_image()]).SerializeToString()
    assert api_pb2.ListImagesResponse.FromString(batch).images[0] == _full_image()
