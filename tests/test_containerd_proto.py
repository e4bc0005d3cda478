"""Wire contract of our containerd API protos (and the CRI RuntimeService client subset).

The tables below were compiled by hand from containerd 1.6's ``api/`` protos
(``services/{images,content,leases,events,version,snapshots,diff}/v1``,
``types/{descriptor,mount}.proto``,
``events/{image,content}.proto``); containerd answers exactly these method
paths, field numbers and types. If a test here fails, the transcription in
``proto/containerd/`` drifted from containerd (or a deliberate update needs
the table changed with it). tests/test_containerd_harness.py checks the same
facts against a running containerd.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from crishim_plugins.containerd.api.events import content_pb2 as content_events_pb2
from crishim_plugins.containerd.api.events import image_pb2 as image_events_pb2
from crishim_plugins.containerd.api.services.content.v1 import content_pb2, content_pb2_grpc
from crishim_plugins.containerd.api.services.diff.v1 import diff_pb2, diff_pb2_grpc
from crishim_plugins.containerd.api.services.events.v1 import events_pb2, events_pb2_grpc
from crishim_plugins.containerd.api.services.images.v1 import images_pb2, images_pb2_grpc
from crishim_plugins.containerd.api.services.leases.v1 import leases_pb2, leases_pb2_grpc
from crishim_plugins.containerd.api.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
from crishim_plugins.containerd.api.services.version.v1 import version_pb2, version_pb2_grpc
from crishim_plugins.containerd.api.types import descriptor_pb2, mount_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor

from crishim.cri.runtime.v1 import api_pb2, runtime_service_pb2, runtime_service_pb2_grpc

UNARY = "unary_unary"
SERVER_STREAM = "unary_stream"
BIDI = "stream_stream"

EMPTY = "google.protobuf.Empty"

# -- services --------------------------------------------------------------------------

# service full name -> method -> (input, output, kind); input and output are relative
# to the service's package unless fully qualified (google.protobuf.Empty).
SERVICES: dict[str, tuple[ModuleType, ModuleType, dict[str, tuple[str, str, str]]]] = {
    "containerd.services.images.v1.Images": (
        images_pb2,
        images_pb2_grpc,
        {
            "Get": ("GetImageRequest", "GetImageResponse", UNARY),
            "List": ("ListImagesRequest", "ListImagesResponse", UNARY),
            "Create": ("CreateImageRequest", "CreateImageResponse", UNARY),
            "Update": ("UpdateImageRequest", "UpdateImageResponse", UNARY),
            "Delete": ("DeleteImageRequest", EMPTY, UNARY),
        },
    ),
    "containerd.services.content.v1.Content": (
        content_pb2,
        content_pb2_grpc,
        {
            "Info": ("InfoRequest", "InfoResponse", UNARY),
            "Update": ("UpdateRequest", "UpdateResponse", UNARY),
            "List": ("ListContentRequest", "ListContentResponse", SERVER_STREAM),
            "Delete": ("DeleteContentRequest", EMPTY, UNARY),
            "Read": ("ReadContentRequest", "ReadContentResponse", SERVER_STREAM),
            "Status": ("StatusRequest", "StatusResponse", UNARY),
            "ListStatuses": ("ListStatusesRequest", "ListStatusesResponse", UNARY),
            "Write": ("WriteContentRequest", "WriteContentResponse", BIDI),
            "Abort": ("AbortRequest", EMPTY, UNARY),
        },
    ),
    "containerd.services.leases.v1.Leases": (
        leases_pb2,
        leases_pb2_grpc,
        {
            "Create": ("CreateRequest", "CreateResponse", UNARY),
            "Delete": ("DeleteRequest", EMPTY, UNARY),
            "List": ("ListRequest", "ListResponse", UNARY),
            "AddResource": ("AddResourceRequest", EMPTY, UNARY),
            "DeleteResource": ("DeleteResourceRequest", EMPTY, UNARY),
            "ListResources": ("ListResourcesRequest", "ListResourcesResponse", UNARY),
        },
    ),
    "containerd.services.events.v1.Events": (
        events_pb2,
        events_pb2_grpc,
        {
            "Publish": ("PublishRequest", EMPTY, UNARY),
            "Forward": ("ForwardRequest", EMPTY, UNARY),
            "Subscribe": ("SubscribeRequest", "Envelope", SERVER_STREAM),
        },
    ),
    "containerd.services.version.v1.Version": (
        version_pb2,
        version_pb2_grpc,
        {"Version": (EMPTY, "VersionResponse", UNARY)},
    ),
    "containerd.services.snapshots.v1.Snapshots": (
        snapshots_pb2,
        snapshots_pb2_grpc,
        {
            "Prepare": ("PrepareSnapshotRequest", "PrepareSnapshotResponse", UNARY),
            "View": ("ViewSnapshotRequest", "ViewSnapshotResponse", UNARY),
            "Mounts": ("MountsRequest", "MountsResponse", UNARY),
            "Commit": ("CommitSnapshotRequest", EMPTY, UNARY),
            "Remove": ("RemoveSnapshotRequest", EMPTY, UNARY),
            "Stat": ("StatSnapshotRequest", "StatSnapshotResponse", UNARY),
            "Update": ("UpdateSnapshotRequest", "UpdateSnapshotResponse", UNARY),
            "List": ("ListSnapshotsRequest", "ListSnapshotsResponse", SERVER_STREAM),
            "Usage": ("UsageRequest", "UsageResponse", UNARY),
            "Cleanup": ("CleanupRequest", EMPTY, UNARY),
        },
    ),
    "containerd.services.diff.v1.Diff": (
        diff_pb2,
        diff_pb2_grpc,
        {
            "Apply": ("ApplyRequest", "ApplyResponse", UNARY),
            "Diff": ("DiffRequest", "DiffResponse", UNARY),
        },
    ),
}

# -- messages --------------------------------------------------------------------------

ONE = "singular"
REP = "repeated"
MAP = "map<string,string>"
TS = "google.protobuf.Timestamp"
ANY = "google.protobuf.Any"
MASK = "google.protobuf.FieldMask"

# message full name -> field -> (number, type, cardinality, message/enum full name)
FIELDS: dict[str, dict[str, tuple[int, str, str, str | None]]] = {
    "containerd.types.Mount": {
        "type": (1, "string", ONE, None),
        "source": (2, "string", ONE, None),
        "target": (3, "string", ONE, None),
        "options": (4, "string", REP, None),
    },
    "containerd.services.snapshots.v1.PrepareSnapshotRequest": {
        "snapshotter": (1, "string", ONE, None),
        "key": (2, "string", ONE, None),
        "parent": (3, "string", ONE, None),
        "labels": (4, MAP, REP, None),
    },
    "containerd.services.snapshots.v1.PrepareSnapshotResponse": {
        "mounts": (1, "message", REP, "containerd.types.Mount"),
    },
    "containerd.services.snapshots.v1.CommitSnapshotRequest": {
        "snapshotter": (1, "string", ONE, None),
        "name": (2, "string", ONE, None),
        "key": (3, "string", ONE, None),
        "labels": (4, MAP, REP, None),
    },
    "containerd.services.snapshots.v1.Info": {
        "name": (1, "string", ONE, None),
        "parent": (2, "string", ONE, None),
        "kind": (3, "enum", ONE, "containerd.services.snapshots.v1.Kind"),
        "created_at": (4, "message", ONE, TS),
        "updated_at": (5, "message", ONE, TS),
        "labels": (6, MAP, REP, None),
    },
    "containerd.services.diff.v1.ApplyRequest": {
        "diff": (1, "message", ONE, "containerd.types.Descriptor"),
        "mounts": (2, "message", REP, "containerd.types.Mount"),
        "payloads": (3, "map<string,message>", REP, None),
    },
    "containerd.services.diff.v1.ApplyResponse": {
        "applied": (1, "message", ONE, "containerd.types.Descriptor"),
    },
    "containerd.services.diff.v1.DiffResponse": {
        "diff": (3, "message", ONE, "containerd.types.Descriptor"),
    },
    "containerd.types.Descriptor": {
        "media_type": (1, "string", ONE, None),
        "digest": (2, "string", ONE, None),
        "size": (3, "int64", ONE, None),
        "annotations": (5, MAP, REP, None),
    },
    "containerd.services.images.v1.Image": {
        "name": (1, "string", ONE, None),
        "labels": (2, MAP, REP, None),
        "target": (3, "message", ONE, "containerd.types.Descriptor"),
        "created_at": (7, "message", ONE, TS),
        "updated_at": (8, "message", ONE, TS),
    },
    "containerd.services.images.v1.ListImagesRequest": {"filters": (1, "string", REP, None)},
    "containerd.services.images.v1.UpdateImageRequest": {
        "image": (1, "message", ONE, "containerd.services.images.v1.Image"),
        "update_mask": (2, "message", ONE, MASK),
    },
    "containerd.services.images.v1.DeleteImageRequest": {
        "name": (1, "string", ONE, None),
        "sync": (2, "bool", ONE, None),
    },
    "containerd.services.content.v1.Info": {
        "digest": (1, "string", ONE, None),
        "size": (2, "int64", ONE, None),
        "created_at": (3, "message", ONE, TS),
        "updated_at": (4, "message", ONE, TS),
        "labels": (5, MAP, REP, None),
    },
    "containerd.services.content.v1.ReadContentRequest": {
        "digest": (1, "string", ONE, None),
        "offset": (2, "int64", ONE, None),
        "size": (3, "int64", ONE, None),
    },
    "containerd.services.content.v1.ReadContentResponse": {
        "offset": (1, "int64", ONE, None),
        "data": (2, "bytes", ONE, None),
    },
    "containerd.services.content.v1.WriteContentRequest": {
        "action": (1, "enum", ONE, "containerd.services.content.v1.WriteAction"),
        "ref": (2, "string", ONE, None),
        "total": (3, "int64", ONE, None),
        "expected": (4, "string", ONE, None),
        "offset": (5, "int64", ONE, None),
        "data": (6, "bytes", ONE, None),
        "labels": (7, MAP, REP, None),
    },
    "containerd.services.content.v1.WriteContentResponse": {
        "action": (1, "enum", ONE, "containerd.services.content.v1.WriteAction"),
        "started_at": (2, "message", ONE, TS),
        "updated_at": (3, "message", ONE, TS),
        "offset": (4, "int64", ONE, None),
        "total": (5, "int64", ONE, None),
        "digest": (6, "string", ONE, None),
    },
    "containerd.services.content.v1.Status": {
        "started_at": (1, "message", ONE, TS),
        "updated_at": (2, "message", ONE, TS),
        "ref": (3, "string", ONE, None),
        "offset": (4, "int64", ONE, None),
        "total": (5, "int64", ONE, None),
        "expected": (6, "string", ONE, None),
    },
    "containerd.services.leases.v1.Lease": {
        "id": (1, "string", ONE, None),
        "created_at": (2, "message", ONE, TS),
        "labels": (3, MAP, REP, None),
    },
    "containerd.services.leases.v1.CreateRequest": {
        "id": (1, "string", ONE, None),
        "labels": (3, MAP, REP, None),
    },
    "containerd.services.leases.v1.DeleteRequest": {
        "id": (1, "string", ONE, None),
        "sync": (2, "bool", ONE, None),
    },
    "containerd.services.leases.v1.Resource": {
        "id": (1, "string", ONE, None),
        "type": (2, "string", ONE, None),
    },
    "containerd.services.events.v1.Envelope": {
        "timestamp": (1, "message", ONE, TS),
        "namespace": (2, "string", ONE, None),
        "topic": (3, "string", ONE, None),
        "event": (4, "message", ONE, ANY),
    },
    "containerd.services.events.v1.SubscribeRequest": {"filters": (1, "string", REP, None)},
    "containerd.services.events.v1.PublishRequest": {
        "topic": (1, "string", ONE, None),
        "event": (2, "message", ONE, ANY),
    },
    "containerd.services.events.v1.ForwardRequest": {
        "envelope": (1, "message", ONE, "containerd.services.events.v1.Envelope"),
    },
    # containerd 1.6 declares the image events in this package (not containerd.events)
    "containerd.services.images.v1.ImageCreate": {
        "name": (1, "string", ONE, None),
        "labels": (2, MAP, REP, None),
    },
    "containerd.services.images.v1.ImageUpdate": {
        "name": (1, "string", ONE, None),
        "labels": (2, MAP, REP, None),
    },
    "containerd.services.images.v1.ImageDelete": {"name": (1, "string", ONE, None)},
    "containerd.events.ContentDelete": {"digest": (1, "string", ONE, None)},
    "containerd.services.version.v1.VersionResponse": {
        "version": (1, "string", ONE, None),
        "revision": (2, "string", ONE, None),
    },
}

# Every message of each file: the tables above pin the ones crishim relies on in
# full, these the rest by name, so a message cannot appear or vanish unnoticed.
MESSAGES: dict[ModuleType, set[str]] = {
    descriptor_pb2: {"Descriptor"},
    images_pb2: {
        "Image",
        "GetImageRequest",
        "GetImageResponse",
        "CreateImageRequest",
        "CreateImageResponse",
        "UpdateImageRequest",
        "UpdateImageResponse",
        "ListImagesRequest",
        "ListImagesResponse",
        "DeleteImageRequest",
    },
    content_pb2: {
        "Info",
        "InfoRequest",
        "InfoResponse",
        "UpdateRequest",
        "UpdateResponse",
        "ListContentRequest",
        "ListContentResponse",
        "DeleteContentRequest",
        "ReadContentRequest",
        "ReadContentResponse",
        "Status",
        "StatusRequest",
        "StatusResponse",
        "ListStatusesRequest",
        "ListStatusesResponse",
        "WriteContentRequest",
        "WriteContentResponse",
        "AbortRequest",
    },
    leases_pb2: {
        "Lease",
        "CreateRequest",
        "CreateResponse",
        "DeleteRequest",
        "ListRequest",
        "ListResponse",
        "Resource",
        "AddResourceRequest",
        "DeleteResourceRequest",
        "ListResourcesRequest",
        "ListResourcesResponse",
    },
    events_pb2: {"PublishRequest", "ForwardRequest", "SubscribeRequest", "Envelope"},
    image_events_pb2: {"ImageCreate", "ImageUpdate", "ImageDelete"},
    content_events_pb2: {"ContentDelete"},
    version_pb2: {"VersionResponse"},
    mount_pb2: {"Mount"},
    snapshots_pb2: {
        "PrepareSnapshotRequest",
        "PrepareSnapshotResponse",
        "ViewSnapshotRequest",
        "ViewSnapshotResponse",
        "MountsRequest",
        "MountsResponse",
        "RemoveSnapshotRequest",
        "CommitSnapshotRequest",
        "StatSnapshotRequest",
        "Info",
        "StatSnapshotResponse",
        "UpdateSnapshotRequest",
        "UpdateSnapshotResponse",
        "ListSnapshotsRequest",
        "ListSnapshotsResponse",
        "UsageRequest",
        "UsageResponse",
        "CleanupRequest",
    },
    diff_pb2: {"ApplyRequest", "ApplyResponse", "DiffRequest", "DiffResponse"},
}

PACKAGES: dict[ModuleType, str] = {
    descriptor_pb2: "containerd.types",
    images_pb2: "containerd.services.images.v1",
    content_pb2: "containerd.services.content.v1",
    leases_pb2: "containerd.services.leases.v1",
    events_pb2: "containerd.services.events.v1",
    image_events_pb2: "containerd.services.images.v1",
    content_events_pb2: "containerd.events",
    version_pb2: "containerd.services.version.v1",
    mount_pb2: "containerd.types",
    snapshots_pb2: "containerd.services.snapshots.v1",
    diff_pb2: "containerd.services.diff.v1",
}

_TYPE_NAMES = {
    getattr(FieldDescriptor, attr): attr.removeprefix("TYPE_").lower()
    for attr in dir(FieldDescriptor)
    if attr.startswith("TYPE_")
}


def _describe(field: FieldDescriptor) -> tuple[int, str, str, str | None]:
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        key = _TYPE_NAMES[entry.fields_by_name["key"].type]
        value = _TYPE_NAMES[entry.fields_by_name["value"].type]
        return (field.number, f"map<{key},{value}>", REP, None)
    ref: Any = field.message_type or field.enum_type
    return (
        field.number,
        _TYPE_NAMES[field.type],
        REP if field.is_repeated else ONE,
        ref.full_name if ref is not None else None,
    )


def _message(full_name: str) -> Descriptor:
    for module in PACKAGES:
        file: FileDescriptor = module.DESCRIPTOR
        if full_name.startswith(file.package + "."):
            name = full_name.removeprefix(file.package + ".")
            if name in file.message_types_by_name:
                desc: Descriptor = file.message_types_by_name[name]
                return desc
    raise KeyError(full_name)


def _qualified(package: str, name: str) -> str:
    return name if "." in name else f"{package}.{name}"


class RecordingChannel:
    """Stands in for a grpc.Channel: records the method paths and kinds a stub asks for."""

    def __init__(self) -> None:
        self.calls: dict[str, str] = {}

    def _record(self, kind: str) -> Any:
        def make(path: str, *args: Any, **kwargs: Any) -> Any:
            self.calls[path] = kind
            return lambda *a, **k: None

        return make

    def __getattr__(self, name: str) -> Any:
        if name in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            return self._record(name)
        raise AttributeError(name)


# -- tests -----------------------------------------------------------------------------


@pytest.mark.parametrize("module", list(PACKAGES), ids=lambda m: m.__name__.split(".api.")[1])
def test_packages_and_messages(module: ModuleType) -> None:
    file: FileDescriptor = module.DESCRIPTOR
    assert file.package == PACKAGES[module]
    assert set(file.message_types_by_name) == MESSAGES[module]
    # no gogoproto or other foreign imports: only well-known types and our own files
    for dep in file.dependencies:
        assert dep.name.startswith(("google/protobuf/", "crishim_plugins/containerd/api/")), (
            dep.name
        )
    assert file.name.startswith("crishim_plugins/containerd/api/")


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_service_methods(service: str) -> None:
    module, grpc_module, methods = SERVICES[service]
    package, _, name = service.rpartition(".")
    desc = module.DESCRIPTOR.services_by_name[name]
    assert desc.full_name == service
    assert {m.name for m in desc.methods} == set(methods)
    for method, (request, response, kind) in methods.items():
        m = desc.methods_by_name[method]
        assert m.input_type.full_name == _qualified(package, request), method
        assert m.output_type.full_name == _qualified(package, response), method
        assert m.client_streaming is (kind == BIDI), method
        assert m.server_streaming is (kind in (SERVER_STREAM, BIDI)), method

    # the generated stub calls exactly these paths with these shapes
    channel = RecordingChannel()
    getattr(grpc_module, f"{name}Stub")(channel)
    assert channel.calls == {
        f"/{service}/{method}": kind for method, (_, _, kind) in methods.items()
    }


def test_event_subscribe_path_is_containerds() -> None:
    channel = RecordingChannel()
    events_pb2_grpc.EventsStub(channel)
    assert channel.calls["/containerd.services.events.v1.Events/Subscribe"] == SERVER_STREAM


@pytest.mark.parametrize("message", sorted(FIELDS))
def test_message_fields(message: str) -> None:
    desc = _message(message)
    assert desc.full_name == message
    assert {f.name: _describe(f) for f in desc.fields} == FIELDS[message]
    assert not desc.oneofs


def test_write_action_values() -> None:
    enum = content_pb2.DESCRIPTOR.enum_types_by_name["WriteAction"]
    assert enum.full_name == "containerd.services.content.v1.WriteAction"
    assert {v.name: v.number for v in enum.values} == {"STAT": 0, "WRITE": 1, "COMMIT": 2}


def test_event_type_names_are_containerds_type_urls() -> None:
    """containerd's Any type URLs are the bare full names (no type.googleapis.com/)."""
    assert image_events_pb2.ImageCreate.DESCRIPTOR.full_name == (
        "containerd.services.images.v1.ImageCreate"
    )
    assert image_events_pb2.ImageUpdate.DESCRIPTOR.full_name == (
        "containerd.services.images.v1.ImageUpdate"
    )
    assert image_events_pb2.ImageDelete.DESCRIPTOR.full_name == (
        "containerd.services.images.v1.ImageDelete"
    )
    assert content_events_pb2.ContentDelete.DESCRIPTOR.full_name == (
        "containerd.events.ContentDelete"
    )


def test_field_numbers_on_the_wire() -> None:
    """Hand-encoded bytes: the numbers and types, not just the descriptor metadata."""
    desc = descriptor_pb2.Descriptor(media_type="m", digest="d", size=3, annotations={"k": "v"})
    assert desc.SerializeToString() == b"\x0a\x01m\x12\x01d\x18\x03\x2a\x06\x0a\x01k\x12\x01v"
    # WriteContentRequest: action COMMIT (1, varint 2), offset (5), data (6, bytes)
    write = content_pb2.WriteContentRequest(action=content_pb2.COMMIT, offset=7, data=b"x")
    assert write.SerializeToString() == b"\x08\x02\x28\x07\x32\x01x"
    # a negative int64 is a ten-byte varint (int64, not sint64)
    assert content_pb2.ReadContentRequest(size=-1).SerializeToString() == (
        b"\x18" + b"\xff" * 9 + b"\x01"
    )
    envelope = events_pb2.Envelope(namespace="k8s.io", topic="/t")
    envelope.event.type_url = "containerd.services.images.v1.ImageCreate"
    envelope.event.value = image_events_pb2.ImageCreate(name="n").SerializeToString()
    raw = envelope.SerializeToString()
    assert raw.startswith(b"\x12\x06k8s.io\x1a\x02/t\x22")
    parsed = events_pb2.Envelope.FromString(raw)
    assert image_events_pb2.ImageCreate.FromString(parsed.event.value).name == "n"
    image = images_pb2.Image(name="a")
    image.created_at.seconds = 1
    assert image.SerializeToString() == b"\x0a\x01a\x3a\x02\x08\x01"
    lease = leases_pb2.Lease(id="l", labels={"a": "b"})
    assert lease.SerializeToString() == b"\x0a\x01l\x1a\x06\x0a\x01a\x12\x01b"


# -- the CRI RuntimeService client subset ----------------------------------------------

RUNTIME_METHODS = {
    "Version": ("VersionRequest", "VersionResponse"),
    "Status": ("StatusRequest", "StatusResponse"),
    "RunPodSandbox": ("RunPodSandboxRequest", "RunPodSandboxResponse"),
    "StopPodSandbox": ("StopPodSandboxRequest", "StopPodSandboxResponse"),
    "RemovePodSandbox": ("RemovePodSandboxRequest", "RemovePodSandboxResponse"),
    "PodSandboxStatus": ("PodSandboxStatusRequest", "PodSandboxStatusResponse"),
    "ListPodSandbox": ("ListPodSandboxRequest", "ListPodSandboxResponse"),
    "CreateContainer": ("CreateContainerRequest", "CreateContainerResponse"),
    "StartContainer": ("StartContainerRequest", "StartContainerResponse"),
    "StopContainer": ("StopContainerRequest", "StopContainerResponse"),
    "RemoveContainer": ("RemoveContainerRequest", "RemoveContainerResponse"),
    "ListContainers": ("ListContainersRequest", "ListContainersResponse"),
    "ContainerStatus": ("ContainerStatusRequest", "ContainerStatusResponse"),
}


def _rt(name: str) -> Descriptor:
    desc: Descriptor = runtime_service_pb2.DESCRIPTOR.message_types_by_name[name]
    return desc


def _rt_fields(name: str) -> dict[str, tuple[int, str, str, str | None]]:
    return {
        f.name: (n, t, c, r.removeprefix("runtime.v1.") if r else r)
        for f in _rt(name).fields
        for n, t, c, r in [_describe(f)]
    }


def test_runtime_service_methods() -> None:
    file = runtime_service_pb2.DESCRIPTOR
    assert file.package == "runtime.v1"
    assert [d.name for d in file.dependencies] == ["crishim/cri/runtime/v1/api.proto"]
    service = file.services_by_name["RuntimeService"]
    assert service.full_name == "runtime.v1.RuntimeService"
    assert {m.name for m in service.methods} == set(RUNTIME_METHODS)
    for method, (request, response) in RUNTIME_METHODS.items():
        m = service.methods_by_name[method]
        assert m.input_type.full_name == f"runtime.v1.{request}"
        assert m.output_type.full_name == f"runtime.v1.{response}"
        assert not m.client_streaming and not m.server_streaming
    channel = RecordingChannel()
    runtime_service_pb2_grpc.RuntimeServiceStub(channel)
    assert channel.calls == {f"/runtime.v1.RuntimeService/{m}": UNARY for m in RUNTIME_METHODS}


def test_runtime_service_reuses_api_proto_messages() -> None:
    ours = set(runtime_service_pb2.DESCRIPTOR.message_types_by_name)
    theirs = set(api_pb2.DESCRIPTOR.message_types_by_name)
    assert not ours & theirs, "runtime_service.proto redefines an api.proto message"
    config = _rt("RunPodSandboxRequest").fields_by_name["config"].message_type
    assert config is api_pb2.PodSandboxConfig.DESCRIPTOR
    assert not set(runtime_service_pb2.DESCRIPTOR.enum_types_by_name) & set(
        api_pb2.DESCRIPTOR.enum_types_by_name
    )


def test_container_status_image_fields() -> None:
    fields = _rt_fields("ContainerStatus")
    assert fields["image"] == (8, "message", ONE, "ImageSpec")
    assert fields["image_ref"] == (9, "string", ONE, None)
    assert fields["image_id"] == (17, "string", ONE, None)
    assert fields["exit_code"] == (7, "int32", ONE, None)
    assert fields["log_path"] == (15, "string", ONE, None)
    assert fields["state"] == (3, "enum", ONE, "ContainerState")
    assert fields["finished_at"] == (6, "int64", ONE, None)
    assert len(fields) == 19
    container = _rt_fields("Container")
    assert container["image"] == (4, "message", ONE, "ImageSpec")
    assert container["image_ref"] == (5, "string", ONE, None)
    assert container["image_id"] == (10, "string", ONE, None)


def test_runtime_config_fields() -> None:
    config = _rt_fields("ContainerConfig")
    assert config["image"] == (2, "message", ONE, "ImageSpec")
    assert config["command"] == (3, "string", REP, None)
    assert config["args"] == (4, "string", REP, None)
    assert config["log_path"] == (11, "string", ONE, None)
    assert config["CDI_devices"] == (17, "message", REP, "CDIDevice")
    assert config["stop_signal"] == (18, "enum", ONE, "Signal")
    assert len(config) == 18
    mount = _rt_fields("Mount")
    assert mount["uidMappings"] == (6, "message", REP, "IDMapping")
    assert mount["image"] == (9, "message", ONE, "ImageSpec")
    ctx = _rt_fields("LinuxContainerSecurityContext")
    assert ctx["run_as_group"] == (12, "message", ONE, "Int64Value")
    assert ctx["supplemental_groups_policy"] == (17, "enum", ONE, "SupplementalGroupsPolicy")
    assert (
        _rt("LinuxContainerSecurityContext")
        .fields_by_name["apparmor_profile"]
        .GetOptions()
        .deprecated
    )
    status = _rt_fields("PodSandboxStatusResponse")
    assert status["containers_statuses"] == (3, "message", REP, "ContainerStatus")
    assert status["timestamp"] == (4, "int64", ONE, None)


def test_runtime_enums() -> None:
    enums = runtime_service_pb2.DESCRIPTOR.enum_types_by_name
    values = {name: {v.name: v.number for v in e.values} for name, e in enums.items()}
    assert values["ContainerState"] == {
        "CONTAINER_CREATED": 0,
        "CONTAINER_RUNNING": 1,
        "CONTAINER_EXITED": 2,
        "CONTAINER_UNKNOWN": 3,
    }
    assert values["PodSandboxState"] == {"SANDBOX_READY": 0, "SANDBOX_NOTREADY": 1}
    assert values["MountPropagation"] == {
        "PROPAGATION_PRIVATE": 0,
        "PROPAGATION_HOST_TO_CONTAINER": 1,
        "PROPAGATION_BIDIRECTIONAL": 2,
    }
    signals = values["Signal"]
    assert len(signals) == 66
    assert (signals["RUNTIME_DEFAULT"], signals["SIGKILL"], signals["SIGTERM"]) == (0, 13, 23)
    assert (signals["SIGRTMIN"], signals["SIGRTMAX"]) == (35, 65)
    assert sorted(signals.values()) == list(range(66))


def test_runtime_wire_bytes() -> None:
    status = runtime_service_pb2.ContainerStatus(image_ref="r", image_id="i", exit_code=-1)
    raw = status.SerializeToString()
    # exit_code (7, int32 -1: ten-byte varint), image_ref (9), image_id (17: 0x8a 0x01)
    assert raw == b"\x38" + b"\xff" * 9 + b"\x01" + b"\x4a\x01r" + b"\x8a\x01\x01i"
